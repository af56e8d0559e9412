"""A minimal, generic Deep Equilibrium Model engine (no Hopfield, no Lightning)."""
from .deq import DEQ
from .gradients import Backward, backprop, fast_bf16, full_adjoint
from .loop import Step, iterate
from .observe import ObserverHandle, SolverStats, relative_residual
from .registry import (ADJOINT_PRECISIONS, GRADIENTS, SOLVERS, check_adjoint_precision,
                       check_backward_kwargs, check_forward_kwargs, get_gradient, get_solver,
                       register_gradient, register_solver, unregister_gradient,
                       unregister_solver)
from .solvers import anderson, picard, solve

__all__ = [
    "ADJOINT_PRECISIONS", "Backward", "DEQ", "GRADIENTS", "ObserverHandle", "SOLVERS",
    "SolverStats", "Step", "anderson", "backprop", "check_adjoint_precision",
    "check_backward_kwargs", "check_forward_kwargs", "fast_bf16", "full_adjoint",
    "get_gradient", "get_solver", "iterate", "picard", "register_gradient", "register_solver",
    "relative_residual", "solve", "unregister_gradient", "unregister_solver",
]
