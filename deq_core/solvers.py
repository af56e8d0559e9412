"""Fixed-point solvers: one signature, one registry.

Every solver is a plain function

    solver(f, z0, *, max_iter, tol=None, trace=False, on_iterate=None, **options) -> (z, SolverStats)

that looks for ``z = f(z)`` starting from ``z0`` (shape ``(B, ...)``; the first dimension is the
batch). ``f`` is evaluated exactly once per iteration. The relative residual of iteration ``n`` is
``|f(z_n) - z_n| / |f(z_n)|`` per sample, i.e. ``|s_{n+1} - s_n| / |s_{n+1}|`` in the papers'
notation. Without ``tol`` a solver runs exactly ``max_iter`` iterations and never synchronises
with the host; with ``tol`` it stops once every sample of the batch is below it (one ``.item()``
per iteration, the price of deciding on the host). Options are checked once, before the first
evaluation; every image ``f(z)`` must have the shape and dtype of ``z`` (no broadcasting).

With ``trace=True`` a solve also records the papers' convergence measure, ``step_trace``: the
relative change between consecutive *outputs of the map*, ``r_n = |s_{n+1} - s_n| / |s_{n+1}|``
with ``s_{n+1} = f(z_n)``, for ``n = 1 .. n_iter - 1``. For Picard ``z_n = s_n``, so ``r_n`` is
``trace[n]``; for Anderson the outputs are the images of the mixed points and ``r_n`` differs
from the fixed-point residual of the point that was evaluated.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .compaction import ActiveSet, Restrict

FixedPointMap = Callable[[Tensor], Tensor]
IterateCallback = Callable[[int, Tensor], None]
OptionCheck = Callable[[str, Any], None]  # (label, value); raises ValueError naming both

# Keeps 0/0 finite when a state is exactly zero; tiny enough not to matter otherwise.
_EPS = 1e-30


@dataclass
class SolverStats:
    """What a solve did.

    Attributes:
        solver: registry name of the solver.
        n_iter: number of iterations (evaluations of ``f``) performed.
        rel_residual: ``(B,)`` final relative residual of each sample.
        trace: ``(n_iter, B)`` relative residual of each sample at every iteration, or ``None``
            when not requested.
        step_trace: ``(n_iter - 1, B)`` relative change between consecutive outputs of the
            map, ``r_1 .. r_{n_iter - 1}`` (module docstring), or ``None`` when not requested.
            A sample that left the batch (compaction) has ``0`` from then on: its output no
            longer changes.
    """

    solver: str
    n_iter: int
    rel_residual: Tensor
    trace: Tensor | None = field(default=None, repr=False)
    step_trace: Tensor | None = field(default=None, repr=False)


def relative_residual(fz: Tensor, z: Tensor) -> Tensor:
    """``|f(z) - z| / |f(z)|`` per sample (all dimensions but the first are flattened)."""
    diff = (fz - z).flatten(1).norm(dim=1)
    return diff / (fz.flatten(1).norm(dim=1) + _EPS)


def _stack(rows: list[Tensor], batch: int, like: Tensor) -> Tensor:
    """``rows`` as an ``(n, batch)`` tensor (``(0, batch)`` when there are none)."""
    return torch.stack(rows) if rows else like.new_zeros(0, batch)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_positive_int(label: str, value: Any) -> None:
    """``max_iter``, ``m``: an integer >= 1 (``True`` and ``2.0`` are refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{label} must be an integer >= 1, got {value!r}")


def check_tol(label: str, value: Any) -> None:
    """``tol``: ``None`` (run ``max_iter`` iterations) or a positive finite number."""
    if value is None:
        return
    if not _is_real(value) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"{label} must be a positive finite number or None, got {value!r}")


def check_nonnegative(label: str, value: Any) -> None:
    """``lam``: a non-negative finite number."""
    if not _is_real(value) or not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{label} must be a non-negative finite number, got {value!r}")


def check_bool(label: str, value: Any) -> None:
    """``fused``: ``True`` or ``False`` (not 0/1)."""
    if not isinstance(value, bool):
        raise ValueError(f"{label} must be True or False, got {value!r}")


