"""runner/run.py: the life cycle of one run in the store (in-process, synthetic data)."""
import csv
import json
import re

import pytest

from runner.config import RunConfig
from runner.run import ConfigMismatch, run_experiment
from runner.store import RunLock, RunLocked, atomic_write_json, finished_problems, read_json


def tiny(tmp_path, **kwargs) -> RunConfig:
    settings = dict(row="HAM-EO", depth=3, seed=0, dataset="synthetic", epochs=2,
                    limit_train_batches=3, limit_test_batches=1, results=str(tmp_path),
                    sweep="t", accelerator="cpu", synthetic_kwargs=dict(n_train=256, n_test=64))
    return RunConfig(**{**settings, **kwargs})


def epochs_in(directory):
    return [r["epoch"] for r in csv.DictReader(open(directory / "metrics.csv"))]


def test_finished_run_is_returned_as_stored(tmp_path):
    cfg = tiny(tmp_path)
    first = run_experiment(cfg)
    assert first["status"] == "finished" and first["resumed"] is False
    assert first["seconds_per_epoch"] > 0 and epochs_in(cfg.directory) == ["0", "1"]
    assert (cfg.directory / "trajectories.npz").exists() and (cfg.directory / "energy.npz").exists()
    mtime = (cfg.directory / "summary.json").stat().st_mtime_ns
    second = run_experiment(cfg)
    assert second == read_json(cfg.directory / "summary.json")
    assert second["wall_time_s"] == first["wall_time_s"]  # not trained again
    assert (cfg.directory / "summary.json").stat().st_mtime_ns == mtime


def test_rerun_trains_again_instead_of_retesting_the_final_checkpoint(tmp_path):
    cfg = tiny(tmp_path)
    first = run_experiment(cfg)
    again = run_experiment(cfg, rerun=True)
    assert again["resumed"] is False  # the old last.ckpt was discarded, not resumed from
    assert again["wall_time_s"] != first["wall_time_s"]
    assert epochs_in(cfg.directory) == ["0", "1"]


def test_kill_during_test_keeps_the_training_time_per_epoch(tmp_path):
    cfg = tiny(tmp_path)
    trained = run_experiment(cfg)
    # What a kill during the test leaves: every epoch checkpointed, the summary still running.
    (cfg.directory / "summary.json").write_text(json.dumps({"status": "running"}))
    resumed = run_experiment(cfg)
    assert resumed["status"] == "finished" and resumed["resumed"] is True
    assert resumed["epochs_trained"] == 2 and epochs_in(cfg.directory) == ["0", "1"]
    assert resumed["seconds_per_epoch"] == pytest.approx(trained["seconds_per_epoch"])


def test_stored_run_with_other_settings_is_refused(tmp_path):
    run_experiment(tiny(tmp_path))
    with pytest.raises(ConfigMismatch, match=r"\bdataset\b.*'synthetic'.*'mnist'"):
        run_experiment(tiny(tmp_path, dataset="mnist"))
    with pytest.raises(ConfigMismatch, match=r"\bepochs\b.*\b2\b.*\b3\b"):
        run_experiment(tiny(tmp_path, epochs=3))


def test_a_run_held_by_another_holder_is_not_touched(tmp_path):
    cfg = tiny(tmp_path)
    with RunLock(cfg.directory):
        with pytest.raises(RunLocked, match=re.escape(cfg.directory.name)):
            run_experiment(cfg)
    assert not (cfg.directory / "summary.json").exists()


def test_a_stored_run_trained_on_other_devices_is_refused(tmp_path):
    """DDP over N ranks splits each epoch over the ranks (N x the batch per step) and tests
    N x ``limit_test_batches`` batches: another result, never reused as this one."""
    cfg = tiny(tmp_path)
    atomic_write_json(cfg.directory / "config.json", {**cfg.to_dict(), "devices": 4})
    atomic_write_json(cfg.directory / "summary.json", {"status": "finished"})
    with pytest.raises(ConfigMismatch, match=r"\bdevices\b.*\b4\b.*\b1\b"):
        run_experiment(cfg)
    assert read_json(cfg.directory / "summary.json") == {"status": "finished"}  # untouched


def test_an_unreadable_resume_checkpoint_is_set_aside_and_the_run_starts_again(tmp_path, capsys):
    """A killed run whose last.ckpt cannot be read (cut short) does not fail every restart:
    the file is kept beside as last.ckpt.damaged, and the run trains from its first epoch."""
    cfg = tiny(tmp_path)
    atomic_write_json(cfg.directory / "config.json", cfg.to_dict())
    atomic_write_json(cfg.directory / "summary.json", {"status": "running"})  # killed
    checkpoint = cfg.directory / "checkpoints" / "last.ckpt"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(b"PK\x03\x04" + b"\0" * 200)  # a zip cut short
    summary = run_experiment(cfg)
    assert summary["status"] == "finished" and summary["resumed"] is False
    assert epochs_in(cfg.directory) == ["0", "1"]
    damaged = cfg.directory / "checkpoints" / "last.ckpt.damaged"
    assert damaged.read_bytes() == b"PK\x03\x04" + b"\0" * 200  # kept, not deleted
    out = capsys.readouterr().out
    assert "checkpoints/last.ckpt cannot be read" in out and "last.ckpt.damaged" in out


def test_a_finished_run_with_an_unreadable_trajectories_file_is_trained_again(tmp_path, capsys):
    cfg = tiny(tmp_path)
    first = run_experiment(cfg)
    path = cfg.directory / "trajectories.npz"
    path.write_bytes(path.read_bytes()[:100])
    again = run_experiment(cfg)
    assert "stored result is damaged (trajectories.npz is truncated" in capsys.readouterr().out
    assert again["status"] == "finished" and again["wall_time_s"] != first["wall_time_s"]
    assert finished_problems(cfg.directory) == []
