"""A sweep's grid on this machine: the plan, the runs one after the other, and ``--workers``.

:class:`SweepOptions` is ``sweep.py``'s command line as typed values; :func:`plan` turns it
into the runs of the grid (rows x depths x seeds, in table order); :func:`run_local` trains
them here, skipping finished ones and recording failures; :func:`run_workers` runs N such
loops side by side, sharing the grid through the run locks. The W&B way of running the same
grid is :mod:`runner.wandb_sweep`.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deq_modules.experiments import Experiment

from .config import RunConfig
from .eta import estimate, measured_seconds
from .names import (CONFIG, EXIT_LOCKED, EXIT_SIGNAL, REPOSITORY, SUMMARY, SWEEP_SCRIPT,
                    TRAIN_SCRIPT, WORKER_ENV)
from .store import (DIVERGED, FINISHED, KILLED, RunLocked, is_finished, live_status, read_json,
                    status_of)


@dataclass(frozen=True)
class SweepOptions:
    """``sweep.py``'s command line as typed values: the grid, the run settings its runs share
    (:func:`runner.config.run_settings`: ``RunConfig`` keywords) and the mode."""

    experiments: list[Experiment]  # the selected rows x depths, in table order
    seeds: list[int]
    settings: dict[str, Any]  # RunConfig keywords, the same for every run of the grid
    offline: bool = False
    no_wandb: bool = False
    dry_run: bool = False
    join: str | None = None
    count: int | None = None  # with join: at most this many runs
    workers: int = 1

    @property
    def name(self) -> str:
        """The sweep's name: its folder under the results, and its W&B sweep's name."""
        return self.settings["sweep"]

    @property
    def store(self) -> str:
        """``<results>/<name>``: where the grid's runs are stored."""
        return os.path.join(self.settings["results"], self.name)


def plan(args: SweepOptions) -> list[RunConfig]:
    """The runs of the grid, in table order: rows x depths x seeds."""
    wandb_mode = "disabled" if args.no_wandb else "offline"
    return [RunConfig(**args.settings, row=e.row, depth=e.depth, seed=seed,
                      wandb_mode=wandb_mode)
            for e in args.experiments for seed in args.seeds]


def conflicts(runs: list[RunConfig]) -> list[str]:
    """Stored runs whose settings differ from the planned ones (never silently reused)."""
    found = []
    for cfg in runs:
        stored = read_json(cfg.directory / CONFIG)
        diff = cfg.differences(stored) if stored is not None else []
        if diff:
            found.append(f"  {cfg.name}: {'; '.join(diff)}")
    return found


def describe(cfg: RunConfig) -> str:
    e = cfg.experiment
    return (f"{e.model.upper()} {e.structure:9s} {e.solver:8s} damping {e.damping:<3} "
            f"iters {e.forward_iter}/{e.backward_iter}  lr {e.lr}  epochs {cfg.planned_epochs}")


def print_plan(runs: list[RunConfig], args: SweepOptions) -> None:
    done = sum(1 for r in runs if is_finished(r.directory))
    print(f"sweep {args.name}: {len(runs)} runs ({done} already finished), dataset "
          f"{args.settings['dataset']}, results in {args.store}", flush=True)
    for i, r in enumerate(runs, 1):
        print(f"{i:3d}/{len(runs)} {r.name:22s} {describe(r)}")
    print(f"sweep ETA: {eta_line(runs, args)}", flush=True)


def eta_line(runs: list[RunConfig], args: SweepOptions) -> str:
    """The time the unfinished runs will take, from the store's finished runs (runner.eta)."""
    pending = [r.name for r in runs if status_of(r.directory) not in (FINISHED, DIVERGED)]
    return estimate(pending, measured_seconds(Path(args.store))).line(args.workers)


def ensure_data(args: SweepOptions) -> None:
    """Find (or download) and check the dataset once, before any run: a missing or corrupt
    dataset is one clear error at the start, not 85 failed runs."""
    from deq_modules.data import DatasetNotFoundError, check_dataset

    settings = args.settings
    try:  # reads every file's header and length: a corrupt file stops the sweep here
        print(check_dataset(settings["dataset"], settings["data_dir"],
                            download=settings["download"]), flush=True)
    except DatasetNotFoundError as err:  # DatasetCorruptError included
        raise SystemExit(f"sweep.py: {err}") from None


