"""The fast mode against the paper's settings, run for run, from two committed sweeps:

    python docs/reproduction/fast_vs_paper.py [--readme]

For every run of ``docs/reproduction/fmnist-1ep-paper/`` (trained with the paper's settings),
its twin of the same row and seed in ``docs/reproduction/fmnist-1ep-fast/`` (trained with
``--fast``; otherwise the same command: data, epochs, seed, hence the same batches); both are
tested at the paper's settings. Prints a markdown table (test accuracy, test iterations) and,
per row, the mean over seeds; ``--readme`` also writes it
into the README's ``<!-- fast-vs-paper -->`` block (``tests/test_reproduction.py`` checks
that the block is current).
"""
from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable
from pathlib import Path
from statistics import fmean
from typing import NamedTuple

REPO = Path(__file__).resolve().parents[2]
DOCS = Path("docs") / "reproduction"
PAPER, FAST = "fmnist-1ep-paper", "fmnist-1ep-fast"
# The config entries that may differ between twins: the mode itself and where it was stored.
MODE_KEYS = frozenset({"fast", "fast_mode", "sweep", "results"})
# Entries that runs of older commits lack, at the value they had then.
DEFAULTS = {"compile_f": False}


class Twin(NamedTuple):
    """One row and seed, trained both ways (summaries as written by the run)."""

    key: str
    seed: int
    paper: dict
    fast: dict


def _load(run: Path) -> tuple[dict, dict]:
    return (json.loads((run / "config.json").read_text()),
            json.loads((run / "summary.json").read_text()))


def twins(root: Path = REPO / DOCS) -> list[Twin]:
    """Every finished paper-settings run with its fast twin, in row, seed order. A paper run
    without a finished twin, or a twin whose command differs in more than the mode, is a
    ValueError naming it."""
    found = []
    for run in sorted((root / PAPER).iterdir()):
        if not run.is_dir():
            continue
        paper_config, paper = _load(run)
        if paper.get("status") != "finished":
            continue
        twin_dir = root / FAST / run.name
        if not (twin_dir / "summary.json").is_file():
            raise ValueError(f"{run.name}: no fast-mode twin in {FAST}")
        fast_config, fast = _load(twin_dir)
        if fast.get("status") != "finished":
            raise ValueError(f"{run.name}: its fast-mode twin is {fast.get('status')!r}")
        paper_config, fast_config = DEFAULTS | paper_config, DEFAULTS | fast_config
        differ = sorted(k for k in paper_config.keys() | fast_config.keys()
                        if k not in MODE_KEYS and paper_config.get(k) != fast_config.get(k))
        if differ or paper_config.get("fast") or not fast_config.get("fast"):
            raise ValueError(f"{run.name}: the twins differ in {differ or ['fast']}")
        key = f"{paper['row']}-L{paper['depth']}"
        found.append(Twin(key, int(paper["seed"]), paper, fast))
    return sorted(found, key=lambda t: (t.paper["depth"], t.key, t.seed))


def _acc(summary: dict) -> float:
    return 100 * summary["test/acc"]


def _mean(row: list[Twin], pick: Callable[[Twin], float]) -> float:
    return fmean(pick(t) for t in row)


def markdown(pairs: list[Twin]) -> str:
    """The comparison table: one line per run pair, then one per row (mean over its seeds).

    No times: the fast runs shared the machine with benchmarks and tests, the paper runs did
    not, so their seconds per epoch (in the summaries) do not compare; ``bench.speed`` does.
    """
    lines = ["| row | seed | test acc. (%), paper | test acc. (%), fast | fast - paper (points) "
             "| test iters, paper / fast |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for t in pairs:
        p, f = t.paper, t.fast
        lines.append(f"| {t.key} | {t.seed} | {_acc(p):.2f} | {_acc(f):.2f} | "
                     f"{_acc(f) - _acc(p):+.2f} | {p['test/iters_to_converge']:.2f} / "
                     f"{f['test/iters_to_converge']:.2f} |")
    for key in dict.fromkeys(t.key for t in pairs):
        row = [t for t in pairs if t.key == key]
        acc_p, acc_f = _mean(row, lambda t: _acc(t.paper)), _mean(row, lambda t: _acc(t.fast))
        it_p = _mean(row, lambda t: t.paper["test/iters_to_converge"])
        it_f = _mean(row, lambda t: t.fast["test/iters_to_converge"])
        lines.append(f"| **{key}, mean** | {len(row)} seeds | {acc_p:.2f} | {acc_f:.2f} | "
                     f"{acc_f - acc_p:+.2f} | {it_p:.2f} / {it_f:.2f} |")
    return "\n".join(lines) + "\n"


def splice(readme: str, table: str) -> tuple[str, int]:
    """``readme`` with its ``<!-- fast-vs-paper -->`` block replaced by ``table``."""
    pattern = re.compile(r"(<!-- fast-vs-paper -->\n).*?(<!-- /fast-vs-paper -->)", re.S)
    return pattern.subn(lambda m: m[1] + table + m[2], readme)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readme", action="store_true",
                        help="also write the table into the README's fast-vs-paper block")
    args = parser.parse_args(argv)
    table = markdown(twins())
    print(table, end="")
    if args.readme:
        readme = REPO / "README.md"
        text, n = splice(readme.read_text(), table)
        if n != 1:
            raise SystemExit(f"README.md has {n} <!-- fast-vs-paper --> blocks; expected 1")
        readme.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
