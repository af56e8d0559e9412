"""What every Hopfield map ("f module" of the DEQ engine) shares, whatever its structure:
the layers, the parameters, the drives of the layers and the energy.

A structure (``onematrix.py``, ``evenodd.py``) subclasses :class:`LayeredHopfield` and adds how
one iteration updates the layers (``forward``), how the state holds them (``state_size``,
``layer_states``, ``from_layer_states``) and where the output is (``readout``); what a layer's
state is, CHN or HAM, is the ``model`` object (``models.py``).

Notation follows docs/papers.md. ``layers = [n0, n1, ..., n_{L-1}]`` includes the clamped input
``n0``; the state holds layers 1 .. L-1. In code, state layer ``k`` (0-based) is natural layer
``k + 1``: the odd natural layers are ``k = 0, 2, ...`` and the even ones, output included,
``k = 1, 3, ...``. ``W[k]`` (shape ``(n_{k+1}, n_{k+2})``) connects state layers ``k`` and
``k + 1`` and is used in both directions, so the full Hopfield matrix (``dense_W()``) is
symmetric and block tri-diagonal without ever being stored.
"""

from __future__ import annotations

import abc
import numbers
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .models import HopfieldModel, get_model


def is_int(n: object) -> bool:
    return isinstance(n, numbers.Integral) and not isinstance(n, bool)


def _check_layers(layers: Sequence[int]) -> tuple[int, ...]:
    layers = list(layers)
    for n in layers:
        if not is_int(n):
            raise ValueError(f"layer sizes must be ints, got {n!r} in layers={layers}")
        if n <= 0:
            raise ValueError(f"layer sizes must be positive, got {n} in layers={layers}")
    if len(layers) < 3 or len(layers) % 2 == 0:
        raise ValueError(
            f"layers={layers} has {len(layers)} entries; it needs an odd number >= 3 "
            "(input size first; input and output layers both even), e.g. [784, 1990, 10]"
        )
    return tuple(int(n) for n in layers)


class LayeredHopfield(nn.Module, abc.ABC):
    """Parameters, drives and energy shared by every structure (same names, so they copy).

    ``model``: ``"chn"``, ``"ham"`` or a :class:`~deq_modules.hopfield.models.HopfieldModel`.
    """

    def __init__(self, layers: Sequence[int], model: str | HopfieldModel) -> None:
        super().__init__()
        self.layers = _check_layers(layers)
        self.model = get_model(model)
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
        return f"layers={list(self.layers)}, model={self.model.name}"

    def preprocess_inputs(self, x: Tensor) -> Tensor:
        """``b_1 + U rho(x)``: the part of layer 1's drive that does not change while the
        network settles (its bias and the clamped input's term), computed once per batch so
        that no iteration adds the bias again."""
        return torch.addmm(self.b[0], self.model.activation(x.reshape(x.shape[0], -1)), self.U)

    def _drive(self, k: int, Ux: Tensor, r: Sequence[Tensor | None]) -> Tensor:
        # drive_k = b_k (+ U rho(x) on layer 1: Ux holds both) + rho(s_{k-1}) W_{k-1}
        # + rho(s_{k+1}) W_k^T; r holds rho of the state layers (only k's neighbours are read).
        d = Ux if k == 0 else self.b[k]
        if k > 0:
            d = torch.addmm(d, r[k - 1], self.W[k - 1])
        if k < self._H - 1:
            d = torch.addmm(d, r[k + 1], self.W[k].T)
        return d

    def drives(self, ks: Sequence[int], Ux: Tensor, r_given: dict[int, Tensor]) -> list[Tensor]:
        """The drives of the state layers ``ks`` (0-based), given ``r_given = {k: rho(s_k)}``
        for (at least) their neighbours: what a structure's ``forward`` is built from."""
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

    # What a structure defines (and ``self.state_size``, the width of the DEQ state):

    @abc.abstractmethod
    def forward(self, Ux: Tensor, z: Tensor) -> Tensor:
        """One iteration of the map: the next state from ``z`` and the input drive ``Ux``."""

    @abc.abstractmethod
    def readout(self, z: Tensor) -> Tensor:
        """The output-layer units of the state ``z``, ``(B, n_out)``."""

    @abc.abstractmethod
    def layer_states(self, z: Tensor, Ux: Tensor | None = None) -> list[Tensor]:
        """The per-layer states ``[s_1, ..., s_{L-1}]`` in natural order."""

    @abc.abstractmethod
    def from_layer_states(self, states: Sequence[Tensor]) -> Tensor:
        """The state holding the per-layer states ``[s_1, ..., s_{L-1}]`` (inverse of
        ``layer_states``)."""

    def energy(self, x: Tensor, z: Tensor, Ux: Tensor | None = None) -> Tensor:
        """Per-sample Hopfield energy (docs/papers.md, "Models"; input term = bias of layer 1), shape (B,).

        ``self_energy(s) - 1/2 rho^T W rho - b^T rho - (U rho(x))^T rho(s_1)``, with the model's
        term per layer (CHN: ``1/2 |s|^2``; HAM: ``s^T rho(s) - L(s)``).
        ``Ux``: ``preprocess_inputs(x)`` if already computed (the energy of many states of one
        batch then skips that product, the largest of a 3-layer network); it holds layer 1's
        bias with the input's term, so ``-(b_1 + U rho(x))^T rho(s_1)`` is one product.
        """
        if Ux is None:
            Ux = self.preprocess_inputs(x)
        s = self.layer_states(z, Ux)
        r = [self.model.activation(sk) for sk in s]
        E = -(Ux * r[0]).sum(-1) - self._interaction(r)
        for k in range(self._H):
            if k > 0:  # layer 1's bias is in Ux
                E = E - r[k] @ self.b[k]
            E = E + self.model.self_energy(s[k], r[k])
        return E


def check_n_states(states: Sequence[Tensor], H: int) -> None:
    if len(states) != H:
        raise ValueError(f"expected {H} layer states (layers 1..L-1), got {len(states)}")
