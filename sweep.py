"""The Table 2 sweep: every row of the paper's results table, 5 seeds each (85 runs).

    python sweep.py                      # the whole table, paper settings, emnist-mnist
    python sweep.py --rows HAM-EO-DEQ,HAM --layers 3 --seeds 0,1
    python sweep.py --dry-run            # print the plan and exit
    python sweep.py --quick              # the whole pipeline on synthetic data, about a minute
    python sweep.py --join ENTITY/PROJECT/SWEEP_ID   # one more W&B agent of a running sweep

With a W&B API key (WANDB_API_KEY or ~/.netrc) and without --offline the grid is created as a
W&B sweep and this machine runs an agent on it; more machines join with --join. Otherwise the
grid runs here, each run logged as an offline W&B run (``wandb sync`` uploads it later). Either
way every run lands in ``<results>/<name>/<run>/``; finished runs are skipped when the sweep is
started again, and a run that was killed is resumed from its last epoch checkpoint.
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from typing import List, Optional

from deq_modules.data import DATASETS
from deq_modules.experiments import DEPTHS, ROWS, SEEDS, Experiment, select
from deq_modules.results import FINISHED, summary_of
from deq_modules.run import RunConfig, parse_batches, quiet_lightning, run_experiment

QUICK = dict(dataset="synthetic", epochs=1, limit_train_batches=2, limit_test_batches=2,
             synthetic_kwargs=dict(n_train=256, n_test=128))


def csv_list(kind, choices=None):
    def parse(text: str) -> List:
        values = [kind(v) for v in text.split(",") if v.strip()]
        bad = [v for v in values if choices is not None and v not in choices]
        if bad or not values:
            raise argparse.ArgumentTypeError(
                f"invalid value(s) {bad or text!r}; valid: {', '.join(map(str, choices or []))}")
        return values
    return parse



def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=csv_list(str, ROWS), default=None,
                   help=f"comma-separated rows of Table 2 (default all: {','.join(ROWS)})")
    p.add_argument("--layers", type=csv_list(int, DEPTHS), default=None,
                   help="comma-separated depths among 3,5,7 (default all)")
    p.add_argument("--seeds", type=csv_list(int, range(10**6)), default=None,
                   help="comma-separated seeds (default 0,1,2,3,4; 0 with --quick)")
    p.add_argument("--dataset", default=None, choices=DATASETS,
                   help="dataset (default emnist-mnist, the paper's; synthetic with --quick)")
    p.add_argument("--data-dir", default=None,
                   help="dataset directory (default $HOPFIELD_DATA_DIR or ./data)")
    p.add_argument("--no-download", action="store_true", help="never download datasets")
    p.add_argument("--epochs", type=int, default=None,
                   help="override every row's epochs (default: the paper's, from the registry)")
    p.add_argument("--limit-train-batches", type=parse_batches, default=None,
                   help="batches (int) or fraction (float) of each training epoch")
    p.add_argument("--limit-test-batches", type=parse_batches, default=None,
                   help="batches (int) or fraction (float) of validation and test")
    p.add_argument("--results", default="results", help="results directory (default results/)")
    p.add_argument("--name", default=None,
                   help="sweep name: results go to RESULTS/NAME/ (default table2, quick for --quick)")
    p.add_argument("--project", default="hopfield-deq", help="W&B project (default hopfield-deq)")
    p.add_argument("--entity", default=None, help="W&B entity (default: your default entity)")
    p.add_argument("--offline", action="store_true",
                   help="run the grid locally with offline W&B runs, even with an API key")
    p.add_argument("--no-wandb", action="store_true",
                   help="no W&B at all, only the local results store")
    p.add_argument("--dry-run", action="store_true", help="print the planned runs and exit")
    p.add_argument("--join", metavar="ENTITY/PROJECT/SWEEP_ID", default=None,
                   help="run this machine as one more agent of an existing W&B sweep")
    p.add_argument("--count", type=int, default=None, help="with --join: at most this many runs")
    p.add_argument("--devices", type=int, default=1,
                   help="devices per run; N > 1 trains each run with Lightning DDP (default 1)")
    p.add_argument("--accelerator", default="auto", help="Lightning accelerator (default auto)")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: every row, seed 0, synthetic data, 1 epoch of 2 batches")
    args = p.parse_args(argv)
    if args.seeds is None:
        args.seeds = [0] if args.quick else list(SEEDS)
    for key, value in QUICK.items():  # --quick's defaults; explicit flags still win
        if key != "synthetic_kwargs" and args.quick and getattr(args, key) is None:
            setattr(args, key, value)
    args.dataset = args.dataset or "emnist-mnist"
    args.name = args.name or ("quick" if args.quick else "table2")
    if args.count is not None and args.join is None:
        p.error("--count only applies with --join")
    return args


def plan(args) -> List[RunConfig]:
    """The runs of the grid, in table order: rows x depths x seeds."""
    wandb_mode = "disabled" if args.no_wandb else "offline"
    return [
        RunConfig(row=e.row, depth=e.depth, seed=seed, dataset=args.dataset,
                  data_dir=args.data_dir, download=not args.no_download, epochs=args.epochs,
                  limit_train_batches=args.limit_train_batches,
                  limit_test_batches=args.limit_test_batches, results=args.results,
                  sweep=args.name, accelerator=args.accelerator, devices=args.devices,
                  wandb_mode=wandb_mode, wandb_project=args.project, wandb_entity=args.entity,
                  synthetic_kwargs=QUICK["synthetic_kwargs"] if args.quick else None)
        for e in select(args.rows, args.layers) for seed in args.seeds
    ]


def describe(e: Experiment, epochs: Optional[int]) -> str:
    return (f"{e.model.upper()} {e.structure:9s} {e.solver:8s} damping {e.damping:<3} "
            f"iters {e.forward_iter}/{e.backward_iter}  lr {e.lr}  epochs {epochs or e.epochs}")


def print_plan(runs: List[RunConfig], args) -> None:
    done = sum(1 for r in runs if (summary_of(r.directory) or {}).get("status") == FINISHED)
    print(f"sweep {args.name}: {len(runs)} runs ({done} already finished), dataset "
          f"{args.dataset}, results in {os.path.join(args.results, args.name)}")
    for i, r in enumerate(runs, 1):
        print(f"{i:3d}/{len(runs)} {r.name:22s} {describe(r.experiment, args.epochs)}")


def has_wandb_key() -> bool:
    """An API key in the environment or in ~/.netrc (what ``wandb login`` writes)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    import netrc
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def wandb_reachable(timeout: float = 5.0) -> bool:
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def ensure_data(args) -> None:
    """Find (or download) the dataset once, before any run: a missing dataset is one clear
    error at the start, not 85 failed runs."""
    from deq_modules.data import DatasetNotFoundError, HopfieldDataModule

    try:
        HopfieldDataModule(args.dataset, args.data_dir, download=not args.no_download).prepare_data()
    except DatasetNotFoundError as err:
        raise SystemExit(f"sweep.py: {err}") from None


