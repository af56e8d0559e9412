"""One training run of a registry experiment, written into the results store.

``run_experiment(RunConfig(row="HAM-EO-DEQ", depth=3, seed=0))`` trains, tests, and leaves
``results/<sweep>/<run>/`` with ``config.json``, ``metrics.csv``, ``summary.json``,
``trajectories.npz`` and ``checkpoints/last.ckpt``. A run whose summary says ``finished`` is
skipped; a run killed midway resumes from its last epoch checkpoint; a failure is recorded in
the summary (status ``failed`` and the error) and re-raised.
"""
from __future__ import annotations

import csv
import io
import os
import secrets
import string
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from custom_callbacks import IterationsToConverge, ResidualTrajectories

from .data import HopfieldDataModule
from .experiments import CONVERGENCE_TOL, get_experiment
from .lit import lit_module_for
from .results import (
    FAILED, FINISHED, RUNNING, atomic_write_json, atomic_write_text, read_json, run_dir, summary_of,
)

WANDB_MODES = ("online", "offline", "disabled")
SUMMARY_KEYS = ("test/acc", "test/loss", "test/iters_to_converge", "test/not_converged",
                "test/rel_residual")


@dataclass
class RunConfig:
    """Everything that defines one run; the registry fills in the paper's settings."""

    row: str
    depth: int
    seed: int
    dataset: str = "emnist-mnist"
    data_dir: Optional[str] = None
    download: bool = True
    epochs: Optional[int] = None  # None: the row's epochs from the registry
    limit_train_batches: Optional[Union[int, float]] = None
    limit_test_batches: Optional[Union[int, float]] = None
    results: str = "results"
    sweep: str = "table2"
    accelerator: str = "auto"
    devices: Union[int, str] = 1
    wandb_mode: str = "disabled"
    wandb_project: str = "hopfield-deq"
    wandb_entity: Optional[str] = None
    wandb_run_id: Optional[str] = None  # set by a W&B agent whose run is already started
    synthetic_kwargs: Optional[Dict[str, Any]] = None
    extra_tags: List[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.wandb_mode not in WANDB_MODES:
            raise ValueError(f"unknown wandb_mode {self.wandb_mode!r}; valid: {list(WANDB_MODES)}")
        self.experiment = get_experiment(self.row, self.depth)  # validates row and depth

    @property
    def name(self) -> str:
        return self.experiment.run_name(self.seed)

    @property
    def directory(self) -> Path:
        return run_dir(self.results, self.sweep, self.name)

    def to_dict(self) -> Dict[str, Any]:
        d = {k: v for k, v in asdict(self).items()}
        d["experiment"] = self.experiment.to_dict()
        d["run_name"] = self.name
        return d


def parse_batches(text: str) -> Union[int, float]:
    """A ``--limit-*-batches`` value: ``"5"`` is a count of batches, ``"0.25"`` a fraction."""
    value = float(text)
    return int(value) if value.is_integer() and "." not in text else value


def quiet_lightning() -> None:
    """Keep a long log readable: Lightning's banners and known-harmless warnings off.

    Called by the entry points (never at import)."""
    import logging
    import warnings

    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for pattern in (".*does not have many workers.*", ".*is smaller than the logging interval.*",
                    ".*exists and is not empty.*", ".*treespec, LeafSpec.*",
                    ".*anonymous setting has no effect.*"):
        warnings.filterwarnings("ignore", pattern)


class EpochHistory(Callback):
    """Per-epoch history: one row per epoch in ``metrics.csv`` and one plain log line.

    The CSV is rewritten atomically at every epoch end; after a resume, the rows of epochs
    that are being redone are dropped, so every epoch appears exactly once. The line is made
    for ``nohup`` logs (no progress-bar escapes).
    """

    SHOWN = ("train/loss", "val/acc", "val/iters_to_converge")

    def __init__(self, path: Path, prefix: str, stream=None):
        self.path, self.prefix, self.stream = Path(path), prefix, stream
        self.start_epoch = 0  # > 0 when resumed from a checkpoint
        self._t0 = time.monotonic()

    def on_train_start(self, trainer, pl_module) -> None:
        self.start_epoch = trainer.current_epoch
        rows = self._read()
        if rows and trainer.is_global_zero:
            self._write([r for r in rows if int(r["epoch"]) < self.start_epoch])

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._t0 = time.monotonic()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        seconds = time.monotonic() - self._t0
        row: Dict[str, Any] = {"epoch": trainer.current_epoch, "step": trainer.global_step,
                               "epoch_time_s": round(seconds, 3)}
        for key, value in sorted(trainer.callback_metrics.items()):
            if not key.endswith("_step"):
                row[key.removesuffix("_epoch")] = float(value)
        if trainer.lr_scheduler_configs:
            row["lr-Madam"] = trainer.optimizers[0].param_groups[0]["lr"]
        if trainer.is_global_zero:
            self._write(self._read() + [row])
            parts = [f"{self.prefix} epoch {trainer.current_epoch + 1}/{trainer.max_epochs}"]
            parts += [f"{k} {row[k]:.4g}" for k in self.SHOWN if k in row]
            print("  ".join(parts + [f"{seconds:.0f}s"]), file=self.stream or sys.stdout,
                  flush=True)

    def _read(self) -> List[Dict[str, str]]:
        if not self.path.exists():
            return []
        with open(self.path, newline="") as f:
            return list(csv.DictReader(f))

    def _write(self, rows: List[Dict[str, Any]]) -> None:
        keys = list(dict.fromkeys(k for r in rows for k in r))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.path, buffer.getvalue())


