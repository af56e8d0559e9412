"""A minimal, generic Deep Equilibrium Model engine (no Hopfield, no Lightning)."""
from .deq import BACKWARD_METHODS, DEQ, ObserverHandle
from .solvers import SOLVERS, SolverStats, anderson, get_solver, picard, relative_residual

__all__ = [
    "BACKWARD_METHODS", "DEQ", "ObserverHandle", "SOLVERS", "SolverStats",
    "anderson", "get_solver", "picard", "relative_residual",
]