def run_local(runs: List[RunConfig], args) -> int:
    """Run the grid here, one run after the other; failures are recorded and skipped."""
    print_plan(runs, args)
    failed = []
    for i, cfg in enumerate(runs, 1):
        tag = f"run {i}/{len(runs)} {cfg.experiment.row} L{cfg.depth} seed {cfg.seed}"
        if (summary_of(cfg.directory) or {}).get("status") == FINISHED:
            print(f"{tag}: already finished, skipped", flush=True)
            continue
        print(f"{tag}: start ({cfg.name})", flush=True)
        start = time.monotonic()
        try:
            if args.devices > 1:
                run_in_subprocess(cfg)
                summary = summary_of(cfg.directory) or {}
            else:
                summary = run_experiment(cfg)
        except Exception as err:  # noqa: BLE001 - record, report and go on with the sweep
            failed.append(cfg.name)
            print(f"{tag}: FAILED after {time.monotonic() - start:.0f}s: "
                  f"{type(err).__name__}: {err}", flush=True)
            continue
        print(f"{tag}: finished in {time.monotonic() - start:.0f}s: test acc "
              f"{summary.get('test/acc', float('nan')):.4f}, iters to converge "
              f"{summary.get('test/iters_to_converge', float('nan')):.2f}", flush=True)
    print(f"sweep {args.name}: {len(runs) - len(failed)} of {len(runs)} runs finished"
          + (f"; failed: {', '.join(failed)} (see their summary.json)" if failed else ""))
    if args.no_wandb is False:
        print("offline W&B runs can be uploaded later with: wandb sync "
              f"{os.path.join(args.results, args.name)}/*/wandb/offline-run-*")
    return 1 if failed else 0


