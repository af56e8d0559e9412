"""Iterations to converge as the papers count them (docs/papers.md) and the callback that logs
them."""
from __future__ import annotations

import numbers
from typing import Any, Callable, Sequence

import lightning.pytorch as pl
import torch
from torch import Tensor

from deq_core import SolverStats

from ._base import STAGES, ObservingCallback

Tolerance = float | Sequence[float] | Tensor


def iterations_to_converge(step_trace: Tensor, tol: Tolerance) -> tuple[Tensor, Tensor]:
    """Per sample, the papers' iterations to converge (Table 2's "#iters to conv.").

    A solve of ``T`` iterations computes the map's outputs ``s_1 .. s_T``; ``step_trace`` holds
    ``r_n = |s_{n+1} - s_n| / |s_{n+1}|`` for ``n = 1 .. T-1``
    (:attr:`deq_core.SolverStats.step_trace`). A sample's count is the 0-based position, in
    ``r_1 .. r_{T-1}``, of the first ``r_n < tol``, and ``T - 1`` (the trace's length) when
    there is none. A sample already below ``tol`` at the first position counts 0 and has
    converged (the published code counted it as never converged, a defect not copied here).

    Args:
        step_trace: ``(T - 1, B)`` changes between consecutive outputs.
        tol: a tolerance, or a 1-D sequence/tensor of ``K`` tolerances (vectorised).

    Returns:
        ``(iters, converged)``, each ``(B,)`` (or ``(K, B)`` for ``K`` tolerances): ``iters``
        (long) as above; ``converged`` (bool) whether some ``r_n < tol``. A NaN residual never
        counts as converged.

    Everything stays on the trace's device: no host synchronisation (pass a tolerance grid as
    a tensor already on the device to avoid even a host-to-device copy).
    """
    if step_trace is None or step_trace.dim() != 2:
        raise ValueError(f"step_trace must be a (T - 1, batch) tensor, got {step_trace!r:.80}")
    n_rows = step_trace.shape[0]
    if isinstance(tol, numbers.Real):
        # A Python number is compared in the trace's dtype and needs no copy to the device.
        below = step_trace < float(tol)
    else:
        # Rounded to the trace's dtype too, so a grid and a single tolerance agree.
        tols = torch.as_tensor(tol, dtype=step_trace.dtype, device=step_trace.device)
        if tols.dim() > 1:
            raise ValueError(f"tol must be a number or a 1-D sequence, got shape "
                             f"{tuple(tols.shape)}")
        below = step_trace < tols[..., None, None]  # (T-1, B) or (K, T-1, B)
    converged = below.any(dim=-2)
    if n_rows == 0:  # a solve of one iteration: no r_n, nothing converged, count T - 1 = 0
        return torch.zeros_like(converged, dtype=torch.long), converged
    first = below.to(torch.uint8).argmax(dim=-2)  # argmax returns the first maximal index
    iters = torch.where(converged, first, torch.full_like(first, n_rows))
    return iters, converged


def step_trace_of(stats: SolverStats) -> Tensor:
    """The solve's :attr:`~deq_core.SolverStats.step_trace`, or an error saying it is missing."""
    if stats.step_trace is None:
        raise RuntimeError("the DEQ gave no residual trace to an observer")
    return stats.step_trace


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
        tol: convergence criterion on the change between consecutive outputs of the map,
            ``|s_{n+1} - s_n| / |s_{n+1}|`` (:func:`iterations_to_converge`).
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
        self._traces.append(step_trace_of(stats))

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
