"""The synchronous ("OneMatrix") Hopfield map: every layer updated at once (Eq. 5, 6)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .base import LayeredHopfield, check_n_states
from .models import HopfieldModel


class OneMatrixFunction(LayeredHopfield):
    """Synchronous Hopfield map: every layer updated at once from the previous state.

    HAM (Eq. 6): ``f(s) = W rho(s) + b + U rho(x)``; CHN (Eq. 5): ``f(s) = rho'(s) * (same)``.
    The state is ``concat(s_1, ..., s_{L-1})`` (output last). ``W`` is applied block by block.

    ``small_world_proba > 0`` adds a fixed random symmetric set of extra connections between
    non-adjacent layers (each candidate pair kept with that probability), stored densely in
    ``W_sw`` under the buffer ``sw_mask`` (upper blocks only, symmetrised on use).
    """

    def __init__(self, layers: Sequence[int], model: str | HopfieldModel = "ham",
                 small_world_proba: float = 0.0) -> None:
        super().__init__(layers, model)
        self.state_size = sum(self.sizes)
        p = float(small_world_proba)
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"small_world_proba must be in [0, 1], got {small_world_proba!r}")
        self.small_world_proba = p
        if p > 0.0:
            self._init_small_world(p)
        else:
            self.register_parameter("W_sw", None)
            self.register_buffer("sw_mask", None)

    def _init_small_world(self, p: float) -> None:
        o, N = self._offsets, self.state_size
        mask = torch.zeros(N, N, dtype=torch.bool)
        w = torch.zeros(N, N)
        for k in range(self._H):
            for j in range(k + 2, self._H):  # non-adjacent pairs only; the blocks W_k hold the rest
                rows, cols = slice(o[k], o[k + 1]), slice(o[j], o[j + 1])
                mask[rows, cols] = torch.rand(self.sizes[k], self.sizes[j]) < p
                bound = math.sqrt(6.0 / (self.sizes[k] + self.sizes[j]))  # Xavier for that block
                w[rows, cols].uniform_(-bound, bound)
        self.register_buffer("sw_mask", mask)
        self.W_sw = nn.Parameter(w * mask)

    def small_world_W(self) -> Tensor | None:
        """The symmetric matrix of extra connections (N x N), or None when there are none."""
        if self.W_sw is None:
            return None
        m = self.W_sw * self.sw_mask
        return m + m.T

    def forward(self, Ux: Tensor, z: Tensor) -> Tensor:
        rz = self.model.activation(z)
        r = rz.split(self.sizes, dim=1)
        f = torch.cat(self.drives(range(self._H), Ux, dict(enumerate(r))), dim=1)
        if self.W_sw is not None:
            f = torch.addmm(f, rz, self.small_world_W())  # unstructured extras: dense path
        return self.model.update(f, rz)  # HAM: the drive (Eq. 6); CHN: rho'(s) times it (Eq. 5)

    def dense_W(self) -> Tensor:
        W = super().dense_W()
        return W if self.W_sw is None else W + self.small_world_W()

    def _interaction(self, r: Sequence[Tensor]) -> Tensor:
        E = super()._interaction(r)
        if self.W_sw is not None:
            rz = torch.cat(list(r), dim=1)
            E = E + ((rz @ (self.W_sw * self.sw_mask)) * rz).sum(-1)  # upper half = 1/2 of sym
        return E

    def readout(self, z: Tensor) -> Tensor:
        """The output-layer units (last state layer)."""
        return z[:, -self.n_out :]

    def layer_states(self, z: Tensor, Ux: Tensor | None = None) -> list[Tensor]:
        """``[s_1, ..., s_{L-1}]`` (views of z); ``Ux`` is unused, accepted for a uniform call."""
        return list(z.split(self.sizes, dim=1))

    def from_layer_states(self, states: Sequence[Tensor]) -> Tensor:
        """Inverse of ``layer_states``."""
        check_n_states(states, self._H)
        return torch.cat(list(states), dim=1)
