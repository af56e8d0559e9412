"""sweep.py: the plan, a tiny offline sweep, resumption after a kill, --join without W&B."""
import csv
import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import sweep
from runner import grid
from runner.store import atomic_write_json
from deq_modules.experiments import EXPERIMENTS

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--dataset", "synthetic", "--epochs", "1", "--limit-train-batches", "2",
        "--limit-test-batches", "2"]


@pytest.fixture
def offline_env(monkeypatch, tmp_path):
    """No key, no netrc, W&B offline: exactly a CI machine or a fresh laptop without login."""
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))


def test_the_neurips_table_plans_its_4_x_5_grid(capsys, tmp_path, offline_env):
    assert sweep.main(["--table", "neurips", "--dry-run", "--results", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("sweep neurips: 20 runs")  # its own default name
    runs = [line.split()[1] for line in lines[1:-1]]
    assert runs == [f"N23-{v}-L3-s{s}" for v in ("HAM", "HAM-DEQ", "HAM-EO", "HAM-EO-DEQ")
                    for s in range(5)]


def test_dry_run_lists_the_85_paper_runs(capsys, tmp_path, offline_env):
    assert sweep.main(["--dry-run", "--results", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("sweep table2: 85 runs (0 already finished), dataset emnist-mnist")
    runs, eta = lines[1:-1], lines[-1]
    assert eta.startswith("sweep ETA: 85 runs left; no estimate yet")
    assert len(runs) == 85
    expected = [(e, s) for e in EXPERIMENTS for s in range(5)]
    for i, (line, (e, seed)) in enumerate(zip(runs, expected), 1):
        fields = line.split()
        assert fields[0] == f"{i}/85" and fields[1] == f"{e.row}-L{e.depth}-s{seed}"
        assert f"iters {e.forward_iter}/{e.backward_iter} " in line
        assert f"lr {e.lr} " in line and line.endswith(f"epochs {e.epochs}")
        assert f"damping {e.damping}" in line and e.solver in fields


def test_tiny_offline_sweep_writes_the_store_and_reruns_nothing(capsys, tmp_path, offline_env):
    args = ["--rows", "HAM-EO-DEQ,HAM", "--layers", "3", "--seeds", "0,1", *TINY,
            "--results", str(tmp_path), "--name", "tiny"]
    assert sweep.main(args) == 0
    out = capsys.readouterr().out
    assert out.count(": finished in ") == 4
    runs = sorted(p.name for p in (tmp_path / "tiny").iterdir())
    assert runs == ["HAM-EO-DEQ-L3-s0", "HAM-EO-DEQ-L3-s1", "HAM-L3-s0", "HAM-L3-s1"]
    for name in runs:
        d = tmp_path / "tiny" / name
        summary = json.loads((d / "summary.json").read_text())
        config = json.loads((d / "config.json").read_text())
        assert summary["status"] == "finished"
        assert 0 <= summary["test/acc"] <= 1 and summary["test/iters_to_converge"] >= 1
        assert config["run_name"] == name and config["experiment"]["lr"] == 0.01
        assert config["wandb_run_id"]
        history = list(csv.DictReader(open(d / "metrics.csv")))
        assert [r["epoch"] for r in history] == ["0"]
        assert {"train/loss", "lr-Madam"} <= set(history[0]) and history[0]["train/loss"]
        assert float(history[0]["lr-Madam"]) == 0.01  # the rate epoch 1 ran at, not the next
        assert not history[0].get("val/acc")  # the one epoch is the last: the test validates
        assert (d / "checkpoints" / "last.ckpt").exists()
        traj = np.load(d / "trajectories.npz")
        assert traj["counts"].sum() == traj["n_samples"] * traj["counts"].shape[0]
        assert list((d / "wandb").glob("offline-run-*")), "no offline W&B run to sync"
        assert not list(d.rglob(".*.tmp"))
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "tiny").rglob("summary.json")}
    assert sweep.main(args) == 0
    assert capsys.readouterr().out.count("already finished, skipped") == 4
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes


def test_failed_run_is_recorded_and_the_sweep_goes_on(capsys, tmp_path, offline_env,
                                                      monkeypatch):
    args = ["--rows", "HAM-EO-DEQ", "--layers", "3", "--seeds", "0,1", *TINY, "--no-wandb",
            "--results", str(tmp_path)]
    # An error in seed 0's training (an unreadable checkpoint no longer is one: set aside).
    victim = sweep.plan(sweep.parse_args(args))[0]
    import runner.run
    train = runner.run._train_and_test

    def fail_seed_0(cfg, *rest):
        if cfg.seed == 0:
            raise RuntimeError("training failed")
        return train(cfg, *rest)

    monkeypatch.setattr(runner.run, "_train_and_test", fail_seed_0)
    assert sweep.main(args) == 1
    out = capsys.readouterr().out
    assert "seed 0: FAILED after" in out
    assert "seed 1: finished in" in out and "failed: HAM-EO-DEQ-L3-s0" in out
    failed = json.loads((victim.directory / "summary.json").read_text())
    assert failed["status"] == "failed" and "Traceback" in failed["traceback"]
    monkeypatch.setattr(runner.run, "_train_and_test", train)
    assert sweep.main(args) == 0  # the rerun redoes only the failed run
    out = capsys.readouterr().out
    assert "seed 1: already finished, skipped" in out and "seed 0: finished in" in out


def test_missing_dataset_stops_the_sweep_before_any_run(capsys, tmp_path, offline_env):
    args = ["--dataset", "mnist", "--data-dir", str(tmp_path / "nothing"), "--no-download",
            "--results", str(tmp_path)]
    with pytest.raises(SystemExit, match=r"mnist.*nothing.*train-images-idx3-ubyte"):
        sweep.main(args)
    assert not (tmp_path / "table2").exists()


def test_corrupt_dataset_stops_the_sweep_before_any_run(tmp_path, offline_env):
    data = tmp_path / "data"
    data.mkdir()
    names = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
             "t10k-labels-idx1-ubyte")
    for name in names:  # what an interrupted download leaves: random bytes named .gz
        (data / f"{name}.gz").write_bytes(os.urandom(300))
    args = ["--dataset", "fashion-mnist", "--data-dir", str(data), "--no-download",
            "--results", str(tmp_path)]
    with pytest.raises(SystemExit, match=r"fashion-mnist.*train-images-idx3-ubyte.gz"):
        sweep.main(args)
    assert not (tmp_path / "table2").exists()


def test_join_without_key_fails_at_once_with_a_clear_message(capsys, offline_env, monkeypatch):
    """At once: neither a login prompt nor a connection is tried (each attempt is recorded and
    refused here), instead of a clock that a loaded machine could run past."""
    import builtins
    import getpass
    import socket
    attempts = []

    def refuse(what):
        def refused(*args, **kwargs):
            attempts.append(what)
            raise OSError(f"{what} refused by the test")
        return refused

    for owner, name in [(socket, "create_connection"), (socket, "getaddrinfo"),
                        (socket.socket, "connect"), (builtins, "input"), (getpass, "getpass")]:
        monkeypatch.setattr(owner, name, refuse(name))
    with pytest.raises(SystemExit, match="WANDB_API_KEY.*wandb login"):  # the two ways to fix it
        sweep.main(["--join", "someone/hopfield-deq/abc123"])
    with pytest.raises(SystemExit, match="ENTITY/PROJECT/SWEEP_ID.*'abc123'"):
        sweep.main(["--join", "abc123"])
    assert attempts == []


def test_join_without_network_fails_at_once(monkeypatch, offline_env):
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "https://unreachable.invalid")
    with pytest.raises(SystemExit, match="W&B.*--offline"):  # the server, and what to do
        sweep.main(["--join", "someone/hopfield-deq/abc123"])


