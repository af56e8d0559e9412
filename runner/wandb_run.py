"""W&B wiring of one run: the logger (name, group, tags, flat config) and the final upload."""
from __future__ import annotations

import secrets
import string
import warnings
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import WandbLogger

from .config import RunConfig
from .result_files import figure_to_array
from .store import CONFIG, LAST_CHECKPOINT, METRICS, TRAJECTORIES

# Registry settings that do not describe how the run trains (published numbers, prose).
_NOT_SETTINGS = ("row", "depth", "epochs", "published_iters", "published_acc", "note")


def new_run_id() -> str:
    """W&B's own id format (8 lowercase letters/digits), chosen here so a resume continues it."""
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


def wandb_config(cfg: RunConfig) -> dict[str, Any]:
    """Flat W&B config: the same keys for every run, local or from a W&B agent.

    ``experiment`` is the row key (``HAM-EO-DEQ-L3``), as in the sweep's grid; the registry's
    settings (solver, damping, iterations, ...) sit beside the run's own settings.
    """
    exp = cfg.experiment
    settings = {k: v for k, v in exp.to_dict().items() if k not in _NOT_SETTINGS}
    return {**settings, "experiment": exp.key, "row": exp.row, "depth": exp.depth,
            "seed": cfg.seed, "dataset": cfg.dataset, "epochs": cfg.planned_epochs,
            "limit_train_batches": cfg.limit_train_batches,
            "limit_test_batches": cfg.limit_test_batches, "synthetic_kwargs": cfg.synthetic_kwargs,
            "sweep": cfg.sweep}


def wandb_tags(cfg: RunConfig) -> list[str]:
    exp = cfg.experiment
    return [exp.row, exp.model, exp.structure, exp.solver, *cfg.extra_tags]


def wandb_logger(cfg: RunConfig, directory: Path, run_id: str) -> WandbLogger:
    """The run's logger: named like the store's run, grouped by row and depth."""
    return WandbLogger(
        project=cfg.wandb_project, entity=cfg.wandb_entity, name=cfg.name, id=run_id,
        group=cfg.experiment.key, tags=wandb_tags(cfg), save_dir=str(directory),
        offline=cfg.wandb_mode == "offline", resume="allow", config=wandb_config(cfg),
        log_model=False,
    )


def log_figure(logger: WandbLogger, key: str, figure: Any, step: int) -> None:
    """Log a matplotlib figure as an image; a figure is never worth a failed run."""
    try:
        logger.log_image(key=key, images=[figure_to_array(figure)], step=step)
    except Exception as exc:  # noqa: BLE001 - see docstring
        warnings.warn(f"could not log {key!r} to W&B: {exc!r}", UserWarning, stacklevel=2)


def finish_wandb(logger: WandbLogger, summary: dict[str, Any], out: Path) -> None:
    """Final metrics into the W&B summary; the run's small files and last checkpoint as an
    artifact, so another machine can rebuild the figures from W&B alone."""
    import wandb

    run = logger.experiment
    run.summary.update({k: v for k, v in summary.items() if "/" in k})
    artifact = wandb.Artifact(f"results-{run.name}", type="run-results")
    for name in (CONFIG, TRAJECTORIES, "energy.npz", METRICS, str(LAST_CHECKPOINT)):
        if (out / name).exists():
            artifact.add_file(str(out / name), name=name)
    run.log_artifact(artifact)
    run.finish()
