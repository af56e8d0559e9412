"""Training-step time of two checkouts of this repository, alternating, in one run:

    OMP_NUM_THREADS=1 python -m bench.ab --before ../old-checkout [--after .] \\
        [--rows HAM-EO-L3,HAM-EO-DEQ-L5,...] [--steps 4] [--rounds 2] \\
        [--fused-anderson default|on|off] \\
        [--write FILE]

For a code change's before and after on one machine: each round starts one process per
checkout (before, then after), each times ``--steps`` training steps of every row after two
untimed ones, and the rounds alternate so that both see the same machine. A step is what a
sweep's training step does at paper settings (forward solve, loss, backward, Madam step),
with each checkout's own defaults (``lit_module_for``; ``--fused-anderson on|off`` sets
Anderson's kernel on both sides), on fresh weights (seed 0) and a batch of 64 synthetic
images, with the optimiser kept from step to step, as in training (its first step allocates
its state). The worker is the code below, run by each checkout's own Python with that
checkout first on ``sys.path``; it uses only ``lit_module_for`` and ``bench.rows``'
``make_batch`` and ``training_step``, so any checkout that has them can be the other side. Prints the median
ms per step of each row and checkout and the ratio before / after.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from statistics import median

from deq_modules.experiments import EXPERIMENTS, SEEDS

_WORKER = r"""
import json, sys, time, warnings
import torch
from deq_modules.experiments import Mode, get_experiment
from deq_modules.lit import lit_module_for
from bench.rows import make_batch, training_step
rows, steps, fused = sys.argv[1].split(","), int(sys.argv[2]), sys.argv[3]
out = {}
for key in rows:
    row, depth = key.rsplit("-L", 1)
    exp = get_experiment(row, int(depth))
    torch.manual_seed(0)
    kwargs = {} if fused == "default" else {"fused_anderson": fused == "on"}
    module = lit_module_for(exp, mode=Mode("paper"), **kwargs).train()
    x, y = make_batch(exp.layers[0], 64, torch.device("cpu"))
    step = training_step(module, x, y)
    for _ in range(2):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append((time.perf_counter() - start) * 1e3)
    out[key] = times
print("AB-RESULT " + json.dumps(out))
"""


def run_side(tree: Path, rows: list[str], steps: int, fused: str) -> dict[str, list[float]]:
    """One worker process in checkout ``tree``: ms per step of each row."""
    done = subprocess.run([sys.executable, "-W", "ignore", "-c", _WORKER, ",".join(rows),
                           str(steps), fused],
                          cwd=tree, env=None, capture_output=True, text=True)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("AB-RESULT ")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"bench.ab: the worker in {tree} failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1].split(" ", 1)[1])


STEPS_PER_EPOCH = 937  # 60,000 images in full batches of 64


def table(times: dict[str, dict[str, list[float]]], before: Path, after: Path) -> str:
    """The medians per row, and the training steps of a whole sweep of the rows timed (each
    row's 5 seeds x its epochs x 937 steps at its median; evaluation not included)."""
    lines = [f"before: {before}, after: {after}", "",
             "| row | before ms/step | after ms/step | before / after |",
             "| --- | ---: | ---: | ---: |"]
    hours = {"before": 0.0, "after": 0.0}
    epochs = {e.key: e.epochs for e in EXPERIMENTS}
    for key, sides in times.items():
        b, a = median(sides["before"]), median(sides["after"])
        lines.append(f"| {key} | {b:.1f} | {a:.1f} | {b / a:.2f}x |")
        for side, ms in (("before", b), ("after", a)):
            hours[side] += ms / 3.6e6 * STEPS_PER_EPOCH * epochs[key] * len(SEEDS)
    lines += ["", f"training steps of a sweep of these {len(times)} rows ({len(SEEDS)} seeds, "
              f"their epochs): before {hours['before']:.1f} h, after {hours['after']:.1f} h "
              f"({hours['before'] / hours['after']:.2f}x)"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", type=Path, required=True, help="the other checkout")
    p.add_argument("--after", type=Path, default=Path("."), help="default: this directory")
    p.add_argument("--rows", default=",".join(e.key for e in EXPERIMENTS),
                   help="comma-separated ROW-L<depth> keys (default: Table 2's 17 rows)")
    p.add_argument("--steps", type=int, default=4, help="timed steps per row and process")
    p.add_argument("--rounds", type=int, default=2, help="processes per checkout, alternating")
    p.add_argument("--fused-anderson", choices=("default", "on", "off"), default="default",
                   help="Anderson's C++ kernel on both sides (on/off) or as each side's "
                        "default (default)")
    p.add_argument("--write", type=Path, help="also write the table to this file")
    args = p.parse_args(argv)
    rows = args.rows.split(",")
    known = {e.key for e in EXPERIMENTS}
    bad = [r for r in rows if r not in known]
    if bad:
        p.error(f"unknown rows {bad}; valid: {sorted(known)}")
    for tree in (args.before, args.after):
        if not (tree / "bench" / "rows.py").is_file():
            p.error(f"{tree} is not a checkout of this repository (no bench/rows.py)")
    times: dict[str, dict[str, list[float]]] = {r: {"before": [], "after": []} for r in rows}
    for n in range(args.rounds):
        for side, tree in (("before", args.before), ("after", args.after)):
            print(f"round {n + 1}/{args.rounds}: {side} ({tree})", file=sys.stderr, flush=True)
            for key, ms in run_side(tree.resolve(), rows, args.steps, args.fused_anderson).items():
                times[key][side] += ms
    text = table(times, args.before, args.after)
    print(text)
    if args.write:
        args.write.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
