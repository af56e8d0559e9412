"""Figures 3 and 4: density of the test set's residual trajectories, pooled over seeds.

    python -m paper_figures.trajectories [--results results] [--sweep table2]
                                         [--wandb ENTITY/PROJECT/SWEEP_ID] [--out figures]

Each model family is a 2 x 2 grid, rows plain / even-odd ("EO"), columns Picard / Anderson
("DEQ"), with one colour scale per family. ``fig3.png``: 3-layer CHN (left), 3-layer HAM
(right); ``fig4.png``: 5-layer HAM (left), 7-layer HAM (right). Panels read the runs'
``trajectories.npz`` (written by ``custom_callbacks.ResidualTrajectories``), so no model is run
again; a panel without results says so instead of failing.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure, SubFigure

from custom_callbacks import (HEATMAP_CMAP, load_trajectories, merge_trajectories,
                              plot_trajectory_heatmap)
from custom_callbacks.trajectories import COUNTS_LABEL
from deq_modules.experiments import EXPERIMENTS, Experiment

from .runs import (WANDB_CACHE, RunRecord, add_source_args, download_wandb_results,
                   local_records, source_label)

STRUCTURES = ("onematrix", "evenodd")  # grid rows: plain, EO
SOLVERS = ("picard", "anderson")  # grid columns: Picard, DEQ
FIGURES: Dict[str, Tuple[Tuple[str, int], ...]] = {  # file -> (model, depth) left, right
    "fig3.png": (("chn", 3), ("ham", 3)),
    "fig4.png": (("ham", 5), ("ham", 7)),
}
# The plain 3-layer CHN slot has two registry rows (trained 10 and 3 epochs). We show the
# 10-epoch run, trained like every other panel; the paper's Fig. 3 shows "CHN (3 epochs)",
# which `--prefer CHN-3ep` reproduces. The chosen row is named in the family's title.
DEFAULT_PREFER = ("CHN-10ep",)
DPI = 150


def panel_rows(model: str, depth: int, structure: str, solver: str) -> List[Experiment]:
    """Every registry row that fits one panel slot, in registry order."""
    return [e for e in EXPERIMENTS if (e.model, e.depth, e.structure, e.solver)
            == (model, depth, structure, solver)]


def choose(candidates: Sequence[Experiment], prefer: Sequence[str]) -> Optional[Experiment]:
    """The first candidate whose row is in ``prefer`` (in its order), else the first."""
    for row in prefer:
        for exp in candidates:
            if exp.row == row:
                return exp
    return candidates[0] if candidates else None


def pooled_trajectories(records: Sequence[RunRecord], exp: Experiment
                        ) -> Tuple[Optional[dict], List[RunRecord]]:
    """Every finished seed of ``exp`` with a trajectories file, merged; and the runs used."""
    used = [r for r in records
            if r.usable and (r.row, r.depth) == (exp.row, exp.depth) and r.directory is not None
            and (r.directory / "trajectories.npz").is_file()]
    if not used:
        return None, []
    data = [load_trajectories(str(r.directory / "trajectories.npz")) for r in used]
    return merge_trajectories(data), used


def _tol_label(tol: float) -> str:
    exponent = math.log10(tol)
    return f"1e{exponent:.0f}" if exponent.is_integer() else f"{tol:g}"


def _mean_at_tol(data: dict) -> float:
    """The pooled mean iterations to converge at the Table 2 criterion (the white circle)."""
    at_tol = data.get("iters_at_tol")
    if at_tol is not None and len(at_tol):
        return float(at_tol.mean())
    match = [m for t, m in zip(data["tolerances"], data["mean_iters"])
             if math.isclose(t, data["tol"], rel_tol=1e-9)]
    return float(match[0]) if match else float("nan")


def _empty_panel(ax: Axes, exp: Optional[Experiment], label: str) -> None:
    ax.text(0.5, 0.5, "no results", ha="center", va="center", transform=ax.transAxes,
            color="0.4", fontsize=12)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(exp.row if exp is not None else f"{label}: not in the registry")


def draw_family(fig: SubFigure | Figure, records: Sequence[RunRecord], model: str,
                depth: int, prefer: Sequence[str] = DEFAULT_PREFER) -> Dict[str, int]:
    """One family's 2 x 2 grid and colour bar into ``fig``; returns runs pooled per row key."""
    slots = {(s, v): panel_rows(model, depth, s, v) for s in STRUCTURES for v in SOLVERS}
    chosen = {k: choose(c, prefer) for k, c in slots.items()}
    pooled = {k: pooled_trajectories(records, e) if e else (None, []) for k, e in chosen.items()}
    peak = max([int(d["counts"].max()) for d, _ in pooled.values() if d is not None] + [1])
    norm = LogNorm(vmin=1, vmax=max(peak, 10))  # one colour scale for the family, as in the paper
    axes = fig.subplots(len(STRUCTURES), len(SOLVERS), squeeze=False)
    title = f"{depth}-layer {model.upper()}"
    alternatives = [
        f"{chosen[k].row} (not shown: {', '.join(e.row for e in c if e is not chosen[k])})"
        for k, c in slots.items() if len(c) > 1]
    if alternatives:
        title += " — shown: " + "; ".join(alternatives)
    fig.suptitle(title)
    counts: Dict[str, int] = {}
    for (i, structure), (j, solver) in ((a, b) for a in enumerate(STRUCTURES)
                                        for b in enumerate(SOLVERS)):
        ax, exp = axes[i, j], chosen[(structure, solver)]
        data, used = pooled[(structure, solver)]
        if exp is not None:
            counts[exp.key] = len(used)
        if data is None:
            _empty_panel(ax, exp, f"{structure}/{solver}")
            continue
        title = (f"{exp.row}: {_mean_at_tol(data):.1f} iters at {_tol_label(data['tol'])}\n"
                 f"{len(used)} seed{'s' if len(used) != 1 else ''}, "
                 f"{int(data['n_samples'])} trajectories")
        plot_trajectory_heatmap(data, ax=ax, title=title, norm=norm, colorbar=False)
        if i < len(STRUCTURES) - 1:
            ax.set_xlabel("")  # only the bottom row names the axis, as in the paper
        if j > 0:
            ax.set_ylabel("")
    if any(d is not None for d, _ in pooled.values()):
        fig.colorbar(ScalarMappable(norm=norm, cmap=HEATMAP_CMAP), ax=axes, label=COUNTS_LABEL)
    return counts


