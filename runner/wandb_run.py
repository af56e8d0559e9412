"""W&B wiring of one run: the run itself, its final summary and artifact.

The run layer talks to one object, :func:`wandb_log`'s: :class:`WandbLog` for a run logged
online or offline, :class:`NoWandb` (every call does nothing) for one without W&B.

The run is created here, by one ``wandb.init`` call with its name, group, tags and flat config,
and handed to Lightning as ``WandbLogger(experiment=run)``. Lightning never creates or reuses
a run of its own, so nothing it would drop is lost, and a (row, depth, seed) looks the same on
a dashboard whether it ran offline, online or under a W&B sweep agent: name
``HAM-EO-DEQ-L3-s0``, group ``HAM-EO-DEQ-L3``, tags row/model/structure/solver, the same
config keys, and the summary metrics ``test/acc``, ``test/iters_to_converge``, ...

Under a sweep agent (``wandb agent`` sets ``WANDB_SWEEP_ID`` and ``WANDB_RUN_ID`` for the
program it starts) ``wandb.init`` attaches to the agent's run: W&B takes the run id, project
and entity from the agent and merges the sweep's parameters into the config; name, group,
tags and config are ours. Those parameters (``experiment``, ``seed``) have the same names and
values as in :func:`wandb_config`, so the config is the same as offline.
"""
from __future__ import annotations

import math
import os
import secrets
import string
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import DEFINING_FIELDS, RunConfig
from .store import (CONFIG, ENERGY, LAST_CHECKPOINT, METRICS, SUMMARY, TRAJECTORIES,
                    atomic_write_json)

if TYPE_CHECKING:
    from lightning.pytorch.loggers import WandbLogger

# Registry settings that do not describe how the run trains (published numbers, prose).
_NOT_SETTINGS = ("row", "depth", "epochs", "published_iters", "published_acc", "note")
# Summary entries other than the metrics (``test/acc``, ...) that go to the W&B summary.
_SUMMARY_KEYS = ("status", "iters_rule", "error", "epochs_trained", "seconds_per_epoch",
                 "wall_time_s", "device", "resumed")
STEP = "trainer/global_step"  # Lightning's x axis for every logged metric
# In summary.json of a run logged online: whether W&B has its final summary and artifact
# ("done"; "pending" while it is sent, or if the process died then; "failed: ..."). A run
# without the key was not logged online, or before the key existed: nothing to send.
UPLOAD, UPLOADED = "wandb_upload", "done"
SET_ASIDE = Path("wandb") / "superseded"  # offline runs of a point now held by another run


def new_run_id() -> str:
    """W&B's own id format (8 lowercase letters/digits), chosen here so a resume continues it."""
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


def agent_run_id() -> str | None:
    """The run id a W&B sweep agent handed to this process, ``None`` outside an agent."""
    if os.environ.get("WANDB_SWEEP_ID") and os.environ.get("WANDB_RUN_ID"):
        return os.environ["WANDB_RUN_ID"]
    return None


def wandb_config(cfg: RunConfig) -> dict[str, Any]:
    """Flat W&B config: the same keys for every run, local or from a W&B agent.

    ``experiment`` is the row key (``HAM-EO-DEQ-L3``), as in the sweep's grid; the registry's
    settings (solver, damping, iterations, ...) sit beside the run's own settings.
    """
    exp = cfg.experiment
    settings = {k: v for k, v in exp.to_dict().items() if k not in _NOT_SETTINGS}
    defining = {k: getattr(cfg, k) for k in DEFINING_FIELDS}  # a new defining option too
    return {**defining, **settings, "experiment": exp.key, "row": exp.row, "depth": exp.depth,
            "epochs": cfg.planned_epochs, "sweep": cfg.sweep}


def wandb_tags(cfg: RunConfig) -> list[str]:
    exp = cfg.experiment
    return [exp.row, exp.model, exp.structure, exp.solver]


