"""The even-odd Hopfield map: odd layers, then even ones (Eq. 7-10)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .. import kernels
from .base import LayeredHopfield, check_n_states, is_int
from .models import HopfieldModel
from .onematrix import OneMatrixFunction


def _cat(parts: Sequence[Tensor]) -> Tensor:
    """The layers side by side; one layer is returned as it is (a 3-layer network's state)."""
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


class EvenOddFunction(LayeredHopfield):
    """Even-odd (maximally parallel asynchronous) Hopfield map: odd layers, then even (Eq. 7-10).

    HAM (Eq. 8-10): the state is the even layers only (output last); one call computes the odd
    layers exactly from the even ones (Eq. 8), then the even layers from those (Eq. 9), i.e.
    the even-state DEQ of Eq. 10. CHN (Eq. 7): the state is ``concat(even..., odd...)``; each
    half is brought to its local equilibrium ``s = rho'(s) * drive`` by ``inner_iter`` damped
    Picard steps (damping ``inner_damping``), odd half first. Which layout a model gets follows
    from ``model.exact_local_equilibrium``: a half step that is exact needs no stored state.
    """

    def __init__(
        self, layers: Sequence[int], model: str | HopfieldModel = "ham",
        inner_iter: int = 10, inner_damping: float = 0.5, fused: bool | str = "auto",
    ) -> None:
        super().__init__(layers, model)
        if not is_int(inner_iter) or inner_iter < 1:
            raise ValueError(f"inner_iter must be an int >= 1, got {inner_iter!r}")
        if not 0.0 <= float(inner_damping) < 1.0:
            raise ValueError(f"inner_damping must satisfy 0 <= d < 1, got {inner_damping!r}")
        kernels.check_fused(fused, "EvenOddFunction")
        self.fused = fused  # the CHN's local equilibrium as one kernel (deq_modules.kernels)
        self.inner_iter = int(inner_iter)
        self.inner_damping = float(inner_damping)
        self._odd = tuple(range(0, self._H, 2))  # natural layers 1, 3, ...
        self._even = tuple(range(1, self._H, 2))  # natural layers 2, 4, ..., L-1 (output)
        self.odd_sizes = [self.sizes[k] for k in self._odd]
        self.even_sizes = [self.sizes[k] for k in self._even]
        n_even = sum(self.even_sizes)
        # the odd layers are recomputed from the even ones where that is exact (HAM), else kept
        self._keeps_odd = not self.model.exact_local_equilibrium
        self.state_size = sum(self.sizes) if self._keeps_odd else n_even
        self._out = slice(n_even - self.n_out, n_even)  # output = last even layer, both layouts

    def extra_repr(self) -> str:
        inner = f", inner_iter={self.inner_iter}, inner_damping={self.inner_damping}"
        return super().extra_repr() + (inner if self._keeps_odd else "")  # else: exact steps

    @classmethod
    def from_OneMatrix(cls, om: OneMatrixFunction, **kwargs: Any) -> EvenOddFunction:
        """The equivalent even-odd model: same layers, model, copied parameters, same fixed points."""
        if om.W_sw is not None:
            raise ValueError(
                "small-world links can join two layers of the same parity, which has no even-odd "
                f"form; got small_world_proba={om.small_world_proba}"
            )
        eo = cls(om.layers, model=om.model, **kwargs).to(device=om.U.device, dtype=om.U.dtype)
        eo.load_state_dict(om.state_dict())  # copies values into eo's own parameters
        return eo

    def _odd_from_even(self, Ux: Tensor, even: Sequence[Tensor]) -> list[Tensor]:
        # Eq. 8: odd layers see only even neighbours; where their equilibrium is one exact step
        # (HAM), it is their drive
        rho = self.model.activation
        return self.drives(self._odd, Ux, {k: rho(s) for k, s in zip(self._even, even)})

    def forward(self, Ux: Tensor, z: Tensor) -> Tensor:
        rho = self.model.activation
        if not self._keeps_odd:  # exact half steps: the state is the even layers (Eq. 9-10)
            # the odd layers' drives are their states, needed only as rates: rho in place
            odd = self._odd_from_even(Ux, z.split(self.even_sizes, dim=1))
            r_odd = {k: self.model.activation_(s) for k, s in zip(self._odd, odd)}
            return _cat(self.drives(self._even, Ux, r_odd))
        n_even = self._out.stop
        z_even, z_odd = z[:, :n_even], z[:, n_even:]
        inner = (self.inner_iter, self.inner_damping, self.fused)
        r_even = dict(zip(self._even, rho(z_even).split(self.even_sizes, dim=1)))
        drive_odd = torch.cat(self.drives(self._odd, Ux, r_even), dim=1)
        odd = self.model.local_equilibrium(z_odd, drive_odd, *inner)  # Eq. 7, odd half
        r_odd = dict(zip(self._odd, rho(odd).split(self.odd_sizes, dim=1)))
        drive_even = torch.cat(self.drives(self._even, Ux, r_odd), dim=1)
        even = self.model.local_equilibrium(z_even, drive_even, *inner)  # then the even half
        return torch.cat([even, odd], dim=1)

    def readout(self, z: Tensor) -> Tensor:
        """The output-layer units (last even layer), whatever the state layout."""
        return z[:, self._out]

    def layer_states(self, z: Tensor, Ux: Tensor | None = None) -> list[Tensor]:
        """``[s_1, ..., s_{L-1}]``; the HAM needs ``Ux = preprocess_inputs(x)`` (odd layers)."""
        even = z[:, : self._out.stop].split(self.even_sizes, dim=1)
        if not self._keeps_odd:
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
        check_n_states(states, self._H)
        parts = [states[k] for k in self._even]
        if self._keeps_odd:
            parts += [states[k] for k in self._odd]
        return torch.cat(parts, dim=1)