def _wandb_logger(cfg: RunConfig, directory: Path, run_id: Optional[str]):
    from lightning.pytorch.loggers import WandbLogger

    exp = cfg.experiment
    return WandbLogger(
        project=cfg.wandb_project, entity=cfg.wandb_entity, name=cfg.name, id=run_id,
        group=exp.key, tags=[exp.structure, exp.model, exp.solver, exp.row, *cfg.extra_tags],
        save_dir=str(directory), offline=cfg.wandb_mode == "offline", resume="allow",
        config=cfg.to_dict(), log_model=False,
    )


def _is_main_process() -> bool:
    """False in the worker processes that Lightning's DDP launcher starts (ranks > 0)."""
    return all(os.environ.get(k, "0") == "0" for k in ("LOCAL_RANK", "NODE_RANK"))


def run_experiment(cfg: RunConfig, skip_finished: bool = True) -> Dict[str, Any]:
    """Train and test one run; returns its summary (also written to ``summary.json``)."""
    out = cfg.directory
    if not _is_main_process():  # a DDP worker: train, leave the store to rank 0
        return _train_and_test(cfg, out, read_json(out / "config.json").get("wandb_run_id"))
    previous = summary_of(out)
    if skip_finished and previous and previous.get("status") == FINISHED:
        return previous
    out.mkdir(parents=True, exist_ok=True)
    config = read_json(out / "config.json") or {}
    run_id = cfg.wandb_run_id or config.get("wandb_run_id")
    if cfg.wandb_mode != "disabled" and run_id is None:
        # W&B's own format (8 lowercase letters/digits), kept so a resumed run continues it.
        run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
    atomic_write_json(out / "config.json", {**cfg.to_dict(), "wandb_run_id": run_id})
    atomic_write_json(out / "summary.json", {"status": RUNNING, "run_name": cfg.name})
    start = time.monotonic()
    try:
        summary = _train_and_test(cfg, out, run_id)
    except BaseException as err:
        atomic_write_json(out / "summary.json", {
            "status": FAILED, "run_name": cfg.name, "error": f"{type(err).__name__}: {err}",
            "traceback": traceback.format_exc(), "wall_time_s": time.monotonic() - start,
        })
        raise
    summary.update(status=FINISHED, run_name=cfg.name, wall_time_s=time.monotonic() - start)
    atomic_write_json(out / "summary.json", summary)
    return summary


