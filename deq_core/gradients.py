"""Gradient methods: how a DEQ attaches a gradient to the fixed point its forward solve found.

The value of ``deq(x)`` is always the forward solve's ``z*``, in training too, so that the
loss and the prediction are taken where the solver stopped (as the papers do), whichever
gradient is attached. A method is a function ``method(backward: Backward) -> Tensor``
returning ``z*`` with its gradient (into ``x`` and the parameters of ``f``), registered by name
(:func:`deq_core.register_gradient`) and chosen by ``backward_kwargs["method"]``:

- ``backprop`` (recurrent backpropagation): from the detached fixed point, ``iter`` more
  differentiable (damped) Picard steps; the incoming gradient ``dL/dz*`` is back-propagated
  through those steps only (their end state is not the value: a sample that has not
  converged would otherwise be scored ``iter`` steps further on).
- ``full_adjoint`` (implicit function theorem): one differentiable step ``f(z*)`` whose
  incoming gradient ``v`` is replaced by the solution of the adjoint fixed point
  ``g = J^T g + v`` (``J = df/dz`` at ``z*``), solved with vector-Jacobian products by any
  registered solver.

With ``solver="picard"``, ``iter=T`` and no ``tol``, ``full_adjoint`` sums the first ``T`` terms
of the Neumann series ``sum_i (J^T)^i v``: at a fixed point, exactly the gradient ``backprop``
gets from ``T`` unrolled steps (each of its steps multiplies by ``J^T`` at an iterate, here at
``z*``), for one state-only vector-Jacobian product per step instead of a differentiable step
and its backward through the parameters.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .loop import FixedPointMap
from .observe import SolverStats, relative_residual
from .registry import register_gradient
from .solvers import solve


@dataclass(frozen=True)
class Backward:
    """What a gradient method gets from the DEQ, once per call with gradients.

    Attributes:
        Ux: the preprocessed input, with its graph into ``x`` and the parameters.
        z_star: the forward solve's result, detached.
        options: the DEQ's ``backward_kwargs`` (checked; ``iter``, ``solver``, ...).
        step_map: ``step_map(Ux, eager=False)``, the map the forward solve iterated
            (``DEQ.step_map``); ``eager`` evaluates it without ``torch.compile``.
        report: takes the statistics of the method's own iteration (``last_backward_stats``).
    """

    Ux: Tensor
    z_star: Tensor
    options: Mapping[str, Any]
    step_map: Callable[..., FixedPointMap]
    report: Callable[[SolverStats], None]


def valued_at(value: Tensor, graph: Tensor) -> Tensor:
    """``value``'s numbers with ``graph``'s gradient: the incoming gradient (taken at
    ``value``) flows into ``graph`` unchanged."""
    return value + (graph - graph.detach())


@register_gradient("backprop", unrolls="picard")
def backprop(b: Backward) -> Tensor:
    """``iter`` differentiable Picard steps from ``z*``, back-propagated by autograd."""
    step = b.step_map(b.Ux)
    z = b.z_star
    for _ in range(b.options["iter"]):
        z_prev, z = z, step(z)
    b.report(SolverStats("picard", b.options["iter"],
                         relative_residual(z.detach(), z_prev.detach())))
    return valued_at(b.z_star, z)


@register_gradient("full_adjoint")
def full_adjoint(b: Backward) -> Tensor:
    """The implicit gradient: the adjoint fixed point ``g = J^T g + v`` solved by
    ``options["solver"]``, in the backward pass, for the incoming gradient ``v``."""
    z_star, options, report = b.z_star, b.options, b.report
    z = b.step_map(b.Ux)(z_star)  # carries the gradient to Ux and the parameters
    z_leaf = z_star.clone().requires_grad_(True)
    with torch.enable_grad():
        # Its graph gives J^T g by autograd, once per adjoint iteration (retain_graph): built
        # eagerly, since a compiled graph may donate its buffers to a single backward.
        fz_leaf = b.step_map(b.Ux.detach(), eager=True)(z_leaf)

    def adjoint(v: Tensor | None) -> Tensor | None:
        if v is None:  # an undefined incoming gradient stays undefined
            return None

        def vjp_step(g: Tensor) -> Tensor:
            (jtg,) = torch.autograd.grad(fz_leaf, z_leaf, g, retain_graph=True)
            return jtg + v

        with torch.no_grad():
            g, stats = solve(vjp_step, torch.zeros_like(v), options)
        report(stats)
        return g

    if z.requires_grad:
        z.register_hook(adjoint)
    return valued_at(z_star, z)
