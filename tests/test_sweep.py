"""sweep.py: the plan, a tiny offline sweep, resumption after a kill, --join without W&B."""
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import sweep
from deq_modules import run as run_module
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


def test_dry_run_lists_the_85_paper_runs(capsys, tmp_path, offline_env):
    assert sweep.main(["--dry-run", "--results", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("sweep table2: 85 runs (0 already finished), dataset emnist-mnist")
    runs = lines[1:]
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
        assert {"train/loss", "val/acc", "val/iters_to_converge", "lr-Madam"} <= set(history[0])
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
    real = run_module._train_and_test

    def fail_seed_0(cfg, out, run_id):
        if cfg.seed == 0:
            raise RuntimeError("simulated divergence")
        return real(cfg, out, run_id)

    monkeypatch.setattr(run_module, "_train_and_test", fail_seed_0)
    args = ["--rows", "HAM-EO-DEQ", "--layers", "3", "--seeds", "0,1", *TINY, "--no-wandb",
            "--results", str(tmp_path)]
    assert sweep.main(args) == 1
    out = capsys.readouterr().out
    assert "seed 0: FAILED after" in out and "RuntimeError: simulated divergence" in out
    assert "seed 1: finished in" in out
    failed = json.loads((tmp_path / "table2" / "HAM-EO-DEQ-L3-s0" / "summary.json").read_text())
    assert failed["status"] == "failed" and "simulated divergence" in failed["error"]
    assert "Traceback" in failed["traceback"]
    monkeypatch.setattr(run_module, "_train_and_test", real)
    assert sweep.main(args) == 0  # the rerun redoes only the failed run
    out = capsys.readouterr().out
    assert "seed 1: already finished, skipped" in out and "seed 0: finished in" in out


def test_missing_dataset_stops_the_sweep_before_any_run(capsys, tmp_path, offline_env):
    args = ["--dataset", "mnist", "--data-dir", str(tmp_path / "nothing"), "--no-download",
            "--results", str(tmp_path)]
    with pytest.raises(SystemExit, match=r"mnist.*nothing.*train-images-idx3-ubyte"):
        sweep.main(args)
    assert not (tmp_path / "table2").exists()


def test_join_without_key_fails_at_once_with_a_clear_message(capsys, offline_env):
    start = time.monotonic()
    with pytest.raises(SystemExit, match="needs a W&B API key.*WANDB_API_KEY.*wandb login"):
        sweep.main(["--join", "someone/hopfield-deq/abc123"])
    with pytest.raises(SystemExit, match="expects ENTITY/PROJECT/SWEEP_ID, got 'abc123'"):
        sweep.main(["--join", "abc123"])
    assert time.monotonic() - start < 5


def test_join_without_network_fails_at_once(monkeypatch, offline_env):
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "https://unreachable.invalid")
    with pytest.raises(SystemExit, match="cannot reach the W&B server"):
        sweep.main(["--join", "someone/hopfield-deq/abc123"])


def test_bad_flags_are_refused(capsys):
    with pytest.raises(SystemExit):
        sweep.main(["--rows", "HAM-EOO"])
    assert "invalid value(s) ['HAM-EOO']; valid: CHN-10ep" in capsys.readouterr().err


@pytest.mark.slow
def test_killed_sweep_resumes_and_finishes_every_run_once(tmp_path):
    env = dict(os.environ, WANDB_MODE="disabled", HOME=str(tmp_path))
    env.pop("WANDB_API_KEY", None)
    cmd = [sys.executable, str(ROOT / "sweep.py"), "--rows", "HAM-EO,HAM-EO-DEQ", "--layers", "3",
           "--seeds", "0", "--dataset", "synthetic", "--epochs", "8", "--limit-train-batches",
           "30", "--limit-test-batches", "1", "--no-wandb", "--results", str(tmp_path)]
    first = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, text=True)
    store = tmp_path / "table2"
    victim = store / "HAM-EO-DEQ-L3-s0"
    deadline = time.monotonic() + 240
    # Kill the sweep once the second run has its first epoch checkpoint: mid-run, mid-epoch.
    while not (victim / "checkpoints" / "last.ckpt").exists():
        assert first.poll() is None and time.monotonic() < deadline, "sweep ended too early"
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    log1 = first.communicate()[0]
    assert json.loads((victim / "summary.json").read_text())["status"] == "running"

    second = subprocess.run(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, text=True,
                            timeout=300)
    assert second.returncode == 0, second.stdout
    log = log1 + second.stdout
    for name in ("HAM-EO-L3-s0", "HAM-EO-DEQ-L3-s0"):
        summary = json.loads((store / name / "summary.json").read_text())
        assert summary["status"] == "finished"
        history = list(csv.DictReader(open(store / name / "metrics.csv")))
        assert [r["epoch"] for r in history] == [str(e) for e in range(8)]  # each exactly once
        assert summary["epochs_trained"] == 8
    assert log.count("seed 0: finished in") == 2  # each run finished exactly once
    assert "HAM-EO L3 seed 0: already finished, skipped" in second.stdout
    resumed = json.loads((victim / "summary.json").read_text())["resumed_from"]
    assert resumed and resumed.endswith("last.ckpt")
    assert not list(store.rglob(".*.tmp"))