def _train_and_test(cfg: RunConfig, out: Path, run_id: Optional[str]) -> Dict[str, Any]:
    exp = cfg.experiment
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    dm = HopfieldDataModule(cfg.dataset, cfg.data_dir, batch_size=exp.batch_size,
                            download=cfg.download, seed=cfg.seed,
                            synthetic_kwargs=cfg.synthetic_kwargs)
    model = lit_module_for(exp, input_size=dm.input_size)
    epochs = cfg.epochs if cfg.epochs is not None else exp.epochs

    last_ckpt = out / "checkpoints" / "last.ckpt"
    resume = str(last_ckpt) if last_ckpt.exists() else None
    if resume is None and (out / "metrics.csv").exists():
        (out / "metrics.csv").unlink()  # a fresh start must not inherit a dead run's history
    # Step-level CSV logs, one version per (re)start; metrics.csv holds the epoch history.
    loggers = [CSVLogger(str(out), name="csv_logs")]
    if cfg.wandb_mode != "disabled":
        loggers.append(_wandb_logger(cfg, out, run_id))
    history = EpochHistory(out / "metrics.csv", cfg.name)
    callbacks = [
        IterationsToConverge(tol=CONVERGENCE_TOL),
        ResidualTrajectories(out_dir=str(out), log_image=cfg.wandb_mode != "disabled"),
        ModelCheckpoint(dirpath=str(out / "checkpoints"), save_last=True, save_top_k=0),
        LearningRateMonitor(logging_interval="step"),
        history,
    ]
    trainer = L.Trainer(
        max_epochs=epochs, accelerator=cfg.accelerator, devices=cfg.devices,
        logger=loggers, callbacks=callbacks, default_root_dir=str(out),
        enable_progress_bar=sys.stderr.isatty(), enable_model_summary=False,
        num_sanity_val_steps=0, log_every_n_steps=50,
        limit_train_batches=cfg.limit_train_batches, limit_val_batches=cfg.limit_test_batches,
        limit_test_batches=cfg.limit_test_batches,
    )
    fit_start = time.monotonic()
    trainer.fit(model, datamodule=dm, ckpt_path=resume)
    if trainer.interrupted:  # Lightning swallows Ctrl-C / SIGTERM; the run is not finished
        raise KeyboardInterrupt(f"{cfg.name}: training was interrupted")
    fit_time = time.monotonic() - fit_start
    results = trainer.test(model, datamodule=dm, verbose=False)[0]
    if trainer.interrupted:
        raise KeyboardInterrupt(f"{cfg.name}: testing was interrupted")
    summary: Dict[str, Any] = {k: results[k] for k in SUMMARY_KEYS if k in results}
    summary.update(
        row=exp.row, depth=exp.depth, seed=cfg.seed, dataset=cfg.dataset,
        epochs_trained=trainer.current_epoch, fit_time_s=fit_time,
        seconds_per_epoch=fit_time / max(trainer.current_epoch - history.start_epoch, 1),
        device=str(trainer.strategy.root_device), resumed_from=resume,
        published_iters=exp.published_iters, published_acc=exp.published_acc,
        torch=torch.__version__, host=os.uname().nodename,
    )
    for logger in loggers[1:]:
        _finish_wandb(logger.experiment, summary, out)
    return summary


def _finish_wandb(run, summary: Dict[str, Any], out: Path) -> None:
    """Final metrics into the W&B summary; trajectories and checkpoint as an artifact, so
    another machine can rebuild the figures from W&B alone."""
    import wandb

    run.summary.update({k: v for k, v in summary.items() if "/" in k})
    artifact = wandb.Artifact(f"results-{run.name}", type="run-results")
    for name in ("config.json", "trajectories.npz", "metrics.csv", "checkpoints/last.ckpt"):
        if (out / name).exists():
            artifact.add_file(str(out / name), name=name)
    run.log_artifact(artifact)
    run.finish()
