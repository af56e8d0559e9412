"""A minimal, generic Deep Equilibrium Model engine (no Hopfield, no Lightning)."""
from .deq import ADJOINT_PRECISIONS, BACKWARD_METHODS, DEQ, ObserverHandle, fast_bf16
from .solvers import SOLVERS, SolverStats, anderson, get_solver, picard, relative_residual

__all__ = [
    "ADJOINT_PRECISIONS", "BACKWARD_METHODS", "DEQ", "ObserverHandle", "SOLVERS", "SolverStats",
    "anderson", "fast_bf16", "get_solver", "picard", "relative_residual",
]
