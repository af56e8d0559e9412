"""Figures 3 and 4: density of the test set's residual trajectories, pooled over seeds.

    python -m paper_figures.trajectories [--results results] [--sweep table2]
                                         [--wandb ENTITY/PROJECT/SWEEP_ID] [--out figures]
                                         [--prefer ROW]

Each model family is a 2 x 2 grid, rows plain / even-odd ("EO"), columns Picard / Anderson
("DEQ"), with one colour scale per family. ``fig3.pdf``/``.png``: 3-layer CHN (left), 3-layer
HAM (right); ``fig4.pdf``/``.png``: 5-layer HAM (left), 7-layer HAM (right); both at a paper's
text width, with a legend of the marks: beside the papers' marks (criterion, cyan curve,
white circle at our mean) each seed's own mean (white ticks: the spread over seeds) and the
published Table 2 value (cyan diamond). Each panel is titled with its Table 2 row; under the
title it says how many seeds it pools and how many of their test samples (all seeds together;
the table gives the mean per seed) never met the criterion. Panels read the runs'
``trajectories.npz`` (see ``runner.result_files``), so no model is run again; a panel without
results says so instead of failing, and an unreadable file is skipped with a warning. A panel
whose row has finished runs but none with a readable file is refused (one error line, nothing
written): drawn empty, it would replace a good figure with a wrong one.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure, SubFigure
from matplotlib.lines import Line2D

from deq_modules.experiments import CONVERGENCE_TOL, EXPERIMENTS, Experiment
from runner.result_files import TRAJECTORY_KEYS, BadResultFile, load_npz, merge_trajectories
from runner.store import FINISHED, TRAJECTORIES

from .cli import SourceError, add_source_args, run_script, tol_label, warn
from .heatmap import COUNTS_LABEL, HEATMAP_CMAP, plot_trajectory_heatmap
from .runs import DAMAGED, RunRecord, row_files
from .style import NORMAL, SMALL, TEXT_WIDTH, fix_tick_sizes, paper_style, save

STRUCTURES = ("onematrix", "evenodd")  # grid rows: plain, EO
SOLVERS = ("picard", "anderson")  # grid columns: Picard, DEQ
FIGURES: dict[str, tuple[tuple[str, int], ...]] = {  # file stem -> (model, depth) left, right
    "fig3": (("chn", 3), ("ham", 3)),
    "fig4": (("ham", 5), ("ham", 7)),
}
# The plain 3-layer CHN slot has two registry rows (trained 10 and 3 epochs). We show the
# 10-epoch run, trained like every other panel; the paper's Fig. 3 shows "CHN (3 epochs)",
# which `--prefer CHN-3ep` reproduces. The row not shown is named in the family's title.
DEFAULT_PREFER = ("CHN-10ep",)
HEIGHT = 4.6  # inches: two rows of panels, a colour bar per family and the legend
# What pooling needs of a file beyond what load_trajectories checks.
POOLED_KEYS = TRAJECTORY_KEYS + ("sum_iters", "not_converged", "iters_at_tol", "tol", "stage",
                                 "max_iter")
WRITES = "fig3.pdf, fig3.png, fig4.pdf, fig4.png"
# The residual inline rather than as a fraction, whose small type would fall below 7 pt.
YLABEL = r"Relative residual $\|s_{n+1} - s_n\| \,/\, \|s_{n+1}\|$"


def panel_rows(model: str, depth: int, structure: str, solver: str) -> list[Experiment]:
    """Every registry row that fits one panel slot, in registry order."""
    return [e for e in EXPERIMENTS if (e.model, e.depth, e.structure, e.solver)
            == (model, depth, structure, solver)]


def choose(candidates: Sequence[Experiment], prefer: Sequence[str]) -> Experiment | None:
    """The first candidate whose row is in ``prefer`` (in its order), else the first."""
    for row in prefer:
        for exp in candidates:
            if exp.row == row:
                return exp
    return candidates[0] if candidates else None


def pooled_trajectories(records: Sequence[RunRecord], exp: Experiment
                        ) -> tuple[dict | None, list[RunRecord]]:
    """Every finished seed of ``exp`` with a readable trajectories file, merged; and the runs
    used. An unreadable file, or one that cannot be pooled with the first, is skipped with a
    warning naming the run and the file."""
    used, data = [], []
    for r, path in row_files(records, exp, TRAJECTORIES):
        try:
            d = load_npz(path, POOLED_KEYS)
            if data:
                merge_trajectories([data[0], d])  # same bins, tolerances and criterion?
        except (BadResultFile, ValueError) as err:
            warn(f"{r.name}: skipped {path}: {err}")
            continue
        if not math.isclose(d["tol"], CONVERGENCE_TOL, rel_tol=1e-9):
            warn(f"{r.name}: {path} measured convergence at {d['tol']:g}, not the table's "
                 f"{CONVERGENCE_TOL:g}")
        used.append(r)
        data.append(d)
    return (merge_trajectories(data), used) if data else (None, [])


def _readable(record: RunRecord) -> bool:
    """Whether a sound finished run has a trajectories file that can be pooled."""
    path = record.directory / TRAJECTORIES if record.usable and record.directory else None
    if path is None or not path.is_file():
        return False
    try:
        load_npz(path, POOLED_KEYS)
    except BadResultFile:
        return False
    return True


def unreadable_panels(records: Sequence[RunRecord], prefer: Sequence[str]) -> list[str]:
    """The panels of every figure whose row has finished runs (damaged ones included) but
    none with a readable trajectories file, each as ``KEY (run, run)``."""
    found = []
    for model, depth in (family for families in FIGURES.values() for family in families):
        for structure, solver in ((s, v) for s in STRUCTURES for v in SOLVERS):
            exp = choose(panel_rows(model, depth, structure, solver), prefer)
            if exp is None:
                continue
            claimed = [r for r in records if r.status in (FINISHED, DAMAGED)
                       and (r.row, r.depth) == (exp.row, exp.depth)]
            if claimed and not any(map(_readable, claimed)):
                found.append(f"{exp.key} ({', '.join(sorted(r.name for r in claimed))})")
    return found


def check_panels(records: Sequence[RunRecord], prefer: Sequence[str]) -> None:
    """Raise :class:`~paper_figures.cli.SourceError` when a panel's runs finished but none can
    be read: before anything is written, so that a good figure is never replaced by one with
    an empty panel."""
    panels = unreadable_panels(records, prefer)
    if panels:
        raise SourceError(
            f"no readable {TRAJECTORIES} among the finished runs of {'; '.join(panels)}; "
            "nothing was written: train them again (python sweep.py retrains damaged runs; "
            "python train.py --experiment KEY --seed N --rerun any one)")


def _not_converged_at_tol(data: dict) -> int | None:
    """Pooled test samples that never reached the criterion (None if the grid lacks it)."""
    match = np.flatnonzero(np.isclose(data["tolerances"], data["tol"], rtol=1e-9, atol=0))
    return int(np.asarray(data["not_converged"])[match[0]]) if match.size else None


def panel_note(data: dict, n_seeds: int) -> str:
    """What a panel pools and what never converged: ``5 seeds · 12 not conv.``."""
    note = f"{n_seeds} seed{'s' if n_seeds != 1 else ''}"
    stuck = _not_converged_at_tol(data)
    return note if stuck is None else f"{note} · {stuck} not conv."


def _empty_panel(ax: Axes, exp: Experiment | None, label: str) -> None:
    ax.text(0.5, 0.5, "no results", ha="center", va="center", transform=ax.transAxes,
            color="0.4", fontsize=SMALL)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(exp.row if exp is not None else f"{label}: not in the registry")


def legend_handles(ax: Axes) -> dict[str, Line2D]:
    """The marks of a drawn heatmap by what they mean, in legend order. The legend shows the
    very artists ``plot_trajectory_heatmap`` drew (colour, dashes, outline): they never
    disagree."""
    found: dict[str, Line2D] = {}
    for line in ax.lines:
        if line.get_linestyle() == "--":
            found.setdefault("criterion", line)
        elif line.get_marker() == "o" and line.get_markeredgecolor() == "white":
            found.setdefault("circle", line)
        elif line.get_marker() == "|":
            found.setdefault("seeds", line)
        elif line.get_marker() == "D":
            found.setdefault("published", line)
        elif line.get_marker() in ("None", "", None):
            found.setdefault("curve", line)
    tol = tol_label()
    labels = {"curve": "mean iterations to converge, per tolerance",
              "criterion": f"convergence criterion {tol}",
              "circle": f"our mean iterations at {tol} (Table 2)",
              "seeds": "each seed's mean",
              "published": "published Table 2"}
    return {label: found[key] for key, label in labels.items() if key in found}


def draw_family(fig: SubFigure | Figure, records: Sequence[RunRecord], model: str,
                depth: int, prefer: Sequence[str] = DEFAULT_PREFER) -> dict[str, int]:
    """One family's 2 x 2 grid and colour bar into ``fig``; returns runs pooled per row key."""
    slots = {(s, v): panel_rows(model, depth, s, v) for s in STRUCTURES for v in SOLVERS}
    chosen = {k: choose(c, prefer) for k, c in slots.items()}
    pooled = {k: pooled_trajectories(records, e) if e else (None, []) for k, e in chosen.items()}
    peak = max([int(d["counts"].max()) for d, _ in pooled.values() if d is not None] + [1])
    norm = LogNorm(vmin=1, vmax=max(peak, 10))  # one colour scale for the family, as in the paper
    axes = fig.subplots(len(STRUCTURES), len(SOLVERS), squeeze=False)
    title = f"{depth}-layer {model.upper()}"
    not_shown = [e.row for k, c in slots.items() for e in c if e is not chosen[k]]
    if not_shown:  # the panel titles name the rows shown
        title += f" ({', '.join(not_shown)} not shown)"
    fig.suptitle(title, fontsize=NORMAL)
    counts: dict[str, int] = {}
    drawn = False
    for (i, structure), (j, solver) in ((a, b) for a in enumerate(STRUCTURES)
                                        for b in enumerate(SOLVERS)):
        ax, exp = axes[i, j], chosen[(structure, solver)]
        data, used = pooled[(structure, solver)]
        if exp is not None:
            counts[exp.key] = len(used)
        if data is None:
            _empty_panel(ax, exp, f"{structure}/{solver}")
            continue
        plot_trajectory_heatmap(data, ax=ax, norm=norm, colorbar=False,
                                seed_means=[r.iters for r in used if r.iters is not None],
                                published=exp.published_iters[0])
        ax.set_ylabel("")  # once per family, beside both rows
        if i < len(STRUCTURES) - 1:
            ax.set_xlabel("")  # only the bottom row names the axis, as in the paper
        # The row name, and under it (outside the heatmap, hiding no trajectory) the note.
        ax.set_title(exp.row, pad=SMALL * 1.2 + 3)
        ax.text(0.5, 1.02, panel_note(data, len(used)), transform=ax.transAxes,
                ha="center", va="bottom", fontsize=SMALL, color="0.25")
        drawn = True
    if drawn:
        fig.supylabel(YLABEL)
        fig.colorbar(ScalarMappable(norm=norm, cmap=HEATMAP_CMAP), ax=axes, location="bottom",
                     shrink=0.85, aspect=35, pad=0.02, label=COUNTS_LABEL)
    return counts


