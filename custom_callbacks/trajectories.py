"""Residual trajectories of the whole test set: the data of Figures 3-4.

:class:`ResidualTrajectories` accumulates, on the device, a histogram of every test sample's
relative residual per iteration and the iterations to converge at a grid of tolerances. After
``trainer.test`` its :attr:`~ResidualTrajectories.result` holds numpy arrays; the keys are those
of ``trajectories.npz`` (documented in ``runner.result_files``, which saves, pools and plots
them). The callback itself writes no file.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable, Sequence

import lightning.pytorch as pl
import numpy as np
import torch
from torch import Tensor

from deq_core import SolverStats

from ._base import ObservingCallback, reduce_max_int, reduce_sum
from .convergence import iterations_to_converge, step_trace_of

DEFAULT_TOLERANCES = 10.0 ** np.arange(-8, -1.5, 0.5)  # 1e-8 .. 1e-2 in half decades
FORMAT_VERSION = 2  # 2: rows are the papers' r_1 .. r_{T-1}; 1 counted |f(z) - z| from z_0


class ResidualTrajectories(ObservingCallback):
    """Accumulate every test sample's residual trajectory; :attr:`result` after the test.

    Per solve it adds, on the device and without host synchronisation, a 2-D histogram of
    ``log10`` relative residual per iteration, the iterations to converge at every tolerance of
    ``tol_grid`` and at ``tol`` (the criterion of the table, e.g. the paper's 1e-4). At
    ``on_test_end`` the sums are reduced over processes (DDP) and :attr:`result` becomes a dict
    of numpy arrays (``None`` before a test, or when the test solved nothing).
    """

    def __init__(self, *, tol: float, tol_grid: Sequence[float] = DEFAULT_TOLERANCES,
                 n_bins: int = 400,
                 range: tuple[float, float] = (1e-8, 1.0)):  # noqa: A002 - numpy's name for it
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
        self.n_bins, self.tol = n_bins, float(tol)
        self.log10_edges = np.linspace(np.log10(lo), np.log10(hi), n_bins + 1)
        self.result: dict[str, Any] | None = None
        self._reset()

    def _reset(self) -> None:
        self._counts: Tensor | None = None  # (rows, n_bins) int64, grows with the longest solve
        self._sum_iters: Tensor | None = None
        self._not_converged: Tensor | None = None
        self._iters_at_tol: list[Tensor] = []
        self._n_samples = 0
        self._max_iter = 0
        self._tols: Tensor | None = None  # the tolerance grid on the trace's device

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._reset()
        self.result = None

    def observer_for(self, stage: str, pl_module: pl.LightningModule,
                     batch: Any) -> dict[str, Callable]:
        return dict(on_solve=self._add)

    # -- accumulation (device only) ------------------------------------------------------
    def _bins(self, trace: Tensor) -> Tensor:
        lo, hi = self.log10_edges[0], self.log10_edges[-1]
        # float64 so that a residual lands in the same bin as numpy would put it
        pos = (torch.log10(trace.to(torch.float64)) - lo) * (self.n_bins / (hi - lo))
        pos = pos.nan_to_num(nan=self.n_bins, posinf=self.n_bins, neginf=-1.0)
        return pos.floor().clamp_(0, self.n_bins - 1).long()

    def _add(self, stats: SolverStats) -> None:
        trace = step_trace_of(stats)
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
    def _gather(self, trainer: pl.Trainer, device: torch.device) -> dict[str, Any]:
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
        self._reset()
        if data["n_samples"] == 0:
            warnings.warn("ResidualTrajectories saw no DEQ solve during test; no result",
                          UserWarning, stacklevel=2)
            return
        self.result = data
