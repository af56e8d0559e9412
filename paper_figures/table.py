"""Table 2 from the sweep's results, beside the published numbers.

    python -m paper_figures.table [--results results] [--sweep table2] [--wandb E/P/ID] [--out figures]

Writes ``table2.md``, ``table2.tex`` and ``table2.csv`` into ``--out`` and prints the markdown.
Means and standard deviations (ddof=1) are over the finished seeds of each row; the speedup is
the base row's mean iterations / (mean iterations x local updates per iteration).
"""
from __future__ import annotations

import argparse
import csv
import io
import math
from pathlib import Path
from statistics import mean, stdev
from typing import Dict, List, Optional, Sequence

from deq_modules.experiments import EXPERIMENTS, Experiment, get_experiment, speedup
from deq_modules.results import FINISHED, atomic_write_text

from .records import read_records

DASH = "—"


def _stats(values: Sequence[float]) -> Optional[tuple]:
    if not values:
        return None
    return mean(values), (stdev(values) if len(values) > 1 else 0.0)


def table_rows(records: List[Dict]) -> List[Dict]:
    """One entry per registry experiment, in table order, with our statistics (or None)."""
    finished: Dict[str, List[Dict]] = {}
    other: Dict[str, int] = {}
    for r in records:
        key = f"{r['row']}-L{r['depth']}"
        if r.get("status") == FINISHED:
            finished.setdefault(key, []).append(r)
        else:
            other[key] = other.get(key, 0) + 1
    rows = []
    for e in EXPERIMENTS:
        runs = finished.get(e.key, [])
        rows.append(dict(
            experiment=e, seeds=len(runs), unfinished=other.get(e.key, 0),
            iters=_stats([float(r["test/iters_to_converge"]) for r in runs]),
            acc=_stats([100.0 * float(r["test/acc"]) for r in runs]),
        ))
    by_key = {r["experiment"].key: r for r in rows}
    for r in rows:
        e: Experiment = r["experiment"]
        base = by_key[get_experiment(e.base_row, e.depth).key]["iters"]
        r["speedup"] = speedup(r["iters"][0], e, base[0]) if r["iters"] and base else None
    return rows


def _ms(stat: Optional[tuple], digits: int = 1) -> str:
    return DASH if stat is None else f"{stat[0]:.{digits}f} ({stat[1]:.{digits}f})"


def _x(value: Optional[float]) -> str:
    return DASH if value is None or not math.isfinite(value) else f"{value:.1f}x"


NOTES = list(dict.fromkeys(e.note for e in EXPERIMENTS if e.note))


def _label(e: Experiment) -> str:
    return e.row + (f" [{NOTES.index(e.note) + 1}]" if e.note else "")


def markdown(rows: List[Dict]) -> str:
    head = ("| layers | model | #iters ours | #iters paper | speedup ours | speedup paper "
            "| test acc. ours (%) | test acc. paper (%) | seeds |")
    lines = [head, "|" + " --- |" * 9]
    for r in rows:
        e = r["experiment"]
        paper_speedup = speedup(e.published_iters[0], e,
                                get_experiment(e.base_row, e.depth).published_iters[0])
        seeds = f"{r['seeds']}" + (f" (+{r['unfinished']} unfinished)" if r["unfinished"] else "")
        lines.append(f"| {e.depth} | {_label(e)} | {_ms(r['iters'])} | {_ms(e.published_iters)} "
                     f"| {_x(r['speedup'])} | {_x(paper_speedup)} | {_ms(r['acc'])} "
                     f"| {_ms(e.published_acc)} | {seeds} |")
    lines += ["", "Mean (std) over seeds. Iterations to converge: first iteration with relative "
              "residual < 1e-4, averaged over the test set.", ""]
    lines += [f"[{i}] {note}" for i, note in enumerate(NOTES, 1)]
    return "\n".join(lines) + "\n"


def latex(rows: List[Dict]) -> str:
    lines = [r"\begin{tabular}{rlllll}", r"\toprule",
             r"layers & model & \#iters (ours) & \#iters (paper) & speedup & test acc. (\%) \\",
             r"\midrule"]
    for r in rows:
        e = r["experiment"]
        lines.append(f"{e.depth} & {e.row} & {_ms(r['iters'])} & {_ms(e.published_iters)} & "
                     f"{_x(r['speedup'])} & {_ms(r['acc'])} \\\\".replace(DASH, "--"))
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def csv_text(rows: List[Dict]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["layers", "row", "seeds", "iters_mean", "iters_std", "acc_mean", "acc_std",
                     "speedup", "paper_iters_mean", "paper_iters_std", "paper_acc_mean",
                     "paper_acc_std"])
    for r in rows:
        e = r["experiment"]
        it, acc = r["iters"] or ("", ""), r["acc"] or ("", "")
        writer.writerow([e.depth, e.row, r["seeds"], *it, *acc,
                         "" if r["speedup"] is None else r["speedup"],
                         *e.published_iters, *e.published_acc])
    return buffer.getvalue()


def write_table(records: List[Dict], out: Path) -> List[Dict]:
    rows = table_rows(records)
    atomic_write_text(out / "table2.md", markdown(rows))
    atomic_write_text(out / "table2.tex", latex(rows))
    atomic_write_text(out / "table2.csv", csv_text(rows))
    return rows


def add_source_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--results", default="results", help="results store (default results/)")
    p.add_argument("--sweep", default="table2", help="sweep name inside it (default table2)")
    p.add_argument("--wandb", default=None, metavar="ENTITY/PROJECT/SWEEP_ID",
                   help="read a W&B sweep instead of the local store")
    p.add_argument("--out", default="figures", help="output directory (default figures/)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_source_arguments(p)
    args = p.parse_args(argv)
    records = read_records(args.results, args.sweep, args.wandb)
    rows = write_table(records, Path(args.out))
    print(markdown(rows))
    print(f"{sum(r['seeds'] for r in rows)} finished runs, "
          f"{sum(r['unfinished'] for r in rows)} failed or unfinished; written to {args.out}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
