"""The run layer: one run of a Table 2 experiment, a sweep's grid, the results store, W&B.

- :mod:`runner.names`: exit statuses, default names, the store's file names (stdlib only).
- :mod:`runner.store`: the results store's format (stdlib only): statuses, atomic writes,
  validation of finished runs, the per-run lock.
- :mod:`runner.result_files`: ``trajectories.npz`` / ``energy.npz``: save, load, pool
  (numpy only).
- :mod:`runner.config`: :class:`RunConfig`, whose fields are the run options (flag, help,
  whether they define the run), and the mapping to and from command lines.
- :mod:`runner.run`: :func:`run_experiment`, the life cycle of one run (Lightning).
- :mod:`runner.grid`: a sweep's grid on this machine: the plan, the local loop, ``--workers``.
- :mod:`runner.wandb_sweep`: the same grid as a W&B sweep, its agents, ``sweep.yaml``.
- :mod:`runner.history`, :mod:`runner.safety`, :mod:`runner.wandb_run`: one run's callbacks
  and its W&B logger (:func:`~runner.wandb_run.wandb_log`, a no-op without W&B).

Importing the package is cheap; ``RunConfig`` and ``run_experiment`` load on first use.
"""
from importlib import import_module
from typing import Any

_LAZY = {"RunConfig": "config", "run_experiment": "run", "ConfigMismatch": "run"}
__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'runner' has no attribute {name!r}")
    return getattr(import_module(f".{_LAZY[name]}", __name__), name)
