"""How much of a forward solve is the solver's own work: the Anderson rows of Table 2.

    python -m bench.solver_overhead [--rows HAM-DEQ-L5,CHN-DEQ-L3] [--reps 5] [--device cpu]
                                    [--tiny]

For each row whose forward solver is Anderson (default: all of them), at the paper's forward
iterations ``T`` on one batch of synthetic images (bench/rows.py), without a graph (as in the
forward solve of a training step), the median over ``--reps`` of the time of

- ``map``: ``T`` evaluations of the row's map alone (``DEQ.step_map``: damping included),
  ``z <- f(z)``;
- ``picard``: Picard's ``T`` iterations (the map, residuals);
- ``anderson``: Anderson's ``T`` iterations with the row's options (``m``, ``lam``);

paper settings (no tolerance, no compaction). A solver's overhead is its time minus the map's,
per iteration: what a faster solver could save at most. ``--tiny`` (two 3-layer rows, layers
divided by 16, 2 repetitions) runs in seconds and is what the tests run.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from deq_core.solvers import anderson, picard
from deq_modules.experiments import EXPERIMENTS, Experiment

from .measure import header_line, time_calls
from .rows import build_module, make_batch, row_layers

TINY_ROWS = ("HAM-DEQ-L3", "HAM-EO-DEQ-L3")


def anderson_rows(keys: str | None, tiny: bool) -> list[Experiment]:
    """The rows named by ``--rows`` (each must solve with Anderson), else every Anderson row."""
    if keys:
        chosen = [Experiment.from_key(k.strip()) for k in keys.split(",") if k.strip()]
    elif tiny:
        chosen = [Experiment.from_key(k) for k in TINY_ROWS]
    else:
        return [e for e in EXPERIMENTS if e.solver == "anderson"]
    others = [e.key for e in chosen if e.solver != "anderson"]
    if others:
        valid = ", ".join(e.key for e in EXPERIMENTS if e.solver == "anderson")
        raise ValueError(f"--rows: {', '.join(others)} do not solve with Anderson; "
                         f"rows that do: {valid}")
    return chosen


def damped_map(module: Any, x: Tensor) -> tuple[Callable[[Tensor], Tensor], Tensor]:
    """The row's fixed-point map on the batch ``x`` (the DEQ's own, damping included) and its
    start state."""
    deq = module.deq
    Ux = deq.f_module.preprocess_inputs(x)
    return deq.step_map(Ux), deq.initial_state(Ux)


def measure(exp: Experiment, device: torch.device, reps: int, tiny: bool) -> dict[str, Any]:
    """Median ms of the map alone, of Picard and of Anderson at the row's forward iterations."""
    layers = row_layers(exp, tiny)
    torch.manual_seed(0)
    module = build_module(exp, layers, exp.forward_iter).to(device)
    x, _ = make_batch(layers[0], exp.batch_size, device)
    options = {k: v for k, v in module.deq.forward_kwargs.items() if k not in ("solver", "iter")}
    n = exp.forward_iter
    with torch.no_grad():
        f, z0 = damped_map(module, x)

        def map_alone() -> None:
            z = z0
            for _ in range(n):
                z = f(z)

        times = {
            "map": time_calls(map_alone, device, 1, reps),
            "picard": time_calls(lambda: picard(f, z0, max_iter=n), device, 1, reps),
            "anderson": time_calls(lambda: anderson(f, z0, max_iter=n, **options), device, 1,
                                   reps),
        }
    ms = {name: t.median * 1e3 for name, t in times.items()}
    return dict(key=exp.key, iters=n, width=int(z0.shape[1]), **{f"{k}_ms": v for k, v in ms.items()},
                picard_us_per_iter=(ms["picard"] - ms["map"]) / n * 1e3,
                anderson_us_per_iter=(ms["anderson"] - ms["map"]) / n * 1e3)


def format_line(r: dict[str, Any]) -> str:
    return (f"| {r['key']} | {r['iters']} | {r['width']} | {r['map_ms']:.1f} | "
            f"{r['picard_ms']:.1f} | {r['anderson_ms']:.1f} | {r['picard_us_per_iter']:.0f} | "
            f"{r['anderson_us_per_iter']:.0f} | {r['anderson_ms'] / r['map_ms']:.2f}x |")


HEAD = ("| row | iters | state width | map ms | picard ms | anderson ms | picard overhead us/iter "
        "| anderson overhead us/iter | anderson / map |\n" + "| --- " * 9 + "|")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", default=None, help="comma-separated row keys (Anderson rows only)")
    p.add_argument("--reps", type=int, default=5, help="timed repetitions (median reported)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiny", action="store_true", help="two 3-layer rows, layers / 16")
    args = p.parse_args(argv)
    if args.reps < 1:
        p.error(f"--reps must be >= 1, got {args.reps}")
    try:
        rows = anderson_rows(args.rows, args.tiny)
    except ValueError as e:
        p.error(str(e))
    device = torch.device(args.device)
    reps = 2 if args.tiny else args.reps
    print(header_line(device))
    print(HEAD, flush=True)
    for exp in rows:
        print(format_line(measure(exp, device, reps, args.tiny)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
