"""The Table 2 sweep: every row of the paper's results table, 5 seeds each (85 runs).

    python sweep.py                      # the whole table, paper settings, emnist-mnist
    python sweep.py --rows HAM-EO-DEQ,HAM --layers 3 --seeds 0,1
    python sweep.py --dry-run            # print the plan and exit
    python sweep.py --workers 4          # 4 runs at once (one single-thread worker per core)
    python sweep.py --quick              # the whole pipeline on synthetic data, about a minute
    python sweep.py --join ENTITY/PROJECT/SWEEP_ID   # one more W&B agent of a running sweep

With W&B credentials (whatever ``wandb`` itself accepts: WANDB_API_KEY, ``wandb login``,
$NETRC, a settings file, an identity-token file; never a prompt), network, and without
--offline, the grid is a W&B sweep (the one of sweep.yaml for the whole table) whose agents run
``train.py``: this machine runs an agent, more machines join with --join or ``wandb agent``.
Started again, it continues the same sweep (recorded in ``<results>/<name>/wandb_sweep.json``)
and then trains here the runs it started that did not finish. Otherwise the grid runs here,
each run logged as an offline W&B run (``wandb sync`` uploads it later). Either way every run
lands in ``<results>/<name>/<run>/``; finished runs are skipped when the sweep is started
again, a run that was killed resumes from its last epoch checkpoint, and two sweeps started on
the same results store share the grid (each run is trained by one of them).

Exit status: 0 every run finished (or diverged: recorded), 1 some run failed, 2 bad arguments
or stored runs with other settings, 128 + N interrupted by signal N (start again to resume).
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from deq_modules.experiments import ALL_ROWS, DEPTHS, ROWS, SEEDS, TABLES, Experiment, select
from runner.config import RunConfig, SweepOptions, add_run_args, positive_int, synthetic_sizes
from runner.eta import estimate, measured_seconds
from runner.wandb_sweep import (ENDED_STATES, SWEEP_RECORD, created_entity, existing_sweep,
                                 has_wandb_key, prepare_agents, run_agent, sweep_config,
                                 sweep_path, wandb_reachable)
from runner.store import (DIVERGED, FAILED, FINISHED, INTERRUPTED, KILLED, RUNNING, RunLocked,
                          atomic_write_json, is_finished, is_locked, live_status, read_json,
                          status_of, summary_of)

QUICK = dict(dataset="synthetic", epochs=1, limit_train_batches=2, limit_test_batches=2,
             synthetic_sizes=synthetic_sizes("256,128"), name="quick")
EXIT_LOCKED = 75  # train.py's exit status when another process holds the run
WORKER_ENV = "HOPFIELD_SWEEP_WORKER"  # set in the extra processes of --workers (2, 3, ...)


def csv_list(kind: type, choices: tuple | None = None, what: str = "value"):
    """An argparse type: comma-separated values of ``kind``, each among ``choices`` if given."""
    def parse(text: str) -> list:
        try:
            values = [kind(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {what} list {text!r}") from None
        bad = [v for v in values if (choices is not None and v not in choices)
               or (kind is int and v < 0)]
        if bad or not values:
            valid = f"; valid: {', '.join(map(str, choices))}" if choices else \
                " (whole numbers >= 0)" if kind is int else ""
            raise argparse.ArgumentTypeError(f"invalid {what}(s) {bad or text!r}{valid}")
        return list(dict.fromkeys(values))
    return parse


def parse_args(argv: list[str] | None = None) -> SweepOptions:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    grid = p.add_argument_group("the grid")
    grid.add_argument("--table", choices=tuple(TABLES), default="table2",
                      help="which experiments: table2 (the ECAI 2024 paper's Table 2, 17 rows "
                           "at 3/5/7 layers) or neurips (the NeurIPS 2023 version's 2 x 2 "
                           "ablation of a 784-512-10 HAM: N23-HAM, N23-HAM-DEQ, N23-HAM-EO, "
                           "N23-HAM-EO-DEQ); default table2, also the default --name")
    grid.add_argument("--rows", type=csv_list(str, ALL_ROWS, "row"), default=None,
                      help=f"comma-separated rows of the table (default all; Table 2's: "
                           f"{','.join(ROWS)})")
    grid.add_argument("--layers", type=csv_list(int, DEPTHS, "depth"), default=None,
                      help="comma-separated depths among 3,5,7 (default all)")
    grid.add_argument("--seeds", type=csv_list(int, what="seed"), default=None,
                      help="comma-separated seeds (default 0,1,2,3,4; 0 with --quick)")
    add_run_args(p, default_name=None)
    w = p.add_argument_group("W&B and modes")
    w.add_argument("--offline", action="store_true",
                   help="run the grid locally with offline W&B runs, even with an API key")
    w.add_argument("--no-wandb", action="store_true",
                   help="no W&B at all, only the local results store")
    w.add_argument("--dry-run", action="store_true", help="print the planned runs and exit")
    w.add_argument("--join", metavar="ENTITY/PROJECT/SWEEP_ID", default=None,
                   help="run this machine as one more agent of an existing W&B sweep")
    w.add_argument("--count", type=int, default=None, help="with --join: at most this many runs")
    w.add_argument("--quick", action="store_true",
                   help="smoke test: every row, seed 0, synthetic data, 1 epoch of 2 batches")
    w.add_argument("--workers", type=positive_int, default=1, metavar="N",
                   help="train N runs at once on this machine (the grid run here, not with "
                        "W&B online): N sweep processes sharing the grid through the run "
                        "locks, each with cores/N threads (OMP_NUM_THREADS, if set, wins); "
                        "on a CPU these small networks train more per second as one "
                        "single-thread worker per core (default 1)")
    args = p.parse_args(argv)
    if args.workers > 1 and (args.join or str(args.devices) != "1"):
        p.error("--workers > 1 runs the grid here with one device per run; it cannot be "
                "combined with --join (start one agent per core instead) or --devices > 1")
    if args.join:
        given = [f for f, v in (("--rows", args.rows), ("--layers", args.layers),
                                ("--seeds", args.seeds), ("--dry-run", args.dry_run),
                                ("--quick", args.quick)) if v]
        if given:
            p.error(f"{', '.join(given)} cannot be used with --join: the W&B sweep already "
                    "defines the grid")
    elif args.count is not None:
        p.error("--count only applies with --join")
    if args.seeds is None:
        args.seeds = [0] if args.quick else list(SEEDS)
    for key, value in QUICK.items():  # --quick's defaults; explicit flags still win
        if args.quick and getattr(args, key) is None:
            setattr(args, key, value)
    args.dataset = args.dataset or "emnist-mnist"
    args.name = args.name or args.table
    try:
        args.experiments = select(args.rows, args.layers, args.table)
        options = SweepOptions.from_namespace(args)
        if not args.join:
            plan(options)  # every run's settings checked (seed range, batch limits) up front
    except ValueError as err:
        p.error(str(err))
    return options


def plan(args: SweepOptions) -> list[RunConfig]:
    """The runs of the grid, in table order: rows x depths x seeds."""
    wandb_mode = "disabled" if args.no_wandb else "offline"
    return [RunConfig.from_args(args, row=e.row, depth=e.depth, seed=seed, wandb_mode=wandb_mode)
            for e in args.experiments for seed in args.seeds]


def conflicts(runs: list[RunConfig]) -> list[str]:
    """Stored runs whose settings differ from the planned ones (never silently reused)."""
    found = []
    for cfg in runs:
        stored = read_json(cfg.directory / "config.json")
        diff = cfg.differences(stored) if stored is not None else []
        if diff:
            found.append(f"  {cfg.name}: {'; '.join(diff)}")
    return found


def describe(e: Experiment, epochs: int | None) -> str:
    return (f"{e.model.upper()} {e.structure:9s} {e.solver:8s} damping {e.damping:<3} "
            f"iters {e.forward_iter}/{e.backward_iter}  lr {e.lr}  epochs {epochs or e.epochs}")


def print_plan(runs: list[RunConfig], args: SweepOptions) -> None:
    done = sum(1 for r in runs if is_finished(r.directory))
    print(f"sweep {args.name}: {len(runs)} runs ({done} already finished), dataset "
          f"{args.dataset}, results in {os.path.join(args.results, args.name)}", flush=True)
    for i, r in enumerate(runs, 1):
        print(f"{i:3d}/{len(runs)} {r.name:22s} {describe(r.experiment, args.epochs)}")
    print(f"sweep ETA: {eta_line(runs, args)}", flush=True)


def eta_line(runs: list[RunConfig], args: SweepOptions) -> str:
    """The time the unfinished runs will take, from the store's finished runs (runner.eta)."""
    pending = [r.name for r in runs if status_of(r.directory) not in (FINISHED, DIVERGED)]
    return estimate(pending, measured_seconds(Path(args.results) / args.name)).line(args.workers)


