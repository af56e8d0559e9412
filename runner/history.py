"""What a run tells the outside while it trains: ``metrics.csv`` and plain progress lines.

Both are made for long runs under ``nohup``: one line per event, no escape codes, flushed at
once, so ``tail -f sweep.log`` shows where a sweep stands.
"""
from __future__ import annotations

import csv
import io
import math
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

from .eta import duration_text
from .store import atomic_write_text


def quiet_lightning() -> None:
    """Keep a long log readable: Lightning's banners and known-harmless warnings off.

    Called by the entry points (never at import)."""
    import logging
    import warnings

    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for pattern in (".*does not have many workers.*", ".*is smaller than the logging interval.*",
                    ".*exists and is not empty.*", ".*LeafSpec.*",
                    ".*anonymous setting has no effect.*"):
        warnings.filterwarnings("ignore", pattern)


def read_history(path: Path) -> list[dict[str, str]]:
    """The rows of a ``metrics.csv`` (``[]`` when there is none)."""
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


class EpochHistory(Callback):
    """Per-epoch history: one row per epoch in ``metrics.csv`` and one plain log line.

    The CSV is rewritten atomically at every epoch end; after a resume, the rows of epochs
    that are being redone are dropped, so every epoch appears exactly once.
    """

    SHOWN = ("train/loss", "val/acc", "val/iters_to_converge")

    def __init__(self, path: Path, prefix: str, stream: TextIO | None = None):
        self.path, self.prefix, self.stream = Path(path), prefix, stream
        self.start_epoch = 0  # > 0 when resumed from a checkpoint
        self._t0 = time.monotonic()
        self._validated = False  # whether this epoch ran a validation

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start_epoch = trainer.current_epoch
        rows = read_history(self.path)
        if rows and trainer.is_global_zero:
            self._write([r for r in rows if int(r["epoch"]) < self.start_epoch])

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._t0 = time.monotonic()
        self._validated = False
        # The epoch's learning rate: read now, since an epoch-interval scheduler has already
        # stepped to the next epoch's when on_train_epoch_end runs.
        self._lr = (trainer.optimizers[0].param_groups[0]["lr"]
                    if trainer.lr_scheduler_configs else None)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._validated = True

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        seconds = time.monotonic() - self._t0
        row: dict[str, Any] = {"epoch": trainer.current_epoch, "step": trainer.global_step,
                               "epoch_time_s": round(seconds, 3)}
        for key, value in sorted(trainer.callback_metrics.items()):
            # Lightning keeps the last validation's numbers: an epoch without one shows none
            stale = key.startswith("val/") and not self._validated
            if not key.endswith("_step") and not stale:
                row[key.removesuffix("_epoch")] = float(value)
        if self._lr is not None:
            row["lr-Madam"] = self._lr
        if trainer.is_global_zero:
            self._write(read_history(self.path) + [row])
            parts = [f"{self.prefix} epoch {trainer.current_epoch + 1}/{trainer.max_epochs}"]
            parts += [f"{k} {row[k]:.4g}" for k in self.SHOWN if k in row]
            print("  ".join(parts + [duration_text(seconds)]), file=self.stream or sys.stdout,
                  flush=True)

    def _write(self, rows: list[dict[str, Any]]) -> None:
        keys = list(dict.fromkeys(k for r in rows for k in r)) or ["epoch"]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.path, buffer.getvalue())


class SkipFinalValidation(Callback):
    """No validation in the last epoch, for runs whose validation set is the test set (the
    paper's protocol) and whose training is followed by the test: it would evaluate the same
    weights on the same images twice (a sixth of a one-epoch run's time at 5 layers).

    Lightning validates only while ``trainer.limit_val_batches > 0``; that limit is 0 during
    the last epoch and restored when training ends.
    """

    def __init__(self) -> None:
        self._limit: Any = None

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.max_epochs is not None and trainer.current_epoch == trainer.max_epochs - 1:
            self._limit, trainer.limit_val_batches = trainer.limit_val_batches, 0

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._limit is not None:
            trainer.limit_val_batches, self._limit = self._limit, None


def mean_epoch_seconds(path: Path) -> float | None:
    """Mean ``epoch_time_s`` over the epochs of a ``metrics.csv`` (all starts of the run)."""
    times = [float(r["epoch_time_s"]) for r in read_history(path) if r.get("epoch_time_s")]
    return sum(times) / len(times) if times else None


