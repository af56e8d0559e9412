"""LightningModules that train Hopfield DEQs as classifiers (ECAI 2024, Appendix F)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torchmetrics.classification import MulticlassAccuracy

from deq_core import DEQ, check_forward_kwargs

from .experiments import PAPER, TRAIN_PRECISIONS, Experiment, Mode, get_experiment
from .hopfield import get_structure
from .hopfield.base import LayeredHopfield
from .optim import Madam

STAGES = ("train", "val", "test")  # Lightning's loops: logged names are "<stage>/<quantity>"
# Every default below is this registry row's setting: the paper's HAM-EO-DEQ with 3 layers
_DEFAULT = get_experiment("HAM-EO-DEQ", 3)


class LitHopfieldDEQ(L.LightningModule):
    """A Hopfield network (CHN or HAM) solved as a DEQ, read out at its output layer.

    Args:
        layers: layer sizes including the input, e.g. ``[784, 1990, 10]`` (odd length).
        model: ``"ham"`` or ``"chn"`` (:mod:`deq_modules.hopfield.models`).
        structure: a registered structure (:data:`deq_modules.hopfield.STRUCTURES`):
            ``"onematrix"`` (synchronous updates) or ``"evenodd"``, or one of your own.
        forward_kwargs, backward_kwargs, damping_factor: passed to :class:`deq_core.DEQ`;
            ``None`` (or empty) takes the default row's solvers and iteration counts.
        lr: Madam learning rate, decayed linearly to ``lr / 10`` over ``schedule_epochs``,
            once per epoch as the papers did: epoch ``e`` (0-based) runs at
            ``lr * (1 - 0.9 e / (schedule_epochs - 1))``, so the first at ``lr`` and the last
            planned one at ``lr / 10``.
        schedule_epochs: length of the planned decay (the paper's 10, also for runs that stop
            earlier); ``None`` uses the trainer's ``max_epochs``.
        lr_decay: ``False`` keeps ``lr`` constant (the NeurIPS 2023 setup).
        p_scale, g_bound: Madam's bounds.
        inner_iter, inner_damping: local iterations of the even-odd CHN's half steps (given
            to the structures whose map takes them).
        train_forward_kwargs: forward solver options while training (``None``: those of
            evaluation); the fast mode's tolerance stop with compaction.
        val_forward_kwargs: forward solver options of the validation passes (``None``: those
            of evaluation, ``forward_kwargs``); the test always uses ``forward_kwargs``.
        train_precision: ``"bf16"`` runs the training forward pass under bfloat16 autocast
            (the DEQ state, residuals and loss stay float32); ``None``: float32.
        compile_f: evaluate the Hopfield map through ``torch.compile`` (see
            :class:`deq_core.DEQ`); an opt-in for speed, never needed.
        fused_anderson: Anderson's per-iteration bookkeeping as one C++ kernel on CPU float32
            states (the solver's ``fused="auto"``: the tensor operations elsewhere, or where the
            kernel cannot be built); ``False``: always the tensor operations.

    The defaults are the registry's HAM-EO-DEQ row at 3 layers
    (:func:`~deq_modules.experiments.get_experiment`), the paper's headline model.

    Loss: ``0.5 * sum((y_pred - onehot)^2) / batch``; accuracy: micro-averaged (the fraction
    of correct predictions; torchmetrics' ``MulticlassAccuracy`` defaults to macro).
    """

    def __init__(
        self,
        layers: Sequence[int] = _DEFAULT.layers,
        model: str = _DEFAULT.model,
        structure: str = _DEFAULT.structure,
        forward_kwargs: dict[str, Any] | None = None,
        backward_kwargs: dict[str, Any] | None = None,
        damping_factor: float = _DEFAULT.damping,
        lr: float = _DEFAULT.lr,
        schedule_epochs: int | None = _DEFAULT.schedule_epochs,
        p_scale: float = _DEFAULT.p_scale,
        g_bound: float = _DEFAULT.g_bound,
        inner_iter: int = _DEFAULT.inner_iter,
        inner_damping: float = _DEFAULT.inner_damping,
        train_forward_kwargs: dict[str, Any] | None = None,
        train_precision: str | None = None,
        compile_f: bool = False,
        val_forward_kwargs: dict[str, Any] | None = None,
        fused_anderson: bool = True,
        lr_decay: bool = True,
    ) -> None:
        super().__init__()
        if train_precision not in TRAIN_PRECISIONS:
            raise ValueError(f"unknown train_precision {train_precision!r}; valid: "
                             f"{list(TRAIN_PRECISIONS)}")
        spec = get_structure(structure)  # a ValueError names the registered ones
        if schedule_epochs is not None and schedule_epochs < 1:
            raise ValueError(f"schedule_epochs must be >= 1 or None, got {schedule_epochs!r}")
        self.save_hyperparameters()
        self.val_forward_kwargs = None if val_forward_kwargs is None else \
            check_forward_kwargs("val_forward_kwargs", _fused(val_forward_kwargs, fused_anderson))
        layers = list(layers)
        f = spec.build(layers, model, inner_iter=inner_iter, inner_damping=inner_damping)
        self.deq = DEQ(
            f, None,
            forward_kwargs=_fused(forward_kwargs or _DEFAULT.forward_kwargs, fused_anderson),
            backward_kwargs=_fused(backward_kwargs or _DEFAULT.backward_kwargs, fused_anderson),
            damping_factor=damping_factor,
            train_forward_kwargs=_fused(train_forward_kwargs, fused_anderson),
            compile_f=compile_f,
        )
        n_classes = layers[-1]
        self.acc = torch.nn.ModuleDict(
            {f"{s}_acc": MulticlassAccuracy(num_classes=n_classes, average="micro") for s in STAGES}
        )

    @property
    def f(self) -> LayeredHopfield:
        """The Hopfield map (of the module's structure) inside the DEQ."""
        return self.deq.f_module

    def forward(self, x: Tensor) -> Tensor:
        """Output-layer state at equilibrium, ``(B, n_classes)``."""
        return self.f.readout(self.deq(x))

    def _step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
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

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        low = self.hparams.get("train_precision") == "bf16"
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=low):
            return self._step(batch, "train")

    def on_train_batch_end(self, outputs: Any, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        # After backward: the full-adjoint method only knows its residual then.
        stats = self.deq.last_backward_stats
        if stats is not None:
            self.log("train/rel_residual_backward", stats.rel_residual.mean(),
                     on_step=True, on_epoch=True, batch_size=batch[0].shape[0])

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        with self.deq.forward_options(self.val_forward_kwargs):
            return self._step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "test")

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        optimizer = Madam(self.parameters(), lr=hp.lr, p_scale=hp.p_scale, g_bound=hp.g_bound)
        if not hp.get("lr_decay", True):
            return dict(optimizer=optimizer)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, epoch_decay(hp.schedule_epochs or max(self.trainer.max_epochs or 1, 1)))
        return dict(optimizer=optimizer, lr_scheduler=dict(scheduler=scheduler, interval="epoch"))


