"""CHN and HAM: what a layer's state is, as one small object each (docs/papers.md, "Models").

Both models share the layers, the weights and the activation ``rho``; they differ in how a layer
answers a fixed drive ``d`` (the input it receives from its neighbours, biases included):

- HAM (Eq. 6): the state is the drive, ``s = d``: one step reaches a layer's equilibrium;
- CHN (Eq. 5): ``s = rho'(s) d``, whose equilibrium for a fixed drive takes local iterations;

and in the energy's term per layer (HAM: ``s^T rho(s) - L(s)``; CHN: ``1/2 |s|^2``). A
structure (``onematrix.py``, ``evenodd.py``) asks its ``model`` for these, so neither it nor
anything else tests which model it has.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .. import kernels
from .activations import rho, rho_, rho_integral, rho_prime_from_rho


class HopfieldModel:
    """The behaviour of one kind of Hopfield layer; stateless, shared by every network."""

    name: str = ""
    # Whether a layer's equilibrium for a fixed drive is the drive itself (one exact step), so
    # that a structure can recompute the layer instead of keeping it in the DEQ state.
    exact_local_equilibrium: bool = False

    @staticmethod
    def activation(u: Tensor) -> Tensor:
        """The firing rate ``rho(u)`` of a unit."""
        return rho(u)

    @staticmethod
    def activation_(u: Tensor) -> Tensor:
        """``activation(u)`` written over ``u``: for a drive that nothing else reads."""
        return rho_(u)

    def update(self, drive: Tensor, r: Tensor) -> Tensor:
        """One synchronous step of a layer: its next state from its ``drive``, given
        ``r = activation(s)`` of its current state ``s``."""
        raise NotImplementedError

    def local_equilibrium(self, s: Tensor, drive: Tensor, inner_iter: int,
                          inner_damping: float, fused: bool | str = False) -> Tensor:
        """The layer's equilibrium for a fixed ``drive``, from its current state ``s``
        (``inner_iter`` steps damped by ``inner_damping`` where it takes iterations; ``fused``
        as for :mod:`deq_modules.kernels`, where a model has a kernel for them)."""
        raise NotImplementedError

    def self_energy(self, s: Tensor, r: Tensor) -> Tensor:
        """The energy's term of one layer, per sample, given ``r = activation(s)``."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class HAM(HopfieldModel):
    """Hierarchical associative memory: ``s = drive`` (Eq. 6)."""

    name = "ham"
    exact_local_equilibrium = True

    def update(self, drive: Tensor, r: Tensor) -> Tensor:
        return drive

    def local_equilibrium(self, s: Tensor | None, drive: Tensor, inner_iter: int,
                          inner_damping: float, fused: bool | str = False) -> Tensor:
        return drive  # exact in one step: neither s nor the inner settings are used

    def self_energy(self, s: Tensor, r: Tensor) -> Tensor:
        return (s * r - rho_integral(s)).sum(-1)  # s^T rho(s) - L(s), L' = rho


class CHN(HopfieldModel):
    """Continuous Hopfield network: ``s = rho'(s) * drive`` (Eq. 5)."""

    name = "chn"

    def update(self, drive: Tensor, r: Tensor) -> Tensor:
        return rho_prime_from_rho(r) * drive  # Eq. 5, reusing rho(s)

    def local_equilibrium(self, s: Tensor, drive: Tensor, inner_iter: int,
                          inner_damping: float, fused: bool | str = False) -> Tensor:
        settled = kernels.chn_settle(s, drive, inner_iter, inner_damping, fused)
        if settled is not None:  # the same steps, one pass per unit (kernels.cpp)
            return settled
        # Eq. 7 half step: damped Picard on s = rho'(s) * drive (drive fixed: no same-parity
        # links), s <- d s + (1 - d) rho'(s) drive with rho'(s) = 4 r (1 - r), r = rho(s),
        # written as d s + 4 (1 - d) (r - r^2) drive: two fused multiply-adds instead of six
        # elementwise passes over the layer, 2 x inner_iter times per evaluation of the map.
        d, gain = inner_damping, 4.0 * (1.0 - inner_damping)
        for _ in range(inner_iter):
            r = rho(s)
            s = torch.addcmul(s * d, torch.addcmul(r, r, r, value=-1.0), drive, value=gain)
        return s

    def self_energy(self, s: Tensor, r: Tensor) -> Tensor:
        return 0.5 * (s * s).sum(-1)


MODELS: dict[str, HopfieldModel] = {m.name: m for m in (CHN(), HAM())}


def get_model(model: str | HopfieldModel) -> HopfieldModel:
    """The model object of ``model`` (a name of :data:`MODELS`, or a model object itself)."""
    if isinstance(model, HopfieldModel):
        return model
    if isinstance(model, str) and model in MODELS:
        return MODELS[model]
    raise ValueError(f"unknown model {model!r}; valid: {sorted(MODELS)} or a HopfieldModel")
