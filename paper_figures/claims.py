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
4. All variants of one depth reach the same test accuracy: tested seed by seed against the
   base row, with a declared margin (``SAME_ACC_PP``), so that seed noise cannot pass for a
   difference, nor hide one.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from deq_modules.experiments import DEPTHS, EXPERIMENTS
from deq_modules.hopfield import get_structure
from runner.store import atomic_write_text

from .cli import add_source_args, run_script, source_label
from .runs import RunRecord
from .table import RowStats, settings_lines, table_rows

HOLDS, FAILS, UNCHECKED = "holds", "does not hold", "not checked"
NOT_TESTABLE = "not testable at this budget"
ABOUT_2X = 1.5  # claim 1: "about 2x" is taken as a ratio of at least this at 5 and 7 layers
SAME_ACC_PP = 1.0  # claim 4's margin: "the same accuracy" is a difference within this (points)
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


def _updates(exp) -> str:
    return get_structure(exp.structure).updates


def even_odd_pairs() -> list[tuple[str, str, int]]:
    """Claim 1's pairs (synchronous row, even-odd row, depth): at each depth, each Table 2 HAM
    row of a synchronous structure with the even-odd row of the same solver (HAM / HAM-EO and
    HAM-DEQ / HAM-EO-DEQ), the structures' ``updates`` telling which is which."""
    pairs = []
    for depth in HAM_DEPTHS:
        ham = [e for e in EXPERIMENTS if e.model == "ham" and e.depth == depth]
        pairs += [(a.row, b.row, depth) for a in ham if _updates(a) == "synchronous"
                  for b in ham if _updates(b) == "even-odd" and b.solver == a.solver]
    return pairs


def even_odd_claim(rows: dict[tuple[str, int], RowStats]) -> Claim:
    pairs = even_odd_pairs()
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


# One-sided 95% quantiles of Student's t by degrees of freedom (a larger df not listed takes
# the next smaller one listed: a slightly wider interval, never a narrower one).
_T95 = {1: 6.314, 2: 2.920, 3: 2.353, 4: 2.132, 5: 2.015, 6: 1.943, 7: 1.895, 8: 1.860,
        9: 1.833, 10: 1.812, 15: 1.753, 20: 1.725, 30: 1.697, 60: 1.671, 120: 1.658}
SAME, DIFFERENT, INCONCLUSIVE = "same", "different", "inconclusive"


@dataclass(frozen=True)
class Paired:
    """Test accuracy of a variant minus its base row's, seed by seed (points): a seed is the
    same initialisation and the same batches in both, so most of the seed noise cancels."""

    n: int  # seeds both rows finished
    mean: float
    low: float | None  # 90% confidence interval of the mean difference (two one-sided tests
    high: float | None  # at 5%); None with a single pair

    @property
    def outcome(self) -> str:
        """Within the margin (:data:`SAME_ACC_PP`) by the interval, outside it, or neither."""
        if self.low is None or self.high is None:
            return INCONCLUSIVE
        if -SAME_ACC_PP < self.low and self.high < SAME_ACC_PP:
            return SAME
        if self.low >= SAME_ACC_PP or self.high <= -SAME_ACC_PP:
            return DIFFERENT
        return INCONCLUSIVE


def paired_difference(variant: RowStats, base: RowStats) -> Paired | None:
    """``variant - base`` over the seeds both have; ``None`` when they share none."""
    ours = dict(zip(variant.seeds, variant.accs))
    theirs = dict(zip(base.seeds, base.accs))
    diffs = [ours[seed] - theirs[seed] for seed in sorted(set(ours) & set(theirs) - {None})]
    if not diffs:
        return None
    n, mean = len(diffs), sum(diffs) / len(diffs)
    if n < 2:
        return Paired(n, mean, None, None)
    sd = (sum((d - mean) ** 2 for d in diffs) / (n - 1)) ** 0.5
    t = _T95[max(df for df in _T95 if df <= n - 1)]
    half = t * sd / n ** 0.5
    return Paired(n, mean, mean - half, mean + half)


