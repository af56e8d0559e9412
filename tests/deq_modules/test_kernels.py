"""Tests of deq_modules/kernels.py: the CHN layer's local equilibrium as one C++ pass, against
the tensor operations it replaces (values and gradients), and its limits. (Madam's kernel is
tested in test_optim.py.)"""

import pytest
import torch

from deq_modules import kernels
from deq_modules.hopfield import EvenOddFunction
from deq_modules.hopfield.models import CHN


def _map_and_gradients(fused, inner_iter, inner_damping, layers):
    torch.manual_seed(0)
    f = EvenOddFunction(layers, "chn", inner_iter=inner_iter, inner_damping=inner_damping,
                        fused=fused)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(13, layers[0], generator=gen)
    z = (torch.randn(13, f.state_size, generator=gen) * 0.7).requires_grad_()
    w = torch.randn(13, f.state_size, generator=gen)
    out = f(f.preprocess_inputs(x), z)
    (out * w).sum().backward()
    return [out.detach(), z.grad, f.U.grad, *(p.grad for p in f.W), *(p.grad for p in f.b)]


@pytest.mark.parametrize("inner_iter,inner_damping", [(1, 0.0), (10, 0.5), (3, 0.9)])
@pytest.mark.parametrize("layers", [[20, 37, 5], [20, 37, 19, 11, 5]])
def test_the_chn_kernel_gives_the_values_and_gradients_of_the_tensor_operations(
        inner_iter, inner_damping, layers):
    """Both halves of the even-odd CHN map (the state's slices, not contiguous) settled by the
    kernel: the image and every gradient (state, U, W, b) as with the tensor operations, to
    float32 rounding (the kernel's sigmoid is within a few ulps, 2 x inner_iter steps deep)."""
    fused = _map_and_gradients(True, inner_iter, inner_damping, layers)
    eager = _map_and_gradients(False, inner_iter, inner_damping, layers)
    for a, b in zip(fused, eager):
        torch.testing.assert_close(a, b, rtol=2e-5, atol=2e-6 * b.abs().max().item())


def test_the_kernels_backward_is_the_derivative_of_the_inner_steps():
    """The kernel's gradient into the start and the drive, against float64 autograd of the
    steps written plainly (independent of the tensor-operation code)."""
    gen = torch.Generator().manual_seed(3)
    s0 = torch.randn(300, generator=gen) * 0.8
    drive = torch.randn(300, generator=gen)
    g = torch.randn(300, generator=gen)
    n, d = 7, 0.3
    s = s0.clone().requires_grad_()
    dr = drive.clone().requires_grad_()
    out = kernels.chn_settle(s, dr, n, d, fused=True)
    (out * g).sum().backward()
    s64, d64 = s0.double().requires_grad_(), drive.double().requires_grad_()
    x = s64
    for _ in range(n):
        r = torch.sigmoid(4 * x - 2)
        x = d * x + (1 - d) * 4 * r * (1 - r) * d64
    (x * g.double()).sum().backward()
    torch.testing.assert_close(out.double(), x.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(s.grad.double(), s64.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(dr.grad.double(), d64.grad, rtol=1e-4, atol=1e-5)


def test_more_inner_steps_than_the_kernel_keeps_use_the_tensor_operations():
    s, drive = torch.randn(4, 6), torch.randn(4, 6)
    many = kernels.MAX_INNER + 1
    assert kernels.chn_settle(s, drive, many, 0.5, fused="auto") is None
    torch.testing.assert_close(CHN().local_equilibrium(s, drive, many, 0.5, fused="auto"),
                               CHN().local_equilibrium(s, drive, many, 0.5, fused=False),
                               rtol=0, atol=0)
    with pytest.raises(ValueError, match=str(kernels.MAX_INNER)):
        kernels.chn_settle(s, drive, many, 0.5, fused=True)


def test_other_dtypes_use_the_tensor_operations_and_a_bad_choice_names_itself():
    s, drive = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64)
    assert kernels.chn_settle(s, drive, 3, 0.5, fused="auto") is None
    with pytest.raises(ValueError, match="float64"):
        kernels.chn_settle(s, drive, 3, 0.5, fused=True)
    with pytest.raises(ValueError, match="fused='on'"):
        EvenOddFunction([4, 6, 2], "chn", fused="on")