def init_kwargs(cfg: RunConfig, directory: Path, run_id: str | None) -> dict[str, Any]:
    """What :func:`start_run` asks ``wandb.init`` for: named like the store's run, grouped by
    row and depth. Under a sweep agent, project, entity and id are the agent's (W&B ignores
    ours there, with a warning), so they are left out."""
    kwargs: dict[str, Any] = dict(
        name=cfg.name, group=cfg.experiment.key, tags=wandb_tags(cfg), config=wandb_config(cfg),
        job_type="train", dir=str(directory), mode=cfg.wandb_mode, resume="allow")
    if agent_run_id() is None:
        kwargs.update(project=cfg.wandb_project, entity=cfg.wandb_entity, id=run_id)
    return kwargs


def start_run(cfg: RunConfig, directory: Path, run_id: str | None) -> Any:
    """Create (or resume, same id) the run's W&B run, with Lightning's step axis defined."""
    import wandb

    run = wandb.init(**init_kwargs(cfg, directory, run_id))
    run.define_metric(STEP)
    run.define_metric("*", step_metric=STEP, step_sync=True)
    return run


def wandb_logger(run: Any, directory: Path) -> "WandbLogger":
    """Lightning's logger on our run (it then creates nothing and drops nothing). It logs
    metrics only: the run's config is :func:`wandb_config`, complete and flat, set once by
    ``wandb.init``; Lightning's ``log_hyperparams`` would add the module's and the data's
    hyperparameters (14 more keys, two of them nested dicts) to trained runs only, so a run
    restored from the store would have another config than a trained one."""
    from lightning.pytorch.loggers import WandbLogger

    class MetricsOnly(WandbLogger):
        def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
            """Nothing: see :func:`wandb_logger`."""

    return MetricsOnly(experiment=run, save_dir=str(directory), log_model=False)


def wandb_summary(summary: dict[str, Any]) -> dict[str, Any]:
    """The part of a store summary that goes to the W&B summary: metrics and the outcome."""
    return {k: v for k, v in summary.items() if "/" in k or k in _SUMMARY_KEYS}


def end_run(run: Any, summary: dict[str, Any], exit_code: int) -> None:
    """Close a run that did not finish (failed, interrupted, diverged) with its outcome, so
    that it is not left open for the next run of the same process."""
    try:
        run.summary.update(wandb_summary(summary))
    finally:
        run.finish(exit_code=exit_code)


def needs_upload(summary: dict[str, Any]) -> bool:
    """Whether a stored run's upload to W&B did not complete (see :data:`UPLOAD`)."""
    return summary.get(UPLOAD, UPLOADED) != UPLOADED


def report_not_run(cfg: RunConfig, status: str, error: str) -> bool:
    """Under a W&B sweep agent, end the agent's run for a point not trained here (another
    process trains it: ``busy``; the store holds it with other settings: ``refused``) with the
    reason in its summary, as a failed run, so the sweep shows why instead of a run that never
    started. Returns whether there was such a run and it was reported."""
    if cfg.wandb_run_id is None or cfg.wandb_mode == "disabled":
        return False
    try:  # its files beside the point's folder: another process or other settings own that
        run = start_run(cfg, cfg.directory.parent, None)
        end_run(run, dict(status=status, error=error), exit_code=1)
    except Exception as exc:  # noqa: BLE001 - the caller's own exit status says it then
        print(f"{cfg.name}: could not report to W&B run {cfg.wandb_run_id}: {exc!r}",
              file=sys.stderr)
        return False
    return True


