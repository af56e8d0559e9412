"""The run layer: one run of a Table 2 experiment, the results store, W&B wiring.

- :mod:`runner.store`: the results store's format (stdlib only): statuses, atomic writes,
  validation of finished runs, the per-run lock.
- :mod:`runner.result_files`: ``trajectories.npz`` / ``energy.npz``: save, load, pool, plot
  (numpy and matplotlib only).
- :mod:`runner.config`: :class:`RunConfig` and the one mapping to and from command lines.
- :mod:`runner.run`: :func:`run_experiment`, the life cycle of one run (Lightning).
- :mod:`runner.history`, :mod:`runner.safety`, :mod:`runner.wandb_run`: its callbacks and
  W&B wiring.

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
