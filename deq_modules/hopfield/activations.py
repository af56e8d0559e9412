"""The activation of the Hopfield models (docs/papers.md, "Models"), its derivative and antiderivative."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def rho(u: Tensor) -> Tensor:
    """Firing rate of a unit."""
    # rho(u) = sigmoid(4u - 2); the subtraction and the sigmoid reuse the product's memory
    # (autograd keeps only the sigmoid's output: the gradient of a product by a number needs
    # no input): one new tensor instead of three
    return torch.sigmoid_(u.mul(4.0).sub_(2.0))


def rho_(u: Tensor) -> Tensor:
    """``rho(u)`` written over ``u`` itself, for a drive nothing else reads (autograd refuses
    it where the graph still needs ``u``)."""
    return torch.sigmoid_(u.mul_(4.0).sub_(2.0))


def rho_prime(u: Tensor) -> Tensor:
    """Derivative of ``rho``; the gain of the CHN dynamics (Eq. 5)."""
    return rho_prime_from_rho(rho(u))


def rho_prime_from_rho(r: Tensor) -> Tensor:
    """``rho'(u)`` given ``r = rho(u)``: for callers that already hold ``rho(u)``."""
    # rho'(u) = 4 rho(u) (1 - rho(u))
    return 4.0 * r * (1.0 - r)


def rho_integral(u: Tensor) -> Tensor:
    """Antiderivative ``L`` of ``rho`` (per unit), the Lagrangian term of the HAM energy."""
    # L(u) = softplus(4u - 2) / 4, so that L'(u) = rho(u)
    return F.softplus(4.0 * u - 2.0) / 4.0