def finish_wandb(run: Any, summary: dict[str, Any], out: Path) -> str:
    """Final metrics into the W&B summary; the run's small files and last checkpoint as an
    artifact, so another machine can rebuild the figures from W&B alone. An upload problem is
    a warning: the trained result is already in the store. Returns the upload's outcome for
    :data:`UPLOAD` ("done", or "failed: ...")."""
    import wandb

    outcome = UPLOADED
    try:
        run.summary.update(wandb_summary(summary))
        artifact = wandb.Artifact(f"results-{run.name}", type="run-results")
        for name in (CONFIG, TRAJECTORIES, ENERGY, METRICS, str(LAST_CHECKPOINT)):
            if (out / name).exists():
                artifact.add_file(str(out / name), name=name)
        run.log_artifact(artifact)
    except Exception as exc:  # noqa: BLE001 - see docstring
        outcome = f"failed: {exc!r}"
        warnings.warn(f"W&B upload of {run.name} incomplete: {exc!r}", UserWarning, stacklevel=2)
    finally:
        run.finish()
    return outcome


def _history_row(row: dict[str, str]) -> dict[str, float | int]:
    values: dict[str, float | int] = {}
    for key, text in row.items():
        try:
            value = float(text)
        except (TypeError, ValueError):
            continue
        if math.isfinite(value):
            values[key] = value
    if "step" in values:
        values[STEP] = int(values.pop("step"))
    if "epoch" in values:
        values["epoch"] = int(values["epoch"])
    return values


def publish_stored(cfg: RunConfig, out: Path, summary: dict[str, Any], run_id: str | None) -> str:
    """Fill W&B run ``run_id`` with the result the store holds (finished or diverged): per-epoch
    history, summary, artifact. Nothing is trained again. Used for the run a W&B agent hands out
    for such a point (the sweep gets a complete run instead of an empty one), and for a run
    whose upload failed. Returns the upload's outcome (:func:`finish_wandb`)."""
    from .history import read_history

    run = start_run(cfg, out, run_id)
    try:
        for row in read_history(out / METRICS):
            run.log(_history_row(row))
        run.summary["restored_from_store"] = True
    except BaseException:
        run.finish(exit_code=1)
        raise
    return finish_wandb(run, summary, out)


def set_aside_offline_runs(out: Path, run_id: str) -> None:
    """Move the local offline W&B run ``run_id`` of a point to ``<run>/wandb/superseded/``
    once another W&B run (a sweep agent's) holds the point's result: synced too, it would
    count the point twice in its group. There neither the printed ``wandb sync
    <results>/<name>/*/wandb/offline-run-*`` nor a sync of ``<run>/wandb`` picks it up; it is
    kept, not deleted."""
    for folder in (out / "wandb").glob(f"offline-run-*-{run_id}"):
        (out / SET_ASIDE).mkdir(parents=True, exist_ok=True)
        folder.rename(out / SET_ASIDE / folder.name)


class NoWandb:
    """The W&B side of a run logged nowhere (``wandb_mode`` disabled, and the DDP workers of
    any run): the calls of :class:`WandbLog`, doing nothing, so that the run layer has no
    W&B branches. :func:`wandb_log` gives the one a run needs."""

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg

    def run_id(self, stored: dict[str, Any] | None) -> str | None:
        """The W&B run id to record in ``config.json``: the agent's, else the stored one."""
        return self.cfg.wandb_run_id or (stored or {}).get("wandb_run_id")

    def start(self, directory: Path, run_id: str | None) -> None:
        """Create (or resume) the W&B run."""

    def loggers(self, directory: Path) -> list:
        """Lightning loggers that log into the W&B run."""
        return []

    def log_heatmap(self, trajectories: dict[str, Any], step: int) -> None:
        """The test's residual trajectories as an image (``test/residual_heatmap``)."""

    def end(self, summary: dict[str, Any], exit_code: int) -> None:
        """Close the W&B run of a run that did not finish, with its outcome."""

    def pending(self) -> dict[str, Any]:
        """What ``summary.json`` holds until the upload is done (:data:`UPLOAD`)."""
        return {}

    def finish(self, summary: dict[str, Any], directory: Path) -> dict[str, Any]:
        """Send the finished run's summary and files; returns the summary's entries that
        record the upload (``{}`` when nothing is to be recorded)."""
        return {}

    def publish_stored(self, directory: Path, summary: dict[str, Any],
                       stored: dict[str, Any] | None) -> dict[str, Any]:
        """A run the store holds, returned as it is, after publishing it to the W&B run that
        lacks it, if any; returns its summary."""
        return summary


