"""Tests of bench/ab.py: the two-checkout step timing."""
import re
import sys
from pathlib import Path

import pytest

from bench import ab

REPO = Path(__file__).resolve().parents[2]


def test_unknown_rows_and_a_folder_that_is_no_checkout_are_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        ab.main(["--before", str(REPO), "--rows", "HAM-EO-L4"])
    assert exit_.value.code == 2 and "HAM-EO-L4" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        ab.main(["--before", str(tmp_path), "--rows", "HAM-EO-L3"])
    assert exit_.value.code == 2 and str(tmp_path) in capsys.readouterr().err


@pytest.mark.slow
def test_both_sides_are_timed_in_alternating_processes(tmp_path, capsys):
    """This checkout against itself: every row gets a time per side and their ratio."""
    out = tmp_path / "ab.md"
    assert ab.main(["--before", str(REPO), "--after", str(REPO), "--rows", "HAM-EO-L3",
                    "--steps", "1", "--rounds", "2", "--write", str(out)]) == 0
    printed = capsys.readouterr()
    assert printed.err.count(": before") == 2 and printed.err.count(": after") == 2
    row = re.search(r"\| HAM-EO-L3 \| ([\d.]+) \| ([\d.]+) \| ([\d.]+)x \|", out.read_text())
    assert row and float(row[1]) > 0 and float(row[2]) > 0
    assert float(row[3]) == pytest.approx(float(row[1]) / float(row[2]), abs=0.01)
    # the sweep line: 5 seeds x 10 epochs x 937 steps at the row's median
    hours = re.search(r"before ([\d.]+) h, after ([\d.]+) h", out.read_text())
    assert float(hours[1]) == pytest.approx(float(row[1]) * 5 * 10 * 937 / 3.6e6, abs=0.06)