def make_figure(records: Sequence[RunRecord], families: Sequence[tuple[str, int]],
                prefer: Sequence[str] = DEFAULT_PREFER) -> tuple[Figure, dict[str, int]]:
    """A figure at text width with one family per column and, below, the legend of the marks
    (Agg, no pyplot state); and the runs pooled per row key."""
    with paper_style():
        fig = Figure(figsize=(TEXT_WIDTH, HEIGHT), layout="constrained")
        counts: dict[str, int] = {}
        subfigs = fig.subfigures(1, len(families), squeeze=False, wspace=0.03)[0]
        for sub, (model, depth) in zip(subfigs, families):
            counts.update(draw_family(sub, records, model, depth, prefer))
        drawn = [ax for ax in fig.axes if ax.lines]
        if drawn:
            handles = legend_handles(drawn[0])
            fig.legend(list(handles.values()), list(handles), loc="outside lower center",
                       ncols=min(len(handles), 3), facecolor="0.8", frameon=True,
                       edgecolor="none",
                       handlelength=2.5, columnspacing=1.5)
        fix_tick_sizes(fig)
    return fig, counts


def write_figures(records: Sequence[RunRecord], out: str | Path,
                  prefer: Sequence[str] = DEFAULT_PREFER) -> dict[str, dict[str, int]]:
    """Write fig3 and fig4 (PDF and PNG) to ``out``; returns, per figure (its PDF's path),
    the runs pooled per row key."""
    out = Path(out)
    written = {}
    for stem, families in FIGURES.items():
        fig, counts = make_figure(records, families, prefer)
        paths = save(fig, out, stem)
        written[str(paths[0])] = counts
    return written


