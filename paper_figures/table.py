"""Table 2 from a sweep: our numbers beside the published ones.

    python -m paper_figures.table [--results results] [--sweep table2]
                                  [--wandb ENTITY/PROJECT/SWEEP_ID] [--out figures]

Writes ``table2.md`` (also printed), ``table2.tex`` (a booktabs tabular) and ``table2.csv`` to
``--out``. Per (row, depth) of the registry, in its order: mean (sample std) over the finished
seeds of the iterations to converge, of the test accuracy (%) and of the test samples that
never converged, the speedup against the row's base at the same depth (Table 2's definition)
and the number of seeds. Rows without results stay in the table with "—"; a single seed has
no std ("-"). Runs that failed, diverged, were interrupted, are still running, were killed
(``running`` in their summary, but no process holds their lock) or are damaged (finished, but
their files or numbers do not hold up) are never averaged: they are counted and named, so
the table shows what is missing. A missing store, an unknown sweep or no finished run at all
is an error, and nothing is written.
"""
from __future__ import annotations

import argparse
import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from deq_modules.experiments import TABLES, Experiment, get_experiment, speedup
from runner.store import (DIVERGED, FAILED, FINISHED, INTERRUPTED, KILLED, RUNNING,
                          atomic_write_text)

from .cli import add_source_args, run_script, source_label, tol_label
from .runs import DAMAGED, INCOMPLETE, OLD_COUNT, RunRecord

TITLES = {"table2": "Table 2, ours against the paper",
          "neurips": "The NeurIPS 2023 ablation (its published values are not restated here)"}
