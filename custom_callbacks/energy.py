"""Mean Hopfield energy along the solver's iterations.

What to expect: the energy is a Lyapunov function of the *continuous* dynamics, not of every
discrete solver. For a HAM updated even-odd with plain (Picard) iteration, each half step sets
one half of the layers to the exact minimiser of the energy given the other half (units of one
half do not interact; given the rest, a unit's energy has derivative ``rho'(s) (s - drive)``
with ``rho' > 0``, so its only minimum is ``s = drive``, which is the update), so the energy
never increases: it is block-coordinate descent. Synchronous
(OneMatrix) updates change neighbouring layers at once and can overshoot (even fall into
period-2 cycles), and Anderson acceleration mixes past iterates, so with either the energy may
go up from one iteration to the next; a rise there is not a bug.

After each epoch of its stage, :attr:`EnergyTracker.result` holds ``mean_energy`` (n_iter,)
float64 (the mean over the samples whose solve reached that iteration), ``sum_energy``,
``n_samples`` (n_iter,) int64, ``stage`` and ``format_version`` (1): the keys of ``energy.npz``
(``runner.result_files`` saves and plots it). Entry ``n`` is the energy of the iterate after
``n + 1`` iterations (the solver hands over each new iterate; the initial state is not included).
"""
from __future__ import annotations

import inspect
import warnings
from typing import Any, Callable

import lightning.pytorch as pl
import torch
from torch import Tensor

from ._base import ObservingCallback, batch_inputs, get_deq, reduce_max_int, reduce_sum

FORMAT_VERSION = 1


class EnergyTracker(ObservingCallback):
    """Track the mean Hopfield energy per solver iteration over one stage's epoch.

    For every new iterate ``z`` of the forward solves of ``pl_module.deq`` it adds
    ``f_module.energy(x, z).sum()`` (``x`` the batch's inputs) to that iteration's total, on the
    device, without host synchronisation. An ``energy`` with an ``Ux`` argument (the Hopfield
    modules') gets ``f_module.preprocess_inputs(x)``, computed once per batch. At the end of
    each epoch of ``stage`` (not during the sanity check) it logs ``<stage>/energy_final``
    (mean energy at the last iteration) and sets :attr:`result` (numpy arrays, see the module
    docstring; each epoch replaces the last).
    Samples of solves stopped early by a solver ``tol`` drop out of the later iterations' means.

    Args:
        stage: ``"train"``, ``"val"`` or ``"test"``.
    """

    def __init__(self, stage: str = "test"):
        super().__init__((stage,))
        self.stage = stage
        self.result: dict[str, Any] | None = None
        self._reset()

    def _reset(self) -> None:
        self._sums: list[Tensor] = []  # per iteration index, 0-d device tensors
        self._counts: list[int] = []

    def observer_for(self, stage: str, pl_module: pl.LightningModule,
                     batch: Any) -> dict[str, Callable]:
        x = batch_inputs(batch)
        f_module = get_deq(pl_module, type(self).__name__).f_module
        if not callable(getattr(f_module, "energy", None)):
            raise AttributeError(f"EnergyTracker needs {type(f_module).__name__}.energy(x, z)")
        given: dict[str, Tensor] = {}  # Ux, at the first iterate, for an energy that takes it
        takes_ux = "Ux" in inspect.signature(f_module.energy).parameters

        def on_iterate(n: int, z: Tensor) -> None:
            if z.shape[0] != x.shape[0]:
                raise ValueError(f"EnergyTracker: iterate batch {z.shape[0]} does not match the "
                                 f"input batch {x.shape[0]}")
            with torch.no_grad():
                if takes_ux and not given:
                    given["Ux"] = f_module.preprocess_inputs(x)
                total = f_module.energy(x, z, **given).sum().to(torch.float64)
            if n == len(self._sums):
                self._sums.append(total)
                self._counts.append(0)
            else:
                self._sums[n] = self._sums[n] + total
            self._counts[n] += z.shape[0]

        return dict(on_iterate=on_iterate)

    # -- epoch boundaries ------------------------------------------------------------------
    def _epoch_start(self, stage: str) -> None:
        if stage == self.stage:
            self._reset()
            self.result = None  # never hand back an earlier epoch's arrays

    def _epoch_end(self, stage: str, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if stage != self.stage or trainer.sanity_checking:
            return
        device = pl_module.device
        n_iter = reduce_max_int(trainer, len(self._sums), device)
        sums = torch.zeros(n_iter, dtype=torch.float64, device=device)
        counts = torch.zeros(n_iter, dtype=torch.long, device=device)
        if self._sums:
            sums[: len(self._sums)] = torch.stack(self._sums).to(device)
            counts[: len(self._counts)] = torch.tensor(self._counts, device=device)
        sums, counts = reduce_sum(trainer, sums), reduce_sum(trainer, counts)
        self._reset()
        if n_iter == 0:
            warnings.warn(f"EnergyTracker saw no DEQ iterate during {stage}; no result",
                          UserWarning, stacklevel=2)
            return
        mean = sums / counts.clamp(min=1)
        pl_module.log(f"{stage}/energy_final", mean[-1].float(), on_step=False, on_epoch=True)
        self.result = dict(mean_energy=mean.cpu().numpy(), sum_energy=sums.cpu().numpy(),
                           n_samples=counts.cpu().numpy(), stage=stage,
                           format_version=FORMAT_VERSION)

    def on_train_epoch_start(self, trainer, pl_module):
        self._epoch_start("train")

    def on_train_epoch_end(self, trainer, pl_module):
        self._epoch_end("train", trainer, pl_module)

    def on_validation_epoch_start(self, trainer, pl_module):
        self._epoch_start("val")

    def on_validation_epoch_end(self, trainer, pl_module):
        self._epoch_end("val", trainer, pl_module)

    def on_test_epoch_start(self, trainer, pl_module):
        self._epoch_start("test")

    def on_test_epoch_end(self, trainer, pl_module):
        self._epoch_end("test", trainer, pl_module)
