"""Training-step time of trained networks on real images, in each training mode.

    OMP_NUM_THREADS=1 python -m bench.trained_steps --results RESULTS --sweep NAME \\
        --runs HAM-EO-DEQ-L5-s0,CHN-DEQ-L3-s0 [--data-dir DIR] \\
        [--dataset fashion-mnist] [--batches 10] [--eval-batches 5] [--fused-anderson] \\
        [--json FILE]

``bench.speed`` times untrained networks on synthetic images, where few samples converge early;
what the fast mode saves depends on how fast trained networks converge on real data. This
script loads the weights of finished runs (``<results>/<sweep>/<run>/checkpoints/last.ckpt``)
and times one training step (forward solve, loss, backward, Madam step) on the same batches of
real training images in three modes:

- ``paper``: paper settings (fixed forward iterations, backward through unrolled steps);
- ``fast-unrolled``: the fast mode's forward (tolerance stop, compaction) with the paper's
  unrolled backward (the fast mode before the Neumann backward);
- ``fast``: the fast mode as it is now (:data:`deq_modules.experiments.FAST`).

Beside each time, the step's arithmetic by ``bench.flops``' model (its matrix products, the
forward solve counted with each sample's own iterations): the ratio of the whole sweep's
arithmetic between two modes is the speedup that removing every overhead would give, i.e.
what the mode's algorithm allows; the ratio of the times is what the implementation gets.

Every timed step starts from the run's trained weights (restored outside the timed region) and
the modes take turns batch by batch, so slow phases of a shared machine hit them alike. Prints a
markdown table: median ms per step (interquartile range), the speedup over ``paper``, and the
mean forward iterations per sample; then, per mode, the sweep's cost over the rows measured,
which is the whole sweep's when the runs cover all 17 rows: its training steps (ms per step x
the row's training steps in the whole sweep, its epochs x 5 seeds: ``bench.speed``'s measure)
plus its evaluation passes. Those are timed on as many batches of real test images, as the
runs do them: a validation pass over the test split after every epoch but the last (with the
mode's validation forward: the paper's fixed count, or the fast mode's tolerance stop), and the
test at paper settings with the per-iteration energy the test records for the figures.
"""
from __future__ import annotations

import argparse
import json
import time
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from statistics import fmean, median, quantiles

import torch

from custom_callbacks import EnergyTracker
from deq_modules.data.files import load_dataset, resolve_data_dir
from deq_modules.experiments import (EXPERIMENTS, FAST, PAPER, Mode, get_experiment,
                                     split_run_name)
from deq_modules.lit import LitHopfieldDEQ, lit_module_for
from deq_modules.optim import Madam
from runner.names import LAST_CHECKPOINT

from .flops import step_flops
from .rows import _NO_TRAINER_WARNING, sweep_eval_batches, sweep_steps, trace_iterations

# the fast mode's forward with the paper's unrolled backward: the fast mode before the Neumann one
MODES: dict[str, Mode] = {"paper": PAPER, "fast-unrolled": replace(FAST, backward="unrolled"),
                          "fast": FAST}


def build(row: str, depth: int, mode: str, state: dict,
          fused_anderson: bool = False) -> LitHopfieldDEQ:
    """The row's module in ``mode``, with the trained weights ``state``."""
    exp = get_experiment(row, depth)
    module = lit_module_for(exp, mode=MODES[mode], fused_anderson=fused_anderson)
    module.load_state_dict(state)
    return module.train()


def load_state(results: Path, sweep: str, run: str) -> dict:
    path = results / sweep / run / LAST_CHECKPOINT
    if not path.is_file():
        raise SystemExit(f"{run}: no checkpoint at {path}")
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]


def batches(dataset: str, data_dir: Path, n: int, size: int = 64, split: str = "train") -> list:
    images, labels = load_dataset(dataset, data_dir)[split]
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[: n * size]
    x = images[order].float().div(255.0)
    y = torch.nn.functional.one_hot(labels[order].long(), 10).float()
    return list(zip(x.split(size), y.split(size)))


def module_step_flops(module: LitHopfieldDEQ, exp, per_sample: list[int]) -> int:
    """Arithmetic of the step just taken, by :func:`bench.flops.step_flops` (matrix products
    of the forward solve with each sample's own iterations, the backward by its method)."""
    fkw, bkw = module.deq.active_forward_kwargs, module.deq.backward_kwargs
    return step_flops(list(exp.layers), len(per_sample), max(per_sample), bkw["iter"],
                      exp.structure, fkw["solver"], module.deq.f_module.state_size,
                      fkw.get("m", 4), sample_iters=per_sample, backward_method=bkw["method"],
                      safeguard=fkw.get("safeguard", "after"))