@dataclass
class Outcome:
    """What became of the runs of one sweep process."""

    finished: list[str] = field(default_factory=list)
    diverged: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    busy: list[str] = field(default_factory=list)  # trained by another process
    killed: list[str] = field(default_factory=list)  # that process died (kill -9) meanwhile

    def settle(self, runs: list[RunConfig]) -> None:
        """The runs another process was training when this one reached them may have finished
        (or diverged) there since, or that process was killed: count them as they are now."""
        by_name, busy = {cfg.name: cfg for cfg in runs}, self.busy
        self.busy = []
        for name in busy:
            directory = by_name[name].directory
            status = live_status(directory)
            if status == FINISHED and is_finished(directory):
                self.finished.append(name)
            elif status == DIVERGED:
                self.diverged.append(name)
            elif status == KILLED:
                self.killed.append(name)
            else:
                self.busy.append(name)

    @classmethod
    def of_store(cls, runs: list[RunConfig]) -> Outcome:
        """What the store holds for ``runs`` now (unfinished runs count as ``busy``)."""
        outcome = cls(busy=[cfg.name for cfg in runs])
        outcome.settle(runs)
        return outcome

    def report(self, name: str, total: int) -> str:
        line = f"sweep {name}: {len(self.finished)} of {total} runs finished"
        for label, names in (("diverged", self.diverged), ("failed", self.failed),
                             ("killed", self.killed),
                             ("still being trained by another process", self.busy)):
            if names:
                line += f"; {label}: {', '.join(names)}"
        return line + (" (see their summary.json)" if self.failed or self.diverged else "")


def run_one(cfg: RunConfig) -> dict:
    """One run in this process, or in a ``train.py`` subprocess for DDP (its launcher
    re-executes the script, so only that run must be in it)."""
    if cfg.devices in (1, "1"):
        from .run import run_experiment

        return run_experiment(cfg)
    command = [sys.executable, str(REPOSITORY / TRAIN_SCRIPT), *cfg.to_argv()]
    code = subprocess.run(command).returncode
    if code == EXIT_LOCKED:
        raise RunLocked(f"{cfg.name} is being trained by another process")
    if code > EXIT_SIGNAL:
        from .safety import Interrupted

        raise Interrupted(code - EXIT_SIGNAL)
    summary = read_json(cfg.directory / SUMMARY) or {}
    if code != 0 and summary.get("status") != DIVERGED:
        raise RuntimeError(summary.get("error") or f"train.py exited with status {code}")
    return summary


def run_local(runs: list[RunConfig], args: SweepOptions) -> int:
    """Run the grid here, one run after the other; failures are recorded and skipped.
    Returns the exit status: 1 if a run failed, else 0."""
    if WORKER_ENV not in os.environ:  # --workers: the first process prints the plan
        print_plan(runs, args)
    outcome = Outcome()
    for i, cfg in enumerate(runs, 1):
        tag = f"run {i}/{len(runs)} {cfg.experiment.row} L{cfg.depth} seed {cfg.seed}"
        status = status_of(cfg.directory)
        if status == FINISHED and is_finished(cfg.directory):
            print(f"{tag}: already finished, skipped", flush=True)
            outcome.finished.append(cfg.name)
            continue
        if status == DIVERGED:
            print(f"{tag}: diverged earlier, skipped (train.py --rerun to try again)", flush=True)
            outcome.diverged.append(cfg.name)
            continue
        print(f"{tag}: start ({cfg.name})", flush=True)
        start = time.monotonic()
        try:
            summary = run_one(cfg)
        except RunLocked as err:
            print(f"{tag}: skipped: {err}", flush=True)
            outcome.busy.append(cfg.name)
            continue
        except Exception as err:  # noqa: BLE001 - record, report and go on with the sweep
            from .run import failure_message

            outcome.failed.append(cfg.name)
            print(f"{tag}: FAILED after {time.monotonic() - start:.0f}s: "
                  f"{failure_message(cfg, err)}", flush=True)
            continue
        if summary.get("status") == DIVERGED:
            outcome.diverged.append(cfg.name)
            print(f"{tag}: DIVERGED after {time.monotonic() - start:.0f}s: {summary['error']}",
                  flush=True)
            continue
        outcome.finished.append(cfg.name)
        seconds = time.monotonic() - start
        print(f"{tag}: finished in {seconds:.0f}s: test acc "
              f"{summary.get('test/acc', float('nan')):.4f}, iters to converge "
              f"{summary.get('test/iters_to_converge', float('nan')):.2f}", flush=True)
        print(f"sweep ETA: {eta_line(runs, args)}", flush=True)
    outcome.settle(runs)
    print(outcome.report(args.name, len(runs)), flush=True)
    if any(r.wandb_mode == "offline" for r in runs):
        print(f"offline W&B runs can be uploaded later with: wandb sync "
              f"{args.store}/*/wandb/offline-run-*")
    return 1 if outcome.failed else 0


