"""Run records: which runs count, and what is said about those that do not."""

import pytest

from paper_figures import table, trajectories
from paper_figures.runs import DAMAGED, INCOMPLETE, local_records

TRUNCATED_CSV = "epoch,train/loss,val/acc\n0,0.31,0.95\n1,0.2"  # killed mid-row


def stats_by_key(store):
    return {s.exp.key: s for s in table.table_rows(local_records(store, "table2"))}


def test_a_finished_run_with_damaged_files_is_named_and_not_counted(store, tmp_path, capsys):
    (store / "table2" / "HAM-L3-s1" / "metrics.csv").write_text(TRUNCATED_CSV)
    checkpoint = store / "table2" / "HAM-EO-DEQ-L3-s0" / "checkpoints" / "last.ckpt"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(b"PK\x03\x04 cut short")
    records = {r.name: r for r in local_records(store, "table2")}
    assert records["HAM-L3-s1"].status == DAMAGED and not records["HAM-L3-s1"].usable
    rows = stats_by_key(store)
    assert sorted(rows["HAM-L3"].seeds) == [0, 2]  # not counted as a seed
    assert rows["HAM-L3"].iters_stats[0] == pytest.approx(12.5)
    assert rows["HAM-L3"].not_counted["damaged"] == ["HAM-L3-s1"]

    out = tmp_path / "figures"
    assert table.main(["--results", str(store), "--out", str(out)]) == 0
    md = (out / "table2.md").read_text()
    assert "Not counted, damaged: HAM-L3-s1 (metrics.csv is empty or truncated)." in md
    assert ("Not counted, damaged: HAM-EO-DEQ-L3-s0 (checkpoints/last.ckpt is truncated or "
            "not a checkpoint).") in md
    assert "| 2 (1 damaged, 1 failed, 1 running) |" in md
    err = capsys.readouterr().err.splitlines()
    assert any("HAM-L3-s1" in line and "metrics.csv" in line for line in err)


def test_a_finished_summary_without_test_metrics_is_a_warning_not_a_crash(store, tmp_path,
                                                                          fixtures, capsys):
    fixtures.write_run(store, "HAM", 3, 1, {"status": "finished"},  # e.g. an online rerun
                       trajectories=store / "table2" / "HAM-L3-s0" / "trajectories.npz")
    out = tmp_path / "figures"
    assert table.main(["--results", str(store), "--out", str(out)]) == 0
    err = capsys.readouterr().err.splitlines()
    assert any(line.startswith("warning:") and "HAM-L3-s1" in line and "summary.json" in line
               for line in err)
    md = (out / "table2.md").read_text()
    assert ("Not counted, damaged: HAM-L3-s1 (summary.json lacks test/acc, test/loss, "
            "test/iters_to_converge, test/not_converged).") in md
    assert trajectories.main(["--results", str(store), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "HAM-L3 2" in captured.out  # the other two seeds are drawn
    assert any("HAM-L3-s1" in line and "summary.json" in line
               for line in captured.err.splitlines())


def test_a_truncated_trajectories_file_is_skipped_with_a_warning(store, tmp_path, capsys):
    """The run is damaged (the sweep trains it again): not counted, and not pooled."""
    path = store / "table2" / "HAM-L3-s0" / "trajectories.npz"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    out = tmp_path / "figures"
    assert trajectories.main(["--results", str(store), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1
    assert "HAM-L3-s0" in warnings[0] and "trajectories.npz" in warnings[0]
    assert "HAM-L3 2" in captured.out
    assert stats_by_key(store)["HAM-L3"].not_counted["damaged"] == ["HAM-L3-s0"]
    data, used = trajectories.pooled_trajectories(local_records(store, "table2"),
                                                  table.get_experiment("HAM", 3))
    assert sorted(r.seed for r in used) == [1, 2] and data["n_samples"] == 7 + 12


def test_diverged_and_interrupted_runs_are_reported_never_averaged(store, fixtures):
    # A diverged run may hold test numbers in its summary; they must never be averaged.
    fixtures.write_run(store, "HAM", 3, 5, {"status": "diverged", "test/acc": 0.1,
                                            "test/iters_to_converge": 40.0, "epoch": 3})
    fixtures.write_run(store, "HAM", 3, 6, {"status": "interrupted"})
    rows = stats_by_key(store)
    assert rows["HAM-L3"].n == 3 and rows["HAM-L3"].iters_stats[0] == pytest.approx(12.0)
    assert rows["HAM-L3"].not_counted == {"failed": ["HAM-L3-s3"], "running": ["HAM-L3-s4"],
                                          "diverged": ["HAM-L3-s5"],
                                          "interrupted": ["HAM-L3-s6"]}
    lines = table.status_lines(local_records(store, "table2"))
    assert "Not counted, diverged: 1 (HAM-L3-s5)." in lines
    assert "Not counted, interrupted: 1 (HAM-L3-s6)." in lines


def test_records_that_cannot_be_counted_are_marked(tmp_path, fixtures):
    root = tmp_path / "results"
    fixtures.write_run(root, "HAM", 3, 0, None)  # config, but no summary
    fixtures.write_run(root, "HAM", 3, 1, {"status": "finished"})  # no test metrics
    fixtures.write_run(root, "HAM", 3, 2, fixtures.finished_summary("nan", 0.9))  # JSON's NaN
    fixtures.write_run(root, "NOPE", 3, 0, fixtures.finished_summary(5.0, 0.9))
    fixtures.write_run(root, "HAM", 3, 3, {"status": "confused"})  # not a store status
    records = {r.name: r for r in local_records(root, "table2")}
    assert records["HAM-L3-s0"].status == records["HAM-L3-s3"].status == INCOMPLETE
    assert records["HAM-L3-s1"].status == DAMAGED
    # a NaN stored as JSON's "nan" is not a number to average: the run is damaged
    assert records["HAM-L3-s2"].status == DAMAGED and records["HAM-L3-s2"].iters is None
    assert "test/iters_to_converge is not a finite number" in records["HAM-L3-s2"].problems[0]
    assert not records["NOPE-L3-s0"].usable
    lines = table.status_lines(list(records.values()))
    assert "Not counted, incomplete: 2 (HAM-L3-s0, HAM-L3-s3)." in lines
    assert "Not counted, not in the registry: 1 (NOPE-L3-s0)." in lines
