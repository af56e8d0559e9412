"""The energy figure (beyond the paper): the mean Hopfield energy along the solver's iterations.

    python -m paper_figures.energy [--results results] [--sweep table2]
                                   [--wandb ENTITY/PROJECT/SWEEP_ID] [--out figures]

One panel per depth, one curve per HAM row of the runs' table (Table 2's for a Table 2 sweep):
colour tells the structure (blue plain, i.e. synchronous; orange even-odd; each registered
structure has its own), line style tells Picard from Anderson ("DEQ"). Each curve pools the finished
seeds' ``energy.npz`` (test set; see ``runner.result_files``) by an ``n_samples``-weighted mean
per iteration. Writes ``energy.pdf`` and ``energy.png`` at a paper's text width. Rows without an
energy file are named in their panel, a depth without any says so; an unreadable file is
skipped with a warning. Then prints, per HAM row, in how many seeds the mean energy descends
monotonically, and the largest rise of the others.

What to expect (``custom_callbacks.energy``): even-odd Picard on a HAM is block-coordinate
descent, so its energy never rises; synchronous updates and Anderson may go up on the way.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from deq_modules.experiments import TABLES, Experiment
from deq_modules.hopfield import get_structure
from runner.result_files import BadResultFile, load_energy, merge_energy
from runner.store import ENERGY

from .cli import add_source_args, run_script, warn
from .runs import RunRecord, row_files
from .style import SMALL, TEXT_WIDTH, fix_tick_sizes, paper_style, save, saved_line
from .table import table_of

STEM = "energy"
WRITES = "energy.pdf, energy.png"
HEIGHT = 2.6  # inches: one row of panels and the legend
LINESTYLES = {"picard": "-", "anderson": "--"}  # Picard / Anderson ("DEQ")
SOLVER_WORDS = {"picard": "Picard", "anderson": "Anderson"}


def ham_rows(depth: int, table: str = "table2") -> list[Experiment]:
    """The HAM rows of the registry's ``table`` at ``depth``, in registry order."""
    return [e for e in TABLES[table] if e.model == "ham" and e.depth == depth]


def ham_depths(table: str = "table2") -> list[int]:
    """The depths of ``table`` that have HAM rows, in increasing order."""
    return sorted({e.depth for e in TABLES[table] if e.model == "ham"})


def pooled_energy(records: Sequence[RunRecord], exp: Experiment
                  ) -> tuple[dict | None, list[RunRecord]]:
    """Every finished seed of ``exp`` with a readable energy file, pooled
    (:func:`runner.result_files.merge_energy`); and the runs used. An unreadable file is
    skipped with a warning naming the run and the file."""
    used, data = [], []
    for r, path in row_files(records, exp, ENERGY):
        try:
            d = load_energy(path)
            if np.ndim(d["mean_energy"]) != 1 or np.shape(d["mean_energy"]) != np.shape(
                    d["n_samples"]):
                raise BadResultFile(f"{path}: mean_energy and n_samples differ in shape")
        except BadResultFile as err:
            warn(f"{r.name}: skipped {path}: {err}")
            continue
        used.append(r)
        data.append(d)
    return (merge_energy(data), used) if data else (None, [])


def _label(exp: Experiment) -> str:
    return f"{exp.row} ({get_structure(exp.structure).label}, {SOLVER_WORDS[exp.solver]})"


def _line_style(exp: Experiment) -> dict:
    return dict(color=get_structure(exp.structure).colour, linestyle=LINESTYLES[exp.solver],
                linewidth=1.1)


def draw_depth(ax: Axes, records: Sequence[RunRecord], depth: int,
               table: str = "table2") -> dict[str, int]:
    """One panel: the pooled energy curve of each HAM row of ``table`` at ``depth``; runs
    pooled per key."""
    ax.set_title(f"{depth}-layer HAM")
    counts: dict[str, int] = {}
    missing = []
    for exp in ham_rows(depth, table):
        data, used = pooled_energy(records, exp)
        counts[exp.key] = len(used)
        if data is None:
            missing.append(exp.row)
            continue
        mean = np.asarray(data["mean_energy"])
        ax.plot(np.arange(1, mean.size + 1), mean, label=exp.row, **_line_style(exp))
    if not ax.lines:
        ax.text(0.5, 0.5, "no energy files", ha="center", va="center", transform=ax.transAxes,
                color="0.4", fontsize=SMALL)
        ax.set_xticks([])
        ax.set_yticks([])
        return counts
    ax.set_xlabel("Nr. of iterations")
    ax.set_xlim(left=0)
    if missing:
        ax.text(0.97, 0.97, "no energy file:\n" + "\n".join(missing), transform=ax.transAxes,
                ha="right", va="top", fontsize=SMALL, color="0.3", linespacing=1.1,
                bbox=dict(boxstyle="round,pad=0.2", facecolor="white", edgecolor="none",
                          alpha=0.8))
    return counts


