"""Run records: what the table and the figures need to know about each run of a sweep.

Two sources give the same list of :class:`RunRecord`: the local results store
(:func:`local_records`) and a W&B sweep (:func:`wandb_records`). Everything downstream
(grouping, statistics, figures) works on records only, so it is tested on fabricated records
and stores; only the W&B API calls themselves cannot be exercised without a server.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from deq_modules.experiments import Experiment, get_experiment, split_key, split_run_name
from runner.config import device_count
from runner.store import (CONFIG, FAILED, FINISHED, INTERRUPTED, ITERS_RULE, ITERS_RULE_KEY,
                          RUNNING, STATUSES, SUMMARY, TEST_ACC, TEST_ITERS, TEST_METRICS,
                          TEST_NOT_CONVERGED, TRAJECTORIES, atomic_write_json, finished_problems,
                          is_finite_number, iter_runs, live_status, read_json)

# Logged names: one name per quantity, from the store's format (runner.store).
ACC_KEY, ITERS_KEY, NOT_CONVERGED_KEY = TEST_ACC, TEST_ITERS, TEST_NOT_CONVERGED
# Two statuses of records, beside the store's: a run that says it finished but whose files do
# not hold up (runner.store.finished_problems, or test metrics missing) is DAMAGED; a run
# directory with no readable summary, or an unknown status, is INCOMPLETE. Neither is counted.
DAMAGED, INCOMPLETE = "damaged", "incomplete"
# A finished run whose iterations were counted by an older rule than the papers' (no
# ``iters_rule: papers`` in its summary): never mixed into the table; ``runner.recount``
# converts the Picard runs, the others must be trained again.
OLD_COUNT = "old-count"
# W&B run states (public API ``run.state``) and what they mean for the table.
_WANDB_STATES = {"finished": FINISHED, "running": RUNNING, "pending": RUNNING,
                 "preempting": RUNNING, "preempted": INTERRUPTED, "failed": FAILED,
                 "crashed": FAILED, "killed": FAILED}
# Where W&B results are mirrored for the figures (git-ignored).
WANDB_CACHE = Path(os.environ.get("HOPFIELD_FIGURE_CACHE", ".cache/paper_figures"))


@dataclass(frozen=True)
class RunRecord:
    """One run of a sweep. ``acc`` is a fraction (0..1), ``iters`` the mean iterations to
    converge on the test set, ``not_converged`` the test samples that never met the criterion;
    all ``None`` unless the run finished. ``problems`` says why a :data:`DAMAGED` run is not
    counted. ``directory`` is the run's folder in a local store (``None`` for records read from
    the W&B API)."""

    name: str
    row: str | None
    depth: int | None
    seed: int | None
    status: str
    acc: float | None = None
    iters: float | None = None
    not_converged: float | None = None
    directory: Path | None = None
    problems: tuple[str, ...] = ()
    settings: str | None = None  # dataset, epochs, fast mode: see :func:`settings_of`

    @property
    def experiment(self) -> Experiment | None:
        """The registry entry of this run, or ``None`` for a row/depth the registry lacks."""
        if self.row is None or self.depth is None:
            return None
        try:
            return get_experiment(self.row, self.depth)
        except ValueError:
            return None

    @property
    def usable(self) -> bool:
        return self.status == FINISHED and self.experiment is not None


def _number(value: Any) -> float | None:
    """A metric as a float: JSON stores non-finite values as strings ("nan"); missing -> None."""
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _int(value: Any) -> int | None:
    number = _number(value)
    return int(number) if number is not None and math.isfinite(number) else None


def _identity(name: str, config: Mapping[str, Any],
              summary: Mapping[str, Any]) -> dict[str, Any]:
    """Row, depth and seed from whichever place holds them.

    The local store has ``row``/``depth``/``seed`` in config.json and summary.json; a W&B sweep
    run's config holds the grid point (``experiment`` = ``"HAM-EO-DEQ-L3"``, ``seed``); the run
    name (``HAM-EO-DEQ-L3-s2``) is the last resort.
    """
    row = config.get("row", summary.get("row"))
    depth = config.get("depth", summary.get("depth"))
    seed = config.get("seed", summary.get("seed"))
    experiment = config.get("experiment")
    if (row is None or depth is None) and isinstance(experiment, Mapping):
        row, depth = experiment.get("row", row), experiment.get("depth", depth)
    if (row is None or depth is None) and isinstance(experiment, str) and split_key(experiment):
        row, depth = split_key(experiment)
    parsed = split_run_name(name or "")
    if parsed:
        row = row if row is not None else parsed[0]
        depth = depth if depth is not None else parsed[1]
        seed = seed if seed is not None else parsed[2]
    return dict(row=None if row is None else str(row), depth=_int(depth), seed=_int(seed))


def settings_of(config: Mapping[str, Any]) -> str | None:
    """What a run was trained on and how, in words (``fashion-mnist, 1 epoch, fast mode``);
    ``None`` when the config does not say. Epochs the run does not set are its row's."""
    dataset = config.get("dataset")
    if not dataset:
        return None
    epochs = _int(config.get("epochs"))
    experiment = config.get("experiment")
    if epochs is None and isinstance(experiment, Mapping):
        epochs = _int(experiment.get("epochs"))
    parts = [str(dataset)]
    if epochs is not None:
        parts.append(f"{epochs} epoch{'' if epochs == 1 else 's'}")
    for key, what in (("limit_train_batches", "training batches"),
                      ("limit_test_batches", "test batches")):
        if config.get(key) is not None:
            parts.append(f"{what} limited to {config[key]}")
    parts.append("fast mode in training" if config.get("fast") else "paper settings")
    ranks = device_count(config.get("devices", 1))
    if ranks != 1:  # DDP: N x the batch per step, another run than the paper's
        parts.append(f"devices {ranks} (DDP)")
    return ", ".join(parts)


