"""Fixed-point solvers: one signature, one registry.

Every solver is a plain function

    solver(f, z0, *, max_iter, tol=None, trace=False, on_iterate=None, **options) -> (z, SolverStats)

that looks for ``z = f(z)`` starting from ``z0`` (shape ``(B, ...)``; the first dimension is the
batch). ``f`` is evaluated exactly once per iteration. The relative residual of iteration ``n`` is
``|f(z_n) - z_n| / |f(z_n)|`` per sample, i.e. ``|s_{n+1} - s_n| / |s_{n+1}|`` in the papers'
notation. Without ``tol`` a solver runs exactly ``max_iter`` iterations and never synchronises
with the host; with ``tol`` it stops once every sample of the batch is below it (one ``.item()``
per iteration, the price of deciding on the host).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, FrozenSet, Optional, Tuple

import torch
from torch import Tensor

FixedPointMap = Callable[[Tensor], Tensor]
IterateCallback = Callable[[int, Tensor], None]

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
    """

    solver: str
    n_iter: int
    rel_residual: Tensor
    trace: Optional[Tensor] = field(default=None, repr=False)


def relative_residual(fz: Tensor, z: Tensor) -> Tensor:
    """``|f(z) - z| / |f(z)|`` per sample (all dimensions but the first are flattened)."""
    diff = (fz - z).flatten(1).norm(dim=1)
    return diff / (fz.flatten(1).norm(dim=1) + _EPS)


def _converged(res: Tensor, tol: Optional[float]) -> bool:
    return tol is not None and bool((res < tol).all())


def picard(
    f: FixedPointMap,
    z0: Tensor,
    *,
    max_iter: int,
    tol: Optional[float] = None,
    trace: bool = False,
    on_iterate: Optional[IterateCallback] = None,
) -> Tuple[Tensor, SolverStats]:
    """Plain fixed-point iteration ``z_{n+1} = f(z_n)`` (forward Euler with step 1)."""
    z = z0
    residuals = []
    for n in range(max_iter):
        fz = f(z)
        res = relative_residual(fz, z)
        if trace:
            residuals.append(res)
        z = fz
        if on_iterate is not None:
            on_iterate(n, z)
        if _converged(res, tol):
            break
    stacked = torch.stack(residuals) if trace else None
    return z, SolverStats("picard", n + 1, res, stacked)


def anderson(
    f: FixedPointMap,
    z0: Tensor,
    *,
    max_iter: int,
    tol: Optional[float] = None,
    trace: bool = False,
    on_iterate: Optional[IterateCallback] = None,
    m: int = 4,
    lam: float = 1e-10,
) -> Tuple[Tensor, SolverStats]:
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
    """
    if m < 1:
        raise ValueError(f"anderson: m must be >= 1, got {m!r}")
    if lam < 0:
        raise ValueError(f"anderson: lam must be >= 0, got {lam!r}")
    batch = z0.shape[0]
    shape = z0.shape
    x = z0.reshape(batch, -1)
    width = x.shape[1]
    # Ring buffers of the images f(x_i) and residuals g_i = f(x_i) - x_i: all the mix needs.
    F = x.new_zeros(batch, m, width)
    G = x.new_zeros(batch, m, width)
    eye = torch.eye(m, dtype=x.dtype, device=x.device)
    tiny = torch.finfo(x.dtype).tiny ** 0.5
    best_fx = best_res = anchor_fx = anchor_res = None
    was_mixed = torch.zeros(batch, dtype=torch.bool, device=x.device)
    residuals = []
    for n in range(max_iter):
        fx = f(x.view(shape)).reshape(batch, -1)
        slot = n % m
        F[:, slot] = fx
        g = torch.sub(fx, x, out=G[:, slot])
        res = g.norm(dim=1) / (fx.norm(dim=1) + _EPS)
        if trace:
            residuals.append(res)
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
        Gk = G[:, :k]
        gram = Gk @ Gk.transpose(1, 2)
        reg = lam * gram.diagonal(dim1=1, dim2=2).mean(dim=1) + tiny
        sol, info = torch.linalg.solve_ex(
            gram + reg[:, None, None] * eye[:k, :k], x.new_ones(batch, k, 1))
        alpha = sol / sol.sum(dim=1, keepdim=True)
        mixed = (alpha.transpose(1, 2) @ F[:, :k])[:, 0]
        ok = (info == 0) & torch.isfinite(alpha).all(dim=1)[:, 0]
        # Mix where usable; where the mix made things worse, a plain step from the anchor.
        was_mixed = ok & accepted & (k > 1)  # with one pair the "mix" is the plain step
        x = torch.where(was_mixed[:, None], mixed, anchor_fx)
        if on_iterate is not None:
            on_iterate(n, x.view(shape))
        if _converged(best_res, tol):
            break
    stacked = torch.stack(residuals) if trace else None
    return best_fx.view(shape), SolverStats("anderson", n + 1, best_res, stacked)


@dataclass(frozen=True)
class SolverSpec:
    """A registered solver and the extra keyword options it accepts."""

    fn: Callable[..., Tuple[Tensor, SolverStats]]
    options: FrozenSet[str]


SOLVERS: Dict[str, SolverSpec] = {
    "picard": SolverSpec(picard, frozenset()),
    "anderson": SolverSpec(anderson, frozenset({"m", "lam"})),
}
COMMON_OPTIONS = frozenset({"tol", "trace"})


def get_solver(name: str) -> SolverSpec:
    """Look a solver up by name; an unknown name is a ``ValueError`` listing the valid ones."""
    try:
        return SOLVERS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown solver {name!r}; valid solvers: {sorted(SOLVERS)}") from None
