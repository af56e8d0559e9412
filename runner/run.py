"""One training run of a registry experiment, written into the results store.

``run_experiment(RunConfig(row="HAM-EO-DEQ", depth=3, seed=0))`` trains, tests, and leaves
``results/<sweep>/<run>/`` with ``config.json``, ``metrics.csv``, ``summary.json``,
``trajectories.npz``, ``energy.npz`` and ``checkpoints/last.ckpt``. Its life cycle:

- a run already ``finished`` (and sound) with the same settings is returned as it is; one
  stored with other settings is refused (:class:`ConfigMismatch`), never silently reused;
- one process at a time trains a run (:class:`~runner.store.RunLock`);
- a run killed or interrupted resumes from the checkpoint of its last finished epoch; a
  checkpoint that cannot be read is kept beside as ``last.ckpt.damaged`` and the run starts
  from its first epoch (nothing is deleted, and no restart fails on it again);
- a loss that goes non-finite ends the run as ``diverged`` (epoch and batch recorded);
- SIGTERM/SIGINT end it as ``interrupted``; any other error as ``failed`` with its traceback.

With W&B (``cfg.wandb_mode`` online or offline) the W&B run is created only when the run is
trained, and closed with its outcome whatever happens. The one exception: a point that a W&B
sweep agent hands out (``cfg.wandb_run_id`` set) but the store already holds is published into
the agent's run from the store (history, summary, artifact), never trained again and never
left empty.
"""
from __future__ import annotations

import errno
import math
import os
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import CSVLogger

from custom_callbacks import EnergyTracker, IterationsToConverge, ResidualTrajectories
from deq_modules.data import DatasetNotFoundError, HopfieldDataModule
from deq_modules.experiments import CONVERGENCE_TOL
from deq_modules.lit import lit_module_for

from .config import RunConfig
from .history import EpochHistory, ProgressLog, SkipFinalValidation, mean_epoch_seconds
from .result_files import save_npz
from .safety import (DivergenceGuard, Diverged, EpochCheckpoint, Interrupted,
                     unreadable_checkpoint)
from .store import (CONFIG, DIVERGED, ENERGY, FAILED, FINISHED, INTERRUPTED, LAST_CHECKPOINT,
                    ITERS_RULE, ITERS_RULE_KEY, LOCK, METRICS, RUNNING, SUMMARY, TEST_ACC,
                    TEST_LOSS, TEST_METRICS, TRAJECTORIES, RunLock,
                    atomic_write_json, finished_problems, read_json, summary_of)
from .wandb_run import NoWandb, wandb_log

SUMMARY_KEYS = (*TEST_METRICS, "test/rel_residual")
DAMAGED_SUFFIX = ".damaged"  # a resume checkpoint that cannot be read, set aside


class ConfigMismatch(ValueError):
    """The run directory holds a run with other settings than the one asked for."""


def _is_main_process() -> bool:
    """False in the worker processes that Lightning's DDP launcher starts (ranks > 0)."""
    return all(os.environ.get(k, "0") == "0" for k in ("LOCAL_RANK", "NODE_RANK"))