MISSING = "—"  # an em dash: no result of ours for this cell
NO_STD = "-"  # the standard deviation of a single seed
# Statuses that are never averaged, in the order the notes list them (damaged: one line each).
NOT_COUNTED = (FAILED, DIVERGED, INTERRUPTED, RUNNING, KILLED, INCOMPLETE, OLD_COUNT)


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof=1); the std is ``None`` for a single value
    (it is not zero, it is unknown), both are ``None`` for none."""
    n = len(values)
    if n == 0:
        return None, None
    mean = math.fsum(values) / n
    if n == 1:
        return mean, None
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))


@dataclass
class RowStats:
    """Our results for one registry row at one depth, with its published numbers."""

    exp: Experiment
    seeds: list[int | None] = field(default_factory=list)
    iters: list[float] = field(default_factory=list)
    accs: list[float] = field(default_factory=list)  # in %, like the paper
    not_converged: list[float] = field(default_factory=list)  # test samples, per seed that has it
    not_counted: dict[str, list[str]] = field(default_factory=dict)  # status -> run names
    speedup: float | None = None
    paper_speedup: float | None = None

    @property
    def n(self) -> int:
        return len(self.iters)

    @property
    def iters_stats(self) -> tuple[float | None, float | None]:
        return mean_std(self.iters)

    @property
    def acc_stats(self) -> tuple[float | None, float | None]:
        return mean_std(self.accs)

    @property
    def not_converged_stats(self) -> tuple[float | None, float | None]:
        return mean_std(self.not_converged)


def table_of(records: Sequence[RunRecord]) -> str:
    """Which registry table the runs belong to: another table (the NeurIPS one, a registered
    one) when every run whose row the registry knows is one of its rows, else Table 2."""
    tables = {r.experiment.table for r in records if r.experiment is not None}
    return tables.pop() if len(tables) == 1 else "table2"


def table_rows(records: Sequence[RunRecord]) -> list[RowStats]:
    """One :class:`RowStats` per experiment of the runs' table (:func:`table_of`), in
    registry order."""
    rows = {(e.row, e.depth): RowStats(e) for e in TABLES[table_of(records)]}
    for rec in records:
        stats = rows.get((rec.row, rec.depth))
        if stats is None:
            continue  # not a registry row: reported by status_lines
        if rec.status == FINISHED:
            stats.seeds.append(rec.seed)
            stats.iters.append(rec.iters)
            stats.accs.append(100.0 * rec.acc)
            if rec.not_converged is not None:  # W&B summaries of older runs may lack it
                stats.not_converged.append(rec.not_converged)
        else:
            stats.not_counted.setdefault(rec.status, []).append(rec.name)
    for stats in rows.values():
        exp = stats.exp
        base = rows[(exp.base_row, exp.depth)]
        if stats.n and base.n:
            stats.speedup = speedup(stats.iters_stats[0], exp, base.iters_stats[0])
        base_exp = get_experiment(exp.base_row, exp.depth)
        if exp.published_iters and base_exp.published_iters:
            stats.paper_speedup = speedup(exp.published_iters[0], exp,
                                          base_exp.published_iters[0])
    return list(rows.values())


def status_lines(records: Sequence[RunRecord]) -> list[str]:
    """What the table counted and what it did not (failed, diverged, interrupted, running,
    killed, incomplete, damaged with the reason, not in the registry)."""
    finished = [r for r in records if r.usable]
    lines = [f"{len(records)} runs read; {len(finished)} finished and counted."]
    for status in NOT_COUNTED:
        names = [r.name for r in records if r.status == status]
        if names:
            lines.append(f"Not counted, {status}: {len(names)} ({', '.join(sorted(names))}).")
    if any(r.status == OLD_COUNT for r in records):
        lines.append(f"The {OLD_COUNT} runs counted their iterations by an older rule than the "
                     "papers' and are not mixed in: `python -m runner.recount` converts those "
                     "of Picard rows; the others must be trained again.")
    for r in sorted((r for r in records if r.status == DAMAGED), key=lambda r: r.name):
        lines.append(f"Not counted, {DAMAGED}: {r.name} ({'; '.join(r.problems)}).")
    seen: dict[tuple, int] = {}
    for r in records:
        if r.usable:
            seen[(r.row, r.depth, r.seed)] = seen.get((r.row, r.depth, r.seed), 0) + 1
    twice = [f"{row}-L{depth}-s{seed}" for (row, depth, seed), n in seen.items() if n > 1]
    if twice:  # e.g. two sweeps read at once: each copy counts as a seed, so say so
        lines.append(f"Warning: the same seed finished more than once: {', '.join(twice)}.")
    unknown = [r.name for r in records if r.status == FINISHED and r.experiment is None]
    if unknown:
        lines.append(f"Not counted, not in the registry: {len(unknown)} "
                     f"({', '.join(sorted(unknown))}).")
    return lines


# -- formatting -------------------------------------------------------------------------------
def fmt_pair(mean: float | None, std: float | None, missing: str = MISSING) -> str:
    """``mean (std)``; ``mean (-)`` for a single seed; ``missing`` for no result."""
    if mean is None:
        return missing
    return f"{mean:.1f} ({NO_STD if std is None else f'{std:.1f}'})"


def fmt_speedup(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.2f}x" if value < 0.095 else f"{value:.1f}x"  # keep CHN-EO's 0.0x legible


def footnotes(rows: Sequence[RowStats]) -> dict[str, int]:
    """Each distinct note, numbered in order of first appearance."""
    notes: dict[str, int] = {}
    for stats in rows:
        if stats.exp.note and stats.exp.note not in notes:
            notes[stats.exp.note] = len(notes) + 1
    return notes


def seeds_cell(stats: RowStats) -> str:
    extra = [f"{len(v)} {k}" for k, v in sorted(stats.not_counted.items())]
    return f"{stats.n}" + (f" ({', '.join(extra)})" if extra else "")


HEADER = ("layers", "model", "#iters ours", "#iters paper", "speedup ours", "speedup paper",
          "test acc. (%) ours", "test acc. (%) paper", "not converged", "seeds")


def cells(stats: RowStats, notes: dict[str, int], marker: str = " [{}]") -> list[str]:
    """The table cells of one row (plain text, shared by the markdown and LaTeX writers)."""
    exp = stats.exp
    model = exp.row + (marker.format(notes[exp.note]) if exp.note else "")
    return [str(exp.depth), model,
            fmt_pair(*stats.iters_stats), fmt_pair(*(exp.published_iters or (None, None))),
            fmt_speedup(stats.speedup), fmt_speedup(stats.paper_speedup),
            fmt_pair(*stats.acc_stats), fmt_pair(*(exp.published_acc or (None, None))),
            fmt_pair(*stats.not_converged_stats), seeds_cell(stats)]


def to_markdown(rows: Sequence[RowStats], records: Sequence[RunRecord], source: str) -> str:
    notes = footnotes(rows)
    title = TITLES.get(rows[0].exp.table, f"Table {rows[0].exp.table!r}")
    lines = [f"{title} (source: {source}); mean (std) over seeds.",
             *settings_lines(records), "",
             "| " + " | ".join(HEADER) + " |",
             "| " + " | ".join("---:" if i != 1 else "---" for i in range(len(HEADER))) + " |"]
    lines += ["| " + " | ".join(cells(s, notes)) + " |" for s in rows]
    lines += [""] + [f"[{i}] {note}" for note, i in notes.items()]
    lines += ["", "Speedup = base row's mean iterations at the same depth / (mean iterations x "
              "local updates per iteration); blank where the base row has no results.",
              NOT_CONVERGED_NOTE]
    lines += [""] + status_lines(records)
    return "\n".join(lines) + "\n"


def settings_lines(records: Sequence[RunRecord]) -> list[str]:
    """How our counted runs were trained (one line; each setting with its count when they
    differ), so that a table never passes a short run off as the paper's protocol."""
    counts: dict[str, int] = {}
    for record in records:
        if record.usable:
            key = record.settings or "settings not recorded"
            counts[key] = counts.get(key, 0) + 1
    if not counts:
        return []
    if len(counts) == 1:
        return [f"Our runs: {next(iter(counts))}."]
    return ["Our runs, mixed settings (averaged together): "
            + "; ".join(f"{k} ({n} run{'' if n == 1 else 's'})" for k, n in sorted(counts.items())) + "."]