def error_line(err: str) -> str:
    """argparse's error line: the last of stderr, after the usage (which names every flag)."""
    return err.strip().splitlines()[-1]


def test_bad_flags_are_refused(capsys):
    with pytest.raises(SystemExit):
        sweep.main(["--rows", "HAM-EOO"])
    line = error_line(capsys.readouterr().err)
    assert "--rows" in line and "'HAM-EOO'" in line and "HAM-EO-DEQ" in line  # and a valid row


# Each message names the flag and the bad value (and, where it helps, a valid choice): a list
# of patterns that must all be in the error line, in any order and any wording.
@pytest.mark.parametrize("flags, names", [
    (["--epochs", "0"], ["--epochs", r"\b0\b"]),
    (["--epochs", "-1"], ["--epochs", r"(?<![\w-])-1\b"]),
    (["--limit-train-batches", "0"], ["--limit-train-batches", r"\b0\b"]),
    (["--limit-train-batches", "1.5"], ["--limit-train-batches", r"\b1\.5\b"]),
    (["--limit-test-batches", "nan"], ["--limit-test-batches", r"\bnan\b"]),
    (["--limit-test-batches", "inf"], ["--limit-test-batches", r"\binf\b"]),
    (["--seeds", "-1"], ["--seeds", r"(?<![\w-])-1\b"]),
    (["--rows", "CHN-DEQ", "--layers", "5"], ["CHN-DEQ", r"\b5\b", r"\b3\b"]),  # its depth 3
    (["--rows", "CHN-DEQ,HAM", "--layers", "5"], ["CHN-DEQ", r"\b5\b", r"\b3\b"]),
    (["--rows", "HAM,CHN-EO,CHN-DEQ", "--layers", "3,7"], ["CHN-EO", "CHN-DEQ", r"\b7\b"]),
    (["--seeds", "0,4294967296"], ["4294967296", "4294967295"]),  # the bad seed, the largest
    (["--devices", "0"], ["--devices", "'0'"]),
    (["--devices", "-1"], ["--devices", "'-1'"]),
    (["--dataset", "synthetic", "--synthetic-sizes", "256,128", "--limit-train-batches", "0.1"],
     [r"limit.train.batches", r"\b0\.1\b", r"\b1/4\b"]),  # the smallest fraction that works
    (["--quick", "--limit-test-batches", "0.001"], [r"limit.test.batches", r"\b0\.001\b"]),
    (["--name", "../x"], ["--name", r"'\.\./x'"]),
    (["--name", "/tmp/elsewhere"], ["--name", "'/tmp/elsewhere'"]),
    (["--join", "e/p/s", "--rows", "HAM"], ["--rows", "--join"]),
    (["--join", "e/p/s", "--dry-run"], ["--dry-run", "--join"]),
    (["--count", "3"], ["--count", "--join"]),
    (["--workers", "0"], ["--workers", r"\b0\b"]),
    (["--workers", "2", "--devices", "2"], ["--workers", "--devices"]),
    (["--join", "e/p/s", "--workers", "2"], ["--workers", "--join"]),
])
def test_bad_command_lines_are_refused_at_once(capsys, tmp_path, flags, names):
    with pytest.raises(SystemExit) as exit_info:
        sweep.main([*flags, "--results", str(tmp_path), "--dry-run"] if "--join" not in flags
                   else flags)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    line = error_line(err)
    for name in names:
        assert re.search(name, line), (name, line)
    assert len(err) < 2000  # one clear message, not a list of a million valid seeds
    assert not list(tmp_path.iterdir())


