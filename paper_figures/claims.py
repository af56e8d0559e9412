"""The papers' four claims, checked against a sweep: ``python -m paper_figures.claims``.

    python -m paper_figures.claims [--results results] [--sweep table2] [--out figures]

Writes ``claims.md`` (also printed): for each claim the numbers it rests on, ours beside the
paper's, and a verdict by a stated criterion (``holds``, ``does not hold`` naming what fails,
or ``not checked`` when rows are missing). The numbers are Table 2's (mean iterations to
converge and test accuracy over finished seeds), so the claims and the table cannot disagree.

1. Even-odd updates need fewer iterations than synchronous ones, about 2x at 5 and 7 layers
   (HAM rows; a CHN-EO iteration is 20 local updates, so its count is not comparable).
2. Anderson acceleration (the DEQ rows) needs no more iterations than Picard iteration.
3. The two speedups compound: at each depth, HAM-EO-DEQ needs the fewest iterations.
4. All variants of one depth reach the same test accuracy.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from deq_modules.experiments import DEPTHS, EXPERIMENTS
from runner.store import atomic_write_text

from .cli import add_source_args, run_script, source_label
from .runs import RunRecord
from .table import RowStats, settings_lines, table_rows

HOLDS, FAILS, UNCHECKED = "holds", "does not hold", "not checked"
ABOUT_2X = 1.5  # claim 1: "about 2x" is taken as a ratio of at least this at 5 and 7 layers
SAME_ACC_PP = 1.0  # claim 4: "the same accuracy" is a spread of row means within this (points)
HAM_DEPTHS = tuple(d for d in DEPTHS if any(e.row == "HAM" and e.depth == d for e in EXPERIMENTS))


@dataclass
class Claim:
    title: str
    criterion: str
    header: tuple[str, ...]
    lines: list[tuple[str, ...]]
    verdict: str
    failures: list[str]
    summary: str = ""  # the numbers the verdict rests on, in one sentence

    def in_short(self, number: int) -> str:
        """One numbered list item: the claim, its verdict, its numbers, what fails."""
        fails = f" Fails: {'; '.join(self.failures)}." if self.failures else ""
        return f"{number}. **{self.title}: {self.verdict}.** {self.summary}.{fails}"

    def markdown(self, number: int) -> list[str]:
        verdict = self.verdict + (f": {'; '.join(self.failures)}" if self.failures else "")
        return [f"## {number}. {self.title}", "", f"Criterion: {self.criterion}", "",
                "| " + " | ".join(self.header) + " |",
                "| " + " | ".join("---" if i < 2 else "---:" for i in range(len(self.header)))
                + " |", *("| " + " | ".join(line) + " |" for line in self.lines), "",
                f"**Verdict: {verdict}.**", ""]


def _iters(stats: RowStats) -> float | None:
    return stats.iters_stats[0]


def _acc(stats: RowStats) -> float | None:
    return stats.acc_stats[0]


def _num(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def _x(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}x"


def _verdict(missing: list[str], failures: list[str]) -> tuple[str, list[str]]:
    if failures:
        return FAILS, failures
    if missing:
        return UNCHECKED, [f"no results for {', '.join(missing)}"]
    return HOLDS, []


def _joined(items: Sequence[str]) -> str:
    return ", ".join(items)


def _series_summary(series: dict[str, list[tuple[str, str, str]]]) -> str:
    """``{label: [(depth, ours, paper), ...]}`` as "label ours1, ours2 at d1, d2 layers
    (paper p1, p2)", joined by semicolons."""
    parts = []
    for label, items in series.items():
        depths, ours, paper = zip(*items)
        parts.append(f"{label} {_joined(ours)} at {_joined(depths)} layers "
                     f"(paper {_joined(paper)})")
    return "; ".join(parts)


def _pairs_summary(lines: Sequence[tuple[str, ...]]) -> str:
    """Claim 1 and 2's lines (depth, pair, iters, iters, ratio ours, ratio paper), pair by
    pair: the iteration ratios ours and the paper's."""
    series: dict[str, list[tuple[str, str, str]]] = {}
    for depth, pair, _, _, ours, paper in lines:
        series.setdefault(pair, []).append((depth, ours, paper))
    return "Iteration ratios: " + _series_summary(series)


