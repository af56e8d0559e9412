"""runner.export: a committed copy of a sweep holds the small files only, no machine paths,
and makes the same table as the original store."""
import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from paper_figures import table
from paper_figures.runs import local_records
from runner.export import export_sweep, main, portable
from runner.store import atomic_write_json, finished_problems

KEPT = {"config.json", "summary.json", "metrics.csv", "trajectories.npz", "energy.npz"}
METRICS_CSV = "epoch,step,train/loss,val/acc\n0,10,0.5,0.8\n"


def _finished(iters, acc):
    return {"status": "finished", "test/acc": acc, "test/iters_to_converge": iters,
            "test/loss": 0.1, "test/not_converged": 0.0, "device": "cpu", "iters_rule": "papers"}


def _write_run(sweep_dir, name, summary, machine, arrays=True):
    row, depth, seed = name.rsplit("-L", 1)[0], 3, int(name[-1])
    run = sweep_dir / name
    atomic_write_json(run / "config.json", {
        "row": row, "depth": depth, "seed": seed, "run_name": name, "dataset": "fashion-mnist",
        "epochs": 1, "fast": True, "data_dir": str(machine / "data"),
        "results": str(machine / "results"), "note": f"data from {machine}/data/x.gz"})
    atomic_write_json(run / "summary.json", summary)
    (run / "metrics.csv").write_text(METRICS_CSV)
    (run / ".lock").write_text(f"pid 1 on {machine.name}\n")
    (run / "checkpoints").mkdir()
    with zipfile.ZipFile(run / "checkpoints" / "last.ckpt", "w") as checkpoint:
        checkpoint.writestr("data.pkl", b"x" * 1000)
    (run / "csv_logs" / "version_0").mkdir(parents=True)
    (run / "csv_logs" / "version_0" / "hparams.yaml").write_text(f"dir: {machine}\n")
    (run / "wandb").mkdir()
    if arrays:
        np.savez(run / "trajectories.npz", counts=np.arange(40).reshape(4, 10),
                 iters_at_tol=np.full(100, 7), stage=np.array("test"))
        np.savez(run / "energy.npz", mean_energy=np.linspace(0.0, -1.0, 4))
    return run


@pytest.fixture
def sweep(tmp_path):
    machine = tmp_path / "home" / "someone"
    sweep_dir = tmp_path / "results" / "s"
    _write_run(sweep_dir, "HAM-L3-s0", _finished(10.0, 0.90), machine)
    _write_run(sweep_dir, "HAM-L3-s1", _finished(12.0, 0.80), machine)
    _write_run(sweep_dir, "HAM-EO-L3-s0", _finished(6.0, 0.85), machine)
    _write_run(sweep_dir, "HAM-EO-L3-s1", {
        "status": "failed", "error": f"FileNotFoundError: {machine}/data/x.gz is missing",
        "traceback": f'File "{machine}/code/train.py", line 3'}, machine, arrays=False)
    _write_run(sweep_dir, "HAM-DEQ-L3-s0", {"status": "running"}, machine)
    _write_run(sweep_dir, "HAM-DEQ-L3-s1", {"status": "interrupted"}, machine)
    return tmp_path / "results", machine


def test_the_copy_holds_the_small_files_of_ended_runs_and_no_machine_path(sweep, tmp_path):
    results, machine = sweep
    out = tmp_path / "docs" / "s"
    by_status = export_sweep(results, "s", out)
    assert by_status == {"finished": ["HAM-EO-L3-s0", "HAM-L3-s0", "HAM-L3-s1"],
                         "failed": ["HAM-EO-L3-s1"], "running": ["HAM-DEQ-L3-s0"],
                         "interrupted": ["HAM-DEQ-L3-s1"]}
    assert sorted(p.name for p in out.iterdir()) == ["HAM-EO-L3-s0", "HAM-EO-L3-s1",
                                                    "HAM-L3-s0", "HAM-L3-s1"]
    for run in out.iterdir():
        files = {p.relative_to(run).as_posix() for p in run.rglob("*")}
        assert files <= KEPT and {"config.json", "summary.json", "metrics.csv"} <= files
        for path in run.iterdir():
            data = path.read_bytes()
            assert str(tmp_path).encode() not in data and b"someone" not in data, path
    for name in ("HAM-L3-s0", "HAM-L3-s1", "HAM-EO-L3-s0"):
        assert finished_problems(out / name) == []
        with np.load(results / "s" / name / "trajectories.npz") as a, \
                np.load(out / name / "trajectories.npz") as b:
            assert a.files == b.files and all(np.array_equal(a[k], b[k]) for k in a.files)
    failed = json.loads((out / "HAM-EO-L3-s1" / "summary.json").read_text())
    assert failed == {"status": "failed", "error": "FileNotFoundError: <path> is missing"}
    config = json.loads((out / "HAM-L3-s0" / "config.json").read_text())
    assert config["data_dir"] is None and config["results"] is None
    assert config["note"] == "data from <path>" and config["dataset"] == "fashion-mnist"


def test_the_copy_makes_the_same_table_as_the_store(sweep, tmp_path):
    """The same table, less the runs that were in progress (the store's table names them)."""
    results, _ = sweep
    export_sweep(results, "s", tmp_path / "docs" / "s")
    ended = [r for r in local_records(results, "s")
             if r.status not in ("running", "killed", "interrupted")]
    original = table.write_table(ended, tmp_path / "a", "src")
    copy = table.write_table(local_records(tmp_path / "docs", "s"), tmp_path / "b", "src")
    for suffix in ("md", "tex", "csv"):
        assert original[suffix].read_text() == copy[suffix].read_text()
    assert "| 3 | HAM | 11.0 (1.4) |" in copy["md"].read_text()
    assert "1 failed" in copy["md"].read_text()


def test_exporting_again_follows_a_run_that_was_trained_again(sweep, tmp_path):
    results, _ = sweep
    out = tmp_path / "docs" / "s"
    export_sweep(results, "s", out)
    run = results / "s" / "HAM-L3-s0"
    atomic_write_json(run / "summary.json", _finished(9.0, 0.95))
    (run / "energy.npz").unlink()
    export_sweep(results, "s", out)
    assert json.loads((out / "HAM-L3-s0" / "summary.json").read_text())["test/acc"] == 0.95
    assert not (out / "HAM-L3-s0" / "energy.npz").exists()


@pytest.mark.parametrize("value, expected", [
    ("/usr/share/datasets/fashion-mnist", None), ("~/data", None),
    ("run 1/938 done", "run 1/938 done"), ("HAM-EO-DEQ-L3", "HAM-EO-DEQ-L3"),
    ("see '/a/b/c.py', line 2", "see '<path>', line 2"), ("C:/x/y is gone", "<path> is gone"),
    ({"a": ["/x/y", 1.5], "traceback": "t"}, {"a": [None, 1.5]})])
def test_portable_removes_paths_and_keeps_everything_else(value, expected):
    assert portable(value) == expected


def test_a_missing_sweep_is_a_one_line_error(tmp_path, capsys):
    assert main(["--results", str(tmp_path), "--sweep", "nope", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "nope" in err and "\n" not in err and not (tmp_path / "o").exists()


def test_the_command_line_reports_what_it_copied_and_left_out(sweep, tmp_path):
    results, _ = sweep
    done = subprocess.run([sys.executable, "-m", "runner.export", "--results", str(results),
                           "--sweep", "s", "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, check=True)
    assert "exported 4 runs" in done.stdout
    assert "not exported (running): HAM-DEQ-L3-s0" in done.stdout
    assert "not exported (interrupted): HAM-DEQ-L3-s1" in done.stdout