def _fused(kwargs: dict[str, Any] | None, fused_anderson: bool) -> dict[str, Any] | None:
    """``kwargs`` with Anderson's bookkeeping as the C++ kernel where the state is CPU float32
    (the solver's ``fused="auto"``) when ``fused_anderson`` asks for it."""
    if not fused_anderson or kwargs is None or kwargs.get("solver") != "anderson":
        return kwargs
    return {**kwargs, "fused": "auto"}


def epoch_decay(schedule_epochs: int):
    """The factor of the learning rate in epoch ``e``: linear from 1 to 0.1 over the planned
    epochs, then 0.1 (torch's ``LinearLR(start_factor=1, end_factor=0.1,
    total_iters=schedule_epochs - 1)`` stepped per epoch, as published)."""
    last = max(schedule_epochs - 1, 1)

    def factor(epoch: int) -> float:
        return 1.0 - 0.9 * min(epoch / last, 1.0)

    return factor


def _own_structure(cls: type, structure: str, kwargs: dict[str, Any]) -> str:
    """``structure``, after taking a ``structure`` keyword out of ``kwargs`` (a checkpoint's
    hyperparameters hold one), which must agree with it."""
    given = kwargs.pop("structure", structure)
    if given != structure:
        raise ValueError(
            f"{cls.__name__} builds structure {structure!r}, but structure={given!r} was given "
            f"(a checkpoint of another structure?); LitHopfieldDEQ builds any registered one")
    return structure


class LitOneMatrixDEQ(LitHopfieldDEQ):
    """The synchronous (OneMatrix) Hopfield DEQ: Eq. 5 (CHN) and Eq. 6 (HAM)."""

    def __init__(self, layers: Sequence[int] = _DEFAULT.layers, model: str = _DEFAULT.model, **kwargs: Any) -> None:
        super().__init__(layers, model, structure=_own_structure(type(self), "onematrix", kwargs), **kwargs)


class LitEvenOddDEQ(LitHopfieldDEQ):
    """The even-odd Hopfield DEQ: Eq. 10 (HAM, even state only) and Eq. 7 (CHN)."""

    def __init__(self, layers: Sequence[int] = _DEFAULT.layers, model: str = _DEFAULT.model, **kwargs: Any) -> None:
        super().__init__(layers, model, structure=_own_structure(type(self), "evenodd", kwargs), **kwargs)


def lit_module_for(exp: Experiment, input_size: int | None = None, mode: Mode = PAPER,
                   compile_f: bool = False, fused_anderson: bool = True) -> LitHopfieldDEQ:
    """The LightningModule of a registry :class:`~deq_modules.experiments.Experiment`.

    ``input_size`` replaces the first layer size (e.g. 3072 for CIFAR-10). ``mode`` is how it
    trains (:class:`~deq_modules.experiments.Mode`: the paper's settings or the fast mode);
    its solver options are ``exp.settings(mode)``, whose test keeps the paper's settings in
    every mode, so test metrics and trajectories mean the same. ``compile_f`` evaluates the
    map through ``torch.compile``; ``fused_anderson`` (default) runs Anderson's bookkeeping as
    one C++ kernel on CPU float32 states.
    """
    layers = list(exp.layers)
    if input_size is not None:
        layers[0] = input_size
    settings = exp.settings(mode)
    return LitHopfieldDEQ(
        layers=layers, model=exp.model, structure=exp.structure,
        forward_kwargs=settings.test_forward, backward_kwargs=settings.backward,
        damping_factor=exp.damping, lr=exp.lr, schedule_epochs=exp.schedule_epochs,
        p_scale=exp.p_scale, g_bound=exp.g_bound,
        inner_iter=exp.inner_iter, inner_damping=exp.inner_damping,
        train_forward_kwargs=settings.train_forward,
        train_precision=settings.train_precision, compile_f=compile_f,
        val_forward_kwargs=settings.val_forward,
        fused_anderson=fused_anderson,
        lr_decay=exp.lr_decay,
    )