NOT_CONVERGED_NOTE = (f"Not converged = test samples whose relative residual never fell below "
                      f"{tol_label()} (counted at the last iteration in #iters); our runs only.")


def _tex(text: str) -> str:
    for char, escaped in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"),
                          ("#", r"\#"), ("_", r"\_"), ("—", "---")):
        text = text.replace(char, escaped)
    return text


def to_latex(rows: Sequence[RowStats], records: Sequence[RunRecord] = ()) -> str:
    """A booktabs tabular (needs ``\\usepackage{booktabs}``), one midrule between depths."""
    notes = footnotes(rows)
    out = [r"\begin{tabular}{rlrrrrrrrl}", r"\toprule",
           r" & & \multicolumn{2}{c}{\#iters to conv.} & \multicolumn{2}{c}{speedup}"
           r" & \multicolumn{2}{c}{test acc. (\%)} & not & \\",
           r"\cmidrule(lr){3-4} \cmidrule(lr){5-6} \cmidrule(lr){7-8}",
           r"layers & model & ours & paper & ours & paper & ours & paper & converged & seeds \\",
           r"\midrule"]
    for i, stats in enumerate(rows):
        if i and stats.exp.depth != rows[i - 1].exp.depth:
            out.append(r"\midrule")
        row = [_tex(c) for c in cells(stats, notes, marker="\x00{}\x01")]
        row[1] = row[1].replace("\x00", r"\textsuperscript{").replace("\x01", "}")
        out.append(" & ".join(row) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}"]
    out += [rf"\par\footnotesize\textsuperscript{{{i}}} {_tex(note)}" for note, i in notes.items()]
    out.append(rf"\par\footnotesize {_tex(NOT_CONVERGED_NOTE)}")
    out += [rf"\par\footnotesize {_tex(line)}" for line in settings_lines(records)]
    return "\n".join(out) + "\n"


CSV_FIELDS = ("layers", "row", "key", "n_seeds", "seeds", "iters_mean", "iters_std", "acc_mean",
              "acc_std", "not_converged", "not_converged_std", "speedup", "paper_iters_mean",
              "paper_iters_std", "paper_acc_mean", "paper_acc_std", "paper_speedup",
              *(f"n_{status}" for status in NOT_COUNTED + (DAMAGED,)), "note")


def to_csv(rows: Sequence[RowStats]) -> str:
    """Machine-readable numbers (full precision; empty where there is none)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for s in rows:
        e = s.exp
        (im, isd), (am, asd), (nm, nsd) = s.iters_stats, s.acc_stats, s.not_converged_stats
        writer.writerow(dict(
            layers=e.depth, row=e.row, key=e.key, n_seeds=s.n,
            seeds=" ".join(str(x) for x in sorted(s.seeds, key=lambda x: (x is None, x))),
            iters_mean=im, iters_std=isd, acc_mean=am, acc_std=asd, not_converged=nm,
            not_converged_std=nsd, speedup=s.speedup,
            paper_iters_mean=(e.published_iters or (None, None))[0],
            paper_iters_std=(e.published_iters or (None, None))[1],
            paper_acc_mean=(e.published_acc or (None, None))[0],
            paper_acc_std=(e.published_acc or (None, None))[1],
            paper_speedup=s.paper_speedup, note=e.note,
            **{f"n_{status}": len(s.not_counted.get(status, ()))
               for status in NOT_COUNTED + (DAMAGED,)}))
    return buffer.getvalue()  # DictWriter writes None as an empty cell


def write_table(records: Sequence[RunRecord], out: str | Path, source: str) -> dict[str, Path]:
    """Write table2.{md,tex,csv} to ``out``; returns their paths by suffix."""
    rows = table_rows(records)
    out = Path(out)
    texts = dict(md=to_markdown(rows, records, source), tex=to_latex(rows, records),
                 csv=to_csv(rows))
    paths = {}
    for suffix, text in texts.items():
        paths[suffix] = out / f"table2.{suffix}"
        atomic_write_text(paths[suffix], text)
    return paths


WRITES = "table2.md (also printed), table2.tex (booktabs), table2.csv (full precision)"


def report(records: Sequence[RunRecord], args: argparse.Namespace) -> None:
    """Write the table for checked ``records`` and print it."""
    paths = write_table(records, args.out, source_label(args))
    print(paths["md"].read_text(), end="")
    print(f"wrote {', '.join(str(p) for p in paths.values())}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m paper_figures.table",
        description=f"Table 2 (ours beside the paper's) from a sweep. Writes {WRITES} to --out.")
    add_source_args(parser)
    return run_script(parser, argv, report)


if __name__ == "__main__":
    raise SystemExit(main())
