"""Where the time of a training step goes: matrix products, other torch operations, the rest.

    OMP_NUM_THREADS=1 python -m bench.profile_step --runs HAM-L5-s0,HAM-EO-DEQ-L7-s0 \\
        --results RESULTS --sweep NAME [--data-dir DIR] \\
        [--dataset fashion-mnist] [--mode paper|fast|both] [--fused-anderson] [--steps 6] \\
        [--top 8] [--map-batches 1,2,4,8,16,32,64] [--json FILE]
    python -m bench.profile_step --rows HAM-EO-DEQ-L3 [--tiny] ...   # fresh weights, synthetic

``bench.speed`` and ``bench.trained_steps`` say how long a step takes; this says why. For each
run (its trained weights, real training images, as ``bench.trained_steps`` loads them) or row
(fresh weights and synthetic images, as ``bench.speed`` builds them) and each mode, it times
``--steps`` training steps (forward solve, loss, backward, Madam step; the weights restored
before each, outside the timed and the profiled region), then the same steps under torch's profiler, and splits
the profiled time into

- ``matrix products``: the self time of torch's product kernels (``addmm``, ``mm``, ``bmm``,
  ``baddbmm``, ``addmv``, ``mv``);
- ``other operations``: the self time of every other ``aten`` operation (elementwise passes,
  copies, reductions, indexing, the fused Anderson kernel), with the number of calls per step
  (those made from Python or the autograd engine; an operation's inner calls count in its
  time, not again in the count): a cost per call that does not shrink with the batch;
- ``outside operations``: the rest of the profiled wall time (the Python around the calls, the
  autograd engine, the profiler's own cost per call).

The profiled steps run slower than the unprofiled ones (the profiler's cost grows with the
number of calls), so the shares say where the time goes, the unprofiled median how much there is.

``--map-batches`` also times one evaluation of the row's map alone (no graph, no solver) at
each batch size, the situation of a compacted solve's last iterations: the time per
evaluation, per sample, and the bandwidth at which the evaluation would read its weight
blocks if that were all it did (each block ``W_k`` is used in both directions, so twice per
evaluation), beside a plain read of as many bytes (``sum`` over a buffer of that size; the
best of the repetitions).
"""
from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from statistics import median
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from deq_modules.data.files import resolve_data_dir
from deq_modules.experiments import EXPERIMENTS, Experiment, Mode, get_experiment, split_run_name
from deq_modules.lit import LitHopfieldDEQ

from .rows import TINY_SHRINK, build_module, make_batch, row_layers, training_step
from .trained_steps import batches, build, load_state

PRODUCTS = ("aten::addmm", "aten::mm", "aten::bmm", "aten::baddbmm", "aten::addmv", "aten::mv")
PROFILE_MODES = ("paper", "fast")
MAP_REPS = 20  # evaluations of the map timed per batch size (median)


def _timed(module: LitHopfieldDEQ, state: dict, batch: tuple) -> Callable[[], float]:
    """One training step (``bench.rows.training_step``, a fresh Madam) from the weights
    ``state``, restored first; returns the step's wall time in seconds, the restore not
    included."""
    module.load_state_dict(state)
    step = training_step(module, *batch)
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def _outermost_op(event: Any) -> bool:
    """An ``aten`` operation called from Python or the autograd engine, not from inside
    another operation (a ``to`` that calls ``_to_copy`` that calls ``copy_`` counts once)."""
    parent = event.cpu_parent
    return event.name.startswith("aten::") and (parent is None
                                                or not parent.name.startswith("aten::"))


def profile_steps(module: LitHopfieldDEQ, state: dict, data: Sequence[tuple],
                  top: int) -> dict[str, Any]:
    """Unprofiled, then profiled, training steps of ``module`` on each batch of ``data`` (the
    first batch once more before, untimed, to warm up): the split of :mod:`bench.profile_step`."""
    _timed(module, state, data[0])
    wall = [_timed(module, state, b) for b in data]
    self_us: dict[str, float] = {}
    calls: dict[str, int] = {}
    profiled, outer = 0.0, 0
    for b in data:
        module.load_state_dict(state)  # outside the profile: only the step is in it
        step = training_step(module, *b)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            start = time.perf_counter()
            step()
            profiled += time.perf_counter() - start
        for e in prof.key_averages():
            self_us[e.key] = self_us.get(e.key, 0.0) + e.self_cpu_time_total
            calls[e.key] = calls.get(e.key, 0) + e.count
        outer += sum(1 for e in prof.events() if _outermost_op(e) and e.name not in PRODUCTS)
    n = len(data)
    ops = {k: v for k, v in self_us.items() if k.startswith("aten::")}
    products = sum(v for k, v in ops.items() if k in PRODUCTS) / n / 1e3
    other = sum(v for k, v in ops.items() if k not in PRODUCTS) / n / 1e3
    profiled_ms = profiled / n * 1e3
    top_ops = sorted(ops, key=ops.get, reverse=True)[:top]
    return {
        "ms": median(wall) * 1e3, "profiled_ms": profiled_ms,
        "products_ms": products, "other_ms": other, "other_calls": outer / n,
        "outside_ms": max(profiled_ms - products - other, 0.0),
        "top": [{"op": k, "ms": ops[k] / n / 1e3, "calls": calls[k] / n} for k in top_ops],
    }


