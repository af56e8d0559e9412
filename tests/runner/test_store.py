"""runner/store.py: atomic writes, what a finished run needs, names, the per-run lock."""
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from runner.store import (FINISHED, KILLED, RUNNING, RunLock, RunLocked, atomic_write_json,
                          atomic_write_text, finished_problems, is_locked, live_status,
                          read_json, run_dir)

TEST_METRICS = {"test/acc": 0.9, "test/loss": 0.1, "test/iters_to_converge": 7.0,
                "test/not_converged": 0.0}


def finished_run(directory: Path) -> Path:
    atomic_write_json(directory / "config.json", {"row": "HAM", "depth": 3, "seed": 0})
    atomic_write_json(directory / "summary.json", {"status": FINISHED, **TEST_METRICS})
    atomic_write_text(directory / "metrics.csv", "epoch,train/loss\n0,0.5\n1,0.4\n")
    return directory


def truncated_npz(path: Path) -> None:
    """A ``trajectories.npz`` cut short, as a full disk or an interrupted copy leaves it."""
    np.savez(path, counts=np.ones((30, 40), dtype=np.int64), mean_iters=np.arange(13.0))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_atomic_writes_leave_no_temporary_files_and_are_readable(tmp_path):
    atomic_write_json(tmp_path / "a" / "x.json", {"v": float("nan"), "w": [1, 2]})
    assert read_json(tmp_path / "a" / "x.json") == {"v": "nan", "w": [1, 2]}
    assert os.listdir(tmp_path / "a") == ["x.json"]
    assert (tmp_path / "a" / "x.json").stat().st_mode & 0o044  # readable by others


def test_sound_finished_run_has_no_problems(tmp_path):
    assert finished_problems(finished_run(tmp_path)) == []


@pytest.mark.parametrize("damage, expected", [
    (lambda d: (d / "config.json").write_text('{"row": "HA'), "config.json missing or unreadable"),
    (lambda d: (d / "metrics.csv").write_text("epoch,train/loss\n0,0.5\n1"), "metrics.csv is empty"),
    (lambda d: (d / "metrics.csv").unlink(), "metrics.csv missing"),
    (lambda d: atomic_write_json(d / "summary.json", {"status": FINISHED}), "lacks test/acc"),
    (lambda d: ((d / "checkpoints").mkdir(), (d / "checkpoints" / "last.ckpt").write_bytes(
        b"PK\x03\x04" + b"\0" * 100)), "last.ckpt is truncated"),
    # fewer epoch rows than the summary says were trained: rows were lost
    (lambda d: atomic_write_json(d / "summary.json", {"status": FINISHED, **TEST_METRICS,
                                                      "epochs_trained": 3}),
     "metrics.csv has 2 epoch rows, but 3 epochs were trained"),
    (lambda d: truncated_npz(d / "trajectories.npz"), "trajectories.npz is truncated"),
    # JSON has no NaN: the store writes it as a string, which must not pass for a number
    (lambda d: atomic_write_json(d / "summary.json", {"status": FINISHED, **TEST_METRICS,
                                                      "test/acc": float("nan")}),
     "test/acc is not a finite number"),
])
def test_damaged_finished_run_is_named(tmp_path, damage, expected):
    finished_run(tmp_path)
    damage(tmp_path)
    problems = finished_problems(tmp_path)
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize("name", ["../x", "/tmp/x", "a/b", "..", "", ".hidden"])
def test_names_that_leave_the_results_directory_are_refused(tmp_path, name):
    with pytest.raises(ValueError, match=re.escape(repr(name))):
        run_dir(tmp_path, name, "HAM-L3-s0")


def test_lock_excludes_a_second_holder_and_dies_with_its_process(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from runner.store import RunLock; "
         f"RunLock({str(tmp_path)!r}).acquire(); print('locked', flush=True); time.sleep(600)"],
        cwd=Path(__file__).resolve().parents[2], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert is_locked(tmp_path)
        with pytest.raises(RunLocked, match=f"pid {holder.pid}"):
            RunLock(tmp_path).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert not is_locked(tmp_path)  # kill -9 released it
    with RunLock(tmp_path):
        with pytest.raises(RunLocked):
            RunLock(tmp_path).acquire()


def test_a_run_killed_with_sigkill_shows_as_killed_not_running(tmp_path):
    """What ``kill -9`` leaves: summary.json still says running, but no process holds the
    lock; the status shown is then ``killed``. A live trainer's run stays ``running``."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import time; from runner.store import *; "
         f"d = {str(tmp_path)!r}; RunLock(d).acquire(); "
         "atomic_write_json(d + '/summary.json', {'status': RUNNING}); "
         "print('training', flush=True); time.sleep(600)"],
        cwd=Path(__file__).resolve().parents[2], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "training"
        assert live_status(tmp_path) == RUNNING
        lock_text = (tmp_path / ".lock").read_text()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert read_json(tmp_path / "summary.json")["status"] == RUNNING  # what it left
    assert live_status(tmp_path) == KILLED
    assert (tmp_path / ".lock").read_text() == lock_text  # looking did not rewrite the lock
    finished_run(tmp_path)
    assert live_status(tmp_path) == FINISHED  # only a run that says running can be killed
