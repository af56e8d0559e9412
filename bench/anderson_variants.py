"""Our Anderson against the published one, on the test images of trained networks.

    OMP_NUM_THREADS=1 python -m bench.anderson_variants --results RESULTS --sweep NAME \\
        [--runs CHN-DEQ-L3-s0,...] [--dataset fashion-mnist] [--data-dir DIR] \\
        [--images 10000] [--batch 500] [--write FILE]

Our Anderson solver (:func:`deq_core.solvers.anderson`) differs from the published one in three
details (``docs/papers.md``):

- Tikhonov term: ours is relative, ``lam * mean(diag(G G^T)) + tiny``; the published one is
  absolute, ``lam`` itself (1e-10).
- Safeguard: ours evaluates the mixed point and, when its residual is larger than at the last
  accepted point, takes the plain step from that point next (no extra evaluation); the
  published one decides before evaluating. We read "before evaluating" as: the mix is taken
  when its residual predicted by the linear model, ``|sum_i alpha_i g_i|``, is no larger than
  the newest residual ``|g_k|``, and the plain step ``f(z_k)`` otherwise (an assumption: the
  published rule is only known to compare before evaluating).
- Returned state: ours is the image of each sample's best point, the published one the last
  image.

This script solves the same test images with the trained weights of finished runs four ways
(ours, the published variant, ours with each of the first two differences alone; the third
changes no iteration count, only the returned state, so it shows in the accuracy), counts iterations by the papers' rule
(:func:`custom_callbacks.iterations_to_converge` on the map's consecutive outputs) and prints a
markdown table: mean iterations to converge, the share of images that never converged and the
test accuracy per variant, and the share of images for which ours needs more iterations than
the published variant. Every variant is an option of :func:`deq_core.solvers.anderson`
(``tikhonov``, ``safeguard``, ``returns``); the eager steps run here, also for ours, so the four
solves differ in those options only.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
from torch import Tensor

from custom_callbacks import iterations_to_converge
from deq_core.solvers import PUBLISHED_ANDERSON, anderson
from deq_modules.data.files import DatasetNotFoundError, load_dataset
from deq_modules.experiments import get_experiment, split_run_name
from deq_modules.lit import lit_module_for

# (label, the solver's options): ours, the published solver, each difference alone.
VARIANTS = (
    ("ours", {}),
    ("published", PUBLISHED_ANDERSON),
    ("ours, absolute Tikhonov", dict(tikhonov="absolute")),
    ("ours, safeguard before evaluating", dict(safeguard="before")),
)
TOL = 1e-4  # the papers' convergence threshold


def _module(results: Path, sweep: str, run: str):
    row, depth, _seed = split_run_name(run)
    exp = get_experiment(row, depth)
    if exp.solver != "anderson":
        raise SystemExit(f"{run}: row {row} solves with {exp.solver!r}, not Anderson")
    path = results / sweep / run / "checkpoints" / "last.ckpt"
    if not path.is_file():
        raise SystemExit(f"{run}: no checkpoint at {path}")
    module = lit_module_for(exp)
    module.load_state_dict(torch.load(path, map_location="cpu", weights_only=False)["state_dict"])
    return module.eval(), exp


def measure(module, forward_iter: int, images: Tensor, labels: Tensor, batch: int) -> dict:
    """Per variant: mean iterations, share never converged, accuracy; and per non-ours
    variant the share of images where ours needs more iterations."""
    kwargs = module.deq.forward_kwargs
    iters = {label: [] for label, _ in VARIANTS}
    never = {label: 0 for label, _ in VARIANTS}
    correct = {label: 0 for label, _ in VARIANTS}
    with torch.no_grad():
        for x, y in zip(images.split(batch), labels.split(batch)):
            Ux = module.f.preprocess_inputs(x)
            step = module.deq.step_map(Ux)
            z0 = module.deq.initial_state(Ux)
            for label, options in VARIANTS:
                z, stats = anderson(step, z0, max_iter=forward_iter, trace=True,
                                    m=kwargs.get("m", 4), lam=kwargs.get("lam", 1e-10),
                                    **options)
                n, converged = iterations_to_converge(stats.step_trace, TOL)
                iters[label].append(n)
                never[label] += int((~converged).sum())
                correct[label] += int((module.f.readout(z).argmax(dim=1) == y).sum())
    total = len(labels)
    per = {label: torch.cat(v) for label, v in iters.items()}
    out = {label: dict(iters=per[label].double().mean().item(), never=never[label] / total,
                       acc=100.0 * correct[label] / total) for label in per}
    for label in per:
        if label != "ours":
            out[label]["ours_more"] = (per["ours"] > per[label]).double().mean().item()
    return out


def table(records: dict[str, dict]) -> str:
    head = ["run"] + [f"{label}: iters / never / acc" for label, _ in VARIANTS] + \
        ["ours needs more than published"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for run, rec in records.items():
        cells = [run] + [f"{rec[label]['iters']:.2f} / {100 * rec[label]['never']:.1f} % / "
                         f"{rec[label]['acc']:.2f} %" for label, _ in VARIANTS]
        cells.append(f"{100 * rec['published']['ours_more']:.1f} % of images")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def finished_anderson_runs(results: Path, sweep: str) -> list[str]:
    runs = []
    for ckpt in sorted((results / sweep).glob("*/checkpoints/last.ckpt")):
        run = ckpt.parent.parent.name
        if (ckpt.parent.parent / "summary.json").is_file():
            row, depth, _ = split_run_name(run)
            if get_experiment(row, depth).solver == "anderson":
                runs.append(run)
    return runs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", type=Path, default=Path("results"))
    p.add_argument("--sweep", required=True)
    p.add_argument("--runs", help="comma-separated runs (default: every finished Anderson run)")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="dataset directory (default $HOPFIELD_DATA_DIR or ./data)")
    p.add_argument("--images", type=int, default=10_000, help="test images (default all)")
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--write", type=Path, help="also write the table to this markdown file")
    args = p.parse_args(argv)
    if args.images < 1 or args.batch < 1:
        p.error(f"--images and --batch must be >= 1, got {args.images} and {args.batch}")
    runs = args.runs.split(",") if args.runs else finished_anderson_runs(args.results, args.sweep)
    if not runs:
        p.error(f"no finished Anderson run in {args.results / args.sweep}")
    modules = {run: _module(args.results, args.sweep, run) for run in runs}  # fail early
    data_dir = args.data_dir or Path(os.environ.get("HOPFIELD_DATA_DIR", "data"))
    try:
        images, labels = load_dataset(args.dataset, data_dir)["test"]
    except DatasetNotFoundError as err:
        raise SystemExit(str(err)) from None
    images = images[: args.images].float().div(255.0).reshape(min(args.images, len(images)), -1)
    labels = labels[: args.images].long()
    records = {}
    for run in runs:
        start = time.perf_counter()
        module, exp = modules[run]
        records[run] = measure(module, exp.forward_iter, images, labels, args.batch)
        print(f"{run}: measured in {time.perf_counter() - start:.0f} s", file=sys.stderr,
              flush=True)
    text = table(records)
    print(text)
    if args.write:
        args.write.write_text(
            f"# Our Anderson against the published one\n\n`OMP_NUM_THREADS=1 python -m "
            f"bench.anderson_variants {' '.join(argv if argv is not None else sys.argv[1:])}`"
            f"\n\nEach cell: mean iterations to converge (papers' rule) / share of the "
            f"{len(labels)} test images that never converged / test accuracy.\n\n{text}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
