"""Train and test one experiment of Table 2, e.g.

    python train.py --row HAM-EO-DEQ --layers 3 --seed 0 --dataset fashion-mnist --epochs 1

Settings not given on the command line are the paper's (deq_modules/experiments.py). Results
land in ``<results>/<sweep>/<run>/`` like the sweep's; the final test accuracy and iterations
to converge are printed. Uses the GPU when there is one (``--accelerator auto``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from deq_modules.data import DATASETS
from deq_modules.experiments import DEPTHS, ROWS
from deq_modules.run import WANDB_MODES, RunConfig, parse_batches, quiet_lightning, run_experiment



def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--row", required=True, choices=ROWS, help="row of Table 2")
    p.add_argument("--layers", type=int, default=3, choices=DEPTHS,
                   help="depth: 3, 5 or 7 layers including input and output (default 3)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--dataset", default="emnist-mnist", choices=DATASETS,
                   help="dataset (default emnist-mnist, the paper's)")
    p.add_argument("--data-dir", default=None,
                   help="dataset directory (default $HOPFIELD_DATA_DIR or ./data)")
    p.add_argument("--no-download", action="store_true",
                   help="never download; fail with a clear error if the files are missing")
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs to train (default: the row's, 10 for most)")
    p.add_argument("--limit-train-batches", type=parse_batches, default=None,
                   help="train on this many batches (int) or this fraction (float) per epoch")
    p.add_argument("--limit-test-batches", type=parse_batches, default=None,
                   help="validate/test on this many batches or this fraction")
    p.add_argument("--results", default="results", help="results directory (default results/)")
    p.add_argument("--name", default="single", help="sweep name inside --results (default single)")
    p.add_argument("--accelerator", default="auto", help="Lightning accelerator (default auto)")
    p.add_argument("--devices", default="1", help="devices for this run; N > 1 uses DDP (default 1)")
    p.add_argument("--wandb", default="disabled", choices=WANDB_MODES,
                   help="W&B logging mode (default disabled)")
    p.add_argument("--rerun", action="store_true", help="train again even if finished")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    quiet_lightning()
    cfg = RunConfig(
        row=args.row, depth=args.layers, seed=args.seed, dataset=args.dataset,
        data_dir=args.data_dir, download=not args.no_download, epochs=args.epochs,
        limit_train_batches=args.limit_train_batches, limit_test_batches=args.limit_test_batches,
        results=args.results, sweep=args.name, accelerator=args.accelerator,
        devices=int(args.devices) if args.devices.isdigit() else args.devices,
        wandb_mode=args.wandb,
    )
    if args.rerun and (cfg.directory / "summary.json").exists():
        os.unlink(cfg.directory / "summary.json")
    summary = run_experiment(cfg)
    if os.environ.get("LOCAL_RANK", "0") != "0":
        return 0  # a DDP worker: rank 0 reports
    print(f"{cfg.name}: test accuracy {summary['test/acc']:.4f}, "
          f"iterations to converge {summary['test/iters_to_converge']:.2f} "
          f"(not converged: {summary.get('test/not_converged', 0):.0f}), "
          f"{summary['seconds_per_epoch']:.1f} s/epoch on {summary['device']}")
    print(f"results: {cfg.directory}")
    print(json.dumps({k: summary[k] for k in summary if "/" in k}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
