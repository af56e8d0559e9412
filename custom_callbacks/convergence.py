"""Iterations to converge (PAPER.md, footnote 3) and the callback that logs them."""
from __future__ import annotations

import numbers
from typing import Any, Callable, Sequence

import lightning.pytorch as pl
import torch
from torch import Tensor

from deq_core import SolverStats
from deq_core.names import STAGES

from ._base import ObservingCallback

Tolerance = float | Sequence[float] | Tensor


def iterations_to_converge(trace: Tensor, tol: Tolerance) -> tuple[Tensor, Tensor]:
    """Per sample, the number of solver iterations needed to reach a relative residual ``< tol``.

    Args:
        trace: ``(n_iter, B)`` relative residual of each sample at each iteration
            (:attr:`deq_core.SolverStats.trace`).
        tol: a tolerance, or a 1-D sequence/tensor of ``T`` tolerances (vectorised).

    Returns:
        ``(iters, converged)``, each ``(B,)`` (or ``(T, B)`` for ``T`` tolerances):
        ``iters`` (long) is ``n + 1`` for the first 0-based iteration ``n`` with
        ``trace[n] < tol``; a sample that never gets there counts as ``n_iter`` (the length of
        *this* solve, shorter than the solver's ``iter`` when its own ``tol`` stopped it early)
        and has ``converged`` (bool) ``False``. A NaN residual never counts as converged.

    Everything stays on the trace's device: no host synchronisation (pass a tolerance grid as
    a tensor already on the device to avoid even a host-to-device copy).
    """
    if trace is None or trace.dim() != 2:
        raise ValueError(f"trace must be a (n_iter, batch) tensor, got {trace!r:.80}")
    n_iter = trace.shape[0]
    if isinstance(tol, numbers.Real):
        # A Python number is compared in the trace's dtype and needs no copy to the device.
        below = trace < float(tol)
    else:
        # Rounded to the trace's dtype too, so a grid and a single tolerance agree.
        tols = torch.as_tensor(tol, dtype=trace.dtype, device=trace.device)
        if tols.dim() > 1:
            raise ValueError(f"tol must be a number or a 1-D sequence, got shape "
                             f"{tuple(tols.shape)}")
        below = trace < tols[..., None, None]  # (n_iter, B) or (T, n_iter, B)
    converged = below.any(dim=-2)
    first = below.to(torch.uint8).argmax(dim=-2)  # argmax returns the first maximal index
    iters = torch.where(converged, first + 1, torch.full_like(first, n_iter))
    return iters, converged


class IterationsToConverge(ObservingCallback):
    """Log the iterations each sample's forward solve needs to reach ``tol`` (Table 2).

    Logged, for each stage of ``stages`` (``train``, ``val``, ``test``):

    - ``<stage>/iters_to_converge``: mean over the samples of the batch; the epoch value is the
      mean over all samples (batches weighted by their size, so a smaller last batch counts
      for what it holds). For ``test`` this is the Table 2 "#iters to conv.".
    - ``<stage>/not_converged``: samples that did not reach ``tol`` within the solve. For
      ``val`` and ``test`` the epoch value is the *total count* over the epoch (the number to
      report: "12 of 10000 test images never converged"). For ``train`` the step value is the
      count in the batch and the epoch value the *mean count per batch*: the model changes
      during the epoch, so a running per-batch rate says more than a total.

    ``train`` logs per step and per epoch (Lightning appends ``_step``/``_epoch``), ``val`` and
    ``test`` per epoch. ``suffix`` is appended to both names, so that a second instance can
    watch another tolerance (e.g. ``suffix="@1e-6"``). A step that solves several times counts
    every sample of every solve. Values stay on the device (no ``.item()``); val/test values
    are summed over processes under DDP at the epoch's end (cheap), train values are not (it
    would cost a collective per step).

    Args:
        tol: convergence criterion on the relative residual ``|s_{n+1} - s_n| / |s_{n+1}|``.
        stages: which stages to measure.
        suffix: appended to the logged names.
    """

    def __init__(self, *, tol: float, stages: Sequence[str] = STAGES, suffix: str = ""):
        super().__init__(stages)
        if not tol > 0:
            raise ValueError(f"tol must be positive, got {tol!r}")
        self.tol = float(tol)
        self.suffix = suffix
        self._traces: list[Tensor] = []

    def observer_for(self, stage: str, pl_module: pl.LightningModule,
                     batch: Any) -> dict[str, Callable]:
        self._traces = []
        return dict(on_solve=self._on_solve)

    def _on_solve(self, stats: SolverStats) -> None:
        if stats.trace is None:
            raise RuntimeError("the DEQ gave no residual trace to an observer")
        self._traces.append(stats.trace)

    def batch_done(self, stage: str, trainer: pl.Trainer, pl_module: pl.LightningModule,
                   batch: Any) -> None:
        traces, self._traces = self._traces, []
        if not traces:  # this step did not solve (e.g. it skipped the DEQ)
            return
        results = [iterations_to_converge(trace, self.tol) for trace in traces]
        iters = torch.cat([iters for iters, _ in results])
        not_converged = torch.cat([~converged for _, converged in results]).sum()
        n = iters.numel()
        train = stage == "train"
        common = dict(on_step=train, on_epoch=True, sync_dist=not train)
        pl_module.log(f"{stage}/iters_to_converge{self.suffix}", iters.float().mean(),
                      batch_size=n, **common)
        pl_module.log(f"{stage}/not_converged{self.suffix}", not_converged.float(),
                      reduce_fx="mean" if train else "sum",
                      batch_size=1 if train else n,  # train: every batch weighs the same
                      **common)