def add_figure_args(parser: argparse.ArgumentParser) -> None:
    rows = sorted({e.row for e in EXPERIMENTS})
    parser.add_argument("--prefer", action="append", choices=rows, default=None,
                        help="row to show where several fit one panel (repeatable; default "
                             f"{', '.join(DEFAULT_PREFER)}; CHN-3ep gives the paper's Fig. 3)")


def preferred(args: argparse.Namespace) -> tuple[str, ...]:
    """The rows to show where several fit a panel: ``--prefer``'s, then the default."""
    return tuple(args.prefer or ()) + DEFAULT_PREFER


def report(records: Sequence[RunRecord], args: argparse.Namespace) -> None:
    """Write the figures for checked ``records`` and say what each pooled; refuses
    (:func:`check_panels`) before writing when a panel's runs cannot be read."""
    prefer = preferred(args)
    check_panels(records, prefer)
    for path, counts in write_figures(records, args.out, prefer).items():
        detail = ", ".join(f"{key} {n}" for key, n in counts.items())
        print(f"wrote {path} and .png (seeds pooled: {detail})")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m paper_figures.trajectories",
        description=f"Figures 3 and 4 from a sweep's trajectories. Writes {WRITES} to --out.")
    add_source_args(parser)
    add_figure_args(parser)
    return run_script(parser, argv, report, files=True)


if __name__ == "__main__":
    raise SystemExit(main())