class WandbLog(NoWandb):
    """The W&B side of a run logged online or offline: the W&B run is created only when the
    run is trained (:meth:`start`), and closed with its outcome whatever happens; a W&B
    problem never hides the run's."""

    def __init__(self, cfg: RunConfig):
        super().__init__(cfg)
        self.run: Any = None

    def run_id(self, stored: dict[str, Any] | None) -> str | None:
        return super().run_id(stored) or new_run_id()

    def start(self, directory: Path, run_id: str | None) -> None:
        self.run = start_run(self.cfg, directory, run_id)

    def loggers(self, directory: Path) -> list:
        return [] if self.run is None else [wandb_logger(self.run, directory)]

    def log_heatmap(self, trajectories: dict[str, Any], step: int) -> None:
        """Log the heatmap as an image; a figure is never worth a failed run."""
        if self.run is None:
            return
        key = "test/residual_heatmap"
        try:
            import wandb

            from paper_figures.heatmap import figure_to_array, plot_trajectory_heatmap

            figure = plot_trajectory_heatmap(trajectories,
                                             title="Residual trajectories (test)").figure
            self.run.log({key: wandb.Image(figure_to_array(figure)), STEP: step})
        except Exception as exc:  # noqa: BLE001 - see docstring
            warnings.warn(f"could not log {key!r} to W&B: {exc!r}", UserWarning, stacklevel=2)

    def end(self, summary: dict[str, Any], exit_code: int) -> None:
        if self.run is None:
            return
        try:
            end_run(self.run, summary, exit_code)
        except Exception as exc:  # noqa: BLE001 - the run's own outcome is the one to tell
            print(f"{summary.get('run_name')}: could not close the W&B run: {exc!r}",
                  file=sys.stderr)

    def pending(self) -> dict[str, Any]:
        online = self.run is not None and self.cfg.wandb_mode == "online"
        return {UPLOAD: "pending"} if online else {}  # a restart sends it otherwise

    def finish(self, summary: dict[str, Any], directory: Path) -> dict[str, Any]:
        if self.run is None:
            return {}
        outcome = finish_wandb(self.run, summary, directory)
        return {UPLOAD: outcome} if UPLOAD in summary else {}

    def publish_stored(self, directory: Path, summary: dict[str, Any],
                       stored: dict[str, Any] | None) -> dict[str, Any]:
        """The run a W&B agent handed out for a point the store holds gets the stored result
        (the store then records that run's id, and the point's earlier offline run is set
        aside); online, so does the run's own W&B run when its upload did not complete."""
        cfg, own_id = self.cfg, (stored or {}).get("wandb_run_id")
        if cfg.wandb_run_id is not None:
            run_id, doing = cfg.wandb_run_id, "publishing the stored result to"
        elif cfg.wandb_mode == "online" and own_id and needs_upload(summary):
            run_id, doing = own_id, "its upload did not complete; uploading it to"
        else:
            return summary
        print(f"{cfg.name}: already {summary.get('status')} in {directory}; {doing} W&B run "
              f"{run_id} instead of training again", flush=True)
        summary = {**summary, UPLOAD: publish_stored(cfg, directory, summary, run_id)}
        if run_id != own_id:  # the agent's run holds the point now
            if own_id:
                set_aside_offline_runs(directory, own_id)
            atomic_write_json(directory / CONFIG,
                              {**(stored or cfg.to_dict()), "wandb_run_id": run_id})
        atomic_write_json(directory / SUMMARY, summary)
        return summary


def wandb_log(cfg: RunConfig) -> NoWandb:
    """The W&B side of the run ``cfg``: :class:`WandbLog` online or offline, else
    :class:`NoWandb`."""
    return NoWandb(cfg) if cfg.wandb_mode == "disabled" else WandbLog(cfg)
