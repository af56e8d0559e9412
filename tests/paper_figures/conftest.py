"""A fabricated results store with known numbers, and trajectories written by the real callback.

The test modules cannot import each other (import-mode=importlib), so what they share is here.
"""
import shutil
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from custom_callbacks import ResidualTrajectories
from deq_core import DEQ
from deq_modules.results import atomic_write_json

SWEEP = "table2"
# (row, depth, seed) -> (test/iters_to_converge, test/acc as a fraction)
FINISHED_RUNS = {
    ("HAM", 3, 0): (12.0, 0.978), ("HAM", 3, 1): (11.0, 0.980), ("HAM", 3, 2): (13.0, 0.979),
    ("HAM-EO-DEQ", 3, 0): (6.0, 0.981), ("HAM-EO-DEQ", 3, 1): (7.0, 0.977),
    ("CHN-3ep", 3, 0): (40.0, 0.970), ("CHN-3ep", 3, 1): (38.0, 0.972),
    ("CHN-EO", 3, 0): (16.0, 0.971), ("CHN-EO", 3, 1): (18.0, 0.969),
    ("HAM-EO", 5, 0): (18.0, 0.971),  # its base (HAM, 5 layers) has no results
    ("HAM", 7, 0): (60.0, 0.955), ("HAM-DEQ", 7, 1): (50.0, 0.956),
}
OTHER_RUNS = {("HAM", 3, 3): "failed", ("HAM", 3, 4): "running", ("HAM-DEQ", 3, 0): "failed"}


class Contraction(nn.Module):
    """``f(z) = a z + c`` with a per-sample rate ``a = x[:, 0]``: residuals ``~ a^n``."""

    def __init__(self, width: int = 4):
        super().__init__()
        self.c = nn.Parameter(torch.linspace(0.5, 1.5, width, dtype=torch.float64))
        self.state_size = width

    def preprocess_inputs(self, x):
        return x[:, :1]

    def forward(self, Ux, z):
        return Ux * z + self.c


class ToyModule(pl.LightningModule):
    """Just enough of the project's LightningModules for ResidualTrajectories: ``self.deq``."""

    def __init__(self, iters: int):
        super().__init__()
        self.deq = DEQ(Contraction(), None, forward_kwargs=dict(solver="picard", iter=iters))

    def test_step(self, batch, batch_idx):
        self.deq(batch[0])


def write_trajectories(directory, rates, iters: int) -> str:
    """Run the real callback on a toy DEQ whose samples contract at ``rates``; the file path."""
    x = torch.tensor(rates, dtype=torch.float64)[:, None]
    callback = ResidualTrajectories(out_dir=str(directory), log_image=False)
    trainer = pl.Trainer(accelerator="cpu", devices=1, precision="64-true", logger=False,
                         callbacks=[callback], enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=str(directory))
    trainer.test(ToyModule(iters), DataLoader(TensorDataset(x), batch_size=8), verbose=False)
    return callback.path


@pytest.fixture(scope="session")
def trajectory_files(tmp_path_factory):
    """Two different real trajectories files: 12 samples / 30 iterations and 7 / 45."""
    root = tmp_path_factory.mktemp("trajectories")
    return [write_trajectories(root / "a", [0.1 * k for k in range(12)], 30),
            write_trajectories(root / "b", [0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.0], 45)]


def write_run(root, row, depth, seed, summary, config_extra=None, trajectories=None):
    directory = root / SWEEP / f"{row}-L{depth}-s{seed}"
    atomic_write_json(directory / "config.json", {"row": row, "depth": depth, "seed": seed,
                                                  "run_name": directory.name,
                                                  **(config_extra or {})})
    if summary is not None:
        atomic_write_json(directory / "summary.json", {"run_name": directory.name, **summary})
    if trajectories is not None:
        shutil.copyfile(trajectories, directory / "trajectories.npz")
    return directory


@pytest.fixture
def store(tmp_path, trajectory_files):
    """A results store: FINISHED_RUNS (each with a trajectories file, alternating between the
    two real ones), OTHER_RUNS (failed/running, summary only); the store's root directory."""
    root = tmp_path / "results"
    for i, ((row, depth, seed), (iters, acc)) in enumerate(FINISHED_RUNS.items()):
        write_run(root, row, depth, seed,
                  {"status": "finished", "test/acc": acc, "test/iters_to_converge": iters,
                   "row": row, "depth": depth, "seed": seed},
                  trajectories=trajectory_files[i % 2])
    for (row, depth, seed), status in OTHER_RUNS.items():
        write_run(root, row, depth, seed, {"status": status})
    return root


@pytest.fixture
def fixtures():
    """The constants and helpers above, as one namespace."""
    return SimpleNamespace(SWEEP=SWEEP, FINISHED_RUNS=FINISHED_RUNS, OTHER_RUNS=OTHER_RUNS,
                           write_run=write_run)
