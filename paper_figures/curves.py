"""Training curves (beyond the paper's Table 2, which shows only the end of training).

    python -m paper_figures.curves [--results results] [--sweep table2]
                                   [--wandb ENTITY/PROJECT/SWEEP_ID] [--out figures]

``curves.pdf``/``.png``: the test accuracy (top row) and the iterations to converge (bottom
row) after each epoch, one column per model family and depth of the runs' table (Table 2:
3-layer CHN, 3-, 5- and 7-layer HAM), one line per row of the table: the mean over the finished seeds, with a band from the lowest
to the highest seed. Epochs before the last come from the runs' per-epoch validation passes
(``metrics.csv``: ``val/acc``, ``val/iters_to_converge``; in this project's protocol they
score the test split), the last epoch from the final test (``summary.json``), which a run does
not validate twice. In the fast mode the validation passes stop at the tolerance like its
training, the test keeps the paper's iteration count; the figure says which runs it mixes. A
diamond at the last epoch marks the published Table 2 value.
"""
from __future__ import annotations

import argparse
import csv
import math
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from deq_modules.experiments import TABLES, Experiment
from deq_modules.hopfield import get_structure
from runner.store import METRICS

from .cli import add_source_args, run_script, warn
from .runs import RunRecord
from .style import SMALL, TEXT_WIDTH, fix_tick_sizes, paper_style, save, saved_line
from .table import table_of

STEM = "curves"
WRITES = "curves.pdf, curves.png"
HEIGHT = 4.0  # inches: two rows of panels and the legend
QUANTITIES = (("acc", "Test accuracy (%)"), ("iters", "Iterations to converge"))
# A row's colour by its variant, the same in every column: Table 2's four variants in the
# colours below; a variant of another registered structure takes its structure's colour,
# dashed with Anderson. CHN-3ep is the plain CHN stopped after 3 epochs.
VARIANTS = {("onematrix", "picard"): ("tab:blue", "plain, Picard (HAM, CHN-10ep)"),
            ("onematrix", "anderson"): ("tab:orange", "plain, Anderson (-DEQ)"),
            ("evenodd", "picard"): ("tab:green", "even-odd, Picard (-EO)"),
            ("evenodd", "anderson"): ("tab:red", "even-odd, Anderson (-EO-DEQ)")}
SHORT_CHN = ("CHN-3ep", "tab:purple", "plain, Picard, 3 epochs (CHN-3ep)")
SOLVER_WORDS = {"picard": "Picard", "anderson": "Anderson"}


def families(table: str = "table2") -> list[tuple[str, int]]:
    """The (model, depth) columns of ``table``, in registry order (Table 2: 3-layer CHN, 3-,
    5- and 7-layer HAM)."""
    return list(dict.fromkeys((e.model, e.depth) for e in TABLES[table]))


def variant_of(exp: Experiment) -> tuple[str, str, str]:
    """The row's colour, line style and legend entry."""
    if exp.row == SHORT_CHN[0]:
        return SHORT_CHN[1], "-", SHORT_CHN[2]
    if (exp.structure, exp.solver) in VARIANTS:
        return (*VARIANTS[(exp.structure, exp.solver)][:1], "-",
                VARIANTS[(exp.structure, exp.solver)][1])
    structure = get_structure(exp.structure)
    return (structure.colour, "--" if exp.solver == "anderson" else "-",
            f"{structure.label}, {SOLVER_WORDS.get(exp.solver, exp.solver)}")


def _number(text: str | None) -> float | None:
    try:
        value = float(text) if text not in (None, "") else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def run_curves(record: RunRecord) -> dict[str, list[float | None]] | None:
    """One finished run's accuracy (%) and iterations after each epoch: the validation rows of
    its ``metrics.csv``, then the test for the last epoch; ``None`` without a readable file."""
    path = record.directory / METRICS if record.directory else None
    if path is None or not path.is_file():
        return None
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, csv.Error, UnicodeDecodeError) as err:
        warn(f"{record.name}: skipped {path}: {err}")
        return None
    if not rows:
        return None
    acc = [None if a is None else 100.0 * a for a in (_number(r.get("val/acc")) for r in rows)]
    iters = [_number(r.get("val/iters_to_converge")) for r in rows]
    acc[-1], iters[-1] = 100.0 * record.acc, record.iters  # the test scores the last epoch
    return {"acc": acc, "iters": iters}


