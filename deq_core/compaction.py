"""Per-sample compaction: samples that have converged leave the working batch.

A solver given ``restrict`` (active batch indices -> the map ``f`` on those samples only) and a
``tol`` keeps iterating only the samples still above ``tol``; each iteration then costs in
proportion to what is left. A sample leaves at the first iteration its residual is below
``tol``, with the output it would have had if the whole batch had stopped there. Its entries in
the residual trace keep its last value (below ``tol``), so iterations-to-converge counted from
the trace are those of the uncompacted solve. Deciding who leaves reads one flag per iteration
on the host: compaction is for when that sync is cheaper than the arithmetic it saves.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

FixedPointMap = Callable[[Tensor], Tensor]
Restrict = Callable[[Tensor], FixedPointMap]


class ActiveSet:
    """Which samples of a batch still iterate, and the results of those that left.

    Disabled (every method an identity) when ``restrict`` or ``tol`` is ``None``, so a solver
    runs its plain code path unchanged.
    """

    def __init__(self, restrict: Restrict | None, tol: float | None, z0: Tensor):
        self.enabled = restrict is not None and tol is not None
        self.restrict, self.tol = restrict, tol
        batch = z0.shape[0]
        self.idx = torch.arange(batch, device=z0.device)
        self.out = z0.detach().clone().reshape(batch, z0[0:0].flatten(1).shape[1]) \
            if self.enabled else z0
        self._rows: dict[str, Tensor] = {}

    @property
    def size(self) -> int:
        return int(self.idx.numel())

    def full(self, name: str, active: Tensor, fill: float = float("inf")) -> Tensor:
        """A per-sample quantity of the active samples as a whole-batch tensor; samples that
        left keep their last value (a new one, for the trace or the final statistics)."""
        if not self.enabled:
            return active
        row = self._rows.get(name)
        if row is None:
            row = active.new_full((self.out.shape[0], *active.shape[1:]), fill)
        row = row.index_copy(0, self.idx, active)
        self._rows[name] = row
        return row

    def spread(self, active: Tensor, fill: float) -> Tensor:
        """A per-sample quantity of the active samples as a whole-batch tensor, ``fill`` for
        the samples that left (a quantity that is fixed once a sample has left)."""
        if not self.enabled:
            return active
        return active.new_full((self.out.shape[0], *active.shape[1:]), fill).index_copy(
            0, self.idx, active)

    def state(self, active: Tensor) -> Tensor:
        """The whole batch's state: the active samples' current one, the others' results."""
        if not self.enabled:
            return active
        return self.out.index_copy(0, self.idx, active.reshape(active.shape[0], self.out.shape[1]))

    def leave(self, converged: Tensor, result: Tensor) -> Tensor | None:
        """Samples with ``converged`` leave with ``result``; returns the mask of those that stay
        (``None``: nobody left, keep everything as it is)."""
        if not self.enabled or not bool(converged.any()):  # the host reads one flag
            return None
        done = self.idx[converged]
        self.out.index_copy_(0, done, result[converged].reshape(done.numel(), self.out.shape[1]))
        keep = ~converged
        self.idx = self.idx[keep]
        return keep

    def shrink(self, converged: Tensor, result: Tensor,
               per_sample: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        """:meth:`leave`, then the solver's per-sample tensors restricted to the samples that
        stay (``per_sample`` itself when nobody left; :attr:`size` says how many stay)."""
        keep = self.leave(converged, result)
        return per_sample if keep is None else tuple(t[keep] for t in per_sample)

    def map(self) -> FixedPointMap:
        """``f`` on the samples that are still active."""
        assert self.restrict is not None
        return self.restrict(self.idx)

    def result(self, active: Tensor, shape: torch.Size) -> Tensor:
        """The whole batch's output once the loop ends."""
        return (self.state(active) if self.enabled else active).view(shape)
