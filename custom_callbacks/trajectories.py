"""Residual trajectories of the whole test set: the data and the heatmap of Figures 3-4.

The saved ``.npz`` (format version 1) holds:

===================  ===============  ===========================================================
key                  shape, dtype     meaning
===================  ===============  ===========================================================
``counts``           (n_iter, n_bins) samples whose relative residual after iteration ``n + 1``
                     int64            fell in bin ``b`` (below the range: lowest bin, exact zeros
                                      included; above it or NaN: highest bin)
``log10_edges``      (n_bins + 1,)    bin edges in log10 of the relative residual
``tolerances``       (T,)             the tolerance grid (1e-8 .. 1e-2 in half decades by default)
``sum_iters``        (T,) int64       sum over samples of the iterations to converge at each
``mean_iters``       (T,) float64     ``sum_iters / n_samples``: the cyan curve
``not_converged``    (T,) int64       samples that did not reach each tolerance
``iters_at_tol``     (n_samples,)     per-sample iterations to converge at ``tol``
``tol``, ``stage``   scalars          the Table 2 criterion (1e-4) and ``"test"``
``n_samples``        scalar           samples seen
``max_iter``         scalar           the longest solve (``counts`` rows; shorter solves stop
                                      early when the solver has a ``tol``, their rows are absent)
``format_version``   scalar           1
===================  ===============  ===========================================================

Iterations are counted as in :func:`~custom_callbacks.convergence.iterations_to_converge`.
"""
from __future__ import annotations

import os
import warnings
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import lightning.pytorch as pl
import numpy as np
import torch
from matplotlib import patheffects
from matplotlib.axes import Axes
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from torch import Tensor

from deq_core import SolverStats

from ._base import (ObservingCallback, atomic_savez, load_npz, log_figure, output_dir,
                    reduce_max_int, reduce_sum)
from .convergence import iterations_to_converge

DEFAULT_TOLERANCES = 10.0 ** np.arange(-8, -1.5, 0.5)  # 1e-8 .. 1e-2 in half decades
FORMAT_VERSION = 1
HEATMAP_CMAP = "magma_r"  # light = few trajectories, dark = many, as in Figures 3-4
COUNTS_LABEL = "State trajectory density (raw counts)"


