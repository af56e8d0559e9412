"""Lightning callbacks that measure the convergence of a module's DEQ (``pl_module.deq``).

- :class:`IterationsToConverge`: ``<stage>/iters_to_converge`` and ``<stage>/not_converged``
  (Table 2's criterion); :func:`iterations_to_converge` is the computation itself.
- :class:`ResidualTrajectories`: the test set's residual trajectories (Figures 3-4) as arrays.
- :class:`EnergyTracker`: mean Hopfield energy per iteration as arrays.

They measure and log; they write no files (the run layer saves their ``result``, see
``runner.result_files``). They depend on ``deq_core`` and Lightning only.
"""
from .convergence import IterationsToConverge, iterations_to_converge
from .energy import EnergyTracker
from .trajectories import DEFAULT_TOLERANCES, ResidualTrajectories

__all__ = [
    "DEFAULT_TOLERANCES", "EnergyTracker", "IterationsToConverge", "ResidualTrajectories",
    "iterations_to_converge",
]
