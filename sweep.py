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
import sys

from deq_modules.experiments import ALL_ROWS, DEPTHS, ROWS, SEEDS, TABLES, select
from runner.config import add_run_args, positive_int, run_settings, synthetic_sizes
from runner.grid import (SweepOptions, conflicts, ensure_data, plan, print_plan, run_local,
                         run_workers)
from runner.names import DEFAULT_TABLE, EXIT_OK, EXIT_USAGE, QUICK_SWEEP
from runner.wandb_sweep import has_wandb_key, run_wandb, wandb_reachable

# --quick's settings (explicit flags still win), as the parser names them
QUICK = dict(dataset="synthetic", epochs=1, limit_train_batches=2, limit_test_batches=2,
             synthetic_sizes=synthetic_sizes("256,128"), name=QUICK_SWEEP)


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
    """The command line as :class:`~runner.grid.SweepOptions`; every run of the grid is
    checked here (seed range, batch limits), so a bad setting is one usage error (exit 2)."""
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    grid = p.add_argument_group("the grid")
    grid.add_argument("--table", choices=tuple(TABLES), default=DEFAULT_TABLE,
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
    for key, value in QUICK.items():
        if args.quick and getattr(args, key) is None:
            setattr(args, key, value)
    args.name = args.name or args.table
    try:
        options = SweepOptions(
            experiments=select(args.rows, args.layers, args.table),
            seeds=args.seeds or ([0] if args.quick else list(SEEDS)),
            settings=run_settings(args), offline=args.offline, no_wandb=args.no_wandb,
            dry_run=args.dry_run, join=args.join, count=args.count, workers=args.workers)
        if not args.join:
            plan(options)  # every run's settings checked (seed range, batch limits) up front
    except ValueError as err:
        p.error(str(err))
    return options


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


def wandb_online(args: SweepOptions) -> bool:
    """Whether the grid runs as a W&B sweep: W&B wanted, credentials, and the server
    reachable; says why not when W&B was wanted."""
    if args.offline or args.no_wandb:
        return False
    why = ("no W&B credentials on this machine" if not has_wandb_key() else
           "the W&B server is unreachable" if not wandb_reachable() else None)
    if why:
        print(f"sweep.py: {why}: the grid runs here with offline W&B runs", flush=True)
    return why is None


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
        print(f"sweep.py: {len(found)} stored run(s) in {args.store} were made with other "
              "settings; nothing was run. Use another --name (or --results) for these "
              "settings. Differences:\n" + "\n".join(found[:20])
              + ("\n  ..." if len(found) > 20 else ""), file=sys.stderr)
        return EXIT_USAGE
    if args.dry_run:
        print_plan(runs, args)
        return EXIT_OK

    from runner.run import hardware_problem

    problem = hardware_problem(args.settings["accelerator"], args.settings["devices"])
    if problem:
        print(f"sweep.py: {problem}; nothing was run", file=sys.stderr)
        return EXIT_USAGE
    ensure_data(args)
    online = wandb_online(args)
    if online and args.workers > 1:
        print("sweep.py: --workers runs the grid here, and W&B is online: add agents instead "
              "(`python sweep.py --join ENTITY/PROJECT/SWEEP_ID`, one per core, with "
              "OMP_NUM_THREADS=1), or use --offline for a local grid", file=sys.stderr)
        return EXIT_USAGE

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
