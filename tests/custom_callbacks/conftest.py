"""Toy DEQs with known trajectories, a stand-in LightningModule and trainer helpers.

The test modules cannot import each other (import-mode=importlib), so everything shared is a
fixture here.
"""
from types import SimpleNamespace
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import Logger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from deq_core import DEQ

F64 = torch.float64
N_OUT = 3


class RateMap(nn.Module):
    """``f(z) = a z + c`` per sample, with rate ``a = a_max * x[:, 0]`` and ``c = x[:, 1:] U + b``.

    From ``z_0 = 0``, ``z_n = c (1 - a^n) / (1 - a)``, so the relative residual of iteration
    ``n`` is ``a^n (1 - a) / (1 - a^{n+1})`` whatever ``c`` (and exactly 0 from ``n = 1`` when
    ``a = 0``). ``energy`` is a toy (``|z - c|^2 / 2``), enough to exercise the plumbing.
    """

    def __init__(self, n_in: int = 5, width: int = 6, a_max: float = 0.995, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.U = nn.Parameter(torch.randn(n_in - 1, width, generator=gen, dtype=F64))
        self.b = nn.Parameter(1.0 + 0.1 * torch.randn(width, generator=gen, dtype=F64))
        self.a_max = a_max
        self.state_size = width

    def rates(self, x):
        return self.a_max * x[:, 0]

    def preprocess_inputs(self, x):
        return torch.cat([self.rates(x)[:, None], x[:, 1:] @ self.U + self.b], dim=1)

    def forward(self, Ux, z):
        return Ux[:, :1] * z + Ux[:, 1:]

    def energy(self, x, z):
        return 0.5 * (z - self.preprocess_inputs(x)[:, 1:]).square().sum(dim=1)


class QuadraticDescent(nn.Module):
    """One gradient step ``z - eta grad E(z)`` on ``E(z) = z A z / 2 - (x U) . z``, ``A`` SPD.

    With ``eta = 1 / lambda_max(A)`` every step lowers ``E`` (descent lemma), so the energy along
    Picard iterations is non-increasing.
    """

    def __init__(self, n_in: int = 5, width: int = 7, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        Q, _ = torch.linalg.qr(torch.randn(width, width, generator=gen, dtype=F64))
        eig = torch.linspace(0.2, 2.0, width, dtype=F64)
        self.A = nn.Parameter(Q @ torch.diag(eig) @ Q.T)
        self.U = nn.Parameter(torch.randn(n_in, width, generator=gen, dtype=F64))
        self.eta = 1.0 / 2.0
        self.state_size = width

    def preprocess_inputs(self, x):
        return x @ self.U

    def forward(self, Ux, z):
        return z - self.eta * (z @ self.A - Ux)

    def energy(self, x, z):
        return 0.5 * ((z @ self.A) * z).sum(dim=1) - (self.preprocess_inputs(x) * z).sum(dim=1)


class ToyLit(pl.LightningModule):
    """Stand-in for the project's LightningModules: ``self.deq``, a linear readout, MSE."""

    def __init__(self, f_module: nn.Module, iters: int = 40, solver: str = "picard",
                 tol: float | None = None, fail_at: tuple[str, int] | None = None):
        super().__init__()
        forward_kwargs = dict(solver=solver, iter=iters)
        if tol is not None:
            forward_kwargs["tol"] = tol
        self.deq = DEQ(f_module, None, forward_kwargs=forward_kwargs,
                       backward_kwargs=dict(solver="picard", iter=2, method="backprop"))
        self.readout = nn.Linear(f_module.state_size, N_OUT, dtype=F64)
        with torch.no_grad():  # the same readout every time, whatever the global RNG
            gen = torch.Generator().manual_seed(1)
            self.readout.weight.copy_(0.1 * torch.randn(self.readout.weight.shape, generator=gen))
            self.readout.bias.zero_()
        self.fail_at = fail_at

    def _step(self, stage: str, batch, batch_idx: int):
        x, y = batch
        loss = 0.5 * (self.readout(self.deq(x)) - y).square().sum() / x.shape[0]
        if self.fail_at == (stage, batch_idx):
            raise RuntimeError(f"planned failure in {stage} batch {batch_idx}")
        self.log(f"{stage}/loss", loss, batch_size=x.shape[0])
        return loss

    def training_step(self, batch, batch_idx):
        return self._step("train", batch, batch_idx)

    def validation_step(self, batch, batch_idx):
        return self._step("val", batch, batch_idx)

    def test_step(self, batch, batch_idx):
        return self._step("test", batch, batch_idx)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1e-3)


class RecordingLogger(Logger):
    """Keeps every ``log_metrics`` call in memory: ``records`` is a list of (metrics, step)."""

    def __init__(self):
        super().__init__()
        self.records: list[tuple[dict[str, float], int | None]] = []

    @property
    def name(self):
        return "recording"

    @property
    def version(self):
        return 0

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def log_metrics(self, metrics, step=None):
        self.records.append((dict(metrics), step))

    def values(self, key: str) -> list[float]:
        return [float(m[key]) for m, _ in self.records if key in m]


def closed_form_residuals(a: np.ndarray, n_iter: int) -> np.ndarray:
    """``(n_iter, B)``: ``a^n (1 - a) / (1 - a^{n+1})`` (the limit 1/(n+1) is never needed)."""
    n = np.arange(n_iter)[:, None]
    a = np.asarray(a, dtype=np.float64)[None, :]
    return a**n * (1 - a) / (1 - a ** (n + 1))


def closed_form_steps(a: np.ndarray, n_iter: int) -> np.ndarray:
    """``(n_iter - 1, B)``: the papers' ``r_1 .. r_{T-1}``. Picard's iterates are its outputs,
    so ``r_n`` is the residual of iteration ``n``: the rows after the zero start's."""
    return closed_form_residuals(a, n_iter)[1:]


def closed_form_iters(a: np.ndarray, tol: float, n_iter: int) -> tuple[np.ndarray, np.ndarray]:
    """Expected (iterations to converge, converged) per sample for the rate map, by the papers'
    rule: the 0-based position of the first ``r_n < tol``, ``n_iter - 1`` if none."""
    below = closed_form_steps(a, n_iter) < tol
    converged = below.any(axis=0)
    first = np.array([np.flatnonzero(col)[0] if col.any() else n_iter - 1 for col in below.T])
    return first, converged


def make_data(n: int, n_in: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs in [0, 1] (first feature sets the rate; a few at 0 and 1) and one-hot targets."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, n_in, generator=gen, dtype=F64)
    x[:2, 0] = 0.0  # rate 0: converged after 2 iterations, then exact zeros
    x[2:5, 0] = 1.0  # rate a_max: never converges within 40 iterations
    y = nn.functional.one_hot(torch.randint(N_OUT, (n,), generator=gen), N_OUT).to(F64)
    return x, y


def loader(x, y, batch_size: int = 32) -> DataLoader:
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False)


def make_trainer(root, callbacks=(), logger: Any = False, **kwargs) -> pl.Trainer:
    options = dict(accelerator="cpu", devices=1, precision="64-true", max_epochs=1,
                   enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False, log_every_n_steps=1, num_sanity_val_steps=0)
    options.update(kwargs)
    return pl.Trainer(default_root_dir=str(root), callbacks=list(callbacks), logger=logger,
                      **options)


@pytest.fixture
def toy() -> SimpleNamespace:
    """The helpers above, as one namespace (test modules cannot import conftest)."""
    return SimpleNamespace(
        RateMap=RateMap, QuadraticDescent=QuadraticDescent, ToyLit=ToyLit,
        RecordingLogger=RecordingLogger, make_data=make_data, loader=loader,
        make_trainer=make_trainer, closed_form_iters=closed_form_iters,
        closed_form_residuals=closed_form_residuals, closed_form_steps=closed_form_steps,
    )
