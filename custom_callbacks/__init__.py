"""Lightning callbacks that measure the convergence of a module's DEQ (``pl_module.deq``).

- :class:`IterationsToConverge`: ``<stage>/iters_to_converge`` and ``<stage>/not_converged``
  (Table 2's criterion); :func:`iterations_to_converge` is the computation itself.
- :class:`ResidualTrajectories`: the test set's residual trajectories saved for Figures 3-4,
  with :func:`load_trajectories`, :func:`merge_trajectories` (pool seeds) and
  :func:`plot_trajectory_heatmap`.
- :class:`EnergyTracker`: mean Hopfield energy per iteration, with :func:`load_energy` and
  :func:`plot_energy_curve`.
"""
from .convergence import IterationsToConverge, iterations_to_converge
from .energy import EnergyTracker, load_energy, plot_energy_curve
from .trajectories import (DEFAULT_TOLERANCES, HEATMAP_CMAP, ResidualTrajectories,
                           load_trajectories, merge_trajectories, plot_trajectory_heatmap)

__all__ = [
    "DEFAULT_TOLERANCES", "EnergyTracker", "HEATMAP_CMAP", "IterationsToConverge",
    "ResidualTrajectories", "iterations_to_converge", "load_energy", "load_trajectories",
    "merge_trajectories", "plot_energy_curve", "plot_trajectory_heatmap",
]
