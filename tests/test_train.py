"""train.py: the single-run entry point (in-process, and with two DDP processes on the CPU)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import train

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--dataset", "synthetic", "--epochs", "1", "--limit-train-batches", "3",
        "--limit-test-batches", "2"]


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--row", "--layers", "--seed", "--dataset", "--data-dir", "--no-download",
                 "--epochs", "--limit-train-batches", "--limit-test-batches", "--results",
                 "--name", "--accelerator", "--devices", "--wandb", "--rerun", "--fast",
                 "--compile", "--no-fused-anderson"):
        assert flag in text


def test_single_run_prints_accuracy_and_iterations(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    args = ["--row", "CHN-DEQ", "--layers", "3", *TINY, "--results", str(tmp_path)]
    assert train.main(args) == 0
    out = capsys.readouterr().out
    assert "CHN-DEQ-L3-s0: test accuracy " in out and "iterations to converge" in out
    summary = json.loads((tmp_path / "single" / "CHN-DEQ-L3-s0" / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["device"] == "cpu"


def test_unknown_row_is_refused(capsys):
    with pytest.raises(SystemExit):
        train.main(["--row", "HAM-XL"])
    error = capsys.readouterr().err.strip().splitlines()[-1]  # the line after the usage
    assert "--row" in error and "HAM-XL" in error and "HAM-EO-DEQ" in error  # and a valid row


@pytest.mark.slow
def test_two_process_ddp_run_on_cpu(tmp_path):
    env = dict(os.environ, WANDB_MODE="disabled")
    cmd = [sys.executable, str(ROOT / "train.py"), "--row", "HAM-EO-DEQ", *TINY, "--devices", "2",
           "--accelerator", "cpu", "--results", str(tmp_path)]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("test accuracy") == 1  # only rank 0 reports
    summary = json.loads((tmp_path / "single" / "HAM-EO-DEQ-L3-s0" / "summary.json").read_text())
    assert summary["status"] == "finished"


@pytest.mark.parametrize("flags,kernel", [([], True), (["--fused-anderson"], True),
                                          (["--no-fused-anderson"], False)])
def test_anderson_runs_use_the_kernel_unless_told_not_to(capsys, tmp_path, monkeypatch, flags,
                                                         kernel):
    """By default the run's Anderson solves go through the C++ kernel (counted), in training,
    validation and test; ``--no-fused-anderson`` keeps them to the tensor operations; the old
    opt-in ``--fused-anderson`` is still accepted. The run is stored like any other."""
    from deq_core import fused

    monkeypatch.setenv("WANDB_MODE", "disabled")
    calls = []
    step = fused.step
    monkeypatch.setattr(fused, "step", lambda *a: (calls.append(1), step(*a))[1])
    args = ["--row", "HAM-EO-DEQ", "--layers", "3", *TINY, "--results", str(tmp_path),
            *flags, "--fast", "--epochs", "2"]
    assert train.main(args) == 0
    assert "HAM-EO-DEQ-L3-s0: test accuracy " in capsys.readouterr().out
    assert (len(calls) > 0) == kernel
    run = tmp_path / "single" / "HAM-EO-DEQ-L3-s0"
    assert json.loads((run / "summary.json").read_text())["status"] == "finished"
    assert json.loads((run / "config.json").read_text())["fused_anderson"] is kernel


# -- every run error is one line and a non-zero exit (no traceback) ----------------------------
def _one_error_line(err: str, *expected: str) -> str:
    """The ``train.py:`` line of ``err``: exactly one, no traceback, holding ``expected``."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("train.py:")]
    assert len(lines) == 1, err
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("flags, expected", [
    (["--seed", str(2**32)], [str(2**32), "4294967295"]),
    (["--synthetic-sizes", "256,128", "--limit-train-batches", "0.1"],
     ["limit_train_batches", "0.1", "1/4"]),  # the smallest fraction that works
    (["--synthetic-sizes", "256,128", "--limit-test-batches", "0.25"],
     ["limit_test_batches", "0.25", "1/2"]),
])
def test_settings_no_run_can_use_are_refused_before_the_run(flags, expected, capsys, tmp_path):
    """A seed numpy cannot take, a batch fraction that leaves no batch: exit 2, nothing run."""
    args = ["--row", "HAM", "--dataset", "synthetic", "--epochs", "1", "--results", str(tmp_path),
            *flags]
    assert train.main(args) == 2
    _one_error_line(capsys.readouterr().err, *expected)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("devices", ["0", "-1"])