def make_figure(records: Sequence[RunRecord]) -> tuple[Figure, dict[str, int]]:
    """The energy figure at text width, one panel per depth of the runs' table (Agg, no pyplot
    state); and the runs pooled per row key."""
    table = table_of(records)
    depths = ham_depths(table)
    with paper_style():
        fig = Figure(figsize=(TEXT_WIDTH, HEIGHT), layout="constrained")
        axes = fig.subplots(1, max(len(depths), 1), squeeze=False)[0]
        counts: dict[str, int] = {}
        for ax, depth in zip(axes, depths):
            counts.update(draw_depth(ax, records, depth, table))
        if not depths:
            axes[0].text(0.5, 0.5, f"table {table} has no HAM rows", ha="center", va="center",
                         transform=axes[0].transAxes, color="0.4", fontsize=SMALL)
            axes[0].set_xticks([])
            axes[0].set_yticks([])
        if any(ax.lines for ax in axes):
            axes[0].set_ylabel("Mean energy (test set)")
        # One legend for all panels: each row once (Table 2: the same four at every depth).
        rows = list({e.row: e for d in depths for e in ham_rows(d, table)}.values())
        if rows:
            fig.legend([Line2D([], [], **_line_style(e)) for e in rows], [_label(e) for e in rows],
                       loc="outside lower center", ncols=2, handlelength=2.5,
                       columnspacing=2.0)
        fix_tick_sizes(fig)
    return fig, counts


def write_figure(records: Sequence[RunRecord], out: str | Path) -> tuple[Path, dict[str, int]]:
    """Write energy.pdf and energy.png to ``out``; the PDF's path and the runs pooled per key."""
    fig, counts = make_figure(records)
    return save(fig, Path(out), STEM)[0], counts


# A rise of the mean energy smaller than this, relative to |E|, is float rounding (the mean of
# 10,000 float32 energies of magnitude ~100 moves by ~1e-6 relative between equal states).
RISE_TOL = 1e-6


def rises(mean_energy: Sequence[float], rel_tol: float = RISE_TOL) -> tuple[int | None, float]:
    """Where a mean-energy curve goes up: the 1-based iteration of the first rise larger than
    ``rel_tol * |E|`` (``None`` if it never rises), and the largest rise relative to ``|E|``
    (0 when it never goes up at all)."""
    e = np.asarray(mean_energy, dtype=np.float64)
    if e.size < 2:
        return None, 0.0
    rel = np.diff(e) / np.maximum(np.abs(e[1:]), np.finfo(np.float64).tiny)
    up = np.nonzero(rel > rel_tol)[0]
    return (int(up[0]) + 2 if up.size else None), float(max(rel.max(), 0.0))


def descent_lines(records: Sequence[RunRecord]) -> list[str]:
    """Per HAM row, seed by seed: does the test set's mean energy descend monotonically?"""
    lines, table = [], table_of(records)
    for depth in ham_depths(table):
        for exp in ham_rows(depth, table):
            _, used = pooled_energy(records, exp)
            if not used:
                continue
            found = [(r.seed, *rises(load_energy(r.directory / ENERGY)["mean_energy"]))
                     for r in used]
            down = [seed for seed, first, _ in found if first is None]
            text = f"{exp.key}: mean energy monotone in {len(down)} of {len(found)} seeds"
            up = [(seed, first, size) for seed, first, size in found if first is not None]
            if up:
                seed, first, size = max(up, key=lambda item: item[2])
                which = "seed" if len(up) == 1 else "seeds"
                text += (f"; rises in {which} {', '.join(str(s) for s, _, _ in up)}, the largest by "
                         f"{size:.2g} of |E| (seed {seed}, first rise at iteration {first})")
            lines.append(text)
    return lines


def report(records: Sequence[RunRecord], args: argparse.Namespace) -> None:
    """Write the figure for checked ``records``, say what it pooled and, per row and seed,
    whether the mean energy descends (only even-odd Picard is guaranteed to)."""
    print(saved_line(*write_figure(records, args.out)))
    for line in descent_lines(records):
        print(line)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m paper_figures.energy",
        description="Mean Hopfield energy per iteration of each HAM row (plain vs even-odd, "
                    f"Picard vs Anderson), pooled over seeds. Writes {WRITES} to --out.")
    add_source_args(parser)
    return run_script(parser, argv, report, files=True)


if __name__ == "__main__":
    raise SystemExit(main())