def test_a_gpu_accelerator_without_a_gpu_is_refused_before_any_run(capsys, tmp_path,
                                                                   offline_env):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    results = tmp_path / "results"  # not tmp_path itself: HOME (offline_env) is in it too
    args = ["--rows", "HAM", "--layers", "3", "--seeds", "0", *TINY, "--no-wandb",
            "--accelerator", "gpu", "--results", str(results)]
    assert sweep.main(args) == 2
    err = capsys.readouterr().err
    assert "--accelerator" in err and "gpu" in err and "cpu" in err  # the bad one, a valid one
    assert "Traceback" not in err
    assert not results.exists() or not list(results.iterdir())


def test_stored_runs_with_other_settings_are_never_reused(capsys, tmp_path, offline_env):
    args = ["--rows", "HAM", "--layers", "3", "--seeds", "0", *TINY, "--no-wandb",
            "--results", str(tmp_path)]
    assert sweep.main(args) == 0
    before = (tmp_path / "table2" / "HAM-L3-s0" / "summary.json").read_text()
    capsys.readouterr()
    assert sweep.main([*args, "--epochs", "2"]) == 2
    err = capsys.readouterr().err
    assert re.search(r"HAM-L3-s0\b.*\bepochs\b.*\b1\b.*\b2\b", err), err  # stored, then now
    assert (tmp_path / "table2" / "HAM-L3-s0" / "summary.json").read_text() == before


def test_damaged_finished_run_is_named_and_trained_again(capsys, tmp_path, offline_env):
    args = ["--rows", "HAM", "--layers", "3", "--seeds", "0", *TINY, "--no-wandb",
            "--results", str(tmp_path)]
    assert sweep.main(args) == 0
    metrics = tmp_path / "table2" / "HAM-L3-s0" / "metrics.csv"
    metrics.write_text(metrics.read_text()[:40])  # truncated
    capsys.readouterr()
    assert sweep.main(args) == 0
    out = capsys.readouterr().out
    assert "HAM-L3-s0" in out and "metrics.csv" in out  # the damaged run and file, named
    assert "seed 0: finished in" in out
    assert len(list(csv.DictReader(open(metrics)))) == 1


