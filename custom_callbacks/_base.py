"""Shared machinery of the convergence callbacks: per-batch DEQ observers, DDP reductions.

Every callback here watches the forward solves of ``pl_module.deq`` (a :class:`deq_core.DEQ`)
through :meth:`DEQ.observe`. An observer is registered when a batch starts and removed when it
ends, so it sees exactly the solves of that step (not those of a sanity check, another stage or
an unrelated call), and removed again on exceptions and at teardown, so a crashed step never
leaves one behind. Each callback holds its own handle, so any number of them (and of other
observers) can be active at once, in any order.
"""
from __future__ import annotations

import abc
from typing import Any, Callable, Iterable

import lightning.pytorch as pl
import torch
from torch import Tensor

from deq_core import DEQ, ObserverHandle

# The stages a callback can observe: Lightning's three loops, as the hooks below name them;
# logged quantities are named ``<stage>/<quantity>`` (``test/iters_to_converge``).
STAGES = ("train", "val", "test")


def get_deq(pl_module: pl.LightningModule, who: str) -> DEQ:
    """The module's DEQ, or an error that says what the callback expected."""
    deq = getattr(pl_module, "deq", None)
    if not isinstance(deq, DEQ):
        raise AttributeError(
            f"{who} needs `pl_module.deq` to be a deq_core.DEQ; "
            f"{type(pl_module).__name__}.deq is {type(deq).__name__}"
        )
    return deq


def batch_inputs(batch: Any) -> Tensor:
    """``x`` of a batch ``(x, y)`` (or of a bare tensor batch)."""
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
        return batch[0]
    raise TypeError(f"expected a batch (x, y) or a tensor x, got {type(batch).__name__}")


class ObservingCallback(pl.Callback, abc.ABC):
    """Base class: one DEQ observer per batch of the chosen stages.

    Subclasses give the observer for a batch (:meth:`observer_for`) and what to do once the
    batch is over (:meth:`batch_done`); this class routes Lightning's hooks to them.
    """

    def __init__(self, stages: Iterable[str]):
        stages = tuple(stages)
        unknown = sorted(set(stages) - set(STAGES))
        if unknown:
            raise ValueError(f"unknown stage(s) {unknown}; valid stages: {list(STAGES)}")
        self.stages = stages
        self._handle: ObserverHandle | None = None

    # -- for subclasses -------------------------------------------------------------------
    @abc.abstractmethod
    def observer_for(self, stage: str, pl_module: pl.LightningModule,
                     batch: Any) -> dict[str, Callable]:
        """Keyword arguments of :meth:`DEQ.observe` (``on_solve``, ``on_iterate``) for a batch."""

    def batch_done(self, stage: str, trainer: pl.Trainer, pl_module: pl.LightningModule,
                   batch: Any) -> None:
        """Called after the batch's observer has been removed."""

    # -- routing ---------------------------------------------------------------------------
    def _start(self, stage: str, pl_module: pl.LightningModule, batch: Any) -> None:
        self._detach()  # a previous batch that never ended (interrupted) must not keep observing
        if stage in self.stages:
            deq = get_deq(pl_module, type(self).__name__)
            self._handle = deq.observe(**self.observer_for(stage, pl_module, batch))

    def _end(self, stage: str, trainer: pl.Trainer, pl_module: pl.LightningModule,
             batch: Any) -> None:
        self._detach()
        if stage in self.stages:
            self.batch_done(stage, trainer, pl_module, batch)

    def _detach(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._start("train", pl_module, batch)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._end("train", trainer, pl_module, batch)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self._start("val", pl_module, batch)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx,
                                dataloader_idx=0):
        self._end("val", trainer, pl_module, batch)

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self._start("test", pl_module, batch)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._end("test", trainer, pl_module, batch)

    def on_exception(self, trainer, pl_module, exception):
        self._detach()

    def teardown(self, trainer, pl_module, stage):
        self._detach()


def reduce_sum(trainer: pl.Trainer, tensor: Tensor) -> Tensor:
    """Sum over processes (identity on one device). Every process must call it."""
    if trainer.world_size > 1:
        return trainer.strategy.reduce(tensor, reduce_op="sum")
    return tensor


def reduce_max_int(trainer: pl.Trainer, value: int, device: torch.device) -> int:
    """Maximum of a Python int over processes, so that padded tensors agree in shape."""
    if trainer.world_size > 1:
        t = torch.tensor(value, device=device)
        return int(trainer.strategy.reduce(t, reduce_op="max").item())
    return value