def run_in_subprocess(cfg: RunConfig) -> None:
    """One run with Lightning DDP: its own process, so DDP's launcher re-executes only it."""
    cmd = [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "train.py"),
           "--row", cfg.row, "--layers", str(cfg.depth), "--seed", str(cfg.seed),
           "--dataset", cfg.dataset, "--results", cfg.results, "--name", cfg.sweep,
           "--devices", str(cfg.devices), "--accelerator", cfg.accelerator,
           "--wandb", cfg.wandb_mode]
    for flag, value in (("--data-dir", cfg.data_dir), ("--epochs", cfg.epochs),
                        ("--limit-train-batches", cfg.limit_train_batches),
                        ("--limit-test-batches", cfg.limit_test_batches)):
        if value is not None:
            cmd += [flag, str(value)]
    if not cfg.download:
        cmd.append("--no-download")
    subprocess.run(cmd, check=True)


def sweep_config(runs: List[RunConfig], args) -> dict:
    """A W&B grid over (row key, seed); everything else is fixed by the registry."""
    keys = list(dict.fromkeys(r.experiment.key for r in runs))
    fixed = dict(dataset=args.dataset, epochs=args.epochs, results=args.results,
                 sweep=args.name, limit_train_batches=args.limit_train_batches,
                 limit_test_batches=args.limit_test_batches)
    return dict(
        name=args.name, method="grid",
        parameters=dict(experiment=dict(values=keys),
                        seed=dict(values=sorted({r.seed for r in runs})),
                        **{k: dict(value=v) for k, v in fixed.items()}),
    )


def agent_function(args):
    """What a W&B agent runs for each grid point handed to this machine."""
    def run_one() -> None:
        import wandb

        run = wandb.init()
        c = dict(run.config)
        row, depth = c["experiment"].rsplit("-L", 1)
        cfg = RunConfig(row=row, depth=int(depth), seed=int(c["seed"]), dataset=c["dataset"],
                        data_dir=args.data_dir, download=not args.no_download,
                        epochs=c.get("epochs"), limit_train_batches=c.get("limit_train_batches"),
                        limit_test_batches=c.get("limit_test_batches"), results=c["results"],
                        sweep=c["sweep"], accelerator=args.accelerator, devices=1,
                        wandb_mode="online", wandb_project=run.project, wandb_entity=run.entity,
                        wandb_run_id=run.id)
        run.name = cfg.name
        run.tags = tuple(run.tags) + (cfg.experiment.structure, cfg.experiment.model,
                                      cfg.experiment.solver)
        print(f"agent: {cfg.name} start", flush=True)
        summary = run_experiment(cfg)
        print(f"agent: {cfg.name} finished: test acc {summary['test/acc']:.4f}, iters to "
              f"converge {summary['test/iters_to_converge']:.2f}", flush=True)
    return run_one


def run_wandb(runs: List[RunConfig], args) -> int:
    import wandb

    if args.devices > 1:
        raise SystemExit("sweep.py: --devices > 1 is supported in local mode only "
                         "(add --offline); W&B agents run one device per run")
    if args.join:
        entity, project, sweep_id = args.join.split("/")
    else:
        print_plan(runs, args)
        entity, project = args.entity, args.project
        sweep_id = wandb.sweep(sweep_config(runs, args), entity=entity, project=project)
        print(f"created W&B sweep {sweep_id}; add machines with: python sweep.py --join "
              f"{entity or '<entity>'}/{project}/{sweep_id}", flush=True)
    wandb.agent(sweep_id, function=agent_function(args), entity=entity, project=project,
                count=args.count)
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    quiet_lightning()  # one line per event in the log
    os.environ.setdefault("WANDB_SILENT", "true")
    if args.join:
        parts = args.join.split("/")
        if len(parts) != 3 or not all(parts):
            raise SystemExit(f"sweep.py: --join expects ENTITY/PROJECT/SWEEP_ID, got {args.join!r}")
        if not has_wandb_key():
            raise SystemExit("sweep.py: --join needs a W&B API key on this machine: set "
                             "WANDB_API_KEY or run `wandb login`; nothing was run")
        if not wandb_reachable():
            raise SystemExit("sweep.py: --join cannot reach the W&B server (no network?); "
                             "without it run the grid locally: python sweep.py --offline")
        return run_wandb([], args)
    runs = plan(args)
    if args.dry_run:
        print_plan(runs, args)
        return 0
    ensure_data(args)
    online = not (args.offline or args.no_wandb) and has_wandb_key() and wandb_reachable()
    if online:
        return run_wandb(runs, args)
    if not args.no_wandb:
        os.environ["WANDB_MODE"] = "offline"  # never a login prompt, whatever the settings
    return run_local(runs, args)


if __name__ == "__main__":
    sys.exit(main())
