"""runner.eta: the rest of a sweep estimated from its own finished runs, row by row."""
import pytest

from runner.eta import duration_text, estimate, measured_seconds
from runner.store import atomic_write_json


def _run(root, name, status="finished", seconds=None, resumed=False):
    atomic_write_json(root / name / "config.json", {"run_name": name})
    summary = {"status": status, "resumed": resumed}
    if seconds is not None:
        summary["wall_time_s"] = seconds
    atomic_write_json(root / name / "summary.json", summary)


@pytest.fixture
def sweep_dir(tmp_path):
    root = tmp_path / "results" / "s"
    _run(root, "HAM-L3-s0", seconds=100.0)
    _run(root, "HAM-L3-s1", seconds=140.0)
    _run(root, "HAM-L3-s2", seconds=999.0, resumed=True)  # only its resumed part: not a measure
    _run(root, "HAM-EO-DEQ-L5-s0", seconds=1000.0)
    _run(root, "HAM-EO-DEQ-L5-s1", status="failed", seconds=5.0)
    _run(root, "HAM-EO-DEQ-L5-s2", status="running")
    _run(root, "CHN-EO-L3-s0", seconds="nan")
    return root


def test_measured_times_are_those_of_finished_whole_runs_by_row(sweep_dir):
    assert measured_seconds(sweep_dir) == {"HAM-L3": [100.0, 140.0], "HAM-EO-DEQ-L5": [1000.0]}


def test_each_run_is_estimated_by_its_row_and_unmeasured_rows_roughly(sweep_dir):
    est = estimate(["HAM-L3-s3", "HAM-EO-DEQ-L5-s2", "CHN-EO-L3-s1", "HAM-L7-s0"],
                   measured_seconds(sweep_dir))
    assert (est.n_measured, est.measured_s) == (2, 120.0 + 1000.0)
    assert (est.n_rough, est.rough_s) == (2, 2 * (100.0 + 140.0 + 1000.0) / 3)
    assert est.line() == ("4 runs left, about 32m27s on one worker: 18m40s for 2 runs at their "
                          "row's measured time + roughly 13m47s for 2 runs of rows not measured "
                          "yet")
    # sweep.py --workers 3: the same runs shared by three processes
    assert est.line(workers=3).endswith("not measured yet; about 10m49s with 3 workers")


def test_without_any_finished_run_there_is_no_number(tmp_path):
    line = estimate(["HAM-L3-s0"], measured_seconds(tmp_path)).line()
    assert line.startswith("1 runs left; no estimate yet")
    assert estimate([], {}).line() == "nothing left to train"


@pytest.mark.parametrize("seconds, text", [(42, "42s"), (185, "3m05s"), (7620, "2h07m")])
def test_durations_read_like_a_clock(seconds, text):
    assert duration_text(seconds) == text