class ResidualTrajectories(ObservingCallback):
    """Accumulate every test sample's residual trajectory; save it (and a heatmap) at test end.

    Per solve it adds, on the device and without host synchronisation, a 2-D histogram of
    ``log10`` relative residual per iteration, the iterations to converge at every tolerance of
    ``tol_grid`` and at ``tol``. At ``on_test_end`` it writes ``filename`` (see the module
    docstring for the keys) atomically to ``out_dir`` (default: ``trainer.log_dir``, else
    ``trainer.default_root_dir``) and, if ``log_image`` and a ``WandbLogger`` is attached, logs
    the heatmap as ``test/residual_heatmap``. ``path`` is the file written (or ``None``).
    Under DDP the sums are reduced over processes and rank zero writes.
    """

    def __init__(self, out_dir: Optional[str] = None,
                 tol_grid: Sequence[float] = DEFAULT_TOLERANCES, n_bins: int = 400,
                 range: Tuple[float, float] = (1e-8, 1.0),  # noqa: A002 - numpy's name for it
                 filename: str = "trajectories.npz", log_image: bool = True, tol: float = 1e-4):
        super().__init__(("test",))
        self.tolerances = np.asarray(tol_grid, dtype=np.float64).reshape(-1)
        if self.tolerances.size == 0 or not (self.tolerances > 0).all():
            raise ValueError(f"tol_grid must hold positive tolerances, got {tol_grid!r}")
        if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
            raise ValueError(f"n_bins must be an integer >= 1, got {n_bins!r}")
        lo, hi = range
        if not 0 < lo < hi:
            raise ValueError(f"range must be (low, high) with 0 < low < high, got {range!r}")
        if not tol > 0:
            raise ValueError(f"tol must be positive, got {tol!r}")
        self.out_dir, self.filename, self.log_image = out_dir, filename, log_image
        self.n_bins, self.tol = n_bins, float(tol)
        self.log10_edges = np.linspace(np.log10(lo), np.log10(hi), n_bins + 1)
        self.path: Optional[str] = None
        self._reset()

    def _reset(self) -> None:
        self._counts: Optional[Tensor] = None  # (rows, n_bins) int64, grows with the longest solve
        self._sum_iters: Optional[Tensor] = None
        self._not_converged: Optional[Tensor] = None
        self._iters_at_tol: List[Tensor] = []
        self._n_samples = 0
        self._max_iter = 0
        self._tols: Optional[Tensor] = None  # the tolerance grid on the trace's device

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._reset()
        self.path = None

    def observer_for(self, stage: str, pl_module: pl.LightningModule,
                     batch: Any) -> Dict[str, Callable]:
        return dict(on_solve=self._add)

    # -- accumulation (device only) ------------------------------------------------------
    def _bins(self, trace: Tensor) -> Tensor:
        lo, hi = self.log10_edges[0], self.log10_edges[-1]
        # float64 so that a residual lands in the same bin as numpy would put it
        pos = (torch.log10(trace.to(torch.float64)) - lo) * (self.n_bins / (hi - lo))
        pos = pos.nan_to_num(nan=self.n_bins, posinf=self.n_bins, neginf=-1.0)
        return pos.floor().clamp_(0, self.n_bins - 1).long()

    def _add(self, stats: SolverStats) -> None:
        trace = stats.trace
        if trace is None:
            raise RuntimeError("the DEQ gave no residual trace to an observer")
        n_iter, batch = trace.shape
        device = trace.device
        if self._counts is None:
            self._counts = torch.zeros(n_iter, self.n_bins, dtype=torch.long, device=device)
            self._sum_iters = torch.zeros(self.tolerances.size, dtype=torch.long, device=device)
            self._not_converged = torch.zeros_like(self._sum_iters)
        elif n_iter > self._counts.shape[0]:  # a longer solve than any so far: pad
            grown = self._counts.new_zeros(n_iter, self.n_bins)
            grown[: self._counts.shape[0]] = self._counts
            self._counts = grown
        rows = torch.arange(n_iter, device=device)[:, None] * self.n_bins
        flat = (rows + self._bins(trace)).flatten()
        # scatter_add_ has a fixed output size (no sync, unlike bincount) and a deterministic mode
        self._counts.view(-1)[: n_iter * self.n_bins].scatter_add_(0, flat, torch.ones_like(flat))
        if self._tols is None or (self._tols.dtype, self._tols.device) != (trace.dtype, device):
            # once per run: a host-to-device copy per batch would synchronise
            self._tols = torch.as_tensor(self.tolerances, dtype=trace.dtype, device=device)
        iters, converged = iterations_to_converge(trace, self._tols)  # (T, B)
        self._sum_iters += iters.sum(dim=1)
        self._not_converged += (~converged).sum(dim=1)
        self._iters_at_tol.append(iterations_to_converge(trace, self.tol)[0])
        self._n_samples += batch
        self._max_iter = max(self._max_iter, n_iter)

    # -- results ---------------------------------------------------------------------------
    def _gather(self, trainer: pl.Trainer, device: torch.device) -> Dict[str, Any]:
        """The accumulated results as numpy arrays, summed over processes."""
        rows = reduce_max_int(trainer, self._max_iter, device)
        counts = torch.zeros(rows, self.n_bins, dtype=torch.long, device=device)
        sum_iters = torch.zeros(self.tolerances.size, dtype=torch.long, device=device)
        not_converged = torch.zeros_like(sum_iters)
        if self._counts is not None:
            counts[: self._counts.shape[0]] = self._counts.to(device)
            sum_iters += self._sum_iters.to(device)
            not_converged += self._not_converged.to(device)
        iters_at_tol = (torch.cat(self._iters_at_tol).to(device) if self._iters_at_tol
                        else torch.zeros(0, dtype=torch.long, device=device))
        if trainer.world_size > 1:
            length = reduce_max_int(trainer, iters_at_tol.numel(), device)
            padded = torch.full((length,), -1, dtype=torch.long, device=device)
            padded[: iters_at_tol.numel()] = iters_at_tol
            gathered = trainer.strategy.all_gather(padded).reshape(-1)
            iters_at_tol = gathered[gathered >= 0]
        n_samples = int(reduce_sum(trainer, torch.tensor(self._n_samples, device=device)))
        counts, sum_iters = reduce_sum(trainer, counts), reduce_sum(trainer, sum_iters)
        not_converged = reduce_sum(trainer, not_converged)
        sum_iters_np = sum_iters.cpu().numpy()
        return dict(
            counts=counts.cpu().numpy(), log10_edges=self.log10_edges,
            tolerances=self.tolerances, sum_iters=sum_iters_np,
            mean_iters=sum_iters_np / max(n_samples, 1),
            not_converged=not_converged.cpu().numpy(), iters_at_tol=iters_at_tol.cpu().numpy(),
            tol=self.tol, stage="test", n_samples=n_samples, max_iter=rows,
            format_version=FORMAT_VERSION,
        )

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        data = self._gather(trainer, pl_module.device)  # collective: every process calls it
        directory = output_dir(trainer, self.out_dir)
        self._reset()
        if not trainer.is_global_zero:
            return
        if data["n_samples"] == 0:
            warnings.warn("ResidualTrajectories saw no DEQ solve during test; nothing saved",
                          UserWarning, stacklevel=2)
            return
        self.path = os.path.join(directory, self.filename)
        atomic_savez(self.path, **data)
        if self.log_image:
            try:
                fig = plot_trajectory_heatmap(data, title="Residual trajectories (test)").figure
            except Exception as exc:  # noqa: BLE001 - a figure is never worth a failed run
                warnings.warn(f"could not plot the residual heatmap: {exc!r}", UserWarning,
                              stacklevel=2)
                return
            log_figure(trainer, "test/residual_heatmap", fig)