def pooled(records: Sequence[RunRecord], exp: Experiment) -> tuple[dict, int]:
    """Per quantity, ``(mean, low, high)`` arrays over the finished seeds of ``exp`` at each
    epoch (NaN where no seed has a value); and how many seeds were read."""
    curves = [c for r in records
              if r.usable and (r.row, r.depth) == (exp.row, exp.depth)
              for c in [run_curves(r)] if c is not None]
    out: dict = {}
    if not curves:
        return out, 0
    for key, _ in QUANTITIES:
        length = max((len(c[key]) for c in curves), default=0)
        table = np.full((len(curves), length), np.nan)
        for i, c in enumerate(curves):
            table[i, :len(c[key])] = [np.nan if v is None else v for v in c[key]]
        with warnings.catch_warnings():  # an epoch no seed has stays NaN, without a warning
            warnings.simplefilter("ignore", RuntimeWarning)
            out[key] = (np.nanmean(table, axis=0), np.nanmin(table, axis=0),
                        np.nanmax(table, axis=0))
    return out, len(curves)


def family_rows(model: str, depth: int, table: str = "table2") -> list[Experiment]:
    return [e for e in TABLES[table] if e.model == model and e.depth == depth]


def draw(axes: Sequence[Axes], records: Sequence[RunRecord], model: str,
         depth: int, table: str = "table2") -> dict[str, int]:
    """One family's accuracy and iterations panels; the seeds read per row key."""
    counts = {}
    for exp in family_rows(model, depth, table):
        colour, style, _ = variant_of(exp)
        data, n = pooled(records, exp)
        counts[exp.key] = n
        if not n:
            continue
        for ax, (key, _) in zip(axes, QUANTITIES):
            mean, low, high = data[key]
            epochs = np.arange(1, mean.size + 1)
            ax.plot(epochs, mean, color=colour, linestyle=style, linewidth=1.1, marker=".",
                    markersize=3)
            ax.fill_between(epochs, low, high, color=colour, alpha=0.18, linewidth=0)
            published = exp.published_acc if key == "acc" else exp.published_iters
            if published is not None:  # rows beyond Table 2 have none
                ax.plot([exp.epochs], [published[0]], marker="D", markersize=4,
                        linestyle="none", markerfacecolor=colour, markeredgecolor="0.15",
                        markeredgewidth=0.6)
    axes[0].set_title(f"{depth}-layer {model.upper()}")
    for ax in axes:
        if not ax.lines:
            ax.text(0.5, 0.5, "no results", ha="center", va="center", transform=ax.transAxes,
                    color="0.4", fontsize=SMALL)
            ax.set_xticks([])
            ax.set_yticks([])
    axes[-1].set_xlabel("Epoch")
    for ax in axes:
        if ax.lines:  # an empty panel keeps no ticks
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return counts


def make_figure(records: Sequence[RunRecord]) -> tuple[Figure, dict[str, int]]:
    """The curves figure at text width, one column per family of the runs' table (Agg, no
    pyplot state); seeds read per row key."""
    table = table_of(records)
    columns = families(table)
    with paper_style():
        fig = Figure(figsize=(TEXT_WIDTH, HEIGHT), layout="constrained")
        grid = fig.subplots(len(QUANTITIES), len(columns), squeeze=False)
        counts: dict[str, int] = {}
        for column, (model, depth) in enumerate(columns):
            counts.update(draw(grid[:, column], records, model, depth, table))
        for row, (_, label) in enumerate(QUANTITIES):
            grid[row, 0].set_ylabel(label)
        # One legend: the rows by their variant, which the columns share (Table 2's four
        # variants and CHN-3ep first, in that order).
        drawn = list(dict.fromkeys(variant_of(e) for e in TABLES[table]))
        first = [(c, "-", label) for c, label in VARIANTS.values()] + \
            [(SHORT_CHN[1], "-", SHORT_CHN[2])]
        entries = [v for v in first if v in drawn] + [v for v in drawn if v not in first]
        handles = [Line2D([], [], color=c, linestyle=style, linewidth=1.1)
                   for c, style, _ in entries]
        labels = [label for _, _, label in entries]
        if any(e.published_acc or e.published_iters for e in TABLES[table]):
            handles.append(Line2D([], [], color="0.3", marker="D", linestyle="none",
                                  markersize=4))
            labels.append("published Table 2 (at its last epoch)")
        fig.legend(handles, labels, loc="outside lower center", ncols=3, handlelength=2.0,
                   columnspacing=1.2)
        fix_tick_sizes(fig)
    return fig, counts


def write_figure(records: Sequence[RunRecord], out: str | Path) -> tuple[Path, dict[str, int]]:
    """Write curves.pdf and curves.png to ``out``; the PDF's path and the seeds per key."""
    fig, counts = make_figure(records)
    return save(fig, Path(out), STEM)[0], counts


def report(records: Sequence[RunRecord], args: argparse.Namespace) -> None:
    """Write the figure for checked ``records`` and say what it read."""
    print(saved_line(*write_figure(records, args.out), what="seeds read"))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m paper_figures.curves",
        description=f"Accuracy and iterations to converge after each epoch. Writes {WRITES} "
                    "to --out.")
    add_source_args(parser)
    return run_script(parser, argv, report, files=True)


if __name__ == "__main__":
    raise SystemExit(main())
