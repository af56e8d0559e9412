"""Small fixed-point problems with known properties, shared by the deq_core tests."""
import pytest
import torch
from torch import nn


class TanhMap(nn.Module):
    """``f(z) = tanh(z W + x U + b)``: a contraction when ``|W|_2 < 1`` (tanh is 1-Lipschitz)."""

    def __init__(self, width=12, n_in=5, contraction=0.8, dtype=torch.float64, seed=0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        W = torch.randn(width, width, generator=gen, dtype=dtype)
        self.W = nn.Parameter(W * contraction / torch.linalg.matrix_norm(W, 2))
        self.U = nn.Parameter(torch.randn(n_in, width, generator=gen, dtype=dtype) / n_in**0.5)
        self.b = nn.Parameter(0.1 * torch.randn(width, generator=gen, dtype=dtype))
        self.state_size = width

    def preprocess_inputs(self, x):
        return x @ self.U

    def forward(self, Ux, z):
        return torch.tanh(z @ self.W + Ux + self.b)


class LinearMap(nn.Module):
    """``f(z) = z A + x U``, ``A`` symmetric with spectrum in ``[-rate, rate]``: Picard contracts
    at exactly ``rate`` per step, slowly when ``rate`` is near 1."""

    def __init__(self, width=30, n_in=4, rate=0.98, dtype=torch.float64, seed=0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        Q, _ = torch.linalg.qr(torch.randn(width, width, generator=gen, dtype=dtype))
        eig = torch.linspace(-rate, rate, width, dtype=dtype)
        self.A = nn.Parameter(Q @ torch.diag(eig) @ Q.T)
        self.U = nn.Parameter(torch.randn(n_in, width, generator=gen, dtype=dtype))
        self.state_size = width

    def preprocess_inputs(self, x):
        return x @ self.U

    def forward(self, Ux, z):
        return z @ self.A + Ux


@pytest.fixture
def tanh_map():
    return TanhMap()


@pytest.fixture
def linear_map():
    return LinearMap()


@pytest.fixture
def make_tanh_map():
    return TanhMap


@pytest.fixture
def make_linear_map():
    return LinearMap


@pytest.fixture
def make_linear_map():
    return LinearMap