def eval_ms(module: LitHopfieldDEQ, data: list, stage: str) -> tuple[list[float], float]:
    """ms per batch of one evaluation pass of ``stage``, and the mean forward iterations per
    sample: ``val`` solves with the module's validation forward and records the residual trace
    (the runs' convergence statistics); ``test`` solves with the paper's forward and also
    records the energy of every iterate."""
    module.eval()
    step = module.validation_step if stage == "val" else module.test_step
    times, solves = [], []
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_NO_TRAINER_WARNING)
        for i, batch in enumerate([data[0]] + data):  # the first warms up, untimed
            energy = EnergyTracker("test").observer_for("test", module, batch) \
                if stage == "test" else {}
            solved = []  # the solve's statistics and the tolerance it ran with
            with module.deq.observe(on_solve=lambda stats: solved.append(
                    (stats, module.deq.active_forward_kwargs.get("tol"))), **energy):
                start = time.perf_counter()
                step(batch, 0)
                elapsed = time.perf_counter() - start
            if i:
                times.append(elapsed * 1e3)
                solves += solved
    module.train()
    iters = fmean(n for stats, tol in solves for n in trace_iterations(stats.trace, tol))
    return times, iters


def measure(run: str, state: dict, data: list, test_data: list | None = None,
            fused_anderson: bool = False) -> dict:
    row, depth, seed = split_run_name(run)
    exp = get_experiment(row, depth)
    modules = {m: build(row, depth, m, state, fused_anderson) for m in MODES}
    optimizers = {m: Madam(mod.parameters(), lr=mod.hparams.lr, p_scale=mod.hparams.p_scale,
                           g_bound=mod.hparams.g_bound) for m, mod in modules.items()}
    times = {m: [] for m in MODES}
    iters = {m: [] for m in MODES}
    flops = {m: [] for m in MODES}
    for i, (x, y) in enumerate([data[0]] + data):  # the first batch warms up, untimed
        for m in MODES:
            module, opt = modules[m], optimizers[m]
            module.load_state_dict(state)
            solves = []
            with module.deq.observe(on_solve=solves.append), warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=_NO_TRAINER_WARNING)
                start = time.perf_counter()
                opt.zero_grad(set_to_none=True)
                module.training_step((x, y), 0).backward()
                opt.step()
                elapsed = time.perf_counter() - start
            if i == 0:
                continue
            times[m].append(elapsed * 1e3)
            tol = module.deq.active_forward_kwargs.get("tol")  # training mode, as in the step
            per_sample = trace_iterations(solves[-1].trace, tol)
            iters[m].append(fmean(per_sample))
            flops[m].append(module_step_flops(module, exp, per_sample))
    val_batches, test_batches = sweep_eval_batches(exp)
    out = {"run": run, "key": f"{row}-L{depth}", "steps": sweep_steps(exp),
           "val_batches": val_batches, "test_batches": test_batches}
    evals = {}
    if test_data:  # each distinct evaluation once, on the same trained weights
        for m in MODES:
            modules[m].load_state_dict(state)
        evals["test"] = eval_ms(modules["paper"], test_data, "test")
        evals["paper"] = eval_ms(modules["paper"], test_data, "val")
        evals["fast"] = eval_ms(modules["fast"], test_data, "val") \
            if modules["fast"].val_forward_kwargs is not None else evals["paper"]
        evals = {k: (median(times), iters) for k, (times, iters) in evals.items()}
    for m in MODES:
        q = quantiles(times[m], n=4) if len(times[m]) > 1 else [times[m][0]] * 3
        out[m] = dict(ms=median(times[m]), q25=q[0], q75=q[2], iters=fmean(iters[m]),
                      gflop=fmean(flops[m]) / 1e9, samples=times[m])
        if evals:
            val, val_iters = evals["paper"] if modules[m].val_forward_kwargs is None \
                else evals["fast"]
            test, test_iters = evals["test"]
            out[m].update(val_ms=val, test_ms=test, val_iters=val_iters, test_iters=test_iters,
                          eval_h=(val * val_batches + test * test_batches) / 3.6e6)
    return out


def _has_eval(records: list[dict]) -> bool:
    return all("eval_h" in r[m] for r in records for m in MODES)


def table(records: list[dict]) -> str:
    evals = _has_eval(records)
    extra = " eval ms/batch: val paper / val fast / test |" if evals else ""
    lines = ["| run | " + " | ".join(f"{m} ms/step" for m in MODES) + " | iters/sample, "
             "paper / fast | GFLOP/step, paper / fast |" + extra,
             "| --- |" + " ---: |" * (len(MODES) + 2 + evals)]
    for r in records:
        cells = []
        for m in MODES:
            c = r[m]
            speed = "" if m == "paper" else f" ({r['paper']['ms'] / c['ms']:.2f}x)"
            cells.append(f"{c['ms']:.0f} [{c['q25']:.0f}-{c['q75']:.0f}]{speed}")
        lines.append(f"| {r['run']} | " + " | ".join(cells)
                     + f" | {r['paper']['iters']:.1f} / {r['fast']['iters']:.1f}"
                     + f" | {r['paper']['gflop']:.1f} / {r['fast']['gflop']:.1f} |"
                     + (f" {r['paper']['val_ms']:.0f} / {r['fast']['val_ms']:.0f} / "
                        f"{r['paper']['test_ms']:.0f} |" if evals else ""))
    return "\n".join(lines)