def map_scaling(module: LitHopfieldDEQ, sizes: Sequence[int]) -> dict[str, Any]:
    """One evaluation of the module's map alone (no graph) at each batch size in ``sizes``,
    and a plain read of the bytes of its weight blocks: see :mod:`bench.profile_step`."""
    f = module.deq.f_module
    weight_bytes = sum(w.numel() * w.element_size() for w in f.W)
    gen = torch.Generator().manual_seed(0)

    def best_and_median(fn: Callable[[], Any]) -> tuple[float, float]:
        fn()
        times = []
        for _ in range(MAP_REPS):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return min(times), median(times)

    points = []
    with torch.no_grad():
        for b in sizes:
            ux = torch.randn(b, f.sizes[0], generator=gen)
            z = torch.randn(b, f.state_size, generator=gen)
            _, t = best_and_median(lambda: f(ux, z))
            points.append({"batch": b, "ms": t * 1e3, "ms_per_sample": t * 1e3 / b,
                           "weight_gbs": 2 * weight_bytes / t / 1e9})
        buffer = torch.randn(weight_bytes // 4, generator=gen)
        read, _ = best_and_median(buffer.sum)
    return {"weight_bytes": weight_bytes, "read_gbs": weight_bytes / read / 1e9, "points": points}


def _fresh(exp: Experiment, mode: str, tiny: bool, fused: bool) -> tuple[LitHopfieldDEQ, dict]:
    module = build_module(exp, row_layers(exp, tiny), exp.forward_iter, Mode(mode),
                          fused_anderson=fused)
    return module, {k: v.clone() for k, v in module.state_dict().items()}


def format_record(r: dict[str, Any]) -> str:
    p = r["profiled_ms"]
    lines = [f"{r['name']}, {r['mode']}: {r['ms']:.1f} ms/step (median of {r['steps']}, "
             f"unprofiled); profiled {p:.1f} ms/step = matrix products {r['products_ms']:.1f} ms "
             f"({100 * r['products_ms'] / p:.0f}%) + other operations {r['other_ms']:.1f} ms "
             f"({100 * r['other_ms'] / p:.0f}%; {r['other_calls']:.0f} calls, "
             f"{1e3 * r['other_ms'] / max(r['other_calls'], 1):.1f} us each) + outside operations "
             f"{r['outside_ms']:.1f} ms ({100 * r['outside_ms'] / p:.0f}%, of which the "
             f"profiler's cost is about {max(p - r['ms'], 0.0):.1f} ms)"]
    lines += [f"    {t['op']:<28} {t['ms']:7.2f} ms  {t['calls']:6.0f} calls" for t in r["top"]]
    scaling = r.get("map")
    if scaling:
        full = scaling["points"][-1]
        lines.append(f"    map alone (no graph), weight blocks {scaling['weight_bytes'] / 1e6:.2f} MB, "
                     f"read twice per evaluation; a plain read of as many bytes: "
                     f"{scaling['read_gbs']:.1f} GB/s")
        for q in scaling["points"]:
            share = q["ms"] / full["ms"]
            lines.append(f"    batch {q['batch']:>3}: {q['ms']:6.3f} ms/evaluation "
                         f"({q['ms_per_sample']:.4f} ms/sample, {share:.2f} of batch "
                         f"{full['batch']}'s time), weights read at {q['weight_gbs']:.1f} GB/s")
    return "\n".join(lines)


def table(records: Sequence[dict[str, Any]]) -> str:
    """The records as one markdown table; the map's columns where it was timed: the time of
    an evaluation on 1 and on 8 samples as a fraction of its time on the largest batch, and
    the bandwidth at which 1 sample's evaluation reads the weights against a plain read."""
    with_map = any("map" in r for r in records)
    head = ("| run | mode | ms/step | products | other operations (calls, us each) | outside |"
            + (" map, 1 / 8 samples vs the largest batch | weights read at batch 1, GB/s"
               " (plain read) |" if with_map else ""))
    lines = [head, "| --- | --- |" + " ---: |" * (4 + 2 * with_map)]
    for r in records:
        p = r["profiled_ms"]
        cells = [r["name"], r["mode"], f"{r['ms']:.0f}", f"{100 * r['products_ms'] / p:.0f}%",
                 f"{100 * r['other_ms'] / p:.0f}% ({r['other_calls']:.0f}, "
                 f"{1e3 * r['other_ms'] / max(r['other_calls'], 1):.0f})",
                 f"{100 * r['outside_ms'] / p:.0f}%"]
        if with_map:
            scaling = r.get("map")
            if scaling:
                by_batch = {q["batch"]: q for q in scaling["points"]}
                full = scaling["points"][-1]["ms"]
                share = " / ".join(f"{by_batch[b]['ms'] / full:.2f}" if b in by_batch else "-"
                                   for b in (1, 8))
                one = f"{by_batch[1]['weight_gbs']:.1f}" if 1 in by_batch else "-"
                cells += [share, f"{one} ({scaling['read_gbs']:.1f})"]
            else:
                cells += ["", ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", help="comma-separated run names (ROW-Ld-sN) of trained runs")
    p.add_argument("--results", type=Path, help="results folder of --runs")
    p.add_argument("--sweep", help="sweep name of --runs")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="dataset directory of --runs (default $HOPFIELD_DATA_DIR or ./data)")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--rows", help="comma-separated Table 2 rows (e.g. HAM-L5): fresh weights, "
                                  "synthetic images")
    p.add_argument("--tiny", action="store_true",
                   help=f"with --rows: every layer but the output divided by {TINY_SHRINK}")
    p.add_argument("--mode", choices=(*PROFILE_MODES, "both"), default="both")
    p.add_argument("--fused-anderson", action="store_true")
    p.add_argument("--steps", type=int, default=6, help="batches timed and profiled per mode")
    p.add_argument("--top", type=int, default=8, help="operations listed per step")
    p.add_argument("--map-batches", default=None,
                   help="comma-separated batch sizes at which to time the map alone")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if (args.runs is None) == (args.rows is None):
        p.error("give either --runs (trained runs, with --results and --sweep) or "
                "--rows (fresh weights)")
    if args.runs is not None:
        missing = [f"--{k.replace('_', '-')}" for k in ("results", "sweep")
                   if getattr(args, k) is None]
        if missing:
            p.error(f"--runs needs {', '.join(missing)}")
        args.data_dir = resolve_data_dir(args.data_dir)
        args.names = [r.strip() for r in args.runs.split(",") if r.strip()]
        bad = [r for r in args.names if split_run_name(r) is None]
        if bad:
            p.error(f"--runs: {bad} are not run names of the form ROW-Ld-sN (e.g. HAM-L5-s0)")
    else:
        keys = {e.key: e for e in EXPERIMENTS}
        args.names = [r.strip() for r in args.rows.split(",") if r.strip()]
        bad = [r for r in args.names if r not in keys]
        if bad:
            p.error(f"--rows: unknown {bad}; valid: {sorted(keys)}")
    if args.steps < 1:
        p.error(f"--steps must be >= 1, got {args.steps}")
    try:
        args.sizes = [int(s) for s in args.map_batches.split(",")] if args.map_batches else []
    except ValueError:
        p.error(f"--map-batches must be comma-separated whole numbers, got {args.map_batches!r}")
    if any(s < 1 for s in args.sizes):
        p.error(f"--map-batches must be >= 1, got {args.map_batches!r}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    torch.manual_seed(0)
    modes = PROFILE_MODES if args.mode == "both" else (args.mode,)
    if args.runs is not None:
        data = batches(args.dataset, args.data_dir, args.steps)
    print(f"threads {torch.get_num_threads()}, torch {torch.__version__}, {args.steps} steps "
          f"per mode" + (", fused Anderson" if args.fused_anderson else ""), flush=True)
    records = []
    for name in args.names:
        if args.runs is not None:
            row, depth, _ = split_run_name(name)
            exp = get_experiment(row, depth)
            state = load_state(args.results, args.sweep, name)
        else:
            exp = Experiment.from_key(name)
            x, y = make_batch(row_layers(exp, args.tiny)[0], exp.batch_size, torch.device("cpu"))
            data = [(x, y)] * args.steps
        for mode in modes:
            if args.runs is not None:
                module = build(exp.row, exp.depth, mode, state, args.fused_anderson)
                start = state
            else:
                module, start = _fresh(exp, mode, args.tiny, args.fused_anderson)
            record = {"name": name, "mode": mode, "steps": args.steps,
                      **profile_steps(module, start, data, args.top)}
            if args.sizes and mode == modes[0]:
                record["map"] = map_scaling(module, args.sizes)
            records.append(record)
            print(format_record(record), flush=True)
    print(table(records))
    if args.json:
        args.json.write_text(json.dumps(records, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