def _signed(value: float) -> str:
    return f"{value:+.1f}"


def accuracy_claim(rows: dict[tuple[str, int], RowStats]) -> Claim:
    groups = [("CHN", 3)] + [("HAM", d) for d in HAM_DEPTHS]
    lines, missing, failures, unsure = [], [], [], []
    for family, depth in groups:
        stats = [s for (row, d), s in rows.items()
                 if d == depth and row.split("-")[0] == family]
        for variant in stats:
            base = rows[(variant.exp.base_row, depth)]
            if variant is base:
                continue
            pair = f"{variant.exp.row} - {base.exp.row}"
            paper = variant.exp.published_acc[0] - base.exp.published_acc[0]
            paired = paired_difference(variant, base)
            if paired is None:
                missing.append(f"{pair} at {depth} layers")
                lines.append((str(depth), pair, "0", "—", "—", _signed(paper), "—"))
                continue
            interval = ("—" if paired.low is None
                        else f"[{_signed(paired.low)}, {_signed(paired.high)}]")
            lines.append((str(depth), pair, str(paired.n), _signed(paired.mean), interval,
                          _signed(paper), paired.outcome))
            if paired.outcome == DIFFERENT:
                failures.append(f"{pair} at {depth} layers differs by {_signed(paired.mean)} "
                                f"points (90% interval {interval}, {paired.n} seeds)")
            elif paired.outcome == INCONCLUSIVE:
                unsure.append(f"{pair} at {depth} layers ({_signed(paired.mean)}, "
                              f"{paired.n} seed{'s' if paired.n > 1 else ''})")
    verdict, named = _verdict(missing, failures)
    if verdict == HOLDS and unsure:
        verdict, named = NOT_TESTABLE, [f"the seed noise is larger than the margin for "
                                        f"{', '.join(unsure)}"]
    summary = "Paired differences from the base row, in points (mean over shared seeds): " + \
        ("; ".join(f"{l[1]} {l[3]} at {l[0]} layers ({l[6]})" for l in lines if l[2] != "0")
         or "none (no pair of rows shares a seed)")
    return Claim("All variants of one depth reach the same test accuracy",
                 f"seed by seed (same initialisation and batches), each variant's test accuracy "
                 f"minus its base row's (CHN-3ep, or HAM of the same depth); the variant is the "
                 f"same if the 90% confidence interval of the mean difference lies within "
                 f"+-{SAME_ACC_PP:g} point, different if it lies outside, and the claim is not "
                 f"testable at this budget when neither can be told (one seed, or noise larger "
                 f"than the margin).",
                 ("layers", "variant - base", "seeds", "mean (points)", "90% interval",
                  "paper", "outcome"),
                 lines, verdict, named, summary)


CLAIMS = (even_odd_claim, anderson_claim, compound_claim, accuracy_claim)


def check_claims(records: Sequence[RunRecord]) -> list[Claim]:
    """The four claims on the runs' Table 2 numbers; none for a sweep of another table (the
    claims are stated for Table 2)."""
    rows = {(s.exp.row, s.exp.depth): s for s in table_rows(records)}
    if any(s.exp.table != "table2" for s in rows.values()):
        return []
    return [claim(rows) for claim in CLAIMS]


IN_SHORT_START, IN_SHORT_END = "<!-- claims-in-short -->", "<!-- /claims-in-short -->"


def in_short(claims: Sequence[Claim]) -> str:
    """The verdict line and one item per claim with its numbers, between markers (the README
    quotes this block; docs/reproduction/refresh.py copies it there)."""
    verdicts = ", ".join(f"{i} {c.verdict}" for i, c in enumerate(claims, 1)) or \
        "none: the claims are stated for Table 2, and this sweep is another table's"
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