def check_restrict(label: str, value: Any) -> None:
    """``restrict``: ``None`` or a callable (active indices -> the map on those samples)."""
    if value is not None and not callable(value):
        raise ValueError(f"{label} must be a callable or None, got {value!r}")


def _check_start(solver: str, z0: Any, max_iter: Any, tol: Any) -> None:
    if not isinstance(z0, Tensor) or z0.dim() < 1:
        shape = tuple(z0.shape) if isinstance(z0, Tensor) else type(z0).__name__
        raise ValueError(f"{solver}: z0 must have a batch dimension (B, ...), got shape {shape}")
    check_positive_int(f"{solver}: max_iter", max_iter)
    check_tol(f"{solver}: tol", tol)


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


def _converged(res: Tensor, tol: float | None) -> bool:
    return tol is not None and bool((res < tol).all())


def picard(
    f: FixedPointMap,
    z0: Tensor,
    *,
    max_iter: int,
    tol: float | None = None,
    trace: bool = False,
    on_iterate: IterateCallback | None = None,
    restrict: Restrict | None = None,
) -> tuple[Tensor, SolverStats]:
    """Plain fixed-point iteration ``z_{n+1} = f(z_n)`` (forward Euler with step 1).

    With ``restrict`` and ``tol``, converged samples leave the working batch
    (:mod:`deq_core.compaction`).
    """
    _check_start("picard", z0, max_iter, tol)
    active = ActiveSet(restrict, tol, z0)
    f = checked_map("picard", f)
    z, shape = z0, z0.shape
    residuals, steps = [], []
    for n in range(max_iter):
        fz = f(z)
        res = relative_residual(fz, z)
        row = active.full("res", res)
        if trace:
            residuals.append(row)
            if n > 0:  # z is the previous output here: the residual is the output's change
                steps.append(active.spread(res, 0.0))
        z = fz
        if on_iterate is not None:
            on_iterate(n, active.state(z).view(shape))
        if active.enabled:
            keep = active.leave(res < tol, z)
            if keep is not None:
                z = z[keep]
                if active.size == 0:
                    break
                f = checked_map("picard", active.map())
        elif _converged(res, tol):
            break
    stacked = torch.stack(residuals) if trace else None
    step_trace = _stack(steps, shape[0], row) if trace else None
    return active.result(z, shape), SolverStats("picard", n + 1, row, stacked, step_trace)