def ensure_data(args: SweepOptions) -> None:
    """Find (or download) and check the dataset once, before any run: a missing or corrupt
    dataset is one clear error at the start, not 85 failed runs."""
    from deq_modules.data import DatasetNotFoundError, check_dataset

    try:  # reads every file's header and length: a corrupt file stops the sweep here
        print(check_dataset(args.dataset, args.data_dir, download=not args.no_download),
              flush=True)
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
        from runner.run import run_experiment

        return run_experiment(cfg)
    script = Path(__file__).resolve().parent / "train.py"
    code = subprocess.run([sys.executable, str(script), *cfg.to_argv()]).returncode
    if code == EXIT_LOCKED:
        raise RunLocked(f"{cfg.name} is being trained by another process")
    if code > 128:
        from runner.safety import Interrupted

        raise Interrupted(code - 128)
    summary = read_json(cfg.directory / "summary.json") or {}
    if code != 0 and summary.get("status") != DIVERGED:
        raise RuntimeError(summary.get("error") or f"train.py exited with status {code}")
    return summary


def run_local(runs: list[RunConfig], args: SweepOptions) -> int:
    """Run the grid here, one run after the other; failures are recorded and skipped."""
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
            from runner.run import failure_message

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
        print("offline W&B runs can be uploaded later with: wandb sync "
              f"{os.path.join(args.results, args.name)}/*/wandb/offline-run-*")
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
    """``--workers N``: this process and N - 1 more sweeps of the same grid and store, side by
    side; the run locks give each run to one of them. The extra processes are started in
    their own session, so a Ctrl-C or ``kill`` reaches this one, which passes the signal on
    once and waits for them (every run is then interrupted and resumable). Exit status: an
    interruption's if any, else 1 if any process had a failed run, else 0."""
    import torch

    from runner.safety import Interrupted

    threads = threads_per_worker(args.workers)
    torch.set_num_threads(threads)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    command = [sys.executable, str(Path(__file__).resolve()), *without_workers(argv),
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
    interrupted = [c for c in codes if c > 128]
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


# -- W&B: the sweep as W&B's agents run it ------------------------------------------------
def upload_unsent(runs: list[RunConfig]) -> None:
    """Upload the runs this machine finished whose upload to W&B did not complete (the
    network went down, say): ``run_experiment`` publishes such a stored run into its own W&B
    run, training nothing."""
    from runner.run import run_experiment
    from runner.wandb_run import needs_upload

    for cfg in runs:
        if needs_upload(summary_of(cfg.directory) or {}) and not is_locked(cfg.directory):
            try:
                run_experiment(cfg)
            except Exception as err:  # noqa: BLE001 - the result is safe in the store
                print(f"{cfg.name}: W&B upload failed again ({type(err).__name__}: {err}); "
                      "start sweep.py again to retry", flush=True)


def retry_unfinished(runs: list[RunConfig], args: SweepOptions, entity: str | None,
                     path: str) -> int:
    """Train here, online, the points this machine started that did not finish (failed,
    interrupted, killed): a W&B grid never hands them out again. Each resumes its checkpoint
    and its W&B run (the id in its config.json) in the sweep's entity. Runs finished here whose
    upload did not complete are uploaded."""
    runs = [replace(cfg, wandb_mode="online", wandb_entity=entity) for cfg in runs]
    upload_unsent(runs)
    retry = [cfg for cfg in runs if status_of(cfg.directory) in (FAILED, INTERRUPTED, RUNNING)
             and not is_locked(cfg.directory)]
    missing = [cfg.name for cfg in runs if status_of(cfg.directory) is None]
    if missing:
        print(f"sweep {args.name}: {len(missing)} of {len(runs)} runs have no result in "
              f"{Path(args.results) / args.name} (other machines', or not handed out yet); "
              f"python -m paper_figures --wandb {path} reads the whole sweep", flush=True)
    if not retry:
        return 0
    print(f"sweep {args.name}: {len(retry)} run(s) started here did not finish; training "
          f"them again in this process: {', '.join(r.name for r in retry)}", flush=True)
    return run_local(retry, args)


def run_wandb(runs: list[RunConfig], args: SweepOptions) -> int:
    """Create (or continue) the W&B sweep of the grid and run an agent on it here; with
    ``--join``, only the agent."""
    import wandb

    if args.devices not in (1, "1"):
        raise SystemExit("sweep.py: --devices > 1 is supported in local mode only "
                         "(add --offline); W&B agents run one device per run")
    prepare_agents(args)
    if args.join:
        entity, project, sweep_id = args.join.split("/")
        signum = run_agent(sweep_id, entity, project, args.count)
        return 0 if signum is None else 128 + signum
    print_plan(runs, args)
    config = sweep_config(runs, args)
    api = wandb.Api()
    sweep = existing_sweep(api, config, args)
    if sweep is None:
        try:
            sweep_id = wandb.sweep(config, entity=args.entity, project=args.project)
        except Exception as err:  # noqa: BLE001 - one line, not wandb's traceback
            raise SystemExit(f"sweep.py: could not create the W&B sweep in {args.project} "
                             f"({type(err).__name__}: {err}); nothing was run") from None
        entity, state = created_entity(api, args.entity), "RUNNING"
        print(f"created W&B sweep {sweep_path(entity, args.project, sweep_id)}", flush=True)
    else:
        sweep_id, entity, state = sweep.id, sweep.entity, str(sweep.state).upper()
        print(f"continuing W&B sweep {sweep_path(entity, args.project, sweep_id)} ({state})",
              flush=True)
    path = sweep_path(entity, args.project, sweep_id)
    atomic_write_json(Path(args.results) / args.name / SWEEP_RECORD,
                      dict(sweep_id=sweep_id, entity=entity, project=args.project, config=config))
    if state in ENDED_STATES:
        print(f"W&B sweep {path} has handed out its whole grid; no agent started", flush=True)
    elif state == "PAUSED":
        print(f"W&B sweep {path} is paused: resume it (wandb sweep --resume {path}) and start "
              "sweep.py again", flush=True)
        return 0
    else:
        print(f"add machines with: python sweep.py --join {path}  (or: wandb agent {path})",
              flush=True)
        signum = run_agent(sweep_id, entity, args.project)
        if signum is not None:
            print(f"sweep {args.name}: agent stopped by {signal.Signals(signum).name}; start "
                  "sweep.py again to continue the sweep", flush=True)
            return 128 + signum
    from runner.safety import install_signal_handlers

    install_signal_handlers()  # the retries train in this process
    return retry_unfinished(runs, args, entity, path)


def check_join(join: str) -> None:
    """Fail at once, with what to do, when joining a W&B sweep cannot work here."""
    parts = join.split("/")
    if len(parts) != 3 or not all(parts):
        raise SystemExit(f"sweep.py: --join expects ENTITY/PROJECT/SWEEP_ID, got {join!r}")
    if not has_wandb_key():
        raise SystemExit("sweep.py: --join needs a W&B API key on this machine: set "
                         "WANDB_API_KEY or run `wandb login`; nothing was run")
    if not wandb_reachable():
        raise SystemExit("sweep.py: --join cannot reach the W&B server (no network?); "
                         "without it run the grid locally: python sweep.py --offline")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    from runner.history import quiet_lightning
    from runner.safety import Interrupted, install_signal_handlers

    quiet_lightning()  # one line per event in the log
    os.environ.setdefault("WANDB_SILENT", "true")
    if args.join:
        check_join(args.join)
        return run_wandb([], args)
    runs = plan(args)
    found = conflicts(runs)
    if found:
        print(f"sweep.py: {len(found)} stored run(s) in {os.path.join(args.results, args.name)} "
              "were made with other settings; nothing was run. Use another --name (or "
              "--results) for these settings. Differences:\n" + "\n".join(found[:20])
              + ("\n  ..." if len(found) > 20 else ""), file=sys.stderr)
        return 2
    if args.dry_run:
        print_plan(runs, args)
        return 0
    from runner.run import hardware_problem

    problem = hardware_problem(args.accelerator, args.devices)
    if problem:
        print(f"sweep.py: {problem}; nothing was run", file=sys.stderr)
        return 2
    ensure_data(args)
    online = False
    if not (args.offline or args.no_wandb):
        why = ("no W&B credentials on this machine" if not has_wandb_key() else
               "the W&B server is unreachable" if not wandb_reachable() else None)
        online = why is None
        if not online:
            print(f"sweep.py: {why}: the grid runs here with offline W&B runs", flush=True)
    if online and args.workers > 1:
        print("sweep.py: --workers runs the grid here, and W&B is online: add agents instead "
              "(`python sweep.py --join ENTITY/PROJECT/SWEEP_ID`, one per core, with "
              "OMP_NUM_THREADS=1), or use --offline for a local grid", file=sys.stderr)
        return 2
    try:
        if online:
            return run_wandb(runs, args)  # the agent handles signals; retries install ours
        install_signal_handlers()
        if not args.no_wandb:
            os.environ["WANDB_MODE"] = "offline"  # never a login prompt, whatever the settings
        if args.workers > 1:
            return run_workers(runs, args, argv, offline=not args.no_wandb)
        return run_local(runs, args)
    except Interrupted as err:
        print(f"sweep {args.name}: {err}; start it again to resume", flush=True)
        return err.exit_code


if __name__ == "__main__":
    sys.exit(main())
