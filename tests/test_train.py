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
                 "--compile", "--fused-anderson"):
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
    assert "invalid choice: 'HAM-XL'" in capsys.readouterr().err


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


def test_fused_anderson_run_uses_the_kernel_and_records_a_finished_run(capsys, tmp_path,
                                                                         monkeypatch):
    """``--fused-anderson``: the run's Anderson solves go through the C++ kernel (counted),
    in training, validation and test; the run is stored like any other."""
    from deq_core import fused

    monkeypatch.setenv("WANDB_MODE", "disabled")
    calls = []
    step = fused.step
    monkeypatch.setattr(fused, "step", lambda *a: (calls.append(1), step(*a))[1])
    args = ["--row", "HAM-EO-DEQ", "--layers", "3", *TINY, "--results", str(tmp_path),
            "--fused-anderson", "--fast", "--epochs", "2"]
    assert train.main(args) == 0
    assert "HAM-EO-DEQ-L3-s0: test accuracy " in capsys.readouterr().out
    assert len(calls) > 0
    run = tmp_path / "single" / "HAM-EO-DEQ-L3-s0"
    assert json.loads((run / "summary.json").read_text())["status"] == "finished"
    assert json.loads((run / "config.json").read_text())["fused_anderson"] is True
