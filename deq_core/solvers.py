"""The built-in fixed-point solvers, and :func:`solve`, which runs any registered one.

Every solver is a function

    solver(f, z0, *, max_iter, tol=None, trace=False, on_iterate=None, **options) -> (z, SolverStats)

that looks for ``z = f(z)`` starting from ``z0`` (shape ``(B, ...)``; the first dimension is the
batch), registered by name (:func:`deq_core.register_solver`). ``f`` is evaluated exactly once
per iteration. The relative residual of iteration ``n`` is ``|f(z_n) - z_n| / |f(z_n)|`` per
sample, i.e. ``|s_{n+1} - s_n| / |s_{n+1}|`` in the papers' notation. Without ``tol`` a solver
runs exactly ``max_iter`` iterations and never synchronises with the host; with ``tol`` it stops
once every sample of the batch is below it (one ``.item()`` per iteration, the price of deciding
on the host). Options are checked once, before the first evaluation; every image ``f(z)`` must
have the shape and dtype of ``z`` (no broadcasting).

With ``trace=True`` a solve also records the papers' convergence measure, ``step_trace``: the
relative change between consecutive *outputs of the map*, ``r_n = |s_{n+1} - s_n| / |s_{n+1}|``
with ``s_{n+1} = f(z_n)``, for ``n = 1 .. n_iter - 1``. For Picard ``z_n = s_n``, so ``r_n`` is
``trace[n]``; for Anderson the outputs are the images of the mixed points and ``r_n`` differs
from the fixed-point residual of the point that was evaluated.

Both solvers here are :class:`~deq_core.loop.Step` updates driven by the shared loop
(:func:`deq_core.loop.iterate`), which also gives them compaction (``restrict``).
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from .compaction import Restrict
from .fused import MAX_M as MAX_FUSED_M
from .loop import FixedPointMap, Step, iterate
from .observe import EPS, IterateCallback, SolverStats, relative_residual
from .registry import (check_choice, check_nonnegative, check_positive_int, check_restrict,
                       get_solver, register_solver)


class Picard(Step):
    """Plain fixed-point iteration ``z_{n+1} = f(z_n)`` (forward Euler with step 1).

    With ``restrict`` and ``tol``, converged samples leave the working batch
    (:mod:`deq_core.compaction`).
    """

    def __call__(self, n: int, x: Tensor, fx: Tensor) -> Tensor:
        self.res = self.best_res = relative_residual(fx, x)
        self.best = fx
        return fx

    def keep(self, mask: Tensor, x: Tensor) -> Tensor:
        self.best = x[mask]  # x is best: one copy
        return self.best


picard = register_solver("picard", Picard)


# Anderson's variants: ours (the defaults) and the published code's (docs/papers.md).
TIKHONOV = ("relative", "absolute")
SAFEGUARD = ("after", "before")
RETURNS = ("best", "last")
PUBLISHED_ANDERSON = dict(tikhonov="absolute", safeguard="before", returns="last")


class _Anderson(Step):
    """What the eager and the fused Anderson steps share: the window and the regularisation."""

    def __init__(self, x: Tensor, *, m: int, lam: float) -> None:
        self.m, self.lam = m, lam


class AndersonStep(_Anderson):
    """:func:`anderson`'s iteration in tensor operations (any device and dtype), in any of
    its variants."""

    def __init__(self, x: Tensor, *, m: int, lam: float, tikhonov: str = "relative",
                 safeguard: str = "after", returns: str = "best") -> None:
        super().__init__(x, m=m, lam=lam)
        self.tikhonov, self.safeguard, self.returns = tikhonov, safeguard, returns
        batch, width = x.shape
        # Ring buffers of the images f(x_i) and residuals g_i = f(x_i) - x_i: all the mix needs.
        self.F = x.new_zeros(batch, m, width)
        self.G = x.new_zeros(batch, m, width)
        self.work = torch.promote_types(x.dtype, torch.float32)  # x.dtype for float32/float64
        self.eye = torch.eye(m, dtype=self.work, device=x.device)
        self.tiny = torch.finfo(self.work).tiny ** 0.5
        self.best_res: Tensor | None = None
        self.was_mixed = torch.zeros(batch, dtype=torch.bool, device=x.device)

    def __call__(self, n: int, x: Tensor, fx: Tensor) -> Tensor:
        F, G, m, work = self.F, self.G, self.m, self.work
        slot = n % m
        F[:, slot] = fx
        g = torch.sub(fx, x, out=G[:, slot])
        res = self.res = g.norm(dim=1) / (fx.norm(dim=1) + EPS)
        after = self.safeguard == "after"
        if self.returns == "last":
            self.best, self.best_res = fx, res
        if self.best_res is None or (self.returns == "last" and n == 0):
            self.best, self.best_res, self.anchor_fx, self.anchor_res = fx, res, fx, res
            accepted = torch.ones_like(self.was_mixed)
        else:
            if self.returns == "best":
                better = res <= self.best_res
                self.best = torch.where(better[:, None], fx, self.best)
                self.best_res = torch.where(better, res, self.best_res)
            # A plain step is always taken; a mixed point only if no worse than the anchor
            # (safeguard "before": the decision was taken before evaluating it, so it is).
            accepted = ~self.was_mixed | (res <= self.anchor_res) if after else \
                torch.ones_like(self.was_mixed)
            self.anchor_fx = torch.where(accepted[:, None], fx, self.anchor_fx)
            self.anchor_res = torch.where(accepted, res, self.anchor_res)
        k = min(n + 1, m)
        Gk = G[:, :k].to(work)
        gram = Gk @ Gk.transpose(1, 2)
        if self.tikhonov == "relative":
            reg = self.lam * gram.diagonal(dim1=1, dim2=2).mean(dim=1) + self.tiny
        else:
            reg = gram.new_full((x.shape[0],), self.lam)
        sol, info = torch.linalg.solve_ex(gram + reg[:, None, None] * self.eye[:k, :k],
                                          torch.ones(x.shape[0], k, 1, dtype=work,
                                                     device=x.device))
        alpha = sol / sol.sum(dim=1, keepdim=True)
        mixed = (alpha.transpose(1, 2) @ F[:, :k].to(work))[:, 0].to(x.dtype)
        ok = (info == 0) & torch.isfinite(alpha).all(dim=1)[:, 0]
        if not after:  # mix only where the linear model predicts a residual no larger
            predicted = (alpha.transpose(1, 2) @ Gk)[:, 0].norm(dim=1)
            ok &= predicted <= g.to(work).norm(dim=1)
        # Mix where usable; where the mix made things worse, a plain step from the anchor.
        self.was_mixed = ok & accepted & (k > 1)  # with one pair the "mix" is the plain step
        return torch.where(self.was_mixed[:, None], mixed, self.anchor_fx)

    def keep(self, mask: Tensor, x: Tensor) -> Tensor:
        for name in ("F", "G", "best", "best_res", "anchor_fx", "anchor_res", "was_mixed"):
            setattr(self, name, getattr(self, name)[mask])
        return x[mask]


class AndersonKernelStep(_Anderson):
    """:func:`anderson`'s iteration as :mod:`deq_core.fused`'s C++ kernel (CPU float32), in any
    of its variants, which updates its buffers and the point in place."""

    in_place = True

    def __init__(self, x: Tensor, *, m: int, lam: float, tikhonov: str = "relative",
                 safeguard: str = "after", returns: str = "best") -> None:
        from . import fused  # builds nothing yet; the kernel is compiled at its first step

        fused.check_state(x, m)
        super().__init__(x, m=m, lam=lam)
        batch, width = x.shape
        self.F, self.G = x.new_zeros(batch, m, width), x.new_zeros(batch, m, width)
        self.gram = torch.zeros(batch, m, m, dtype=torch.float64)
        self.res, self.best = x.new_zeros(batch), x.new_zeros(batch, width)
        self.best_res, self.anchor_res = x.new_zeros(batch), x.new_zeros(batch)
        self.anchor_slot = torch.zeros(batch, dtype=torch.long)
        self.was_mixed = torch.zeros(batch, dtype=torch.bool)
        self.tiny = torch.finfo(torch.float32).tiny ** 0.5
        # the kernel's flags absolute_tikhonov, safeguard_before, return_last
        self.variant = (tikhonov == "absolute", safeguard == "before", returns == "last")
        self._fused = fused

    def __call__(self, n: int, x: Tensor, fx: Tensor) -> Tensor:
        self._fused.step(x, fx, self.F, self.G, self.gram, self.res, self.best, self.best_res,
                         self.anchor_slot, self.anchor_res, self.was_mixed, n, self.lam,
                         self.tiny, EPS, *self.variant)
        return x

    def keep(self, mask: Tensor, x: Tensor) -> Tensor:
        for name in ("F", "G", "gram", "res", "best", "best_res", "anchor_slot", "anchor_res",
                     "was_mixed"):
            setattr(self, name, getattr(self, name)[mask])
        return x[mask]


_warned_unavailable = False


def _kernel_builds() -> bool:
    """Whether the fused kernel is (or can be) built; the first failure warns, once."""
    global _warned_unavailable
    from . import fused
    try:
        fused.load()
        return True
    except fused.FusedUnavailable as error:
        if not _warned_unavailable:
            _warned_unavailable = True
            warnings.warn(f"{error}; fused='auto' runs Anderson's tensor operations instead",
                          stacklevel=4)
        return False


def _anderson_step(x: Tensor, *, m: int, lam: float, fused: bool | str, tikhonov: str,
                   safeguard: str, returns: str) -> _Anderson:
    variant = dict(tikhonov=tikhonov, safeguard=safeguard, returns=returns)
    if fused is True or (fused == "auto" and x.device.type == "cpu" and x.dtype == torch.float32
                         and m <= MAX_FUSED_M and _kernel_builds()):
        return AndersonKernelStep(x, m=m, lam=lam, **variant)
    return AndersonStep(x, m=m, lam=lam, **variant)


@register_solver("anderson", options={
    "m": check_positive_int, "lam": check_nonnegative, "fused": check_choice(False, True, "auto"),
    "restrict": check_restrict, "tikhonov": check_choice(*TIKHONOV),
    "safeguard": check_choice(*SAFEGUARD), "returns": check_choice(*RETURNS)})
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
    fused: bool | str = False,
    tikhonov: str = "relative",
    safeguard: str = "after",
    returns: str = "best",
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
    ``fused="auto"`` runs the kernel where the state is on the CPU in float32 (and ``m`` at most
    16), and the tensor operations elsewhere, or everywhere, with one warning, where the
    kernel cannot be built: the same options then serve CPU and GPU runs and any machine.

    The published code's variant (``PUBLISHED_ANDERSON``) is three options away:
    ``tikhonov="absolute"`` regularises with ``lam`` itself; ``safeguard="before"`` decides
    before evaluating: it mixes where the linear model's predicted residual
    ``|sum_i alpha_i g_i|`` is no larger than the newest ``|g_k|`` (our reading of the published
    rule) and builds on every evaluated point; ``returns="last"`` returns the last image (and
    decides convergence on its residual). The fused kernel runs every variant.
    """
    return iterate("anderson", _anderson_step, f, z0, max_iter=max_iter, tol=tol, trace=trace,
                   on_iterate=on_iterate, restrict=restrict, m=m, lam=lam, fused=fused,
                   tikhonov=tikhonov, safeguard=safeguard, returns=returns)


# Keys of a DEQ's solver options that are not the solver's own.
_DEQ_KEYS = ("solver", "iter", "method", "compact")


def solve(f: FixedPointMap, z0: Tensor, kwargs: Mapping[str, Any], *,
          on_iterate: IterateCallback | None = None, trace: bool = False,
          restrict: Callable[[Tensor], FixedPointMap] | None = None) -> tuple[Tensor, SolverStats]:
    """Run the solver named by ``kwargs["solver"]`` for at most ``kwargs["iter"]`` iterations
    with the rest of ``kwargs`` (a DEQ's checked forward or backward options); ``trace`` asks
    for the traces whatever ``kwargs`` says, and ``restrict`` is given to the solver when
    ``kwargs`` asks for compaction."""
    options = {k: v for k, v in kwargs.items() if k not in _DEQ_KEYS}
    if kwargs.get("compact") and restrict is not None:
        options["restrict"] = restrict
    options["trace"] = bool(options.get("trace", False)) or trace
    return get_solver(kwargs["solver"]).fn(f, z0, max_iter=kwargs["iter"], on_iterate=on_iterate,
                                           **options)