def _sweep_sum(records: list[dict], value: Callable[[dict, dict], float]) -> dict[str, float]:
    """Per mode, ``value(record, mode's record)`` summed over the rows measured (each row once:
    the median of its runs)."""
    total = {}
    for m in MODES:
        by_row: dict[str, list[float]] = {}
        for r in records:
            by_row.setdefault(r["key"], []).append(value(r, r[m]))
        total[m] = sum(median(v) for v in by_row.values())
    return total


def sweep_training_hours(records: list[dict]) -> dict[str, float]:
    """Per mode, hours of training steps over the rows measured."""
    return _sweep_sum(records, lambda r, c: c["ms"] * r["steps"] / 3.6e6)


def sweep_eval_hours(records: list[dict]) -> dict[str, float] | None:
    """Per mode, hours of evaluation passes over the rows measured (None: not timed)."""
    return _sweep_sum(records, lambda r, c: c["eval_h"]) if _has_eval(records) else None


def sweep_hours(records: list[dict]) -> dict[str, float]:
    """Per mode, hours of the rows' runs: training steps, plus evaluation passes if timed."""
    train, evals = sweep_training_hours(records), sweep_eval_hours(records)
    return {m: train[m] + (evals[m] if evals else 0.0) for m in MODES}


def sweep_arithmetic(records: list[dict]) -> dict[str, float]:
    """Per mode, PFLOP of the same training steps: what the time would be proportional to if
    every matrix product ran at one rate, whatever its shape and batch. Its ratio between two
    modes bounds the speedup that removing overhead alone could give."""
    return _sweep_sum(records, lambda r, c: c["gflop"] * r["steps"] / 1e6)


def totals(records: list[dict]) -> str:
    rows = {r["key"] for r in records}
    whole = rows == {e.key for e in EXPERIMENTS}
    what = (f"whole sweep ({len(rows)} rows" if whole
            else f"{len(rows)} of {len(EXPERIMENTS)} rows (not the whole sweep")
    hours, work = sweep_hours(records), sweep_arithmetic(records)
    train, evals = sweep_training_hours(records), sweep_eval_hours(records)
    parts = {m: f" = training steps {train[m]:.1f} h + evaluation {evals[m]:.1f} h"
             if evals else " of training steps (evaluation not timed)" for m in MODES}
    lines = [f"{what}, 5 seeds, paper epochs), {m}: {h:.1f} h"
             + ("" if m == "paper" else f" ({hours['paper'] / h:.2f}x less)") + parts[m]
             for m, h in hours.items()]
    lines += [f"arithmetic of the training steps (FLOP model), {m}: {w:.1f} PFLOP"
              + ("" if m == "paper" else f" ({work['paper'] / w:.2f}x less)")
              for m, w in work.items()]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", type=Path, required=True)
    p.add_argument("--sweep", required=True)
    p.add_argument("--runs", required=True, help="comma-separated run names (ROW-Ld-sN)")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="dataset directory (default $HOPFIELD_DATA_DIR or ./data)")
    p.add_argument("--batches", type=int, default=10)
    p.add_argument("--eval-batches", type=int, default=5,
                   help="test batches timed per evaluation pass (0: time training steps only)")
    p.add_argument("--fused-anderson", action="store_true",
                   help="every module with Anderson's bookkeeping as the C++ kernel")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    args.data_dir = resolve_data_dir(args.data_dir)
    runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    bad = [r for r in runs if split_run_name(r) is None]
    if bad:
        p.error(f"--runs: {bad} are not run names of the form ROW-Ld-sN (e.g. HAM-EO-DEQ-L5-s0)")
    if args.batches < 1:
        p.error(f"--batches must be >= 1, got {args.batches}")
    if args.eval_batches < 0:
        p.error(f"--eval-batches must be >= 0, got {args.eval_batches}")
    return _run(args, runs)


def _run(args: argparse.Namespace, runs: list[str]) -> int:
    torch.manual_seed(0)
    data = batches(args.dataset, args.data_dir, args.batches)
    test_data = batches(args.dataset, args.data_dir, args.eval_batches, split="test") \
        if args.eval_batches else None
    print(f"threads {torch.get_num_threads()}, torch {torch.__version__}, "
          f"{args.batches} batches of 64 real training images per mode, "
          f"{args.eval_batches} of test images per evaluation"
          + (", fused Anderson" if args.fused_anderson else ""), flush=True)
    records = []
    for run in runs:
        records.append(measure(run, load_state(args.results, args.sweep, run), data, test_data,
                               args.fused_anderson))
        print(f"{run}: " + ", ".join(f"{m} {records[-1][m]['ms']:.0f} ms" for m in MODES),
              flush=True)
    print(table(records))
    print(totals(records))
    if args.json:
        args.json.write_text(json.dumps(records, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