def anderson(
    f: FixedPointMap,
    z0: Tensor,
    *,
    max_iter: int,
    tol: float | None = None,
    trace: bool = False,
    on_iterate: IterateCallback | None = None,
    m: int = 4,
    lam: float = 1e-10,
    restrict: Restrict | None = None,
    fused: bool = False,
) -> tuple[Tensor, SolverStats]:
    """Safeguarded Anderson acceleration (type II, mixing parameter 1), batched per sample.

    With the last ``k <= m`` pairs ``(z_i, f(z_i))`` and residuals ``g_i = f(z_i) - z_i``, the
    next point is ``sum_i alpha_i f(z_i)`` with ``alpha`` minimising ``|sum_i alpha_i g_i|``
    subject to ``sum_i alpha_i = 1``: ``alpha ∝ (G G^T + lam' I)^{-1} 1``. The Tikhonov term
    ``lam' = lam * mean(diag(G G^T)) + tiny`` scales with the matrix, so the system stays
    solvable when iterates converge exactly or the state is tiny; a sample whose solve still
    fails or gives a non-finite mix takes the plain step instead.

    Safeguard: a mixed point whose residual is larger than at the last accepted point (the
    anchor) is rejected, and the sample takes the plain step ``f(anchor)`` instead, which costs
    no extra evaluation; plain steps are always accepted, so a sample never re-evaluates the
    same point. The returned ``z`` is ``f(z_best)``, the image of each sample's best point.

    The state keeps its dtype; the small ``k x k`` system (and the mix) is solved in float32
    at least, since float16/bfloat16 have no linear solver and too little precision for it.

    With ``restrict`` and ``tol``, converged samples leave the working batch with their
    ``f(z_best)`` (:mod:`deq_core.compaction`).

    ``fused=True`` runs each iteration's bookkeeping as one C++ kernel (:mod:`deq_core.fused`:
    CPU float32 states; built at first use, which needs a C++ compiler and ninja): the same
    algorithm, to float rounding (its Gram matrix is updated a row at a time and solved in
    float64), 5 to 10x cheaper per iteration than these ~65 tensor operations.
    """
    _check_start("anderson", z0, max_iter, tol)
    check_positive_int("anderson: m", m)
    check_nonnegative("anderson: lam", lam)
    check_bool("anderson: fused", fused)
    active = ActiveSet(restrict, tol, z0)
    f = checked_map("anderson", f)
    if fused:
        return _anderson_fused(f, z0, max_iter, tol, trace, on_iterate, m, lam, active)
    batch, shape = z0.shape[0], z0.shape
    x = z0.reshape(batch, math.prod(shape[1:]))  # not (batch, -1): ambiguous for batch 0
    width = x.shape[1]
    # Ring buffers of the images f(x_i) and residuals g_i = f(x_i) - x_i: all the mix needs.
    F = x.new_zeros(batch, m, width)
    G = x.new_zeros(batch, m, width)
    work = torch.promote_types(x.dtype, torch.float32)  # x.dtype itself for float32/float64
    eye = torch.eye(m, dtype=work, device=x.device)
    tiny = torch.finfo(work).tiny ** 0.5
    best_fx = best_res = anchor_fx = anchor_res = None
    was_mixed = torch.zeros(batch, dtype=torch.bool, device=x.device)
    residuals, steps, prev_fx = [], [], x
    for n in range(max_iter):
        fx = f(x.view(batch, *shape[1:])).reshape(batch, width)
        slot = n % m
        F[:, slot] = fx
        g = torch.sub(fx, x, out=G[:, slot])
        res = g.norm(dim=1) / (fx.norm(dim=1) + _EPS)
        if trace:
            residuals.append(active.full("res", res))
            if n > 0:
                steps.append(active.spread(relative_residual(fx, prev_fx), 0.0))
        prev_fx = fx
        if best_res is None:
            best_fx, best_res, anchor_fx, anchor_res = fx, res, fx, res
            accepted = torch.ones_like(was_mixed)
        else:
            better = res <= best_res
            best_fx = torch.where(better[:, None], fx, best_fx)
            best_res = torch.where(better, res, best_res)
            # A plain step is always taken; a mixed point only if no worse than the anchor.
            accepted = ~was_mixed | (res <= anchor_res)
            anchor_fx = torch.where(accepted[:, None], fx, anchor_fx)
            anchor_res = torch.where(accepted, res, anchor_res)
        k = min(n + 1, m)
        Gk = G[:, :k].to(work)
        gram = Gk @ Gk.transpose(1, 2)
        reg = lam * gram.diagonal(dim1=1, dim2=2).mean(dim=1) + tiny
        sol, info = torch.linalg.solve_ex(gram + reg[:, None, None] * eye[:k, :k],
                                          torch.ones(batch, k, 1, dtype=work, device=x.device))
        alpha = sol / sol.sum(dim=1, keepdim=True)
        mixed = (alpha.transpose(1, 2) @ F[:, :k].to(work))[:, 0].to(x.dtype)
        ok = (info == 0) & torch.isfinite(alpha).all(dim=1)[:, 0]
        # Mix where usable; where the mix made things worse, a plain step from the anchor.
        was_mixed = ok & accepted & (k > 1)  # with one pair the "mix" is the plain step
        x = torch.where(was_mixed[:, None], mixed, anchor_fx)
        if on_iterate is not None:
            on_iterate(n, active.state(x).view(shape))
        final_res = active.full("best", best_res)
        if active.enabled:  # every per-sample tensor follows the samples that stay
            x, F, G, best_fx, best_res, anchor_fx, anchor_res, was_mixed, prev_fx = \
                active.shrink(best_res < tol, best_fx, (x, F, G, best_fx, best_res, anchor_fx,
                                                        anchor_res, was_mixed, prev_fx))
            if active.size < batch:
                batch = active.size
                if batch == 0:
                    break
                f = checked_map("anderson", active.map())
        elif _converged(best_res, tol):
            break
    stacked = torch.stack(residuals) if trace else None
    step_trace = _stack(steps, shape[0], final_res) if trace else None
    return active.result(best_fx, shape), SolverStats("anderson", n + 1, final_res, stacked,
                                                      step_trace)


