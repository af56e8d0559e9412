"""Train and test one run of Table 2 (a row at a depth, one seed), e.g.

    python train.py --row HAM-EO-DEQ --layers 3 --seed 0 --dataset fashion-mnist --epochs 1
    python train.py --experiment=HAM-EO-DEQ-L3 --seed=0      # the form W&B sweep agents use

This is the program of the W&B sweep (sweep.yaml, or the one ``python sweep.py`` creates):
``wandb agent ENTITY/PROJECT/SWEEP_ID`` runs ``train.py --wandb=online --name=table2 ...
--experiment=HAM-EO-DEQ-L3 --seed=0`` for each point of the grid, and the run logs into the
agent's W&B run (``--wandb`` defaults to online there). A point the results store already
holds is not trained again: its stored result is published into the agent's run.

Settings not given on the command line are the paper's (deq_modules/experiments.py). Results
land in ``<results>/<name>/<run>/`` like the sweep's; the final test accuracy and iterations
to converge are printed. Uses the GPU when there is one (``--accelerator auto``).

Exit status: 0 finished (or diverged: recorded, not an error of the program), 1 failed (one
line says why and what to do; the traceback is in the run's summary.json), 2 bad arguments
(settings no run can use included: a seed numpy cannot take, a batch fraction that leaves no
batch, an accelerator this machine lacks) or a stored run with other settings, 75 the run is
being trained by another process (under a W&B sweep agent: 0, the reason is reported into the
agent's run), 128 + N interrupted by signal N (resumable).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from deq_modules.experiments import ALL_ROWS, DEPTHS, Experiment
from runner.config import WANDB_MODES, RunConfig, add_run_args
from runner.names import EXIT_FAILED, EXIT_LOCKED, EXIT_OK, EXIT_USAGE, SINGLE_SWEEP
from runner.store import DIVERGED, RunLocked
from runner.wandb_run import agent_run_id, report_not_run


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    which = p.add_argument_group("which run")
    which.add_argument("--row", choices=ALL_ROWS,
                       help="row of Table 2, or of the NeurIPS 2023 ablation (N23-...)")
    which.add_argument("--layers", type=int, default=3, choices=DEPTHS,
                       help="depth: 3, 5 or 7 layers including input and output (default 3)")
    which.add_argument("--experiment", metavar="ROW-Ld", default=None,
                       help="row and depth as one key, e.g. HAM-EO-DEQ-L3 (instead of "
                            "--row/--layers)")
    which.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    add_run_args(p, default_name=SINGLE_SWEEP)
    p.add_argument("--wandb", default=None, choices=WANDB_MODES,
                   help="W&B logging mode (default disabled; online when started by a W&B "
                        "sweep agent)")
    p.add_argument("--rerun", action="store_true",
                   help="discard the stored run (results and checkpoints) and train again")
    args = p.parse_args(argv)
    if args.experiment is not None:
        if args.row is not None:
            p.error("give --experiment or --row/--layers, not both")
        try:
            exp = Experiment.from_key(args.experiment)
        except ValueError as err:
            p.error(str(err))
        args.row, args.layers = exp.row, exp.depth
    if args.row is None:
        p.error("one of --row or --experiment is required")
    if args.seed < 0:
        p.error(f"--seed must be >= 0, got {args.seed}")
    if args.wandb is None:
        args.wandb = "online" if agent_run_id() else "disabled"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from runner.history import quiet_lightning
    from runner.run import ConfigMismatch, failure_message, hardware_problem, run_experiment
    from runner.safety import Interrupted, install_signal_handlers

    quiet_lightning()
    agent = {}  # started by a W&B sweep agent: log into the run it created, in its project
    if agent_run_id() and args.wandb != "disabled":
        agent = dict(wandb_run_id=agent_run_id(),
                     wandb_project=os.environ.get("WANDB_PROJECT") or args.project,
                     wandb_entity=os.environ.get("WANDB_ENTITY") or args.entity)
    try:
        cfg = RunConfig.from_args(args, row=args.row, depth=args.layers, seed=args.seed,
                                  wandb_mode=args.wandb, **agent)
    except ValueError as err:
        print(f"train.py: {err}", file=sys.stderr)
        return EXIT_USAGE
    problem = hardware_problem(cfg.accelerator, cfg.devices)
    if problem:
        print(f"train.py: {problem}", file=sys.stderr)
        return EXIT_USAGE
    install_signal_handlers()
    try:
        summary = run_experiment(cfg, rerun=args.rerun)
    except ConfigMismatch as err:
        print(f"train.py: {err}", file=sys.stderr)
        report_not_run(cfg, "refused", str(err))  # a W&B agent counts the 2 (see README)
        return EXIT_USAGE
    except RunLocked as err:
        print(f"train.py: {err}; nothing was done", file=sys.stderr)
        # A W&B agent would count 75 as a failed run (three in 60 s stop it): the point is
        # reported into the agent's run instead, and the agent goes on.
        return EXIT_OK if report_not_run(cfg, "busy", str(err)) else EXIT_LOCKED
    except Interrupted as err:
        print(f"train.py: {cfg.name} {err}; run it again to resume", file=sys.stderr)
        return err.exit_code
    except Exception as err:  # noqa: BLE001 - recorded by the run; one line here, as sweep.py
        print(f"train.py: {cfg.name} failed: {failure_message(cfg, err)}", file=sys.stderr)
        return EXIT_FAILED
    if os.environ.get("LOCAL_RANK", "0") != "0":
        return EXIT_OK  # a DDP worker: rank 0 reports
    if summary.get("status") == DIVERGED:
        print(f"{cfg.name}: DIVERGED: {summary['error']}")
        print(f"results: {cfg.directory}")
        return EXIT_OK
    print(f"{cfg.name}: test accuracy {summary['test/acc']:.4f}, "
          f"iterations to converge {summary['test/iters_to_converge']:.2f} "
          f"(not converged: {summary.get('test/not_converged', 0):.0f}), "
          f"{summary.get('seconds_per_epoch') or 0:.1f} s/epoch on {summary['device']}")
    print(f"results: {cfg.directory}")
    print(json.dumps({k: summary[k] for k in summary if "/" in k}))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
