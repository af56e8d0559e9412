"""Fixtures of the benchmark tests."""
import pytest
import torch

from bench import trained_steps
from deq_modules.experiments import Experiment
from deq_modules.lit import lit_module_for
from deq_modules.data.synthetic import make_synthetic


@pytest.fixture
def trained_run(tmp_path, monkeypatch):
    """A results folder ``tmp_path`` whose sweep ``sw`` holds the checkpoint of run
    ``HAM-EO-DEQ-L3-s0`` (freshly initialised weights, seed 0), with the benchmarks' dataset
    loader answering synthetic images; returns the module whose weights were saved."""
    monkeypatch.setattr(trained_steps, "load_dataset", lambda name, data_dir: make_synthetic(200, 10))
    ckpt = tmp_path / "sw" / "HAM-EO-DEQ-L3-s0" / "checkpoints"
    ckpt.mkdir(parents=True)
    torch.manual_seed(0)
    trained = lit_module_for(Experiment.from_key("HAM-EO-DEQ-L3"))
    torch.save({"state_dict": trained.state_dict()}, ckpt / "last.ckpt")
    return trained
