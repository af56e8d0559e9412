"""Hopfield fixed-point maps ("f modules") for the DEQ engine: OneMatrix and EvenOdd, CHN and HAM.

Notation follows docs/papers.md. ``layers = [n0, n1, ..., n_{L-1}]`` includes the clamped input
``n0``; the state holds layers 1 .. L-1. In code, state layer ``k`` (0-based) is natural layer
``k + 1``: the odd natural layers are ``k = 0, 2, ...`` and the even ones, output included,
``k = 1, 3, ...``. ``W[k]`` (shape ``(n_{k+1}, n_{k+2})``) connects state layers ``k`` and
``k + 1`` and is used in both directions, so the full Hopfield matrix (``dense_W()``) is
symmetric and block tri-diagonal without ever being stored.
"""

from __future__ import annotations

import abc
import math
import numbers
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .activations import rho, rho_integral, rho_prime_from_rho


def _is_int(n: object) -> bool:
    return isinstance(n, numbers.Integral) and not isinstance(n, bool)


def _check_layers(layers: Sequence[int]) -> tuple[int, ...]:
    layers = list(layers)
    for n in layers:
        if not _is_int(n):
            raise ValueError(f"layer sizes must be ints, got {n!r} in layers={layers}")
        if n <= 0:
            raise ValueError(f"layer sizes must be positive, got {n} in layers={layers}")
    if len(layers) < 3 or len(layers) % 2 == 0:
        raise ValueError(
            f"layers={layers} has {len(layers)} entries; it needs an odd number >= 3 "
            "(input size first; input and output layers both even), e.g. [784, 1990, 10]"
        )
    return tuple(int(n) for n in layers)


