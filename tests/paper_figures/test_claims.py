"""paper_figures.claims: each claim's verdict follows its stated criterion on the table's
numbers; missing rows make a claim 'not checked', never 'holds'."""
import pytest

from paper_figures import claims
from paper_figures.runs import local_records

# (row, depth) -> (iterations, accuracy) of one seed; claim by claim:
# 1 holds (EO fewer everywhere, >= 1.5x at 5 and 7); 2 fails once (HAM-DEQ at 5 layers needs
# more than HAM); 3 holds; 4 fails for HAM at 7 layers (spread 2 points).
GOOD = {("CHN-10ep", 3): (70, .80), ("CHN-3ep", 3): (40, .80), ("CHN-DEQ", 3): (20, .805),
        ("CHN-EO", 3): (15, .80), ("CHN-EO-DEQ", 3): (14, .80),
        ("HAM", 3): (12, .80), ("HAM-DEQ", 3): (10, .80), ("HAM-EO", 3): (8, .80),
        ("HAM-EO-DEQ", 3): (7, .80),
        ("HAM", 5): (30, .79), ("HAM-DEQ", 5): (31, .79), ("HAM-EO", 5): (16, .79),
        ("HAM-EO-DEQ", 5): (15, .79),
        ("HAM", 7): (60, .78), ("HAM-DEQ", 7): (50, .78), ("HAM-EO", 7): (30, .76),
        ("HAM-EO-DEQ", 7): (28, .78)}


# Seed-to-seed noise shared by every row (the same initialisation and batches), and a small
# part of a row's own, so that paired differences have a spread but a small one.
SEED_NOISE = {0: 0.0, 1: 0.02, 2: -0.015}
OWN_NOISE = {0: 0.0, 1: 0.0005, 2: -0.0005}


def _store(tmp_path, fixtures, results, seeds=(0, 1, 2)):
    root = tmp_path / "results"
    for (row, depth), (iters, acc) in results.items():
        for seed in seeds:
            own = OWN_NOISE[seed] * (len(row) % 3 - 1)
            fixtures.write_run(root, row, depth, seed,
                               fixtures.finished_summary(iters, acc + SEED_NOISE[seed] + own))
    return local_records(root, fixtures.SWEEP)


def test_verdicts_follow_the_criteria(tmp_path, fixtures):
    checked = claims.check_claims(_store(tmp_path, fixtures, GOOD))
    assert [c.verdict for c in checked] == [claims.HOLDS, claims.FAILS, claims.HOLDS,
                                            claims.FAILS]
    assert checked[1].failures == ["HAM-DEQ needs more iterations than HAM at 5 layers "
                                   "(31.0 vs 30.0)"]
    assert len(checked[3].failures) == 1
    assert checked[3].failures[0].startswith("HAM-EO - HAM at 7 layers differs by -2.0 points")
    assert ("5", "HAM / HAM-EO", "30.0", "16.0", "1.88x", "1.97x") in checked[0].lines


def test_the_claims_in_short_carry_verdicts_numbers_and_failures(tmp_path, fixtures):
    checked = claims.check_claims(_store(tmp_path, fixtures, GOOD))
    block = claims.in_short(checked)
    lines = block.splitlines()
    assert lines[0] == claims.IN_SHORT_START and lines[-1] == claims.IN_SHORT_END
    assert lines[1] == "Verdicts: 1 holds, 2 does not hold, 3 holds, 4 does not hold."
    # HAM/HAM-EO: 12/8, 30/16, 60/30 ours; the paper's from Table 2
    assert lines[3].startswith("1. **Even-odd updates need fewer iterations")
    assert ": holds.** Iteration ratios: HAM / HAM-EO 1.50x, 1.88x, 2.00x at 3, 5, 7 layers " \
           "(paper 1.49x, 1.97x, 2.08x); HAM-DEQ / HAM-EO-DEQ" in lines[3]
    assert "HAM / HAM-DEQ 1.20x, 0.97x, 1.20x at 3, 5, 7 layers" in lines[4]
    assert lines[4].endswith("Fails: HAM-DEQ needs more iterations than HAM at 5 layers "
                             "(31.0 vs 30.0).")
    assert "HAM / HAM-EO-DEQ 1.71x, 2.00x, 2.14x at 3, 5, 7 layers" in lines[5]
    assert "HAM-EO - HAM -2.0 at 7 layers (different)" in lines[6]
    assert "CHN-DEQ - CHN-3ep +0.5 at 3 layers (same)" in lines[6]
    assert [line[:3] for line in lines[3:7]] == ["1. ", "2. ", "3. ", "4. "]


