"""The density heatmap of residual trajectories (Figures 3-4's panels), drawn from a
``trajectories.npz`` (:mod:`runner.result_files`); also what the run layer logs to W&B as
``test/residual_heatmap``. numpy and matplotlib only, without pyplot.
"""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np
from matplotlib import patheffects
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure

HEATMAP_CMAP = "magma_r"  # light = few trajectories, dark = many, as in Figures 3-4
COUNTS_LABEL = "State trajectory density (raw counts)"


def plot_trajectory_heatmap(data: dict[str, Any], ax: Axes | None = None,
                            title: str | None = None, norm: Normalize | None = None,
                            colorbar: bool | None = None,
                            seed_means: Iterable[float] = (),
                            published: float | None = None) -> Axes:
    """Density heatmap of residual trajectories, in the style of Figures 3-4; returns the Axes.

    x: the papers' iteration count (column ``n`` of ``counts``, ``r_{n+1}``, is centred on
    ``n``: a sample first below ``tol`` there counts ``n``); y: relative change, log
    scale over the histogram range; colour: count, log scale (``norm``, by default
    ``LogNorm(1, max)``; pass one ``LogNorm`` to several panels to share a colour bar), empty
    cells blank. A white dashed line marks ``tol``, the cyan curve gives the mean iterations to
    converge for each tolerance of the grid, the white circle the mean at ``tol`` (Table 2).
    ``seed_means``: each pooled seed's own mean at ``tol``, as short white ticks on the
    criterion's line (the spread over seeds); ``published``: the papers' Table 2 value, as a
    cyan diamond on it.

    Without ``ax`` it makes a new :class:`~matplotlib.figure.Figure` (no pyplot), with a colour
    bar unless ``colorbar=False``; get it as ``ax.figure``.
    """
    counts = np.asarray(data["counts"])
    n_iter = counts.shape[0]
    if ax is None:
        ax = Figure(figsize=(4.4, 4.6), layout="constrained").add_subplot()
        colorbar = True if colorbar is None else colorbar
    x_edges = np.arange(n_iter + 1) - 0.5
    y_edges = 10.0 ** np.asarray(data["log10_edges"])
    norm = norm if norm is not None else LogNorm(vmin=1, vmax=max(1, int(counts.max(initial=0))))
    mesh = ax.pcolormesh(x_edges, y_edges, np.ma.masked_less_equal(counts.T, 0),
                         cmap=HEATMAP_CMAP, norm=norm, shading="flat", rasterized=True)
    ax.set_yscale("log")
    ax.set_xlim(-0.5, n_iter - 0.5)
    ax.set_ylim(y_edges[0], y_edges[-1])
    tol = float(data["tol"])
    # A thin dark outline keeps the white marks visible where no trajectory passes.
    outline = [patheffects.withStroke(linewidth=2.0, foreground="0.35", alpha=0.5)]
    ax.axhline(tol, color="white", linestyle="--", linewidth=1.0, path_effects=outline)
    tolerances = np.asarray(data["tolerances"])
    order = np.argsort(tolerances)
    ax.plot(np.asarray(data["mean_iters"])[order], tolerances[order], color="tab:cyan",
            linewidth=1.2)
    seeds = [float(m) for m in seed_means]
    if seeds:
        ax.plot(seeds, [tol] * len(seeds), marker="|", markersize=9, markeredgewidth=1.3,
                linestyle="none", color="white", path_effects=outline)
    if published is not None:
        ax.plot([published], [tol], marker="D", markersize=5, linestyle="none",
                markerfacecolor="tab:cyan", markeredgecolor="0.15", markeredgewidth=0.8)
    iters_at_tol = np.asarray(data.get("iters_at_tol", ()))
    if iters_at_tol.size:
        for colour, width in (("0.35", 2.6), ("white", 1.4)):  # outline, then the white ring
            ax.plot([iters_at_tol.mean()], [tol], marker="o", markersize=7, linestyle="none",
                    markerfacecolor="none", markeredgecolor=colour, markeredgewidth=width,
                    alpha=0.6 if colour != "white" else 1.0)
    ax.set_xlabel("Nr. of iterations")
    ax.set_ylabel(r"Relative residual $\frac{\|s_{n+1} - s_n\|}{\|s_{n+1}\|}$")
    if title is not None:
        ax.set_title(title)
    if colorbar:
        ax.figure.colorbar(mesh, ax=ax, label=COUNTS_LABEL)
    return ax


def figure_to_array(fig: Figure) -> np.ndarray:
    """Render a figure with the Agg canvas (no pyplot state) to an RGB ``uint8`` array."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