class ProgressLog(Callback):
    """A progress line at least every ``fraction`` of an epoch and every ``seconds``.

    ``HAM-L3-s0 epoch 2/10 batch 470/938 (50%)  7.9 batch/s  run ETA 17m48s``: batches done,
    the rate since this start, and the time left for the whole run at that rate. Validation
    and test passes, minutes long at paper settings, get the same cadence:
    ``HAM-L3-s0 test batch 79/157 (50%)  2.1 batch/s  ETA 37s`` (the pass's own rate and time
    left). Reading the clock is all it does per batch (no device synchronisation).
    """

    def __init__(self, prefix: str, fraction: float = 0.1, seconds: float = 60.0,
                 stream: TextIO | None = None):
        self.prefix, self.fraction, self.seconds, self.stream = prefix, fraction, seconds, stream
        self._start = self._last = 0.0
        self._done = 0  # batches trained in this process
        self._next = 0
        self._eval_start = self._eval_last = 0.0
        self._eval_next = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = self._last = time.monotonic()
        self._done = 0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        total = trainer.num_training_batches
        self._next = self._stride(total) if math.isfinite(total) else 1

    def _stride(self, total: float) -> int:
        """Batches between two lines: ``fraction`` of the pass."""
        return max(1, int(round(total * self.fraction)))

    def _due(self, done: int, total: float, next_at: int, last: float, now: float) -> bool:
        """A line after batch ``done`` of ``total``: not at the pass's end (its own line follows
        or the pass is over), else once ``next_at`` is reached or ``seconds`` have passed."""
        return done < total and (done >= next_at or now - last >= self.seconds)

    def _print(self, text: str) -> None:
        print(text, file=self.stream or sys.stdout, flush=True)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        self._done += 1
        now = time.monotonic()
        total = trainer.num_training_batches
        if not math.isfinite(total):  # an iterable loader of unknown length: nothing to scale
            return
        done_in_epoch = batch_idx + 1
        if self._due(done_in_epoch, total, self._next, self._last, now):
            self._next = done_in_epoch + self._stride(total)
            self._last = now
            if trainer.is_global_zero:
                rate = self._done / max(now - self._start, 1e-9)
                left = (trainer.max_epochs - trainer.current_epoch - 1) * total + total \
                    - done_in_epoch
                self._print(f"{self.prefix} epoch {trainer.current_epoch + 1}/{trainer.max_epochs} "
                            f"batch {done_in_epoch}/{total} ({100 * done_in_epoch / total:.0f}%)  "
                            f"{rate:.3g} batch/s  run ETA {duration_text(left / rate)}")

    # -- validation and test passes ------------------------------------------------------
    def _eval_start_pass(self) -> None:
        self._eval_start = self._eval_last = time.monotonic()
        self._eval_next = 0

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._eval_start_pass()

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._eval_start_pass()

    def _eval_batch_end(self, stage: str, trainer: pl.Trainer, batch_idx: int,
                        totals: Any, dataloader_idx: int) -> None:
        if trainer.sanity_checking:
            return
        total = totals[dataloader_idx] if isinstance(totals, (list, tuple)) else totals
        if not math.isfinite(total) or total <= 0:
            return
        now = time.monotonic()
        done = batch_idx + 1
        if not self._due(done, total, self._eval_next, self._eval_last, now):
            return
        self._eval_next = done + self._stride(total)
        self._eval_last = now
        if trainer.is_global_zero:
            rate = done / max(now - self._eval_start, 1e-9)
            self._print(f"{self.prefix} {stage} batch {done}/{int(total)} "
                        f"({100 * done / total:.0f}%)  {rate:.3g} batch/s  "
                        f"ETA {duration_text((total - done) / rate)}")

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                                outputs: Any, batch: Any, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        self._eval_batch_end("val", trainer, batch_idx, trainer.num_val_batches, dataloader_idx)

    def on_test_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                          outputs: Any, batch: Any, batch_idx: int,
                          dataloader_idx: int = 0) -> None:
        self._eval_batch_end("test", trainer, batch_idx, trainer.num_test_batches, dataloader_idx)