@pytest.mark.parametrize("change, claim, failure", [
    ({("HAM-EO", 5): (21, .79)}, 0, "HAM/HAM-EO at 5 layers is only 1.43x"),
    ({("HAM-EO", 3): (12, .80)}, 0, "HAM-EO needs no fewer iterations than HAM at 3 layers"),
    ({("HAM-EO", 7): (27, .78)}, 2, "at 7 layers HAM-EO needs the fewest (27.0 vs 28.0)"),
])
def test_each_way_a_claim_can_fail_is_named(tmp_path, fixtures, change, claim, failure):
    checked = claims.check_claims(_store(tmp_path, fixtures, {**GOOD, **change}))
    assert checked[claim].verdict == claims.FAILS
    assert any(f.startswith(failure) for f in checked[claim].failures), checked[claim].failures


def test_missing_rows_leave_a_claim_unchecked_not_holding(tmp_path, fixtures):
    partial = {k: v for k, v in GOOD.items() if k != ("HAM-EO-DEQ", 7)}
    partial[("HAM", 7)] = (60, .78)
    partial[("HAM-EO", 7)] = (30, .78)
    checked = claims.check_claims(_store(tmp_path, fixtures, partial))
    assert checked[0].verdict == claims.UNCHECKED
    assert checked[0].failures == ["no results for HAM-DEQ/HAM-EO-DEQ at 7 layers"]
    assert checked[2].verdict == claims.UNCHECKED


def test_the_script_writes_claims_md(tmp_path, fixtures, capsys):
    _store(tmp_path, fixtures, GOOD)
    out = tmp_path / "out"
    assert claims.main(["--results", str(tmp_path / "results"), "--sweep", fixtures.SWEEP,
                        "--out", str(out)]) == 0
    text = (out / "claims.md").read_text()
    assert "Verdicts: 1 holds, 2 does not hold, 3 holds, 4 does not hold." in text
    assert text.count("**Verdict:") == 4 and text in capsys.readouterr().out


def test_accuracy_is_compared_seed_by_seed_against_a_declared_margin(tmp_path, fixtures):
    """Large seed noise shared by the rows cancels in the paired differences; one seed, or
    differences that swing from seed to seed, cannot tell 'same' from 'different'."""
    same = {k: v for k, v in GOOD.items()}
    same[("HAM-EO", 7)] = (30, .78)
    checked = claims.check_claims(_store(tmp_path / "a", fixtures, same))
    assert checked[3].verdict == claims.HOLDS, checked[3].failures
    one_seed = claims.check_claims(_store(tmp_path / "b", fixtures, same, seeds=(0,)))
    assert one_seed[3].verdict == claims.NOT_TESTABLE
    assert "HAM-EO - HAM at 7 layers (+0.0, 1 seed)" in one_seed[3].failures[0]


def test_paired_difference_interval():
    from paper_figures.table import RowStats
    from deq_modules.experiments import get_experiment

    base, variant = RowStats(get_experiment("HAM", 3)), RowStats(get_experiment("HAM-EO", 3))
    base.seeds, base.accs = [0, 1, 2, 3], [90.0, 80.0, 85.0, 70.0]
    variant.seeds, variant.accs = [3, 0, 1, 4], [69.0, 89.0, 80.5, 99.0]  # seed 4 unpaired
    paired = claims.paired_difference(variant, base)
    # differences -1, +0.5, -1 over seeds 0, 1, 3: mean -0.5, sd 0.866, t(2) = 2.920
    assert paired.n == 3 and paired.mean == pytest.approx(-0.5)
    half = 2.920 * 0.8660254 / 3 ** 0.5
    assert (paired.low, paired.high) == pytest.approx((-0.5 - half, -0.5 + half))
    assert paired.outcome == claims.INCONCLUSIVE  # the interval reaches past -1 point
