"""A minimal, generic Deep Equilibrium Model engine (no Hopfield, no Lightning)."""
from .deq import DEQ
from .gradients import Backward, backprop, full_adjoint
from .loop import Step, iterate
from .observe import ObserverHandle, SolverStats, relative_residual
from .registry import (GRADIENTS, SOLVERS, check_backward_kwargs, check_forward_kwargs,
                       get_gradient, get_solver, register_gradient, register_solver,
                       unregister_gradient, unregister_solver)
from .solvers import anderson, picard, solve

__all__ = [
    "Backward", "DEQ", "GRADIENTS", "ObserverHandle", "SOLVERS", "SolverStats", "Step",
    "anderson", "backprop", "check_backward_kwargs", "check_forward_kwargs", "full_adjoint",
    "get_gradient", "get_solver", "iterate", "picard", "register_gradient", "register_solver",
    "relative_residual", "solve", "unregister_gradient", "unregister_solver",
]