def test_diverged_run_is_recorded_not_finished_and_not_retrained(capsys, tmp_path, offline_env):
    args = ["--rows", "HAM", "--layers", "3", "--seeds", "0", "--dataset", "synthetic",
            "--epochs", "2", "--limit-train-batches", "25", "--limit-test-batches", "1",
            "--lr", "100", "--no-wandb", "--results", str(tmp_path)]
    assert sweep.main(args) == 0
    out = capsys.readouterr().out
    assert "seed 0: DIVERGED after" in out and "diverged: HAM-L3-s0" in out
    summary = json.loads((tmp_path / "table2" / "HAM-L3-s0" / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["epoch"] == 1
    assert 1 <= summary["batch"] <= 20 and "test/acc" not in summary
    assert sweep.main(args) == 0
    assert "diverged earlier, skipped" in capsys.readouterr().out


def sweep_cmd(tmp_path, *extra):
    return [sys.executable, str(ROOT / "sweep.py"), "--rows", "HAM-EO,HAM-EO-DEQ", "--layers",
            "3", "--seeds", "0", "--dataset", "synthetic", "--epochs", "6",
            "--limit-train-batches", "30", "--limit-test-batches", "1", "--no-wandb",
            "--results", str(tmp_path), *extra]


def quiet_env(tmp_path):
    env = dict(os.environ, WANDB_MODE="disabled", HOME=str(tmp_path), OMP_NUM_THREADS="1")
    env.pop("WANDB_API_KEY", None)
    return env


# Not a speed limit: only so that a sweep that hangs without printing fails the test instead of
# blocking it forever. The tests wait for log lines and files, never for a time.
SAFETY_TIMEOUT_S = 600


def read_until(process, needle: str) -> str:
    """Lines of ``process``'s stdout up to the first holding ``needle``. The process is killed
    (and the test fails) only if ``needle`` has not come after ``SAFETY_TIMEOUT_S``."""
    safety = threading.Timer(SAFETY_TIMEOUT_S, process.kill)
    safety.start()
    lines = []
    try:
        for line in process.stdout:
            lines.append(line)
            if needle in line:
                return "".join(lines)
    finally:
        safety.cancel()
    raise AssertionError(f"process ended before {needle!r} (killed after {SAFETY_TIMEOUT_S} s "
                         f"if it hung):\n{''.join(lines)}")


def check_every_epoch_once(store, epochs=6):
    for name in ("HAM-EO-L3-s0", "HAM-EO-DEQ-L3-s0"):
        summary = json.loads((store / name / "summary.json").read_text())
        assert summary["status"] == "finished"
        history = list(csv.DictReader(open(store / name / "metrics.csv")))
        assert [r["epoch"] for r in history] == [str(e) for e in range(epochs)]
        assert summary["epochs_trained"] == epochs
        assert summary["seconds_per_epoch"] > 0
    assert not list(store.rglob(".*.tmp"))


@pytest.mark.slow
def test_sweep_killed_mid_training_resumes_from_its_last_epoch(tmp_path):
    cmd, env = sweep_cmd(tmp_path), quiet_env(tmp_path)
    first = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, text=True)
    # kill -9 in the middle of the second run's training, after its second epoch
    log1 = read_until(first, "HAM-EO-DEQ-L3-s0 epoch 2/6  train/loss")
    first.send_signal(signal.SIGKILL)
    log1 += first.communicate()[0]
    victim = tmp_path / "table2" / "HAM-EO-DEQ-L3-s0"
    assert json.loads((victim / "summary.json").read_text())["status"] == "running"
    from paper_figures.runs import local_records
    from runner.store import live_status
    assert live_status(victim) == "killed"  # shown as killed: no process holds its lock
    assert {r.name: r.status for r in local_records(tmp_path)}["HAM-EO-DEQ-L3-s0"] == "killed"

    second = subprocess.run(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, text=True,
                            timeout=SAFETY_TIMEOUT_S)
    assert second.returncode == 0, second.stdout
    assert "HAM-EO L3 seed 0: already finished, skipped" in second.stdout
    # the restart did not train the first epoch again: it resumed from a checkpoint (the last
    # epoch's line is there, so the absent first one is not just another log format)
    assert "HAM-EO-DEQ-L3-s0 epoch 6/6  train/loss" in second.stdout
    assert "HAM-EO-DEQ-L3-s0 epoch 1/6  train/loss" not in second.stdout
    assert json.loads((victim / "summary.json").read_text())["resumed"] is True
    assert (log1 + second.stdout).count("seed 0: finished in") == 2
    check_every_epoch_once(tmp_path / "table2")


@pytest.mark.slow
def test_sigterm_marks_the_run_interrupted_exits_143_and_resumes(tmp_path):
    cmd, env = sweep_cmd(tmp_path), quiet_env(tmp_path)
    first = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, text=True)
    read_until(first, "HAM-EO-L3-s0 epoch 2/6  train/loss")
    first.send_signal(signal.SIGTERM)
    log1 = first.communicate(timeout=SAFETY_TIMEOUT_S)[0]
    assert first.returncode == 143, log1
    assert "interrupted by SIGTERM; start it again to resume" in log1
    summary = json.loads((tmp_path / "table2" / "HAM-EO-L3-s0" / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    second = subprocess.run(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, text=True,
                            timeout=SAFETY_TIMEOUT_S)
    assert second.returncode == 0, second.stdout
    assert "HAM-EO-L3-s0 epoch 6/6  train/loss" in second.stdout
    assert "HAM-EO-L3-s0 epoch 1/6  train/loss" not in second.stdout  # resumed, not restarted
    summary = json.loads((tmp_path / "table2" / "HAM-EO-L3-s0" / "summary.json").read_text())
    assert summary["resumed"] is True
    check_every_epoch_once(tmp_path / "table2")


@pytest.mark.slow
def test_two_sweeps_on_one_store_share_the_grid(tmp_path):
    cmd, env = sweep_cmd(tmp_path), quiet_env(tmp_path)
    a = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, text=True)
    read_until(a, "HAM-EO-L3-s0 epoch 1/6")  # a holds the first run
    b = subprocess.run(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, text=True,
                       timeout=SAFETY_TIMEOUT_S)
    log_a = a.communicate(timeout=SAFETY_TIMEOUT_S)[0]
    assert a.returncode == 0 and b.returncode == 0, log_a + b.stdout
    assert "HAM-EO L3 seed 0: skipped: HAM-EO-L3-s0 is being trained by another process" \
        in b.stdout
    assert "HAM-EO-DEQ L3 seed 0: finished in" in b.stdout
    # every run trained by exactly one of the two processes
    assert (log_a + b.stdout).count("seed 0: finished in") == 2
    check_every_epoch_once(tmp_path / "table2")


def test_workers_command_line_and_threads(monkeypatch):
    assert grid.without_workers(["--rows", "HAM", "--workers", "3", "--seeds", "0"]) == \
        ["--rows", "HAM", "--seeds", "0"]
    assert grid.without_workers(["--workers=4", "--fast"]) == ["--fast"]
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert grid.threads_per_worker(8) == 3  # the user's setting wins
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert (grid.threads_per_worker(4), grid.threads_per_worker(32)) == (4, 1)


@pytest.mark.slow
def test_workers_share_the_grid_and_a_sigterm_interrupts_them_all(tmp_path):
    """--workers 2: two processes train the two runs at once; SIGTERM to the one started
    (as `kill PID` under nohup would) interrupts both runs, resumably, and ends both."""
    cmd, env = sweep_cmd(tmp_path, "--epochs", "40", "--workers", "2"), quiet_env(tmp_path)
    first = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, text=True)
    log = read_until(first, "workers of 1 thread(s)")
    child = int(log.rsplit("pid ", 1)[1].split()[0])
    for name in ("HAM-EO-L3-s0", "HAM-EO-DEQ-L3-s0"):  # both runs in training at once
        if f"{name} epoch 1/40" not in log:
            log += read_until(first, f"{name} epoch 1/40")
    first.send_signal(signal.SIGTERM)
    log += first.communicate(timeout=SAFETY_TIMEOUT_S)[0]
    assert first.returncode == 143, log
    assert "interrupted by SIGTERM; start it again to resume" in log
    for name in ("HAM-EO-L3-s0", "HAM-EO-DEQ-L3-s0"):
        summary = json.loads((tmp_path / "table2" / name / "summary.json").read_text())
        assert summary["status"] == "interrupted", (name, summary)
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)  # the second worker ended (and was reaped) with the first
    assert log.count("sweep table2: 2 runs") == 1  # the plan once, from the first worker