def _compare_pairs(rows: dict[tuple[str, int], RowStats],
                   pairs: Sequence[tuple[str, str, int]]) -> tuple[list, list]:
    """Per pair (slower row, faster row, depth): the claim's table line (both rows' mean
    iterations, their ratio ours and the paper's) and our ratio (``None`` without results)."""
    lines, ratios = [], []
    for slow, fast, depth in pairs:
        s, f = rows[(slow, depth)], rows[(fast, depth)]
        ours = _ratio(_iters(s), _iters(f))
        paper = _ratio(s.exp.published_iters[0], f.exp.published_iters[0])
        lines.append((str(depth), f"{slow} / {fast}", _num(_iters(s)), _num(_iters(f)),
                      _x(ours), _x(paper)))
        ratios.append(ours)
    return lines, ratios


def even_odd_claim(rows: dict[tuple[str, int], RowStats]) -> Claim:
    pairs = [(a, b, d) for d in HAM_DEPTHS for a, b in (("HAM", "HAM-EO"),
                                                         ("HAM-DEQ", "HAM-EO-DEQ"))]
    lines, ratios = _compare_pairs(rows, pairs)
    missing, failures = [], []
    for (slow, fast, depth), ours in zip(pairs, ratios):
        if ours is None:
            missing.append(f"{slow}/{fast} at {depth} layers")
        elif ours <= 1.0:
            failures.append(f"{fast} needs no fewer iterations than {slow} at {depth} layers "
                            f"({_x(ours)})")
        elif depth >= 5 and ours < ABOUT_2X:
            failures.append(f"{slow}/{fast} at {depth} layers is only {_x(ours)}")
    return Claim("Even-odd updates need fewer iterations than synchronous ones, about 2x at 5 "
                 "and 7 layers",
                 f"the even-odd row needs fewer iterations in every pair (HAM rows), and at 5 "
                 f"and 7 layers at least {ABOUT_2X}x fewer.",
                 ("layers", "synchronous / even-odd", "#iters sync.", "#iters EO",
                  "ratio ours", "ratio paper"), lines, *_verdict(missing, failures),
                 _pairs_summary(lines))


def anderson_claim(rows: dict[tuple[str, int], RowStats]) -> Claim:
    pairs = [("CHN-3ep", "CHN-DEQ", 3), ("CHN-EO", "CHN-EO-DEQ", 3)]
    pairs += [(a, b, d) for d in HAM_DEPTHS for a, b in (("HAM", "HAM-DEQ"),
                                                         ("HAM-EO", "HAM-EO-DEQ"))]
    lines, ratios = _compare_pairs(rows, pairs)
    missing, failures = [], []
    for (slow, fast, depth), ours, line in zip(pairs, ratios, lines):
        if ours is None:
            missing.append(f"{slow}/{fast} at {depth} layers")
        elif ours < 1.0:
            failures.append(f"{fast} needs more iterations than {slow} at {depth} layers "
                            f"({line[3]} vs {line[2]})")
    return Claim("Anderson acceleration (DEQ) needs no more iterations than Picard iteration",
                 "the DEQ row's mean iterations are at most its Picard row's, in every pair.",
                 ("layers", "Picard / Anderson", "#iters Picard", "#iters Anderson",
                  "ratio ours", "ratio paper"), lines, *_verdict(missing, failures),
                 _pairs_summary(lines))


def compound_claim(rows: dict[tuple[str, int], RowStats]) -> Claim:
    variants = ("HAM", "HAM-DEQ", "HAM-EO", "HAM-EO-DEQ")
    lines, missing, failures = [], [], []
    for depth in HAM_DEPTHS:
        stats = [rows[(v, depth)] for v in variants]
        iters = [_iters(s) for s in stats]
        base = iters[0]
        lines.append((str(depth), *(_num(i) for i in iters),
                      _x(_ratio(base, iters[-1])),
                      _x(_ratio(stats[0].exp.published_iters[0],
                                stats[-1].exp.published_iters[0]))))
        if any(i is None for i in iters):
            missing.append(f"{depth} layers")
            continue
        fewest = min(range(len(variants)), key=lambda k: iters[k])
        if fewest != len(variants) - 1:
            failures.append(f"at {depth} layers {variants[fewest]} needs the fewest "
                            f"({_num(iters[fewest])} vs {_num(iters[-1])})")
    return Claim("The speedups compound: HAM-EO-DEQ needs the fewest iterations",
                 "at every depth HAM-EO-DEQ's mean iterations are the lowest of the four HAM "
                 "rows.", ("layers", *variants, "speedup EO-DEQ ours", "speedup EO-DEQ paper"),
                 lines, *_verdict(missing, failures),
                 "Iteration ratios: " + _series_summary(
                     {f"{variants[0]} / {variants[-1]}": [(l[0], l[-2], l[-1]) for l in lines]}))


