"""The iteration loop that every step-based solver shares.

A solver written as a :class:`Step` gives only its update: what to do with the image
``f(x_n)`` of the point it evaluated, and which point to evaluate next. :func:`iterate` does the
rest, the same way for every solver: evaluate ``f`` once per iteration (its shape and dtype
checked), record the residual traces when asked, hand each new iterate to ``on_iterate``, stop
at ``tol`` or after ``max_iter`` iterations, let converged samples leave the batch
(:mod:`deq_core.compaction`), and return the result with its :class:`SolverStats`.

Without ``tol`` the loop never synchronises with the host; with it, one flag per iteration.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .compaction import ActiveSet, Restrict
from .observe import IterateCallback, SolverStats, relative_residual

FixedPointMap = Callable[[Tensor], Tensor]
SolverFn = Callable[..., tuple[Tensor, SolverStats]]


class Step:
    """One solver's update, for :func:`iterate` (and :func:`deq_core.register_solver`).

    The loop works on flat states ``(B, D)``. ``Step(x0, **options)`` is built once per solve
    with the starting point and the solver's own options (checked before, as declared at
    registration). Each iteration the loop evaluates ``fx = f(x)`` and calls
    ``step(n, x, fx)``, which returns the next point to evaluate and sets, per sample:

    - ``res``: the relative residual ``|fx - x| / |fx|`` of the point just evaluated
      (:func:`relative_residual`), recorded in the trace;
    - ``best_res``: the residual that decides convergence and is reported at the end;
    - ``best``: ``(B, D)``, what the solve returns for each sample.

    A plain fixed-point iteration sets all three from ``fx`` and returns ``fx``. When samples
    leave the batch, :meth:`keep` restricts the step's own per-sample tensors to those that
    stay. ``in_place = True`` declares a step that updates its tensors (and the point it
    returns) in place: the loop then starts from a copy of ``z0`` and copies what it hands out.
    """

    in_place = False
    res: Tensor
    best_res: Tensor
    best: Tensor

    def __init__(self, x: Tensor, **options: Any) -> None:
        if options:
            raise TypeError(f"{type(self).__name__} takes no options, got {sorted(options)}")

    def __call__(self, n: int, x: Tensor, fx: Tensor) -> Tensor:
        raise NotImplementedError

    def keep(self, mask: Tensor, x: Tensor) -> Tensor:
        """Only the samples where ``mask`` is true stay: restrict the step's per-sample tensors
        and return ``x[mask]``. The default restricts ``best``; a step with more per-sample
        state (a history, an anchor) restricts that too."""
        self.best = self.best[mask]
        return x[mask]


def checked_map(where: str, f: FixedPointMap) -> FixedPointMap:
    """``f`` refusing an image that differs from its input in shape or dtype (shape and dtype
    are metadata: the check never synchronises with the device)."""

    def checked_f(z: Tensor) -> Tensor:
        fz = f(z)
        if not isinstance(fz, Tensor):
            raise ValueError(f"{where}: f returned {type(fz).__name__}; f must return a Tensor")
        if fz.shape != z.shape or fz.dtype != z.dtype:
            raise ValueError(
                f"{where}: f returned shape {tuple(fz.shape)} and dtype {fz.dtype} for an input "
                f"of shape {tuple(z.shape)} and dtype {z.dtype}; f must return the shape and "
                "dtype of its input"
            )
        return fz

    return checked_f


def _stack(rows: list[Tensor], batch: int, like: Tensor) -> Tensor:
    """``rows`` as an ``(n, batch)`` tensor (``(0, batch)`` when there are none)."""
    return torch.stack(rows) if rows else like.new_zeros(0, batch)


def iterate(
    name: str,
    make_step: Callable[..., Step],
    f: FixedPointMap,
    z0: Tensor,
    *,
    max_iter: int,
    tol: float | None = None,
    trace: bool = False,
    on_iterate: IterateCallback | None = None,
    restrict: Restrict | None = None,
    **options: Any,
) -> tuple[Tensor, SolverStats]:
    """Solve ``z = f(z)`` from ``z0`` with the step ``make_step(x0, **options)`` (a
    :class:`Step` class or a function that returns one); ``name`` labels errors and the stats.
    The arguments are the solvers' (:mod:`deq_core.solvers`), already checked."""
    active = ActiveSet(restrict, tol, z0)
    f = checked_map(name, f)
    batch, shape = z0.shape[0], z0.shape
    x = z0.reshape(batch, math.prod(shape[1:]))  # not (batch, -1): ambiguous for batch 0
    width = x.shape[1]
    step = make_step(x, **options)
    if step.in_place:  # never write into the caller's z0
        x = x.clone(memory_format=torch.contiguous_format)
    # What leaves the loop must not change under a step that works in place; the active set's
    # whole-batch tensors are new ones already.
    out = (lambda t: t.clone()) if step.in_place and not active.enabled else (lambda t: t)
    residuals, steps, prev_fx = [], [], x
    for n in range(max_iter):
        fx = f(x.view(batch, *shape[1:])).reshape(batch, width)
        # The change between consecutive outputs of the map; where the point evaluated is the
        # previous output (a plain step) it is ``res`` itself. Taken before the step, which may
        # update its tensors in place.
        change = relative_residual(fx, prev_fx) if trace and n > 0 and prev_fx is not x else None
        prev_fx = fx
        x = step(n, x, fx)
        if trace:
            row = active.full("res", out(step.res))
            residuals.append(row)
            if n > 0:
                steps.append(active.spread(step.res if change is None else change, 0.0))
        if on_iterate is not None:
            on_iterate(n, active.state(out(x)).view(shape))
        # A step whose best residual is that of the point evaluated has its row already.
        final_res = row if trace and step.best_res is step.res else \
            active.full("best", out(step.best_res))
        if active.enabled:
            keep = active.leave(step.best_res < tol, step.best)
            if keep is not None:  # every per-sample tensor follows the samples that stay
                plain = prev_fx is x
                x = step.keep(keep, x)
                prev_fx = x if plain else prev_fx[keep]
                batch = active.size
                if batch == 0:
                    break
                f = checked_map(name, active.map())
        elif tol is not None and bool((step.best_res < tol).all()):
            break
    stacked = torch.stack(residuals) if trace else None
    step_trace = _stack(steps, shape[0], final_res) if trace else None
    return active.result(out(step.best), shape), SolverStats(name, n + 1, final_res, stacked,
                                                             step_trace)


def stepped_solver(name: str, make_step: Callable[..., Step]) -> SolverFn:
    """The solver function ``solver(f, z0, *, max_iter, tol, trace, on_iterate, restrict,
    **options)`` that runs :func:`iterate` with ``make_step``."""

    def solver(f: FixedPointMap, z0: Tensor, *, max_iter: int, tol: float | None = None,
               trace: bool = False, on_iterate: IterateCallback | None = None,
               restrict: Restrict | None = None, **options: Any) -> tuple[Tensor, SolverStats]:
        return iterate(name, make_step, f, z0, max_iter=max_iter, tol=tol, trace=trace,
                       on_iterate=on_iterate, restrict=restrict, **options)

    solver.__name__ = solver.__qualname__ = name
    solver.__doc__ = make_step.__doc__
    return solver
