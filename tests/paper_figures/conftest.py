"""A fabricated results store with known numbers, and result files written by the real callbacks.

The test modules cannot import each other (import-mode=importlib), so what they share is here.
Building the files needs torch and Lightning (the real callbacks run on a toy DEQ); the code
under test does not.
"""
import shutil
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from custom_callbacks import EnergyTracker, ResidualTrajectories
from deq_core import DEQ
from deq_modules.experiments import CONVERGENCE_TOL
from runner.result_files import save_npz
from runner.store import FINISHED, RUNNING, RunLock, atomic_write_json, atomic_write_text

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
# test/not_converged (test samples that never reached the criterion); 0 where not listed
NOT_CONVERGED = {("HAM", 3, 0): 3, ("HAM", 3, 1): 0, ("HAM", 3, 2): 6, ("HAM", 7, 0): 40}
OTHER_RUNS = {("HAM", 3, 3): "failed", ("HAM", 3, 4): "running", ("HAM-DEQ", 3, 0): "failed"}
# Finished runs without an energy.npz (every other finished HAM run has one).
NO_ENERGY = {("HAM-DEQ", 7, 1)}
METRICS_CSV = "epoch,train/loss,val/acc\n0,0.31,0.95\n1,0.22,0.97\n"


class Contraction(nn.Module):
    """``f(z) = a z + c`` with a per-sample rate ``a = x[:, 0]``: residuals ``~ a^n``.

    It is gradient descent with unit step on ``energy``; samples with ``a >= 1`` never converge.
    """

    def __init__(self, width: int = 4):
        super().__init__()
        self.c = nn.Parameter(torch.linspace(0.5, 1.5, width, dtype=torch.float64))
        self.state_size = width

    def preprocess_inputs(self, x):
        return x[:, :1]

    def forward(self, Ux, z):
        return Ux * z + self.c

    def energy(self, x, z):
        """``1/2 (1 - a) |z|^2 - c . z`` per sample: its gradient step of size 1 is ``forward``."""
        a = x[:, :1]
        return (0.5 * (1 - a) * z ** 2 - self.c * z).sum(dim=1)


class ToyModule(pl.LightningModule):
    """Just enough of the project's LightningModules for the callbacks: ``self.deq``."""

    def __init__(self, iters: int):
        super().__init__()
        self.deq = DEQ(Contraction(), None, forward_kwargs=dict(solver="picard", iter=iters))

    def test_step(self, batch, batch_idx):
        self.deq(batch[0])


def write_result_files(directory, rates, iters: int):
    """Run the real callbacks on a toy DEQ whose samples contract at ``rates``, save their
    results as the run layer does; the paths of trajectories.npz and energy.npz."""
    x = torch.tensor(rates, dtype=torch.float64)[:, None]
    callbacks = [ResidualTrajectories(tol=CONVERGENCE_TOL), EnergyTracker("test")]
    trainer = pl.Trainer(accelerator="cpu", devices=1, precision="64-true", logger=False,
                         callbacks=callbacks, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=str(directory))
    trainer.test(ToyModule(iters), DataLoader(TensorDataset(x), batch_size=8), verbose=False)
    paths = directory / "trajectories.npz", directory / "energy.npz"
    for path, callback in zip(paths, callbacks):
        save_npz(path, callback.result)
    return paths


@pytest.fixture(scope="session")
def result_files(tmp_path_factory):
    """Two different real (trajectories, energy) file pairs: 12 samples / 30 iterations (two
    of them, rates 1.0 and 1.1, never converge) and 7 samples / 45 iterations."""
    root = tmp_path_factory.mktemp("result_files")
    return [write_result_files(root / "a", [0.1 * k for k in range(12)], 30),
            write_result_files(root / "b", [0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.0], 45)]


@pytest.fixture(scope="session")
def trajectory_files(result_files):
    return [t for t, _ in result_files]


@pytest.fixture(scope="session")
def energy_files(result_files):
    return [e for _, e in result_files]


def finished_summary(iters, acc, not_converged=0, **extra):
    """A summary as the run layer writes it for a finished run (every test metric)."""
    return {"status": FINISHED, "test/acc": acc, "test/iters_to_converge": iters,
            "test/loss": 0.05, "test/not_converged": not_converged, "iters_rule": "papers",
            **extra}


def write_run(root, row, depth, seed, summary, config_extra=None, trajectories=None,
              energy=None, metrics=METRICS_CSV, sweep=SWEEP):
    directory = root / sweep / f"{row}-L{depth}-s{seed}"
    atomic_write_json(directory / "config.json", {"row": row, "depth": depth, "seed": seed,
                                                  "run_name": directory.name,
                                                  **(config_extra or {})})
    if summary is not None:
        atomic_write_json(directory / "summary.json", {"run_name": directory.name, **summary})
    if metrics is not None:
        atomic_write_text(directory / "metrics.csv", metrics)
    for source, name in ((trajectories, "trajectories.npz"), (energy, "energy.npz")):
        if source is not None:
            shutil.copyfile(source, directory / name)
    return directory


@pytest.fixture
def store(tmp_path, result_files):
    """A results store: FINISHED_RUNS (each with a trajectories file, alternating between the
    two real ones, and an energy file for HAM rows but NO_ENERGY), OTHER_RUNS (failed/running,
    summary only; a running run's lock is held, as its trainer would, for the test's length);
    the store's root directory."""
    root = tmp_path / "results"
    for i, ((row, depth, seed), (iters, acc)) in enumerate(FINISHED_RUNS.items()):
        trajectories, energy = result_files[i % 2]
        has_energy = row.startswith("HAM") and (row, depth, seed) not in NO_ENERGY
        write_run(root, row, depth, seed,
                  finished_summary(iters, acc, NOT_CONVERGED.get((row, depth, seed), 0),
                                   row=row, depth=depth, seed=seed),
                  trajectories=trajectories, energy=energy if has_energy else None)
    locks = []
    for (row, depth, seed), status in OTHER_RUNS.items():
        directory = write_run(root, row, depth, seed, {"status": status}, metrics=None)
        if status == RUNNING:  # without a live holder it would show as killed
            locks.append(RunLock(directory).acquire())
    yield root
    for lock in locks:
        lock.release()


@pytest.fixture
def fixtures():
    """The constants and helpers above, as one namespace."""
    return SimpleNamespace(SWEEP=SWEEP, FINISHED_RUNS=FINISHED_RUNS, OTHER_RUNS=OTHER_RUNS,
                           NOT_CONVERGED=NOT_CONVERGED, NO_ENERGY=NO_ENERGY,
                           write_run=write_run, finished_summary=finished_summary)
