"""Figures 3 and 4: residual trajectories of the test set, pooled over seeds.

    python -m paper_figures.trajectories [--results results] [--sweep table2] [--wandb E/P/ID] [--out figures]

Each model family is a 2 x 2 grid (rows: plain / even-odd; columns: Picard / Anderson "DEQ").
Figure 3: 3-layer CHN (left) and 3-layer HAM (right); Figure 4: 5-layer and 7-layer HAM.
Panels read the runs' ``trajectories.npz`` (written by ``ResidualTrajectories``), so no model
is run again. A panel without results says so instead of failing.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from custom_callbacks import load_trajectories, merge_trajectories, plot_trajectory_heatmap
from deq_modules.experiments import Experiment, get_experiment
from deq_modules.results import FINISHED

from .records import read_records
from .table import add_source_arguments

# family -> (plain, DEQ, EO, EO-DEQ rows, depth); the plain CHN panel uses the 10-epoch run, as trained in the table.
FAMILIES = {
    "3-layer CHN": ("CHN-10ep", "CHN-DEQ", "CHN-EO", "CHN-EO-DEQ", 3),
    "3-layer HAM": ("HAM", "HAM-DEQ", "HAM-EO", "HAM-EO-DEQ", 3),
    "5-layer HAM": ("HAM", "HAM-DEQ", "HAM-EO", "HAM-EO-DEQ", 5),
    "7-layer HAM": ("HAM", "HAM-DEQ", "HAM-EO", "HAM-EO-DEQ", 7),
}
FIGURES = {"fig3.png": ("3-layer CHN", "3-layer HAM"), "fig4.png": ("5-layer HAM", "7-layer HAM")}


def pooled(records: List[Dict], exp: Experiment) -> Optional[Dict]:
    """All finished seeds of ``exp`` merged into one trajectories dict (None if none)."""
    files = [Path(r["dir"]) / "trajectories.npz" for r in records
             if r["row"] == exp.row and r["depth"] == exp.depth
             and r.get("status") == FINISHED and r.get("dir") is not None]
    data = [load_trajectories(str(f)) for f in files if f.exists()]
    return merge_trajectories(data) if data else None


def family_panels(records: List[Dict], family: str) -> List[Tuple[Experiment, Optional[Dict]]]:
    *rows, depth = FAMILIES[family]
    return [(e, pooled(records, e)) for e in (get_experiment(r, depth) for r in rows)]


def draw(records: List[Dict], families: Tuple[str, str]) -> Figure:
    fig = Figure(figsize=(17, 8.5), layout="constrained")
    grids = fig.subfigures(1, 2)
    for grid, family in zip(grids, families):
        panels = family_panels(records, family)
        peak = max([int(d["counts"].max()) for _, d in panels if d is not None] + [1])
        norm = LogNorm(vmin=1, vmax=peak)  # one colour scale per family
        axes = grid.subplots(2, 2, sharex=True, sharey=True)
        grid.suptitle(family)
        mesh_ax = None
        for ax, (exp, data) in zip(axes.flat, panels):
            if data is None:
                ax.text(0.5, 0.5, f"{exp.row}\nno results", ha="center", va="center",
                        transform=ax.transAxes)
                ax.set_title(exp.row)
                continue
            iters = float(data["iters_at_tol"].mean()) if data["iters_at_tol"].size else float("nan")
            plot_trajectory_heatmap(
                data, ax=ax, norm=norm, colorbar=False,
                title=f"{exp.row} ({iters:.1f} iters, {int(data['n_samples'])} traj.)")
            mesh_ax = ax
        for ax in axes[0]:
            ax.set_xlabel("")
        for ax in axes[:, 1]:
            ax.set_ylabel("")
        if mesh_ax is not None:
            grid.colorbar(mesh_ax.collections[0], ax=axes, label="Nr. of trajectories")
    return fig


def write_figures(records: List[Dict], out: Path) -> List[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, families in FIGURES.items():
        fig = draw(records, families)
        tmp = out / f".{name}.tmp.png"
        fig.savefig(tmp, dpi=150)
        tmp.replace(out / name)  # atomic: never a half-written figure
        written.append(out / name)
    return written


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_source_arguments(p)
    args = p.parse_args(argv)
    records = read_records(args.results, args.sweep, args.wandb, download=True)
    for path in write_figures(records, Path(args.out)):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