def accuracy_claim(rows: dict[tuple[str, int], RowStats]) -> Claim:
    groups = [("CHN", 3)] + [("HAM", d) for d in HAM_DEPTHS]
    lines, missing, failures = [], [], []
    for family, depth in groups:
        stats = [s for (row, d), s in rows.items()
                 if d == depth and row.split("-")[0] == family]
        ours = {s.exp.row: _acc(s) for s in stats}
        found = {r: a for r, a in ours.items() if a is not None}
        paper = [s.exp.published_acc[0] for s in stats]
        spread = max(found.values()) - min(found.values()) if len(found) > 1 else None
        lines.append((str(depth), family,
                      ", ".join(f"{r} {_num(a)}" for r, a in ours.items()),
                      _num(spread), _num(max(paper) - min(paper))))
        if len(found) < len(ours):
            missing.append(", ".join(f"{r}-L{depth}" for r, a in ours.items() if a is None))
        if spread is not None and spread > SAME_ACC_PP:
            low, high = min(found, key=found.get), max(found, key=found.get)
            failures.append(f"{family} at {depth} layers spans {_num(spread)} points "
                            f"({low} {_num(found[low])} to {high} {_num(found[high])})")
    return Claim("All variants of one depth reach the same test accuracy",
                 f"the row means (test accuracy, %) of one model family and depth lie within "
                 f"{SAME_ACC_PP:g} percentage point of each other.",
                 ("layers", "family", "test acc. (%) ours", "spread ours", "spread paper"),
                 lines, *_verdict(missing, failures),
                 "Spread of the row means, in points: " + _series_summary(
                     {fam: [(l[0], l[3], l[4]) for l in lines if l[1] == fam]
                      for fam in dict.fromkeys(l[1] for l in lines)}))


CLAIMS = (even_odd_claim, anderson_claim, compound_claim, accuracy_claim)


def check_claims(records: Sequence[RunRecord]) -> list[Claim]:
    rows = {(s.exp.row, s.exp.depth): s for s in table_rows(records)}
    return [claim(rows) for claim in CLAIMS]


IN_SHORT_START, IN_SHORT_END = "<!-- claims-in-short -->", "<!-- /claims-in-short -->"


def in_short(claims: Sequence[Claim]) -> str:
    """The verdict line and one item per claim with its numbers, between markers (the README
    quotes this block; docs/reproduction/refresh.py copies it there)."""
    verdicts = ", ".join(f"{i} {c.verdict}" for i, c in enumerate(claims, 1))
    return "\n".join([IN_SHORT_START, f"Verdicts: {verdicts}.", "",
                      *(c.in_short(i) for i, c in enumerate(claims, 1)), IN_SHORT_END])


def to_markdown(claims: Sequence[Claim], records: Sequence[RunRecord], source: str) -> str:
    lines = [f"# The papers' claims, checked (source: {source})", "",
             *settings_lines(records),
             "Numbers are Table 2's: mean over finished seeds; ratio = the first row's "
             "iterations / the second's.", "", in_short(claims), ""]
    for i, claim in enumerate(claims, 1):
        lines += claim.markdown(i)
    return "\n".join(lines)


WRITES = "claims.md (also printed)"


def report(records: Sequence[RunRecord], args: argparse.Namespace) -> None:
    text = to_markdown(check_claims(records), records, source_label(args))
    path = Path(args.out) / "claims.md"
    atomic_write_text(path, text)
    print(text, end="")
    print(f"wrote {path}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m paper_figures.claims",
        description=f"The papers' four claims checked against a sweep. Writes {WRITES} to "
                    "--out.")
    add_source_args(parser)
    return run_script(parser, argv, report)


if __name__ == "__main__":
    raise SystemExit(main())