def discard(directory: Path) -> None:
    """Remove a run's outputs (not its lock), so that it trains again from the start."""
    for path in directory.iterdir() if directory.is_dir() else ():
        if path.name == LOCK:
            continue
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def run_experiment(cfg: RunConfig, rerun: bool = False) -> dict[str, Any]:
    """Train and test one run; returns its summary (also written to ``summary.json``).

    A finished or diverged run with the same settings is returned as stored, unless ``rerun``
    discards it (results and checkpoints) to train again. Raises :class:`ConfigMismatch` for
    a stored run with other settings, :class:`~runner.store.RunLocked` when another process
    trains it now.
    """
    out = cfg.directory
    if not _is_main_process():  # a DDP worker: train, leave the store and W&B to rank 0
        return _train_and_test(cfg, out, NoWandb(cfg))
    log = wandb_log(cfg)  # the W&B side, or one that does nothing
    out.mkdir(parents=True, exist_ok=True)
    with RunLock(out):
        if rerun:
            discard(out)
        stored = read_json(out / CONFIG)
        if stored is not None:
            diff = cfg.differences(stored)
            if diff:
                raise ConfigMismatch(
                    f"{out} holds a run with other settings ({'; '.join(diff)}); use another "
                    "--name (or --results) for these settings, or --rerun to discard it")
        previous = summary_of(out) or {}
        if previous.get("status") == DIVERGED:
            return log.publish_stored(out, previous, stored)
        if previous.get("status") == FINISHED:
            problems = finished_problems(out)
            if not problems:
                return log.publish_stored(out, previous, stored)
            print(f"{cfg.name}: stored result is damaged ({'; '.join(problems)}); training "
                  "it again", flush=True)
            discard(out)
            stored = None
        _set_aside_unreadable_checkpoint(out, cfg.name)
        run_id = log.run_id(stored)
        atomic_write_json(out / CONFIG, {**cfg.to_dict(), "wandb_run_id": run_id})
        atomic_write_json(out / SUMMARY, {"status": RUNNING, "run_name": cfg.name,
                                          "pid": os.getpid()})
        start = time.monotonic()
        record = dict(run_name=cfg.name, row=cfg.row, depth=cfg.depth, seed=cfg.seed)
        try:
            log.start(out, run_id)
            summary = _train_and_test(cfg, out, log)
        except Diverged as err:
            summary = dict(record, status=DIVERGED, error=str(err), epoch=err.epoch + 1,
                           batch=None if err.batch is None else err.batch + 1, loss=err.loss,
                           wall_time_s=time.monotonic() - start)
            atomic_write_json(out / SUMMARY, summary)
            log.end(summary, exit_code=0)
            return summary
        except BaseException as err:
            status = INTERRUPTED if isinstance(err, (Interrupted, KeyboardInterrupt)) else FAILED
            failure = dict(record, status=status, error=f"{type(err).__name__}: {err}",
                           traceback=traceback.format_exc(), wall_time_s=time.monotonic() - start)
            try:
                atomic_write_json(out / SUMMARY, failure)
            except OSError as write_err:  # a full disk: the run's own error is the one to tell
                print(f"{cfg.name}: could not record the failure in {SUMMARY}: {write_err}",
                      file=sys.stderr)
            log.end(failure, exit_code=getattr(err, "exit_code", 1))
            raise
        summary.update(record, **log.pending(), wall_time_s=time.monotonic() - start)
        atomic_write_json(out / SUMMARY, summary)
        uploaded = log.finish(summary, out)
        if uploaded:
            summary.update(uploaded)
            atomic_write_json(out / SUMMARY, summary)
        return summary


def _set_aside_unreadable_checkpoint(out: Path, name: str) -> None:
    """A resume checkpoint that cannot be read would fail this start and every later one:
    rename it to ``last.ckpt.damaged`` (kept for a look, never deleted; an older one there is
    replaced) so that the run trains from its first epoch."""
    checkpoint = out / LAST_CHECKPOINT
    problem = unreadable_checkpoint(checkpoint) if checkpoint.exists() else None
    if problem is None:
        return
    aside = checkpoint.with_name(checkpoint.name + DAMAGED_SUFFIX)
    os.replace(checkpoint, aside)
    print(f"{name}: {LAST_CHECKPOINT.as_posix()} cannot be read ({problem}); kept as "
          f"{aside.relative_to(out).as_posix()}, training from the first epoch", flush=True)


def hardware_problem(accelerator: str, devices: int | str) -> str | None:
    """Why Lightning would refuse ``--accelerator``/``--devices`` on this machine (e.g. ``gpu``
    without a GPU), or ``None``: asked of Lightning itself, before any run, by building the
    trainer's device settings alone (no model, no process started)."""
    from lightning.pytorch.accelerators import AcceleratorRegistry

    try:
        L.Trainer(accelerator=accelerator, devices=devices, logger=False,
                  enable_checkpointing=False, enable_progress_bar=False,
                  enable_model_summary=False)
    except Exception as err:  # noqa: BLE001 - Lightning's MisconfigurationException and others
        here = [name for name in AcceleratorRegistry
                if AcceleratorRegistry[name]["accelerator"].is_available()]
        return (f"--accelerator {accelerator} --devices {devices} cannot run on this machine "
                f"({err}); accelerators available here: {', '.join(here)} (--accelerator auto "
                "picks one)")
    return None


