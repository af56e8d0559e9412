"""DEQ(adjoint_precision=...): the full adjoint's vector-Jacobian products in bfloat16."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import deq_core.deq
from deq_core import DEQ, fast_bf16

ADJOINT = dict(solver="picard", iter=12, method="full_adjoint")
FORWARD = dict(solver="anderson", iter=60, tol=1e-6)


class ProductDtypes(TorchDispatchMode):
    """The dtypes of the matrix products that run inside the block."""

    def __init__(self):
        super().__init__()
        self.dtypes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in (torch.ops.aten.mm, torch.ops.aten.addmm):
            self.dtypes.append(args[-1].dtype)
        return func(*args, **(kwargs or {}))


def gradients(make_tanh_map, precision, x, backward_products=None):
    torch.manual_seed(0)
    f = make_tanh_map(width=48, n_in=6, contraction=0.9, dtype=torch.float32)
    deq = DEQ(f, forward_kwargs=FORWARD, backward_kwargs=ADJOINT, adjoint_precision=precision)
    z = deq(x)
    loss = (z * torch.linspace(-1, 1, z.shape[1])).square().sum()
    if backward_products is None:
        loss.backward()
    else:
        with backward_products:
            loss.backward()
    return z.detach(), {n: p.grad for n, p in f.named_parameters()}, deq


def test_bf16_adjoint_keeps_the_value_and_rounds_the_gradient_only(make_tanh_map):
    x = torch.randn(16, 6, generator=torch.Generator().manual_seed(1))
    z32, g32, _ = gradients(make_tanh_map, None, x)
    z16, g16, deq = gradients(make_tanh_map, "bf16", x)
    assert torch.equal(z16, z32)  # the forward value never leaves float32
    assert deq.last_backward_stats.rel_residual.dtype == torch.float32
    for name in g32:
        assert g16[name].dtype == torch.float32
        error = (g16[name] - g32[name]).norm() / g32[name].norm()
        assert 0 < error < 2e-2, (name, error)  # changed, by bfloat16 rounding only


def test_the_adjoint_products_run_in_the_chosen_precision(make_tanh_map, monkeypatch):
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(2))
    seen = {}
    for precision, native in [(None, True), ("bf16", False), ("auto", True), ("auto", False)]:
        monkeypatch.setattr(deq_core.deq, "fast_bf16", lambda device, native=native: native)
        products = ProductDtypes()
        gradients(make_tanh_map, precision, x, backward_products=products)
        seen[precision, native] = products.dtypes
    # 12 adjoint steps, each a product in the state and its transpose: all bfloat16 ...
    for key in [("bf16", False), ("auto", True)]:
        assert seen[key].count(torch.bfloat16) >= ADJOINT["iter"], key
    # ... and none without, or with "auto" on a device without native bfloat16 products
    for key in [(None, True), ("auto", False)]:
        assert seen[key] and torch.bfloat16 not in seen[key], key


def test_auto_follows_the_device(make_tanh_map, monkeypatch):
    f = make_tanh_map(dtype=torch.float32)
    deq = DEQ(f, forward_kwargs=FORWARD, backward_kwargs=ADJOINT, adjoint_precision="auto")
    monkeypatch.setattr(deq_core.deq, "fast_bf16", lambda device: True)
    assert deq.adjoint_dtype(torch.device("cpu")) == torch.bfloat16
    monkeypatch.setattr(deq_core.deq, "fast_bf16", lambda device: False)
    assert deq.adjoint_dtype(torch.device("cpu")) is None
    plain = DEQ(f, forward_kwargs=FORWARD, backward_kwargs=ADJOINT)
    assert plain.adjoint_dtype(torch.device("cpu")) is None
    assert "adjoint_precision='auto'" in repr(deq)


def test_fast_bf16_reads_the_hardware():
    cpu = torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()
    assert fast_bf16(torch.device("cpu")) is bool(cpu)
    assert fast_bf16(torch.device("meta")) is False
    if not torch.cuda.is_available():
        assert fast_bf16(torch.device("cuda")) is False


def test_bad_adjoint_precisions_are_refused_early(make_tanh_map):
    f = make_tanh_map()
    with pytest.raises(ValueError, match=r"adjoint_precision\b.*'fp16'.*'bf16'"):
        DEQ(f, forward_kwargs=FORWARD, backward_kwargs=ADJOINT, adjoint_precision="fp16")
    with pytest.raises(ValueError, match=r"adjoint_precision\b.*'bf16'.*'backprop'"):
        DEQ(f, forward_kwargs=FORWARD, backward_kwargs=dict(solver="picard", iter=4), adjoint_precision="bf16")
    # switched to unrolled steps after construction: refused at the backward, not ignored
    deq = DEQ(f, forward_kwargs=FORWARD, backward_kwargs=ADJOINT, adjoint_precision="bf16")
    deq.backward_kwargs = dict(solver="picard", iter=4, method="backprop")
    with pytest.raises(ValueError, match=r"'full_adjoint'.*'backprop'"):
        deq(torch.randn(3, 5, dtype=torch.float64))