def load_trajectories(path: str) -> Dict[str, Any]:
    """Read a file written by :class:`ResidualTrajectories` (scalars as Python numbers)."""
    data = load_npz(path)
    missing = {"counts", "log10_edges", "tolerances", "mean_iters", "n_samples"} - set(data)
    if missing:
        raise ValueError(f"{path} is not a trajectories file: missing {sorted(missing)}")
    return data


def merge_trajectories(datasets: Iterable[Dict[str, Any]]) -> Dict[str, Any]:
    """Pool runs (e.g. seeds): counts and sums add (shorter runs padded), means are re-derived,
    so ``mean_iters`` is the ``n_samples``-weighted mean of the inputs' ``mean_iters``."""
    datasets = list(datasets)
    if not datasets:
        raise ValueError("merge_trajectories needs at least one dataset")
    first = datasets[0]
    for d in datasets[1:]:
        for key in ("log10_edges", "tolerances"):
            if d[key].shape != first[key].shape or not np.allclose(d[key], first[key]):
                raise ValueError(f"cannot merge trajectories with different {key}")
        if d["tol"] != first["tol"]:
            raise ValueError(f"cannot merge trajectories with tol {first['tol']} and {d['tol']}")
    rows = max(d["counts"].shape[0] for d in datasets)
    counts = np.zeros((rows, first["counts"].shape[1]), dtype=np.int64)
    for d in datasets:
        counts[: d["counts"].shape[0]] += d["counts"]
    n_samples = sum(int(d["n_samples"]) for d in datasets)
    sum_iters = sum(np.asarray(d["sum_iters"], dtype=np.int64) for d in datasets)
    stages = {d["stage"] for d in datasets}
    return dict(
        counts=counts, log10_edges=first["log10_edges"], tolerances=first["tolerances"],
        sum_iters=sum_iters, mean_iters=sum_iters / max(n_samples, 1),
        not_converged=sum(np.asarray(d["not_converged"], dtype=np.int64) for d in datasets),
        iters_at_tol=np.concatenate([d["iters_at_tol"] for d in datasets]),
        tol=first["tol"], stage=stages.pop() if len(stages) == 1 else "mixed",
        n_samples=n_samples, max_iter=max(int(d["max_iter"]) for d in datasets),
        format_version=FORMAT_VERSION,
    )


def plot_trajectory_heatmap(data: Dict[str, Any], ax: Optional[Axes] = None,
                            title: Optional[str] = None, norm: Optional[Normalize] = None,
                            colorbar: Optional[bool] = None) -> Axes:
    """Density heatmap of residual trajectories, in the style of Figures 3-4; returns the Axes.

    x: iterations done (column ``n`` of ``counts``, the residual after ``n + 1`` iterations, is
    centred on ``n + 1``, the unit of the iterations-to-converge); y: relative residual, log
    scale over the histogram range; colour: count, log scale (``norm``, by default
    ``LogNorm(1, max)``; pass one ``LogNorm`` to several panels to share a colour bar), empty
    cells blank. A white dashed line marks ``tol``, the cyan curve gives the mean iterations to
    converge for each tolerance of the grid, the white circle the mean at ``tol`` (Table 2).

    Without ``ax`` it makes a new :class:`~matplotlib.figure.Figure` (no pyplot), with a colour
    bar unless ``colorbar=False``; get it as ``ax.figure``.
    """
    counts = np.asarray(data["counts"])
    n_iter = counts.shape[0]
    if ax is None:
        ax = Figure(figsize=(4.4, 4.6), layout="constrained").add_subplot()
        colorbar = True if colorbar is None else colorbar
    x_edges = np.arange(n_iter + 1) + 0.5
    y_edges = 10.0 ** np.asarray(data["log10_edges"])
    norm = norm if norm is not None else LogNorm(vmin=1, vmax=max(1, int(counts.max(initial=0))))
    mesh = ax.pcolormesh(x_edges, y_edges, np.ma.masked_less_equal(counts.T, 0),
                         cmap=HEATMAP_CMAP, norm=norm, shading="flat", rasterized=True)
    ax.set_yscale("log")
    ax.set_xlim(0, n_iter + 0.5)
    ax.set_ylim(y_edges[0], y_edges[-1])
    tol = float(data["tol"])
    # A thin dark outline keeps the white marks visible where no trajectory passes.
    outline = [patheffects.withStroke(linewidth=2.0, foreground="0.35", alpha=0.5)]
    ax.axhline(tol, color="white", linestyle="--", linewidth=1.0, path_effects=outline)
    tolerances = np.asarray(data["tolerances"])
    order = np.argsort(tolerances)
    ax.plot(np.asarray(data["mean_iters"])[order], tolerances[order], color="tab:cyan",
            linewidth=1.2)
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