def record_from(name: str, config: Mapping[str, Any], summary: Mapping[str, Any],
                status: str, directory: Path | None = None,
                problems: Sequence[str] = ()) -> RunRecord:
    """A record from a run's config, summary and status, whatever the source.

    A finished run is :data:`DAMAGED` when ``problems`` (what is wrong with its files) is not
    empty or its summary lacks the table's numbers; only a sound finished run keeps them.
    """
    problems = list(problems)
    acc, iters = _number(summary.get(ACC_KEY)), _number(summary.get(ITERS_KEY))
    if status == FINISHED and not problems and not all(map(is_finite_number, (acc, iters))):
        lacking = [k for k in (ACC_KEY, ITERS_KEY) if not is_finite_number(_number(summary.get(k)))]
        problems.append(f"summary lacks a finite {', '.join(lacking)}")
    if status == FINISHED and problems:
        status = DAMAGED
    if status == FINISHED and summary.get(ITERS_RULE_KEY) != ITERS_RULE:
        status = OLD_COUNT
    not_converged = _number(summary.get(NOT_CONVERGED_KEY))
    if status != FINISHED:
        acc = iters = not_converged = None
    name = name or str(config.get("run_name") or summary.get("run_name") or "")
    return RunRecord(name=name, status=status, acc=acc, iters=iters,
                     not_converged=not_converged, directory=directory,
                     problems=tuple(problems) if status == DAMAGED else (),
                     settings=settings_of(config), **_identity(name, config, summary))


def row_files(records: Sequence[RunRecord], exp: Experiment,
              filename: str) -> Iterator[tuple[RunRecord, Path]]:
    """Each sound finished run of ``exp``'s row and depth that has the file ``filename``, with
    the file's path (the per-run files the figures pool over seeds)."""
    for r in records:
        if r.usable and (r.row, r.depth) == (exp.row, exp.depth) and r.directory:
            path = r.directory / filename
            if path.is_file():
                yield r, path


