"""What keeps a long run's progress and its record honest: per-epoch checkpoints, a divergence
guard, and signals turned into a clean, resumable interruption."""
from __future__ import annotations

import os
import signal
from pathlib import Path
from types import FrameType
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from .names import EXIT_SIGNAL

# A paper model starts near loss 0.5 (MSE against one-hot targets); a loss this large means
# the weights have blown up even if it is still finite.
MAX_LOSS = 1e4


class EpochCheckpoint(Callback):
    """``last.ckpt`` after every training epoch, written to a temporary file and renamed.

    Lightning's own ``ModelCheckpoint(save_last=True, save_top_k=0)`` writes ``last.ckpt`` only
    when training ends; a run killed in epoch 3 of 10 would then start again from epoch 1.
    This one runs after the epoch's validation, so the restored run starts the next epoch.
    """

    def __init__(self, path: Path):
        self.path = Path(path)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        try:
            trainer.save_checkpoint(tmp)  # every process calls it; rank zero writes
            if trainer.is_global_zero:
                os.replace(tmp, self.path)
        except BaseException:
            # A half-written checkpoint (a full disk, a signal) is never resumed from, and on a
            # full disk its bytes are the space the failure record needs.
            if trainer.is_global_zero:
                tmp.unlink(missing_ok=True)
            raise


def unreadable_checkpoint(path: Path) -> str | None:
    """Why the checkpoint at ``path`` cannot be resumed from (cut short, not a checkpoint,
    unreadable), or ``None`` when it loads. Loads it once on the CPU, as the resume will."""
    try:
        torch.load(path, map_location="cpu", weights_only=False)  # our own file
    except Exception as err:  # noqa: BLE001 - any reason it cannot be read is the answer
        first = (str(err).strip().splitlines() or [""])[0]  # torch's messages run on
        return f"{type(err).__name__}: {first}" if first else type(err).__name__
    return None


class Diverged(RuntimeError):
    """Training produced a non-finite (or absurdly large) loss."""

    def __init__(self, epoch: int, batch: int | None, loss: float):
        where = f"batch {batch + 1}" if batch is not None else "the test"
        super().__init__(f"loss {loss:.4g} at epoch {epoch + 1}, {where}: the run diverged "
                         "(try a smaller learning rate)")
        self.epoch, self.batch, self.loss = epoch, batch, loss


class DivergenceGuard(Callback):
    """Stop training when the loss goes non-finite or above ``max_loss``.

    Each batch adds one comparison on the device; the host looks every ``check_every`` batches
    and at each epoch's end (a synchronisation that often is negligible), and raises
    :class:`Diverged` with the epoch and the first bad batch.
    """

    def __init__(self, max_loss: float = MAX_LOSS, check_every: int = 20):
        self.max_loss, self.check_every = max_loss, check_every
        self._first_bad: torch.Tensor | None = None  # batch index, -1 while all is well
        self._bad_loss: torch.Tensor | None = None

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._first_bad = torch.full((), -1, dtype=torch.long, device=pl_module.device)
        self._bad_loss = torch.zeros((), device=pl_module.device)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None or self._first_bad is None:
            return
        loss = loss.detach().float()
        bad = ~(loss.abs() <= self.max_loss)  # NaN compares False, so it counts as bad
        new = bad & (self._first_bad < 0)
        self._first_bad = torch.where(new, torch.full_like(self._first_bad, batch_idx),
                                      self._first_bad)
        self._bad_loss = torch.where(new, loss, self._bad_loss)
        if (batch_idx + 1) % self.check_every == 0:
            self._check(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check(trainer)

    def _check(self, trainer: pl.Trainer) -> None:
        first = int(self._first_bad)  # the synchronisation
        if first >= 0:
            raise Diverged(trainer.current_epoch, first, float(self._bad_loss))


class Interrupted(BaseException):
    """SIGTERM or SIGINT arrived; the run is resumable from its last checkpoint.

    A ``BaseException`` (like ``KeyboardInterrupt``) so that no ``except Exception`` on the way
    swallows it; ``exit_code`` is the shell convention ``128 + signal``.
    """

    def __init__(self, signum: int):
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum
        self.exit_code = EXIT_SIGNAL + signum


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signum)


def install_signal_handlers() -> None:
    """SIGTERM and SIGINT raise :class:`Interrupted` in the main thread (entry points only).

    Installed before ``Trainer.fit``, the handler is kept by Lightning, which calls it after
    its own. Without it SIGTERM would leave Lightning's handler alone and the process would
    exit 0 as if the sweep had succeeded.
    """
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _raise_interrupted)