def test_workers_with_wandb_online_are_refused_with_what_to_do(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(sweep, "has_wandb_key", lambda: True)
    monkeypatch.setattr(sweep, "wandb_reachable", lambda: True)
    code = sweep.main(["--rows", "HAM-EO", "--layers", "3", "--seeds", "0", *TINY,
                       "--results", str(tmp_path), "--workers", "2"])
    assert code == 2
    err = capsys.readouterr().err
    assert "--workers" in err and "W&B" in err and "--join" in err  # the clash, what to use
    assert not (tmp_path / "table2" / "HAM-EO-L3-s0").exists()  # nothing was trained


def test_eta_line_of_a_sweep_with_workers_gives_their_share(tmp_path, monkeypatch):
    args = sweep.parse_args(["--rows", "HAM-EO", "--layers", "3", "--seeds", "0,1", *TINY,
                             "--results", str(tmp_path), "--workers", "2"])
    monkeypatch.setattr(grid, "measured_seconds", lambda path: {"HAM-EO-L3": [600.0]})
    line = grid.eta_line(sweep.plan(args), args)
    assert line.startswith("2 runs left, about 20m00s on one worker")
    assert line.endswith("; about 10m00s with 2 workers")


def test_the_last_line_counts_runs_another_process_finished_meanwhile(tmp_path, monkeypatch):
    """A run skipped because another process was training it is counted as it is when this
    process ends: finished there, diverged there, or still in training; and ``--workers``
    closes with the store's count over the whole grid, not one worker's part."""
    args = sweep.parse_args(["--rows", "HAM", "--layers", "3", "--seeds", "0,1,2,3",
                             "--results", str(tmp_path), "--no-wandb"])
    runs = sweep.plan(args)
    names = [cfg.name for cfg in runs]
    now = {names[1]: "finished", names[2]: "diverged", names[3]: "running"}
    monkeypatch.setattr(grid, "live_status", lambda d: now.get(Path(d).name))
    monkeypatch.setattr(grid, "is_finished", lambda d: now.get(Path(d).name) == "finished")
    outcome = grid.Outcome(finished=[names[0]], busy=names[1:])
    outcome.settle(runs)
    assert (outcome.finished, outcome.diverged, outcome.busy) == (names[:2], [names[2]], [names[3]])
    assert outcome.report("table2", 4) == (
        f"sweep table2: 2 of 4 runs finished; diverged: {names[2]}; still being trained by "
        f"another process: {names[3]} (see their summary.json)")
    store = grid.Outcome.of_store(runs)
    assert (store.finished, store.diverged, store.busy) == ([names[1]], [names[2]],
                                                            [names[0], names[3]])


def test_a_run_whose_trainer_was_killed_is_reported_killed_not_in_training(tmp_path):
    """A run skipped because another process held it, whose process was then killed with
    kill -9: "running" in its summary, no live lock. The last line says killed."""
    args = sweep.parse_args(["--rows", "HAM", "--layers", "3", "--seeds", "0,1",
                             "--results", str(tmp_path), "--no-wandb"])
    runs = sweep.plan(args)
    for cfg in runs:
        atomic_write_json(cfg.directory / "summary.json", {"status": "running"})
    from runner.store import RunLock
    with RunLock(runs[1].directory):  # its trainer is alive
        outcome = grid.Outcome(busy=[cfg.name for cfg in runs])
        outcome.settle(runs)
    assert (outcome.killed, outcome.busy) == (["HAM-L3-s0"], ["HAM-L3-s1"])
    line = outcome.report("table2", 2)
    assert "killed: HAM-L3-s0" in line and "another process: HAM-L3-s1" in line
    assert "still being trained by another process: HAM-L3-s0" not in line


@pytest.mark.slow
def test_workers_end_with_one_line_over_the_whole_grid(tmp_path):
    """--workers 2 run to the end: each worker reports its part, and the process started
    ends with the store's count over the whole grid (every run, whoever trained it)."""
    cmd = sweep_cmd(tmp_path, "--epochs", "1", "--limit-train-batches", "2", "--workers", "2")
    done = subprocess.run(cmd, cwd=tmp_path, env=quiet_env(tmp_path), stdout=subprocess.PIPE,
                          text=True, timeout=SAFETY_TIMEOUT_S)
    assert done.returncode == 0, done.stdout
    last = done.stdout.strip().splitlines()[-1]
    assert last == "sweep table2, all 2 workers done: 2 of 2 runs finished", done.stdout
    assert "still being trained by another process" not in last