def local_records(results: str | Path, sweep: str | None = None) -> list[RunRecord]:
    """Every run (any status) under ``results/<sweep>/``, in path order.

    A run directory with a config but no readable summary (killed between the two writes, or
    damaged), or with a status the store does not know, is :data:`INCOMPLETE`; a finished run
    whose files fail :func:`runner.store.finished_problems` is :data:`DAMAGED`; a run that
    says running while no process trains it is :data:`~runner.store.KILLED`.
    """
    records = []
    for directory in iter_runs(results, sweep):
        config = read_json(directory / CONFIG) or {}
        summary = read_json(directory / SUMMARY)
        status = (summary or {}).get("status")
        if status not in STATUSES:
            status = INCOMPLETE
        else:
            status = live_status(directory, status)
        problems = finished_problems(directory) if status == FINISHED else []
        records.append(record_from(directory.name, config, summary or {}, status, directory,
                                   problems))
    return records


def _wandb_api(api: Any = None) -> Any:
    if api is not None:
        return api
    import wandb  # here, not at module level: importing wandb is slow and not always needed

    return wandb.Api()


def _wandb_summary(run: Any) -> dict[str, Any]:
    """A public-API run's summary as a plain dict (the attribute has moved between versions)."""
    metrics = getattr(run, "summary_metrics", None)
    if isinstance(metrics, Mapping):
        return dict(metrics)
    summary = getattr(run, "summary", None)
    return dict(getattr(summary, "_json_dict", None) or summary or {})


def wandb_records(sweep_path: str, api: Any = None) -> list[RunRecord]:
    """Every run of the W&B sweep ``ENTITY/PROJECT/SWEEP_ID``, as records (needs the network).

    ``api`` defaults to ``wandb.Api()``; tests pass a stand-in with ``sweep(path).runs``.
    """
    records = []
    for run in _wandb_api(api).sweep(sweep_path).runs:
        status = _WANDB_STATES.get(str(getattr(run, "state", "")).lower(), RUNNING)
        records.append(record_from(run.name, dict(run.config), _wandb_summary(run), status))
    return records


def download_wandb_results(sweep_path: str, results: str | Path, api: Any = None) -> str:
    """Mirror a W&B sweep's finished runs into a local store; returns the sweep name to read.

    Each finished run's ``run-results`` artifact (trajectories.npz, config.json, ...) goes to
    ``results/wandb-<SWEEP_ID>/<run name>/`` with a summary.json rebuilt from the record, so
    the figure code reads W&B results exactly like local ones. Runs already mirrored are
    skipped. Needs the W&B server: not exercised by the tests.
    """
    api = _wandb_api(api)
    name = f"wandb-{sweep_path.rstrip('/').rsplit('/', 1)[-1]}"
    for run in api.sweep(sweep_path).runs:
        record = record_from(run.name, dict(run.config), _wandb_summary(run),
                             _WANDB_STATES.get(str(run.state).lower(), RUNNING))
        if not record.usable:
            continue
        directory = Path(results) / name / record.name
        if (directory / TRAJECTORIES).exists() and (directory / SUMMARY).exists():
            continue
        for artifact in run.logged_artifacts():
            if artifact.type == "run-results":
                artifact.download(root=str(directory))
        identity = dict(row=record.row, depth=record.depth, seed=record.seed,
                        run_name=record.name, wandb_run_id=getattr(run, "id", None))
        if read_json(directory / CONFIG) is None:  # the artifact's own is richer
            atomic_write_json(directory / CONFIG, identity)
        summary = _wandb_summary(run)
        atomic_write_json(directory / SUMMARY, {**identity, "status": FINISHED,
                                                **{k: summary[k] for k in
                                                   (*TEST_METRICS, ITERS_RULE_KEY)
                                                   if k in summary}})
    return name
