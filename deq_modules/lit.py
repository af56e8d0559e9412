"""LightningModules that train Hopfield DEQs as classifiers (ECAI 2024, Appendix F)."""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import lightning as L
import torch
from torch import Tensor
from torchmetrics.classification import MulticlassAccuracy

from deq_core import DEQ
from madam import Madam

from .functions import EvenOddFunction, OneMatrixFunction

STRUCTURES = ("onematrix", "evenodd")
STAGES = ("train", "val", "test")


class LitHopfieldDEQ(L.LightningModule):
    """A Hopfield network (CHN or HAM) solved as a DEQ, read out at its output layer.

    Args:
        layers: layer sizes including the input, e.g. ``[784, 1990, 10]`` (odd length).
        ham: HAM (``True``) or CHN (``False``).
        structure: ``"onematrix"`` (synchronous updates) or ``"evenodd"``.
        forward_kwargs, backward_kwargs, damping_factor: passed to :class:`deq_core.DEQ`.
        lr: Madam learning rate, decayed linearly to ``lr / 10`` over ``schedule_epochs``.
        schedule_epochs: length of the planned decay (the paper's 10, also for runs that stop
            earlier); ``None`` uses the trainer's ``max_epochs``.
        p_scale, g_bound: Madam's bounds.
        inner_iter, inner_damping: local iterations of the even-odd CHN's half steps.

    Loss: ``0.5 * sum((y_pred - onehot)^2) / batch``; accuracy: micro-averaged (the fraction
    of correct predictions; torchmetrics' ``MulticlassAccuracy`` defaults to macro).
    """

    def __init__(
        self,
        layers: Sequence[int] = (784, 1990, 10),
        ham: bool = True,
        structure: str = "evenodd",
        forward_kwargs: Optional[Dict[str, Any]] = None,
        backward_kwargs: Optional[Dict[str, Any]] = None,
        damping_factor: float = 0.0,
        lr: float = 0.01,
        schedule_epochs: Optional[int] = 10,
        p_scale: float = 1024.0,
        g_bound: float = 3.0,
        inner_iter: int = 10,
        inner_damping: float = 0.5,
    ):
        super().__init__()
        if structure not in STRUCTURES:
            raise ValueError(f"unknown structure {structure!r}; valid: {list(STRUCTURES)}")
        if schedule_epochs is not None and schedule_epochs < 1:
            raise ValueError(f"schedule_epochs must be >= 1 or None, got {schedule_epochs!r}")
        self.save_hyperparameters()
        layers = list(layers)
        if structure == "onematrix":
            f = OneMatrixFunction(layers, ham=ham)
        else:
            f = EvenOddFunction(layers, ham=ham, inner_iter=inner_iter, inner_damping=inner_damping)
        self.deq = DEQ(
            f, None,
            forward_kwargs=forward_kwargs or dict(solver="anderson", iter=40),
            backward_kwargs=backward_kwargs or dict(solver="picard", iter=8, method="backprop"),
            damping_factor=damping_factor,
        )
        n_classes = layers[-1]
        self.acc = torch.nn.ModuleDict(
            {f"{s}_acc": MulticlassAccuracy(num_classes=n_classes, average="micro") for s in STAGES}
        )

    @property
    def f(self):
        """The Hopfield function (OneMatrix or EvenOdd) inside the DEQ."""
        return self.deq.f_module

    def forward(self, x: Tensor) -> Tensor:
        """Output-layer state at equilibrium, ``(B, n_classes)``."""
        return self.f.readout(self.deq(x))

    def _step(self, batch, stage: str) -> Tensor:
        x, y = batch
        y_pred = self(x)
        batch_size = x.shape[0]
        loss = 0.5 * (y_pred - y).square().sum() / batch_size
        self.acc[f"{stage}_acc"](y_pred.detach().argmax(dim=1), y.argmax(dim=1))
        on_step = stage == "train"
        sync = not on_step  # one all-reduce per epoch under DDP for val/test, none per step
        self.log(f"{stage}/loss", loss.detach(), on_step=on_step, on_epoch=True,
                 batch_size=batch_size, prog_bar=True, sync_dist=sync)
        self.log(f"{stage}/acc", self.acc[f"{stage}_acc"], on_step=False, on_epoch=True,
                 batch_size=batch_size, prog_bar=stage != "train")
        self.log(f"{stage}/rel_residual", self.deq.last_forward_stats.rel_residual.mean(),
                 on_step=on_step, on_epoch=True, batch_size=batch_size, sync_dist=sync)
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        # After backward: the full-adjoint method only knows its residual then.
        stats = self.deq.last_backward_stats
        if stats is not None:
            self.log("train/rel_residual_backward", stats.rel_residual.mean(),
                     on_step=True, on_epoch=True, batch_size=batch[0].shape[0])

    def validation_step(self, batch, batch_idx):
        return self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        return self._step(batch, "test")

    def configure_optimizers(self):
        hp = self.hparams
        optimizer = Madam(self.parameters(), lr=hp.lr, p_scale=hp.p_scale, g_bound=hp.g_bound)
        max_epochs = max(self.trainer.max_epochs or 1, 1)
        steps_per_epoch = max(self.trainer.estimated_stepping_batches // max_epochs, 1)
        total = steps_per_epoch * (hp.schedule_epochs or max_epochs)

        def linear_decay(step: int) -> float:  # lr -> lr / 10 over the planned schedule
            return 1.0 - 0.9 * min(step / total, 1.0)

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_decay)
        return dict(optimizer=optimizer, lr_scheduler=dict(scheduler=scheduler, interval="step"))


class LitOneMatrixDEQ(LitHopfieldDEQ):
    """The synchronous (OneMatrix) Hopfield DEQ: Eq. 5 (CHN) and Eq. 6 (HAM)."""

    def __init__(self, layers: Sequence[int] = (784, 1990, 10), ham: bool = True, **kwargs):
        kwargs.pop("structure", None)
        super().__init__(layers, ham, structure="onematrix", **kwargs)


class LitEvenOddDEQ(LitHopfieldDEQ):
    """The even-odd Hopfield DEQ: Eq. 10 (HAM, even state only) and Eq. 7 (CHN)."""

    def __init__(self, layers: Sequence[int] = (784, 1990, 10), ham: bool = True, **kwargs):
        kwargs.pop("structure", None)
        super().__init__(layers, ham, structure="evenodd", **kwargs)


def lit_module_for(exp, input_size: Optional[int] = None) -> LitHopfieldDEQ:
    """The LightningModule of a registry :class:`~deq_modules.experiments.Experiment`.

    ``input_size`` replaces the first layer size (e.g. 3072 for CIFAR-10).
    """
    layers = list(exp.layers)
    if input_size is not None:
        layers[0] = input_size
    return LitHopfieldDEQ(
        layers=layers, ham=exp.ham, structure=exp.structure,
        forward_kwargs=exp.forward_kwargs, backward_kwargs=exp.backward_kwargs,
        damping_factor=exp.damping, lr=exp.lr, schedule_epochs=exp.schedule_epochs,
        p_scale=exp.p_scale, g_bound=exp.g_bound,
        inner_iter=exp.inner_iter, inner_damping=exp.inner_damping,
    )