def threads_per_worker(workers: int) -> int:
    """``OMP_NUM_THREADS`` when set, else this process's cores shared among the workers."""
    given = os.environ.get("OMP_NUM_THREADS", "")
    if given.isdigit() and int(given) >= 1:
        return int(given)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // workers)


def without_workers(argv: list[str]) -> list[str]:
    """The command line minus ``--workers N`` / ``--workers=N``: what the extra processes run."""
    out, skip = [], False
    for token in argv:
        if skip:
            skip = False
        elif token == "--workers":
            skip = True
        elif not token.startswith("--workers="):
            out.append(token)
    return out


def run_workers(runs: list[RunConfig], args: SweepOptions, argv: list[str],
                offline: bool) -> int:
    """``--workers N``: this process and N - 1 more ``sweep.py`` processes of the same
    command line (``argv``) and store, side by side; the run locks give each run to one of
    them. The extra processes are started in their own session, so a Ctrl-C or ``kill``
    reaches this one, which passes the signal on once and waits for them (every run is then
    interrupted and resumable). Exit status: an interruption's if any, else 1 if any process
    had a failed run, else 0."""
    import torch

    from .safety import Interrupted

    threads = threads_per_worker(args.workers)
    torch.set_num_threads(threads)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    command = [sys.executable, str(REPOSITORY / SWEEP_SCRIPT), *without_workers(argv),
               *(["--offline"] if offline and "--offline" not in argv else [])]
    children: list[subprocess.Popen] = []
    try:
        for k in range(2, args.workers + 1):
            children.append(subprocess.Popen(command, env=dict(env, **{WORKER_ENV: str(k)}),
                                             start_new_session=True))
        print(f"sweep {args.name}: {args.workers} workers of {threads} thread(s): this process "
              f"(pid {os.getpid()}) and pid {', '.join(str(c.pid) for c in children)}",
              flush=True)
        codes = [run_local(runs, args)] + [c.wait() for c in children]
    except Interrupted as err:
        for child in children:
            if child.poll() is None:
                child.send_signal(err.signum)
        for child in children:
            child.wait()
        raise
    except BaseException:
        for child in children:
            if child.poll() is None:
                child.terminate()
            child.wait()
        raise
    interrupted = [c for c in codes if c > EXIT_SIGNAL]
    if not interrupted:  # the workers' own lines each told only their part
        outcome = Outcome.of_store(runs)
        outcome.busy = []  # every worker is done: what is not finished now was not trained
        unfinished = [cfg.name for cfg in runs
                      if cfg.name not in outcome.finished + outcome.diverged + outcome.killed]
        line = outcome.report(args.name, len(runs)).replace(
            f"sweep {args.name}:", f"sweep {args.name}, all {args.workers} workers done:", 1)
        print(line + (f"; not finished: {', '.join(unfinished)}" if unfinished else ""),
              flush=True)
    return interrupted[0] if interrupted else (1 if any(codes) else 0)