def _anderson_fused(f: FixedPointMap, z0: Tensor, max_iter: int, tol: float | None, trace: bool,
                    on_iterate: IterateCallback | None, m: int, lam: float,
                    active: ActiveSet) -> tuple[Tensor, SolverStats]:
    """:func:`anderson` with :mod:`deq_core.fused`'s kernel for each iteration's bookkeeping.
    The kernel updates its buffers in place: what leaves this function is copied."""
    from . import fused

    fused.check_state(z0, m)
    batch, shape = z0.shape[0], z0.shape
    x = z0.reshape(batch, math.prod(shape[1:])).clone()
    width = x.shape[1]
    F, G = x.new_zeros(batch, m, width), x.new_zeros(batch, m, width)
    gram = torch.zeros(batch, m, m, dtype=torch.float64)
    res, best_fx, best_res, anchor_res = (x.new_zeros(batch), torch.zeros_like(x),
                                          x.new_zeros(batch), x.new_zeros(batch))
    anchor_slot = torch.zeros(batch, dtype=torch.long)
    was_mixed = torch.zeros(batch, dtype=torch.bool)
    tiny = torch.finfo(torch.float32).tiny ** 0.5
    residuals, steps, prev_fx = [], [], x
    final_res = active.full("best", best_res.clone())
    for n in range(max_iter):
        fx = f(x.view(batch, *shape[1:])).reshape(batch, width)
        if trace and n > 0:  # before the kernel, which updates buffers in place
            steps.append(active.spread(relative_residual(fx, prev_fx), 0.0))
        prev_fx = fx
        fused.step(x, fx, F, G, gram, res, best_fx, best_res, anchor_slot, anchor_res, was_mixed,
                   n, lam, tiny, _EPS)
        if trace:
            residuals.append(active.full("res", res.clone()))
        if on_iterate is not None:
            on_iterate(n, active.state(x.clone()).view(shape))
        final_res = active.full("best", best_res.clone())
        if active.enabled:  # every per-sample buffer follows the samples that stay
            x, F, G, gram, res, best_fx, best_res, anchor_slot, anchor_res, was_mixed, prev_fx = \
                active.shrink(best_res < tol, best_fx, (x, F, G, gram, res, best_fx, best_res,
                                                        anchor_slot, anchor_res, was_mixed,
                                                        prev_fx))
            if active.size < batch:
                batch = active.size
                if batch == 0:
                    break
                f = checked_map("anderson", active.map())
        elif _converged(best_res, tol):
            break
    stacked = torch.stack(residuals) if trace else None
    step_trace = _stack(steps, shape[0], final_res) if trace else None
    return active.result(best_fx.clone(), shape), SolverStats("anderson", n + 1, final_res,
                                                              stacked, step_trace)


@dataclass(frozen=True)
class SolverSpec:
    """A registered solver and the extra keyword options it accepts."""

    fn: Callable[..., tuple[Tensor, SolverStats]]
    options: Mapping[str, OptionCheck]  # solver-specific keyword -> its check


SOLVERS: dict[str, SolverSpec] = {
    "picard": SolverSpec(picard, {"restrict": check_restrict}),
    "anderson": SolverSpec(anderson, {"m": check_positive_int, "lam": check_nonnegative,
                                      "restrict": check_restrict, "fused": check_bool}),
}
COMMON_OPTIONS = frozenset({"tol", "trace"})


def get_solver(name: str) -> SolverSpec:
    """Look a solver up by name; an unknown name is a ``ValueError`` listing the valid ones."""
    try:
        return SOLVERS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown solver {name!r}; valid solvers: {sorted(SOLVERS)}") from None