def test_devices_below_one_are_refused(devices, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--row", "HAM", "--devices", devices, "--results", str(tmp_path)])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]  # the line after the usage
    assert "--devices" in error and repr(devices) in error
    assert not list(tmp_path.iterdir())


def test_a_gpu_accelerator_without_a_gpu_is_refused_before_the_run(capsys, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert train.main(["--row", "HAM", *TINY, "--accelerator", "gpu",
                       "--results", str(tmp_path)]) == 2
    _one_error_line(capsys.readouterr().err, "--accelerator", "gpu", "cpu")  # bad, valid
    assert not list(tmp_path.iterdir())


def test_a_results_path_that_is_a_file_is_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    results = tmp_path / "results"
    results.write_text("not a directory")
    assert train.main(["--row", "HAM", *TINY, "--results", str(results)]) == 1
    _one_error_line(capsys.readouterr().err, str(results), "--results")


def test_a_read_only_results_directory_is_one_line(capsys, tmp_path, monkeypatch):
    """Read-only as the file system says it (EROFS: root ignores permission bits, so the
    refusal is simulated where the run creates its directory)."""
    import errno

    monkeypatch.setenv("WANDB_MODE", "disabled")
    results = tmp_path / "results"
    mkdir = os.mkdir

    def read_only(path, *args, **kwargs):
        if str(path).startswith(str(results)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", read_only)
    assert train.main(["--row", "HAM", *TINY, "--results", str(results)]) == 1
    _one_error_line(capsys.readouterr().err, str(results), os.strerror(errno.EROFS), "--results")


def test_a_missing_dataset_is_one_line_naming_it(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    nothing = tmp_path / "nothing"
    args = ["--row", "HAM", "--dataset", "mnist", "--data-dir", str(nothing), "--no-download",
            "--epochs", "1", "--results", str(tmp_path / "results")]
    assert train.main(args) == 1
    _one_error_line(capsys.readouterr().err, "'mnist'", str(nothing),
                    "train-images-idx3-ubyte")


def test_a_corrupt_dataset_is_one_line_naming_the_file(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    data = tmp_path / "data"
    data.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):  # what an interrupted download leaves
        (data / f"{name}.gz").write_bytes(os.urandom(300))
    args = ["--row", "HAM", "--dataset", "fashion-mnist", "--data-dir", str(data),
            "--no-download", "--epochs", "1", "--results", str(tmp_path / "results")]
    assert train.main(args) == 1
    _one_error_line(capsys.readouterr().err, "fashion-mnist", "train-images-idx3-ubyte.gz")


# -- a full disk -------------------------------------------------------------------------------
def _disk_fills_at_the_second_checkpoint(monkeypatch):
    """``Trainer.save_checkpoint`` writes the first epoch's checkpoint; the second stops
    half-way with ENOSPC, as a full disk leaves it (the bytes written so far stay)."""
    import errno

    import lightning as L

    save, calls = L.Trainer.save_checkpoint, []

    def save_until_full(self, filepath, *args, **kwargs):
        save(self, filepath, *args, **kwargs)
        calls.append(filepath)
        if len(calls) == 2:
            os.truncate(filepath, os.path.getsize(filepath) // 2)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(L.Trainer, "save_checkpoint", save_until_full)


def _disk_fills_at_the_trajectories(monkeypatch):
    """Saving ``trajectories.npz`` stops half-way with ENOSPC."""
    import errno

    from runner import result_files

    def write_half(path, data):
        def fail(f):
            f.write(b"PK\x03\x04" + bytes(100))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        result_files.atomic_write_with(path, fail)

    monkeypatch.setattr("runner.run.save_npz", write_half)


@pytest.mark.parametrize("fill", [_disk_fills_at_the_second_checkpoint,
                                  _disk_fills_at_the_trajectories])
def test_a_full_disk_fails_the_run_cleanly_and_says_what_to_free(fill, capsys, tmp_path,
                                                                  monkeypatch):
    import errno

    monkeypatch.setenv("WANDB_MODE", "disabled")
    fill(monkeypatch)
    results = tmp_path / "results"
    args = ["--row", "HAM", *TINY, "--epochs", "2", "--results", str(results)]
    assert train.main(args) == 1
    line = _one_error_line(capsys.readouterr().err, "HAM-L3-s0", os.strerror(errno.ENOSPC))
    assert str(results) in line and "checkpoints" in line  # where space can be freed
    run = results / "single" / "HAM-L3-s0"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed" and os.strerror(errno.ENOSPC) in summary["error"]
    assert [p.name for p in run.rglob("*") if p.name.endswith(".tmp")] == []
    ckpt = run / "checkpoints" / "last.ckpt"
    import zipfile
    assert zipfile.is_zipfile(ckpt)  # the last whole checkpoint stays: a restart resumes it