def make_figure(records: Sequence[RunRecord], families: Sequence[Tuple[str, int]],
                prefer: Sequence[str] = DEFAULT_PREFER) -> Tuple[Figure, Dict[str, int]]:
    """A figure with one family per column (Agg, no pyplot state); and runs pooled per key."""
    fig = Figure(figsize=(8.0 * len(families), 7.5), layout="constrained")
    counts: Dict[str, int] = {}
    for sub, (model, depth) in zip(fig.subfigures(1, len(families), squeeze=False)[0], families):
        counts.update(draw_family(sub, records, model, depth, prefer))
    return fig, counts


def _save(fig: Figure, path: Path) -> None:
    """Render to a temporary file beside ``path``, then rename: never a half-written PNG."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fig.savefig(tmp, dpi=DPI, format="png")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def write_figures(records: Sequence[RunRecord], out: str | Path,
                  prefer: Sequence[str] = DEFAULT_PREFER) -> Dict[str, Dict[str, int]]:
    """Write fig3.png and fig4.png to ``out``; returns, per file, the runs pooled per row key."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, families in FIGURES.items():
        fig, counts = make_figure(records, families, prefer)
        _save(fig, out / name)
        written[str(out / name)] = counts
    return written


def figure_records(args: argparse.Namespace) -> List[RunRecord]:
    """The runs to draw: the local store, or a W&B sweep mirrored into the cache first."""
    if args.wandb:
        sweep = download_wandb_results(args.wandb, WANDB_CACHE)
        return local_records(WANDB_CACHE, sweep)
    return local_records(args.results, args.sweep)


def add_figure_args(parser: argparse.ArgumentParser) -> None:
    rows = sorted({e.row for e in EXPERIMENTS})
    parser.add_argument("--prefer", action="append", choices=rows, default=None,
                        help="row to show where several fit one panel (repeatable; default "
                             f"{', '.join(DEFAULT_PREFER)}; CHN-3ep gives the paper's Fig. 3)")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m paper_figures.trajectories",
                                     description="Figures 3 and 4 from a sweep's trajectories.")
    add_source_args(parser)
    add_figure_args(parser)
    args = parser.parse_args(argv)
    prefer = tuple(args.prefer or ()) + DEFAULT_PREFER
    records = figure_records(args)
    if not records:  # most likely a wrong --results/--sweep: say so, but still draw
        print(f"warning: no runs found in {source_label(args)}", file=sys.stderr)
    for path, counts in write_figures(records, args.out, prefer).items():
        detail = ", ".join(f"{key} {n}" for key, n in counts.items())
        print(f"wrote {path} (seeds pooled: {detail})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
