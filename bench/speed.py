"""Speed of a training step for every Table 2 row, with FLOPs, memory and the whole-sweep cost.

    python -m bench.speed [--rows HAM-EO-DEQ-L3,HAM-L5] [--mode paper|fast|both]
                          [--device cuda|cpu] [--warmup 3] [--reps 10] [--json PATH]
                          [--no-peer] [--compile] [--fused-anderson] [--tiny]

For each row (``Experiment.key``; default all 17) and mode, on ``--device`` (default cuda if
available, else cpu), float32, batch 64:

- ``ms/step``: median (and quartiles) of ``--reps`` timed training steps after ``--warmup``
  untimed ones; a step is forward solve + recurrent backprop + Madam step (bench/rows.py);
- ``fwd iters``: forward iterations used, the mean of ``deq.last_forward_stats.n_iter`` (the
  paper's count at paper settings; the fast mode may stop early); ``iters/sample``: the mean
  iterations a sample stays in the batch (less, where fast mode's compaction lets converged
  samples leave; from one traced solve after the timed steps), which the FLOP count uses;
- ``GFLOP/s`` and ``roofline``: the analytic FLOP count of the step (bench/flops.py: matrix
  products only, ``2 F_in + (T_f + 3 T_b - s) F_f`` plus Anderson's mixing products, with
  ``F_f = 4 B sum_k h_k h_{k+1}``, ``F_in = 2 B n_0 h_0``, ``s`` = 1 (OneMatrix) or 1/2
  (even-odd); checked against torch's FLOP counter) over the median time, and that as a
  fraction of the float32 matmul roofline measured in the same run: the step's own products
  ``(64 x n_i) @ (n_i x n_j)`` (input drive and every block, both directions), each at its
  best measured throughput, weighted by the FLOPs the step spends in it;
- ``mem``: peak memory of one step at the paper's forward iterations and at 10x as many. On
  CUDA ``torch.cuda.max_memory_allocated``; on the CPU the activation bytes saved for backward
  (``saved_tensors_hooks``, deterministic). A DEQ solves without a graph, so both are equal;
- ``torchdeq``: ms/step of the same map under torchdeq (HAM rows, paper settings; bench/peer.py),
  when torchdeq is installed (``pip install -r bench/requirements.txt``);
- ``--compile``: the map under ``torch.compile`` (``mode`` reads ``paper+compile``); the
  compilation happens in the warm-up steps and is not timed, so use ``--warmup`` >= 2;
- ``--fused-anderson``: the Anderson rows' per-iteration bookkeeping as the C++ kernel of
  ``deq_core/csrc/anderson_step.cpp`` (CPU float32; ``mode`` reads ``paper+fused`` on those
  rows; the others are measured unchanged); memory is measured eagerly;
- ``sweep h``: median step time x ceil(60000 / 64) x epochs x 5 seeds, in hours; the line below
  the table sums the rows measured.

``--mode fast`` builds every module in the fast mode (``deq_modules.experiments.FAST``).
``--tiny`` (two 3-layer rows, layers divided by 16, 1 warm-up, 2 repetitions) runs in seconds
and is what tests/bench/test_speed.py runs, so that this tool keeps working.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import torch

from deq_modules.experiments import EXPERIMENTS, Experiment, Mode

from .flops import Shape
from .measure import device_name, header_line
from .peer import torchdeq_available
from .rows import MEM_FACTOR, Settings, measure_row

MODES = ("paper", "fast", "both")
TINY_ROWS = ("HAM-EO-DEQ-L3", "CHN-DEQ-L3")
# (JSON key, table heading, format); the JSON records hold these keys and a few more
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("key", "row", "{}"),
    ("mode", "mode", "{}"),
    ("fwd_iters", "fwd iters", "{:.1f}"),
    ("fwd_sample_iters", "iters/sample", "{:.1f}"),
    ("ms_median", "ms/step", "{:.2f}"),
    ("ms_iqr", "IQR ms", "{}"),
    ("gflop_per_step", "GFLOP/step", "{:.3f}"),
    ("gflops", "GFLOP/s", "{:.1f}"),
    ("peak_gflops", "peak GFLOP/s", "{:.1f}"),
    ("roofline", "roofline", "{:.1%}"),
    ("mem_bytes", "mem", "{}"),
    ("mem_bytes_10x", f"mem {MEM_FACTOR}x iters", "{}"),
    ("torchdeq_ms", "torchdeq ms/step", "{:.2f}"),
    ("sweep_hours", "sweep h", "{:.2f}"),
)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line, checked; ``experiments`` holds the rows to measure."""
    p = argparse.ArgumentParser(prog="python -m bench.speed", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", default=None,
                   help="comma-separated Experiment keys, e.g. HAM-EO-DEQ-L3,HAM-L5 (default: all)")
    p.add_argument("--mode", choices=MODES, default="paper")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps (default 3; tiny 1)")
    p.add_argument("--reps", type=int, default=None, help="timed steps (default 10; tiny 2)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON")
    p.add_argument("--no-peer", action="store_true", help="skip the torchdeq column")
    p.add_argument("--compile", action="store_true",
                   help="time the steps with the Hopfield map under torch.compile (compiled "
                        "during the warm-up steps; memory is measured eagerly)")
    p.add_argument("--fused-anderson", action="store_true",
                   help="time the Anderson rows with their bookkeeping as the C++ kernel "
                        "(built at first use; CPU float32 only)")
    p.add_argument("--tiny", action="store_true",
                   help="two rows, layers / 16, 1 warm-up, 2 repetitions: runs in seconds")
    args = p.parse_args(argv)
    if args.fused_anderson and not args.device.startswith("cpu"):
        p.error(f"--fused-anderson runs on the CPU only; got --device {args.device}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error(f"--device {args.device}: CUDA is not available here; use --device cpu")
    if args.reps is not None and args.reps < 1:
        p.error(f"--reps must be >= 1, got {args.reps}")
    if args.warmup is not None and args.warmup < 0:
        p.error(f"--warmup must be >= 0, got {args.warmup}")
    try:
        args.experiments = select_rows(args.rows, args.tiny)
    except ValueError as e:
        p.error(str(e))
    args.warmup = args.warmup if args.warmup is not None else (1 if args.tiny else 3)
    args.reps = args.reps if args.reps is not None else (2 if args.tiny else 10)
    return args


def select_rows(rows: str | None, tiny: bool) -> list[Experiment]:
    """The experiments named by ``--rows`` (keys), else the tiny pair or all 17 rows."""
    if rows:
        return [Experiment.from_key(k.strip()) for k in rows.split(",") if k.strip()]
    if tiny:
        return [Experiment.from_key(k) for k in TINY_ROWS]
    return list(EXPERIMENTS)


def format_bytes(n: int) -> str:
    """``n`` bytes as B, KiB or MiB."""
    for unit, size in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


def format_cell(record: dict[str, Any], key: str, fmt: str) -> str:
    """One table cell: ``-`` for a missing value, memory in binary units."""
    if key == "ms_iqr":
        return f"{record['ms_q25']:.2f}-{record['ms_q75']:.2f}"
    value = record[key]
    if value is None:
        return "-"
    if key.startswith("mem_bytes"):
        return format_bytes(value)
    return fmt.format(value)


def sweep_totals(records: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Whole-sweep hours per mode, summed over the rows measured (``paper+fused`` counts as
    ``paper``: ``--fused-anderson`` changes only the Anderson rows)."""
    totals: dict[str, float] = {}
    for r in records:
        mode = r["mode"].replace("+fused", "")
        totals[mode] = totals.get(mode, 0.0) + r["sweep_hours"]
    return totals


def table_head() -> str:
    """The markdown table's header and rule."""
    return "\n".join(["| " + " | ".join(h for _, h, _ in COLUMNS) + " |",
                      "|" + "|".join(" --- " for _ in COLUMNS) + "|"])


def table_line(r: dict[str, Any]) -> str:
    """One record as a row of the markdown table."""
    return "| " + " | ".join(format_cell(r, k, f) for k, _, f in COLUMNS) + " |"


def table_totals(records: Sequence[dict[str, Any]]) -> str:
    """The lines below the table: the whole-sweep cost of the rows measured, per mode."""
    lines = []
    for mode, hours in sweep_totals(records).items():
        mine = [r for r in records if r["mode"].replace("+fused", "") == mode]
        fused = " (Anderson rows with --fused-anderson)" if any(
            r.get("fused_anderson") for r in mine) else ""
        label = {"paper": "paper settings", "fast": "fast mode"}.get(mode, mode)
        lines.append(f"whole sweep, {label}{fused} ({len({r['key'] for r in mine})} rows x "
                     f"5 seeds): {hours:.2f} h")
    return "\n".join(lines)


def format_table(records: Sequence[dict[str, Any]]) -> str:
    """The records as a markdown table, with the sweep totals below it."""
    return "\n".join([table_head(), *map(table_line, records), "", table_totals(records)])


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; returns the exit status."""
    args = parse_args(argv)
    modes = ["paper", "fast"] if args.mode == "both" else [args.mode]
    experiments = args.experiments
    device = torch.device(args.device)
    settings = Settings(device, args.warmup, args.reps, args.tiny, peer=not args.no_peer,
                        peak_seconds=0.01 if args.tiny else 0.05, compile_f=args.compile,
                        fused_anderson=args.fused_anderson)
    header = header_line(device)
    print(header + (" | TINY (layers / 16)" if args.tiny else ""), flush=True)
    notes = []
    if settings.peer and not torchdeq_available():
        notes.append("torchdeq is not installed (pip install -r bench/requirements.txt): "
                     "torchdeq column skipped")
    peaks: dict[Shape, float] = {}
    records: list[dict[str, Any]] = []

    def write_json(complete: bool) -> None:
        """The records so far (rewritten after each row, so a run cut short keeps them)."""
        payload = dict(header=header, device=device.type, device_name=device_name(device),
                       torch=torch.__version__, threads=torch.get_num_threads(), tiny=args.tiny,
                       warmup=args.warmup, reps=args.reps, mem_factor=MEM_FACTOR,
                       complete=complete, records=records, sweep_hours=sweep_totals(records),
                       notes=notes,
                       matmul_gflops=[dict(batch=b, m=m, n=n, transposed=t, gflops=g)
                                      for (b, m, n, t), g in peaks.items()])
        tmp = f"{args.json}.tmp"
        with open(tmp, "w") as f:
            json.dump(payload, f, indent=2)
        os.replace(tmp, args.json)

    print(table_head(), flush=True)
    for exp in experiments:
        for mode in modes:
            print(f"  measuring {exp.key} ({mode}) ...", file=sys.stderr, flush=True)
            records.append(measure_row(exp, Mode(mode), settings, peaks))
            print(table_line(records[-1]), flush=True)
            if args.json:
                write_json(complete=False)
    print("\n" + table_totals(records))
    for note in notes:
        print(f"note: {note}")
    if args.json:
        write_json(complete=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