def failure_message(cfg: RunConfig, err: BaseException) -> str:
    """Why the run ``cfg`` failed and what to do, in one line that follows its name (its
    traceback, when the run got as far as recording it, is in its ``summary.json``)."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f"{err.strerror} (disk full or over quota) while writing "
                f"under {cfg.directory}: free space on that disk, e.g. delete runs you no longer "
                f"need in {cfg.results}, or the checkpoints/ folders of finished runs (their "
                "last.ckpt is the largest file; the table and figures do not need it), then "
                "run again: it resumes from its last whole epoch checkpoint")
    if isinstance(err, DatasetNotFoundError):  # the message names the files and the fix
        return str(err)
    if isinstance(err, OSError) and err.filename is not None \
            and _within(Path(str(err.filename)), Path(cfg.results)):
        return (f"cannot write the results: {err.strerror}: {err.filename}; --results "
                f"{cfg.results} must be a writable directory: choose another --results or "
                "fix its permissions")
    recorded = (summary_of(cfg.directory) or {}).get("status") == FAILED
    where = f" (traceback in {cfg.directory / SUMMARY})" if recorded else ""
    return f"{type(err).__name__}: {err}{where}"


def _within(path: Path, folder: Path) -> bool:
    """Whether ``path`` is ``folder`` or inside it (both taken as absolute, not resolved:
    the path may not exist)."""
    path, folder = path.absolute(), folder.absolute()
    return path == folder or folder in path.parents


def _trainer(cfg: RunConfig, out: Path, log: NoWandb, callbacks: list) -> L.Trainer:
    loggers: list = [CSVLogger(str(out), name="csv_logs"),  # step logs, one version per start
                     *log.loggers(out)]
    return L.Trainer(
        max_epochs=cfg.planned_epochs, accelerator=cfg.accelerator, devices=cfg.devices,
        logger=loggers, callbacks=callbacks, default_root_dir=str(out),
        enable_progress_bar=sys.stderr.isatty(), enable_model_summary=False,
        enable_checkpointing=False, num_sanity_val_steps=0, log_every_n_steps=50,
        limit_train_batches=cfg.limit_train_batches, limit_val_batches=cfg.limit_test_batches,
        limit_test_batches=cfg.limit_test_batches,
    )


def _train_and_test(cfg: RunConfig, out: Path, log: NoWandb) -> dict[str, Any]:
    """Train and test, logging to W&B through ``log``."""
    exp = cfg.experiment
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    dm = HopfieldDataModule(cfg.dataset, cfg.data_dir, batch_size=exp.batch_size,
                            download=cfg.download, seed=cfg.seed,
                            synthetic_kwargs=cfg.synthetic_kwargs)
    model = lit_module_for(exp, input_size=dm.input_size, mode=cfg.mode,
                           compile_f=cfg.compile_f, fused_anderson=cfg.fused_anderson)
    last_ckpt = out / LAST_CHECKPOINT
    resume = str(last_ckpt) if last_ckpt.exists() else None
    if resume is None and (out / METRICS).exists():
        (out / METRICS).unlink()  # a fresh start must not inherit a dead run's history
    trajectories = ResidualTrajectories(tol=CONVERGENCE_TOL)
    energy = EnergyTracker(stage="test")
    history = EpochHistory(out / METRICS, cfg.name)
    trainer = _trainer(cfg, out, log, [
        IterationsToConverge(tol=CONVERGENCE_TOL), trajectories, energy,
        LearningRateMonitor(logging_interval="step"), DivergenceGuard(), history,
        EpochCheckpoint(last_ckpt), ProgressLog(cfg.name),
        *([SkipFinalValidation()] if dm.validates_on_test_set else []),
    ])
    last_ckpt.parent.mkdir(parents=True, exist_ok=True)
    trainer.fit(model, datamodule=dm, ckpt_path=resume)
    if trainer.interrupted:  # Lightning swallowed a signal: the run is not finished
        raise Interrupted(15)
    results = trainer.test(model, datamodule=dm, verbose=False)[0]
    if trainer.interrupted:
        raise Interrupted(15)
    summary: dict[str, Any] = {k: results[k] for k in SUMMARY_KEYS if k in results}
    if not all(math.isfinite(summary.get(k, math.nan)) for k in (TEST_LOSS, TEST_ACC)):
        raise Diverged(trainer.current_epoch - 1, None, summary.get("test/loss", math.nan))
    if trainer.is_global_zero:
        _save_results(trainer, out, trajectories.result, energy.result, log)
    summary.update(
        status=FINISHED, dataset=cfg.dataset, epochs_trained=trainer.current_epoch,
        seconds_per_epoch=mean_epoch_seconds(out / METRICS),
        device=str(trainer.strategy.root_device), resumed=resume is not None,
        published_iters=exp.published_iters, published_acc=exp.published_acc,
        torch=torch.__version__, **{ITERS_RULE_KEY: ITERS_RULE},
    )
    return summary


def _save_results(trainer: L.Trainer, out: Path, trajectories: dict | None,
                  energy: dict | None, log: NoWandb) -> None:
    """The callbacks' arrays into the store (and the heatmap into W&B)."""
    if trajectories is not None:
        save_npz(out / TRAJECTORIES, trajectories)
    if energy is not None:
        save_npz(out / ENERGY, energy)
    if trajectories is not None:
        log.log_heatmap(trajectories, trainer.global_step)