class _LayeredHopfield(nn.Module, abc.ABC):
    """Parameters, drives and energy shared by both structures (same names, so they copy)."""

    def __init__(self, layers: Sequence[int], ham: bool) -> None:
        super().__init__()
        self.layers = _check_layers(layers)
        self.ham = bool(ham)
        self.sizes = self.layers[1:]
        self.n_out = self.layers[-1]
        self._H = len(self.sizes)  # number of state layers (even, since len(layers) is odd)
        self._offsets = [0]
        for n in self.sizes:
            self._offsets.append(self._offsets[-1] + n)
        self.U = nn.Parameter(torch.empty(self.layers[0], self.sizes[0]))
        self.W = nn.ParameterList(
            nn.Parameter(torch.empty(m, n)) for m, n in zip(self.sizes[:-1], self.sizes[1:])
        )
        self.b = nn.ParameterList(nn.Parameter(torch.empty(n)) for n in self.sizes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform per block ``W_i`` and for ``U`` (not on the full W); biases N(0, 0.01)."""
        nn.init.xavier_uniform_(self.U)
        for w in self.W:
            nn.init.xavier_uniform_(w)
        for b in self.b:
            nn.init.normal_(b, std=0.01)

    def extra_repr(self) -> str:
        return f"layers={list(self.layers)}, ham={self.ham}"

    def preprocess_inputs(self, x: Tensor) -> Tensor:
        """``U rho(x)``: the input's drive of layer 1, computed once per batch."""
        return rho(x.reshape(x.shape[0], -1)) @ self.U

    def _drive(self, k: int, Ux: Tensor, r: Sequence[Tensor | None]) -> Tensor:
        # drive_k = b_k (+ U rho(x) on layer 1) + rho(s_{k-1}) W_{k-1} + rho(s_{k+1}) W_k^T;
        # r holds rho of the state layers (only the neighbours of k are read).
        d = self.b[k] + Ux if k == 0 else self.b[k]
        if k > 0:
            d = torch.addmm(d, r[k - 1], self.W[k - 1])
        if k < self._H - 1:
            d = torch.addmm(d, r[k + 1], self.W[k].T)
        return d

    def _drives(self, ks: Sequence[int], Ux: Tensor, r_given: dict[int, Tensor]) -> list[Tensor]:
        r = [r_given.get(k) for k in range(self._H)]
        return [self._drive(k, Ux, r) for k in ks]

    def dense_W(self) -> Tensor:
        """The full symmetric Hopfield matrix (N x N, natural layer order), for inspection/tests."""
        o = self._offsets
        W = self.U.new_zeros(o[-1], o[-1])
        for k, w in enumerate(self.W):
            W[o[k] : o[k + 1], o[k + 1] : o[k + 2]] = w
            W[o[k + 1] : o[k + 2], o[k] : o[k + 1]] = w.T
        return W

    def _interaction(self, r: Sequence[Tensor]) -> Tensor:
        # 1/2 rho^T W rho = sum_k rho(s_k)^T W_k rho(s_{k+1}), blockwise
        return sum(((r[k] @ w) * r[k + 1]).sum(-1) for k, w in enumerate(self.W))

    @abc.abstractmethod
    def layer_states(self, z: Tensor, Ux: Tensor | None = None) -> list[Tensor]:
        """The per-layer states ``[s_1, ..., s_{L-1}]`` in natural order."""

    def energy(self, x: Tensor, z: Tensor, Ux: Tensor | None = None) -> Tensor:
        """Per-sample Hopfield energy (docs/papers.md, "Models"; input term = bias of layer 1), shape (B,).

        CHN: ``1/2 |s|^2 - 1/2 rho^T W rho - b^T rho - (U rho(x))^T rho(s_1)``;
        HAM: ``s^T rho(s) - L(s) - 1/2 rho^T W rho - b^T rho - (U rho(x))^T rho(s_1)``.
        ``Ux``: ``preprocess_inputs(x)`` if already computed (the energy of many states of one
        batch then skips that product, the largest of a 3-layer network).
        """
        if Ux is None:
            Ux = self.preprocess_inputs(x)
        s = self.layer_states(z, Ux)
        r = [rho(sk) for sk in s]
        E = -(Ux * r[0]).sum(-1) - self._interaction(r)
        for k in range(self._H):
            E = E - r[k] @ self.b[k]
            if self.ham:
                E = E + (s[k] * r[k] - rho_integral(s[k])).sum(-1)
            else:
                E = E + 0.5 * (s[k] * s[k]).sum(-1)
        return E


class OneMatrixFunction(_LayeredHopfield):
    """Synchronous Hopfield map: every layer updated at once from the previous state.

    HAM (Eq. 6): ``f(s) = W rho(s) + b + U rho(x)``; CHN (Eq. 5): ``f(s) = rho'(s) * (same)``.
    The state is ``concat(s_1, ..., s_{L-1})`` (output last). ``W`` is applied block by block.

    ``small_world_proba > 0`` adds a fixed random symmetric set of extra connections between
    non-adjacent layers (each candidate pair kept with that probability), stored densely in
    ``W_sw`` under the buffer ``sw_mask`` (upper blocks only, symmetrised on use).
    """

    def __init__(self, layers: Sequence[int], ham: bool = True, small_world_proba: float = 0.0) -> None:
        super().__init__(layers, ham)
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
        rz = rho(z)
        r = rz.split(self.sizes, dim=1)
        f = torch.cat(self._drives(range(self._H), Ux, dict(enumerate(r))), dim=1)
        if self.W_sw is not None:
            f = torch.addmm(f, rz, self.small_world_W())  # unstructured extras: dense path
        if not self.ham:
            f = rho_prime_from_rho(rz) * f  # Eq. 5, reusing rho(s)
        return f

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
        _check_n_states(states, self._H)
        return torch.cat(list(states), dim=1)


def _check_n_states(states: Sequence[Tensor], H: int) -> None:
    if len(states) != H:
        raise ValueError(f"expected {H} layer states (layers 1..L-1), got {len(states)}")


class EvenOddFunction(_LayeredHopfield):
    """Even-odd (maximally parallel asynchronous) Hopfield map: odd layers, then even (Eq. 7-10).

    HAM (Eq. 8-10): the state is the even layers only (output last); one call computes the odd
    layers exactly from the even ones (Eq. 8), then the even layers from those (Eq. 9), i.e.
    the even-state DEQ of Eq. 10. CHN (Eq. 7): the state is ``concat(even..., odd...)``; each
    half is brought to its local equilibrium ``s = rho'(s) * drive`` by ``inner_iter`` damped
    Picard steps (damping ``inner_damping``), odd half first.
    """

    def __init__(
        self, layers: Sequence[int], ham: bool = True,
        inner_iter: int = 10, inner_damping: float = 0.5,
    ) -> None:
        super().__init__(layers, ham)
        if not _is_int(inner_iter) or inner_iter < 1:
            raise ValueError(f"inner_iter must be an int >= 1, got {inner_iter!r}")
        if not 0.0 <= float(inner_damping) < 1.0:
            raise ValueError(f"inner_damping must satisfy 0 <= d < 1, got {inner_damping!r}")
        self.inner_iter = int(inner_iter)
        self.inner_damping = float(inner_damping)
        self._odd = tuple(range(0, self._H, 2))  # natural layers 1, 3, ...
        self._even = tuple(range(1, self._H, 2))  # natural layers 2, 4, ..., L-1 (output)
        self.odd_sizes = [self.sizes[k] for k in self._odd]
        self.even_sizes = [self.sizes[k] for k in self._even]
        n_even = sum(self.even_sizes)
        self.state_size = n_even if self.ham else sum(self.sizes)
        self._out = slice(n_even - self.n_out, n_even)  # output = last even layer, both layouts

    def extra_repr(self) -> str:
        inner = f", inner_iter={self.inner_iter}, inner_damping={self.inner_damping}"
        return super().extra_repr() + ("" if self.ham else inner)  # HAM half steps are exact

    @classmethod
    def from_OneMatrix(cls, om: OneMatrixFunction, **kwargs: Any) -> EvenOddFunction:
        """The equivalent even-odd model: same layers, ham, copied parameters, same fixed points."""
        if om.W_sw is not None:
            raise ValueError(
                "small-world links can join two layers of the same parity, which has no even-odd "
                f"form; got small_world_proba={om.small_world_proba}"
            )
        eo = cls(om.layers, ham=om.ham, **kwargs).to(device=om.U.device, dtype=om.U.dtype)
        eo.load_state_dict(om.state_dict())  # copies values into eo's own parameters
        return eo

    def _odd_from_even(self, Ux: Tensor, even: Sequence[Tensor]) -> list[Tensor]:
        # Eq. 8: odd layers see only even neighbours, so their equilibrium is one exact step
        return self._drives(self._odd, Ux, {k: rho(s) for k, s in zip(self._even, even)})

    def _local_equilibrium(self, s: Tensor, drive: Tensor) -> Tensor:
        # Eq. 7 half step: damped Picard on s = rho'(s) * drive (drive fixed: no same-parity
        # links), s <- d s + (1 - d) rho'(s) drive with rho'(s) = 4 r (1 - r), r = rho(s),
        # written as d s + 4 (1 - d) (r - r^2) drive: two fused multiply-adds instead of six
        # elementwise passes over the layer, 2 x inner_iter times per evaluation of the map.
        d, gain = self.inner_damping, 4.0 * (1.0 - self.inner_damping)
        for _ in range(self.inner_iter):
            r = rho(s)
            s = torch.addcmul(s * d, torch.addcmul(r, r, r, value=-1.0), drive, value=gain)
        return s

    def forward(self, Ux: Tensor, z: Tensor) -> Tensor:
        if self.ham:
            odd = self._odd_from_even(Ux, z.split(self.even_sizes, dim=1))
            r_odd = {k: rho(s) for k, s in zip(self._odd, odd)}
            return torch.cat(self._drives(self._even, Ux, r_odd), dim=1)  # Eq. 9-10
        n_even = self._out.stop
        z_even, z_odd = z[:, :n_even], z[:, n_even:]
        r_even = dict(zip(self._even, rho(z_even).split(self.even_sizes, dim=1)))
        drive_odd = torch.cat(self._drives(self._odd, Ux, r_even), dim=1)
        odd = self._local_equilibrium(z_odd, drive_odd)
        r_odd = dict(zip(self._odd, rho(odd).split(self.odd_sizes, dim=1)))
        drive_even = torch.cat(self._drives(self._even, Ux, r_odd), dim=1)
        even = self._local_equilibrium(z_even, drive_even)
        return torch.cat([even, odd], dim=1)

    def readout(self, z: Tensor) -> Tensor:
        """The output-layer units (last even layer), whatever the state layout."""
        return z[:, self._out]

    def layer_states(self, z: Tensor, Ux: Tensor | None = None) -> list[Tensor]:
        """``[s_1, ..., s_{L-1}]``; the HAM needs ``Ux = preprocess_inputs(x)`` (odd layers)."""
        even = z[:, : self._out.stop].split(self.even_sizes, dim=1)
        if self.ham:
            if Ux is None:
                raise ValueError(
                    "the even-odd HAM state holds only the even layers; pass "
                    "Ux=preprocess_inputs(x) to recompute the odd ones (Eq. 8)"
                )
            odd = self._odd_from_even(Ux, even)
        else:
            odd = z[:, self._out.stop :].split(self.odd_sizes, dim=1)
        by_k = dict(zip(self._even + self._odd, [*even, *odd]))
        return [by_k[k] for k in range(self._H)]

    def from_layer_states(self, states: Sequence[Tensor]) -> Tensor:
        """Inverse of ``layer_states``; the HAM drops the odd layers (they follow from the even)."""
        _check_n_states(states, self._H)
        parts = [states[k] for k in self._even]
        if not self.ham:
            parts += [states[k] for k in self._odd]
        return torch.cat(parts, dim=1)
