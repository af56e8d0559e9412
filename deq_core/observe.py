"""What a solve reports, and who watches it.

Every solver returns a :class:`SolverStats` with its result; the relative residual
``|f(z) - z| / |f(z)|`` (:func:`relative_residual`) is the measure all of them report. A DEQ's
callers watch its forward solves through :class:`Observers` (``DEQ.observe``): after every
solve, and with every new iterate.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import Tensor

# Keeps 0/0 finite when a state is exactly zero; tiny enough not to matter otherwise.
EPS = 1e-30

IterateCallback = Callable[[int, Tensor], None]


@dataclass
class SolverStats:
    """What a solve did.

    Attributes:
        solver: registry name of the solver.
        n_iter: number of iterations (evaluations of ``f``) performed.
        rel_residual: ``(B,)`` final relative residual of each sample.
        trace: ``(n_iter, B)`` relative residual of each sample at every iteration, or ``None``
            when not requested.
        step_trace: ``(n_iter - 1, B)`` relative change between consecutive outputs of the
            map, ``r_1 .. r_{n_iter - 1}`` (:mod:`deq_core.solvers`), or ``None`` when not
            requested. A sample that left the batch (compaction) has ``0`` from then on: its
            output no longer changes.
    """

    solver: str
    n_iter: int
    rel_residual: Tensor
    trace: Tensor | None = field(default=None, repr=False)
    step_trace: Tensor | None = field(default=None, repr=False)


def relative_residual(fz: Tensor, z: Tensor) -> Tensor:
    """``|f(z) - z| / |f(z)|`` per sample (all dimensions but the first are flattened)."""
    diff = (fz - z).flatten(1).norm(dim=1)
    return diff / (fz.flatten(1).norm(dim=1) + EPS)


@dataclass
class _Observer:
    on_solve: Callable[[SolverStats], None] | None
    on_iterate: IterateCallback | None


class ObserverHandle:
    """Returned by ``DEQ.observe``; ``remove()`` it, or use it as a context manager."""

    def __init__(self, observers: list[_Observer], observer: _Observer):
        self._observers, self._observer = observers, observer

    def remove(self) -> None:
        if self._observer in self._observers:
            self._observers.remove(self._observer)

    def __enter__(self) -> ObserverHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


class Observers:
    """The observers of a sequence of solves; any number at once, each removed by its handle."""

    def __init__(self) -> None:
        self._observers: list[_Observer] = []

    def add(self, on_solve: Callable[[SolverStats], None] | None = None,
            on_iterate: IterateCallback | None = None) -> ObserverHandle:
        observer = _Observer(on_solve, on_iterate)
        self._observers.append(observer)
        return ObserverHandle(self._observers, observer)

    def __len__(self) -> int:
        return len(self._observers)

    def on_iterate(self) -> IterateCallback | None:
        """One callback giving every new iterate to each observer that asked (``None``: none
        did, and the solver skips the work of handing iterates out)."""
        hooks = [o.on_iterate for o in self._observers if o.on_iterate is not None]
        if not hooks:
            return None

        def call_all(n: int, z: Tensor) -> None:
            for hook in hooks:
                hook(n, z)

        return call_all

    def solved(self, stats: SolverStats) -> None:
        """Hand a finished solve's statistics to each observer that asked."""
        for observer in list(self._observers):
            if observer.on_solve is not None:
                observer.on_solve(stats)
