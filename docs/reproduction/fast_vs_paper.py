"""The fast mode against paper settings, run for run, from four committed sweeps:

    python docs/reproduction/fast_vs_paper.py [--readme]

For every run of ``docs/reproduction/fmnist-1ep-paper/`` (trained with paper settings),
its twins of the same row and seed in ``docs/reproduction/fmnist-1ep-fast-neumann/``
(``--fast`` as it is now: the gradient computed at the fixed point) and, where there is one, in
``docs/reproduction/fmnist-1ep-fast/`` (trained with ``--fast`` when the fast mode still
backpropagated through the paper's unrolled steps; the seeds trained later have none) and,
where there is one, in ``docs/reproduction/fmnist-1ep-fast-bf16adj/`` (``--fast`` with the
Neumann backward's products in bfloat16, an option since measured as useless and removed,
trained later on another machine); otherwise the same command: data, epochs, seed, hence the same batches; all are tested at
paper settings. Prints a markdown table (test accuracy, test
iterations) and, per row, the mean over seeds; then the bfloat16-adjoint runs against float32
fast runs trained on their VM (``docs/reproduction/fmnist-1ep-fast-bf16vm/``). ``--write``
also writes them into docs/performance.md's ``<!-- fast-vs-paper -->`` and
``<!-- bf16-vs-float32 -->`` blocks (``tests/test_reproduction.py`` checks that they are
current). These runs predate the papers' counting rule: their test iterations are this
project's first count (about +2 on converged samples), compared only with each other.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from statistics import fmean
from typing import NamedTuple

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # run as a script: the repository's packages
    sys.path.insert(0, str(REPO))

from runner.names import CONFIG, SUMMARY  # noqa: E402 - after the path above
from runner.store import FINISHED  # noqa: E402
DOCS = Path("docs") / "reproduction"
PAPER, FAST, NEUMANN = "fmnist-1ep-paper", "fmnist-1ep-fast", "fmnist-1ep-fast-neumann"
BF16 = "fmnist-1ep-fast-bf16adj"
OPTIONAL = (FAST, BF16)
# The float32 fast mode again, on the VM of the bfloat16 runs: the same-machine comparison.
FAST_BF16_VM = "fmnist-1ep-fast-bf16vm"
# The config entries that may differ between twins: the mode itself and where it was stored.
MODE_KEYS = frozenset({"fast", "fast_mode", "sweep", "results"})
# Entries that runs of older commits lack, at the value they had then.
DEFAULTS = {"compile_f": False, "fused_anderson": False}


class Twin(NamedTuple):
    """One row and seed, trained both ways (summaries as written by the run)."""

    key: str
    seed: int
    paper: dict
    fast: dict | None  # the fast mode with the unrolled backward (None: not trained)
    neumann: dict  # the fast mode with the Neumann backward, float32 products
    bf16: dict | None = None  # the same with the adjoint's products in bfloat16 (None: not trained)


def _load(run: Path) -> tuple[dict, dict]:
    return (json.loads((run / CONFIG).read_text()),
            json.loads((run / SUMMARY).read_text()))


def _twin(name: str, paper_config: dict, twin_dir: Path, sweep: str,
          optional: bool = False) -> dict | None:
    """The summary of a paper run's fast-mode twin, checked to differ only in the mode
    (``None`` for an ``optional`` twin that was never trained)."""
    if optional and not twin_dir.exists():
        return None
    if not (twin_dir / SUMMARY).is_file():
        raise ValueError(f"{name}: no fast-mode twin in {sweep}")
    fast_config, fast = _load(twin_dir)
    if fast.get("status") != FINISHED:
        raise ValueError(f"{name}: its fast-mode twin in {sweep} is {fast.get('status')!r}")
    paper_config, fast_config = DEFAULTS | paper_config, DEFAULTS | fast_config
    differ = sorted(k for k in paper_config.keys() | fast_config.keys()
                    if k not in MODE_KEYS and paper_config.get(k) != fast_config.get(k))
    if differ or paper_config.get("fast") or not fast_config.get("fast"):
        raise ValueError(f"{name}: the twins in {PAPER} and {sweep} differ in "
                         f"{differ or ['fast']}")
    return fast


def twins(root: Path = REPO / DOCS) -> list[Twin]:
    """Every finished paper-settings run with its fast twins, in row, seed order. A paper run
    without a finished twin in the Neumann sweep, or a twin whose command differs in more than
    the mode, is a ValueError naming it; the unrolled and the bfloat16 twins may be missing
    (``None``)."""
    found = []
    for run in sorted((root / PAPER).iterdir()):
        if not run.is_dir():
            continue
        paper_config, paper = _load(run)
        if paper.get("status") != FINISHED:
            continue
        twins_of_run = [_twin(run.name, paper_config, root / sweep / run.name, sweep,
                              optional=sweep in OPTIONAL) for sweep in (FAST, NEUMANN, BF16)]
        key = f"{paper['row']}-L{paper['depth']}"
        found.append(Twin(key, int(paper["seed"]), paper, *twins_of_run))
    return sorted(found, key=lambda t: (t.paper["depth"], t.key, t.seed))


def _acc(summary: dict) -> float:
    return 100 * summary["test/acc"]


def _mean(row: list[Twin], pick: Callable[[Twin], float]) -> float:
    return fmean(pick(t) for t in row)


def _cell(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def markdown(pairs: list[Twin]) -> str:
    """The comparison table: one line per run and its twins, then one per row (mean over its
    seeds; the unrolled backward's columns over the seeds that have it).

    No times: the runs of the three sweeps shared the machine with different other work, so
    their seconds per epoch (in the summaries) do not compare; ``python -m bench.trained_steps`` does.
    """
    lines = ["| row | seed | test acc. (%), paper | fast, unrolled backward | fast | "
             "fast, bf16 adjoint | unrolled - paper (points) | fast - paper (points) | "
             "bf16 adjoint - paper (points) | test iters, paper / fast |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]

    def line(label: str, seeds: str, rows: list[Twin]) -> str:
        paper, neumann = (_mean(rows, lambda t, k=k: _acc(getattr(t, k)))
                          for k in ("paper", "neumann"))
        unrolled = [t for t in rows if t.fast is not None]
        fast = _mean(unrolled, lambda t: _acc(t.fast)) if unrolled else None
        fast_gain = _mean(unrolled, lambda t: _acc(t.fast) - _acc(t.paper)) if unrolled else None
        low = [t for t in rows if t.bf16 is not None]
        bf16 = _mean(low, lambda t: _acc(t.bf16)) if low else None
        bf16_gain = _mean(low, lambda t: _acc(t.bf16) - _acc(t.paper)) if low else None
        it_p = _mean(rows, lambda t: t.paper["test/iters_to_converge"])
        it_f = _mean(rows, lambda t: t.neumann["test/iters_to_converge"])
        if len(rows) > 1 and len(unrolled) != len(rows):
            seeds += f" (unrolled: {len(unrolled)})"
        if len(rows) > 1 and len(low) != len(rows):
            seeds += f" (bf16: {len(low)})"
        return (f"| {label} | {seeds} | {paper:.2f} | {_cell(fast, '.2f')} | {neumann:.2f} | "
                f"{_cell(bf16, '.2f')} | {_cell(fast_gain, '+.2f')} | {neumann - paper:+.2f} | "
                f"{_cell(bf16_gain, '+.2f')} | {it_p:.2f} / {it_f:.2f} |")

    lines += [line(t.key, str(t.seed), [t]) for t in pairs]
    for key in dict.fromkeys(t.key for t in pairs):
        row = [t for t in pairs if t.key == key]
        lines.append(line(f"**{key}, mean**", f"{len(row)} seeds", row))
    return "\n".join(lines) + "\n"


def same_machine(root: Path = REPO / DOCS) -> list[tuple[str, int, dict, dict]]:
    """``(key, seed, float32 fast, bfloat16-adjoint fast)`` for every run of ``BF16`` with a
    twin in ``FAST_BF16_VM`` (the float32 fast mode trained on the same VM), each pair checked
    to differ only in the mode and its float32 twin to be a float32 fast run."""
    pairs = []
    for run in sorted((root / BF16).iterdir()) if (root / BF16).is_dir() else ():
        twin = root / FAST_BF16_VM / run.name
        if not run.is_dir() or not twin.is_dir():
            continue
        (low_config, low), (f32_config, f32) = _load(run), _load(twin)
        differ = sorted(k for k in low_config.keys() | f32_config.keys()
                        if k not in MODE_KEYS and low_config.get(k) != f32_config.get(k))
        if differ or (f32_config.get("fast_mode") or {}).get("adjoint_precision") is not None:
            raise ValueError(f"{run.name}: the twins in {BF16} and {FAST_BF16_VM} differ in "
                             f"{differ or ['adjoint_precision']}")
        if FINISHED != low.get("status") or FINISHED != f32.get("status"):
            raise ValueError(f"{run.name}: a twin in {BF16} or {FAST_BF16_VM} is not finished")
        pairs.append((f"{low['row']}-L{low['depth']}", int(low["seed"]), f32, low))
    return sorted(pairs, key=lambda p: (p[0], p[1]))


def same_machine_markdown(pairs: list[tuple[str, int, dict, dict]]) -> str:
    """The same-machine table: float32 against bfloat16 adjoint, per run and per row mean."""
    lines = ["| row | seed | fast (%), float32 | fast, bf16 adjoint | bf16 - float32 (points) |",
             "| --- | ---: | ---: | ---: | ---: |"]
    lines += [f"| {k} | {seed} | {_acc(a):.2f} | {_acc(b):.2f} | {_acc(b) - _acc(a):+.2f} |"
              for k, seed, a, b in pairs]
    for key in dict.fromkeys(k for k, *_ in pairs):
        row = [(a, b) for k, _, a, b in pairs if k == key]
        a, b = fmean(_acc(a) for a, _ in row), fmean(_acc(b) for _, b in row)
        lines.append(f"| **{key}, mean** | {len(row)} seeds | {a:.2f} | {b:.2f} | {b - a:+.2f} |")
    return "\n".join(lines) + "\n"


PAGE = "docs/performance.md"  # where the tables are shown


def splice(readme: str, table: str, block: str = "fast-vs-paper") -> tuple[str, int]:
    """``readme`` with its ``<!-- block -->`` block replaced by ``table``."""
    pattern = re.compile(rf"(<!-- {block} -->\n).*?(<!-- /{block} -->)", re.S)
    return pattern.subn(lambda m: m[1] + table + m[2], readme)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", "--readme", action="store_true", dest="write",
                        help="also write the tables into docs/performance.md's blocks")
    args = parser.parse_args(argv)
    tables = {"fast-vs-paper": markdown(twins()),
              "bf16-vs-float32": same_machine_markdown(same_machine())}
    print("\n".join(tables.values()), end="")
    if args.write:
        page = REPO / PAGE
        text = page.read_text()
        for block, table in tables.items():
            text, n = splice(text, table, block)
            if n != 1:
                raise SystemExit(f"{PAGE} has {n} <!-- {block} --> blocks; expected 1")
        page.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
