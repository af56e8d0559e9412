"""Tests of deq_modules/optim.py (Madam, also `from madam import Madam`) against the update rule
written out independently here."""

import io
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from deq_modules.optim import Madam

REPO = Path(__file__).resolve().parents[2]


def _param(values, dtype=torch.float64) -> torch.nn.Parameter:
    return torch.nn.Parameter(torch.tensor(values, dtype=dtype))


def _step_with_grad(opt: Madam, p: torch.Tensor, grad) -> None:
    p.grad = torch.as_tensor(grad, dtype=p.dtype).clone()
    opt.step()


def _reference(p0, grads, lr, p_scale, g_bound, beta, eps):
    """Madam written in numpy: returns the parameter after each gradient."""
    p = np.array(p0, dtype=np.float64)
    p_max = p_scale * math.sqrt(np.mean(p**2))
    v = np.zeros_like(p)
    out = []
    for t, g in enumerate(grads, start=1):
        g = np.asarray(g, dtype=np.float64)
        v = beta * v + (1 - beta) * g**2
        v_hat = v / (1 - beta**t)
        g_n = np.clip(g / (np.sqrt(v_hat) + eps), -g_bound, g_bound)
        p = np.clip(p * np.exp(-lr * g_n * np.sign(p)), -p_max, p_max)
        out.append(p.copy())
    return out


def test_single_step_is_multiplicative_in_the_right_direction():
    p0 = [0.5, -0.3, 0.2, -0.4, 0.1, -0.6]
    g = [2.0, 1.0, -3.0, -0.5, 1e-3, 0.0]
    lr = 0.1
    p = _param(p0)
    opt = Madam([p], lr=lr)
    _step_with_grad(opt, p, g)

    # First step: v_hat = g**2, so the normalised gradient is sign(g) up to eps.
    p0_t, g_t = torch.tensor(p0, dtype=torch.float64), torch.tensor(g, dtype=torch.float64)
    g_n = torch.clamp(g_t / (g_t.abs() + 1e-8), -10.0, 10.0)
    expected = p0_t * torch.exp(-lr * g_n * torch.sign(p0_t))
    torch.testing.assert_close(p.detach(), expected, rtol=1e-12, atol=0.0)
    torch.testing.assert_close(g_n[:5], torch.sign(g_t[:5]), rtol=1e-5, atol=0.0)

    push = g_t * torch.sign(p0_t)
    assert torch.all(p.detach().abs()[push > 0] < p0_t.abs()[push > 0])
    assert torch.all(p.detach().abs()[push < 0] > p0_t.abs()[push < 0])
    assert p.detach()[5] == p0_t[5]  # zero gradient entry untouched
    assert torch.equal(torch.sign(p.detach()), torch.sign(p0_t))  # signs never flip


def test_several_steps_match_numpy_reference():
    rng = np.random.default_rng(0)
    p0 = rng.normal(size=(5, 7))
    # Gradients of varying scale so that the running mean and bias correction matter.
    grads = [rng.normal(size=(5, 7)) * s for s in (1.0, 0.1, 5.0, 0.01, 2.0, 1.0, 0.3, 3.0)]
    hp = dict(lr=0.2, p_scale=1.5, g_bound=4.0, beta=0.9, eps=1e-8)
    expected = _reference(p0, grads, **hp)

    p = _param(p0)
    opt = Madam([p], **hp)
    for g, e in zip(grads, expected):
        _step_with_grad(opt, p, g)
        np.testing.assert_allclose(p.detach().numpy(), e, rtol=1e-12, atol=1e-15)


def test_g_bound_clamp_acts():
    lr, beta, g_bound = 0.01, 0.9, 2.0
    p0 = [0.5, -0.5, 1.0]
    tiny = [1e-6, 1e-6, -1e-6]
    huge = [1.0, 1.0, -1.0]
    grads = [tiny] * 50 + [huge]

    # Independently: after a long tiny history the huge gradient normalises to
    # about 1 / sqrt(1 - beta) = 3.16 > g_bound.
    v = 0.0
    for g in grads:
        v = beta * v + (1 - beta) * g[0] ** 2
    unclamped = 1.0 / (math.sqrt(v / (1 - beta**len(grads))) + 1e-8)
    assert unclamped > 1.5 * g_bound

    p = _param(p0)
    opt = Madam([p], lr=lr, g_bound=g_bound, beta=beta)
    for g in grads[:-1]:
        _step_with_grad(opt, p, g)
    before = p.detach().clone()
    _step_with_grad(opt, p, huge)
    ratio = p.detach() / before
    sign = torch.sign(torch.tensor(huge, dtype=torch.float64)) * torch.sign(before)
    torch.testing.assert_close(ratio, torch.exp(-lr * g_bound * sign), rtol=1e-12, atol=0.0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_magnitude_clamped_at_p_scale_times_initial_rms(dtype):
    p0 = torch.tensor([0.3, -0.8, 1.2, -0.5, 0.9, -1.1, 0.2, 0.7], dtype=dtype)
    p_scale = 2.0
    bound = p_scale * p0.square().mean().sqrt()
    assert p0.abs().max() < bound  # the bound is p_scale * RMS here, not an outlier
    p = torch.nn.Parameter(p0.clone())
    opt = Madam([p], lr=0.05, p_scale=p_scale)
    for _ in range(300):
        _step_with_grad(opt, p, -torch.sign(p.detach()))  # always pushes |p| up
        assert torch.all(p.detach().abs() <= bound)
    # Exactly the bound computed in the parameter's dtype (it is kept as that number).
    assert torch.equal(p.detach().abs(), bound.expand(8))
    assert torch.equal(torch.sign(p.detach()), torch.sign(p0))


@pytest.mark.parametrize("eps", [1e-8, 0.0])
def test_zero_gradient_leaves_parameter_unchanged(eps):
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(64, 64, dtype=torch.float64))
    # The project's p_scale: no realistic entry reaches 1024 RMS, so nothing is clipped.
    opt = Madam([p], eps=eps, p_scale=1024.0)

    before = p.detach().clone()
    _step_with_grad(opt, p, torch.zeros(64, 64))  # first step
    assert torch.equal(p.detach(), before)

    for _ in range(3):
        _step_with_grad(opt, p, torch.randn(64, 64))
    before = p.detach().clone()
    for _ in range(2):
        _step_with_grad(opt, p, torch.zeros(64, 64))
        assert torch.equal(p.detach(), before)


def test_zero_entries_stay_zero_and_none_grads_are_skipped():
    p = _param([0.0, 0.5, -0.5])
    q = _param([1.0, 2.0])
    opt = Madam([p, q], lr=0.1)
    for _ in range(5):
        p.grad = torch.ones(3, dtype=torch.float64)
        q.grad = None
        opt.step()
    assert p.detach()[0] == 0.0
    assert torch.equal(q.detach(), torch.tensor([1.0, 2.0], dtype=torch.float64))
    assert len(opt.state[q]) == 0


def _loss(params, x, y):
    w1, b1, w2 = params
    return ((torch.tanh(x @ w1 + b1) @ w2 - y) ** 2).mean()


def test_state_dict_round_trip_gives_identical_trajectories():
    torch.manual_seed(1)
    init = [torch.randn(4, 8), 0.01 * torch.randn(8), torch.randn(8, 2)]
    data = [(torch.randn(16, 4), torch.randn(16, 2)) for _ in range(10)]

    a = [torch.nn.Parameter(t.clone()) for t in init]
    opt_a = Madam(a, lr=0.05, beta=0.99)
    for x, y in data[:5]:
        opt_a.zero_grad()
        _loss(a, x, y).backward()
        opt_a.step()

    buf = io.BytesIO()
    torch.save(opt_a.state_dict(), buf)
    buf.seek(0)
    b = [torch.nn.Parameter(t.detach().clone()) for t in a]
    opt_b = Madam(b, lr=0.05, beta=0.99)
    opt_b.load_state_dict(torch.load(buf))
    assert opt_b.state[b[0]]["step"] == 5

    for x, y in data[5:]:
        for params, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad()
            _loss(params, x, y).backward()
            opt.step()
    for pa, pb in zip(a, b):
        assert torch.equal(pa, pb)

    # An uninterrupted run over all the data ends at the same point...
    c = [torch.nn.Parameter(t.clone()) for t in init]
    opt_c = Madam(c, lr=0.05, beta=0.99)
    for x, y in data:
        opt_c.zero_grad()
        _loss(c, x, y).backward()
        opt_c.step()
    assert all(torch.equal(pc, pa) for pc, pa in zip(c, a))

    # ...while restarting without the saved state does not (the state matters).
    e = [torch.nn.Parameter(t.clone()) for t in init]
    opt_e = Madam(e, lr=0.05, beta=0.99)
    for x, y in data[:5]:
        opt_e.zero_grad()
        _loss(e, x, y).backward()
        opt_e.step()
    opt_fresh = Madam(e, lr=0.05, beta=0.99)
    for x, y in data[5:]:
        opt_fresh.zero_grad()
        _loss(e, x, y).backward()
        opt_fresh.step()
    assert not all(torch.equal(pe, pa) for pe, pa in zip(e, a))


def test_state_saved_with_a_tensor_bound_resumes_identically():
    """Checkpoints written before the bound was kept as a number hold it as a 0-dim tensor;
    such a state loads and continues exactly like the uninterrupted run."""
    torch.manual_seed(4)
    init = [torch.randn(6, 5), torch.randn(5)]
    grads = [[torch.randn(6, 5), torch.randn(5)] for _ in range(12)]

    def run(params, opt, steps):
        for gs in steps:
            for p, g in zip(params, gs):
                p.grad = g.clone()
            opt.step()

    a = [torch.nn.Parameter(t.clone()) for t in init]
    opt_a = Madam(a, lr=0.2, p_scale=1.5)  # a low bound that the updates reach
    run(a, opt_a, grads[:4])
    saved = opt_a.state_dict()
    for s in saved["state"].values():
        assert isinstance(s["p_max"], float)
        s["p_max"] = torch.tensor(s["p_max"])  # the older format
    buf = io.BytesIO()
    torch.save(saved, buf)
    buf.seek(0)
    b = [torch.nn.Parameter(t.detach().clone()) for t in a]
    opt_b = Madam(b, lr=0.2, p_scale=1.5)
    opt_b.load_state_dict(torch.load(buf))
    run(a, opt_a, grads[4:])
    run(b, opt_b, grads[4:])
    for pa, pb in zip(a, b):
        assert torch.equal(pa, pb)
        assert pb.detach().abs().max() == opt_b.state[pb]["p_max"]  # the bound acted
    assert all(isinstance(opt_b.state[p]["p_max"], float) for p in b)


@pytest.mark.parametrize(
    "kwargs, bad",
    [
        (dict(lr=0.0), "0.0"),
        (dict(lr=-0.1), "-0.1"),
        (dict(p_scale=-1.0), "-1.0"),
        (dict(g_bound=0.0), "0.0"),
        (dict(beta=1.0), "1.0"),
        (dict(beta=-0.5), "-0.5"),
        (dict(eps=-1e-3), "-0.001"),
        (dict(lr=float("nan")), "nan"),
    ],
)
def test_invalid_arguments_raise(kwargs, bad):
    p = _param([1.0])
    with pytest.raises(ValueError, match=f"{list(kwargs)[0]}.*{bad}"):
        Madam([p], **kwargs)


def test_closure_and_least_squares_sanity():
    torch.manual_seed(2)
    x = torch.randn(200, 10)
    w0 = torch.sign(torch.randn(10)) * (0.5 + torch.rand(10))
    # Madam cannot flip signs, so the target shares the signs of the init.
    w_true = torch.sign(w0) * (0.5 + 2.0 * torch.rand(10))
    y = x @ w_true
    w = torch.nn.Parameter(w0.clone())
    opt = Madam([w], lr=0.01)

    def closure():
        opt.zero_grad()
        loss = ((x @ w - y) ** 2).mean()
        loss.backward()
        return loss

    first = closure().item()
    for _ in range(1000):
        loss = opt.step(closure)
    assert isinstance(loss, torch.Tensor)
    assert loss.item() < first / 100


@pytest.mark.parametrize(
    "device",
    ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtypes_and_devices_match_reference(device, dtype):
    rng = np.random.default_rng(3)
    p0 = rng.normal(size=20)
    grads = [rng.normal(size=20) for _ in range(4)]
    expected = _reference(p0, grads, lr=0.1, p_scale=3.0, g_bound=10.0, beta=0.999, eps=1e-8)
    p = torch.nn.Parameter(torch.tensor(p0, dtype=dtype, device=device))
    opt = Madam([p], lr=0.1)
    for g in grads:
        p.grad = torch.tensor(g, dtype=dtype, device=device)
        opt.step()
    assert p.dtype == dtype and p.device.type == device
    assert opt.state[p]["exp_avg_sq"].dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    np.testing.assert_allclose(p.detach().cpu().double().numpy(), expected[-1], rtol=tol)


def test_later_steps_allocate_nothing_of_a_parameter_size():
    """The update's work tensors are kept between steps: allocating them afresh cost page
    faults on every step on the CPU (about a third of the update for the 3-layer networks)."""
    from torch.profiler import ProfilerActivity, profile

    p, q = torch.nn.Parameter(torch.randn(300, 200)), torch.nn.Parameter(torch.randn(200))
    opt = Madam([p, q], lr=0.01)
    for step in range(3):
        p.grad, q.grad = torch.randn_like(p), torch.randn_like(q)
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            opt.step()
        largest = max(e.cpu_memory_usage for e in prof.events())
        if step == 0:  # the state and the work buffers
            assert largest >= p.nbytes
        else:
            assert largest < q.nbytes


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_updates_are_bitwise_those_of_the_rule_written_plainly(dtype):
    """The tensor operations' update in place (reused buffers, the bound as a number, no floor when eps >= tiny)
    rounds exactly like the rule written with fresh tensors and a tensor bound."""
    torch.manual_seed(5)
    p0 = torch.randn(40, 30, dtype=dtype) * 0.05
    grads = [torch.randn(40, 30, dtype=dtype) * 0.01 * (k % 3) for k in range(8)]
    lr, p_scale, g_bound, beta, eps = 0.01, 3.0, 3.0, 0.999, 1e-8
    p = torch.nn.Parameter(p0.clone())
    opt = Madam([p], lr=lr, p_scale=p_scale, g_bound=g_bound, beta=beta, eps=eps, fused=False)
    q, v = p0.clone(), torch.zeros_like(p0)
    p_max = p_scale * q.square().mean().sqrt()
    for t, g in enumerate(grads, start=1):
        p.grad = g.clone()
        opt.step()
        v = v.mul(beta).addcmul(g, g, value=1 - beta)
        denom = (v / (1 - beta**t)).sqrt().add(eps).clamp_min(torch.finfo(dtype).tiny)
        g_n = (g / denom).clamp(-g_bound, g_bound)
        q = (q * (g_n * torch.sign(q) * -lr).exp()).clamp(min=-p_max, max=p_max)
        assert torch.equal(p.detach(), q), f"step {t}"


def test_madam_is_importable_at_the_top_level_but_the_package_does_not_need_it():
    import madam

    assert madam.Madam is Madam
    code = ("import sys, deq_modules.lit, runner.run; "
            "print('madam' in sys.modules, 'deq_modules.optim' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                            text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "True"]


def _fused_and_eager(p0, grads, **kwargs):
    """The parameter and the running mean after each gradient, with the fused kernel and with
    the tensor operations."""
    out = {}
    for fused in (True, False):
        p = torch.nn.Parameter(p0.clone())
        opt = Madam([p], fused=fused, **kwargs)
        trail = []
        for g in grads:
            p.grad = g.clone()
            opt.step()
            trail.append((p.detach().clone(), opt.state[p]["exp_avg_sq"].clone()))
        out[fused] = trail
    return out[True], out[False]


@pytest.mark.parametrize("case", ["project", "clamps", "eps0", "large-exponents"])
def test_the_fused_step_agrees_with_the_tensor_operations(case):
    """The C++ step (one pass) against the tensor operations, step by step, where each branch
    of the rule acts: the project's settings; the magnitude bound and the gradient clamp; eps 0
    after zero gradients (the floor); exponents up to +-10 (the kernel's own exp)."""
    gen = torch.Generator().manual_seed(11)
    p0 = torch.randn(129, 67, generator=gen) * 0.05  # odd sizes: the vector loop's tail
    p0[0, :5] = 0.0  # zeros stay zero
    settings = {"project": dict(lr=0.01, p_scale=1024.0, g_bound=3.0),
                "clamps": dict(lr=0.05, p_scale=1.5, g_bound=0.5),
                "eps0": dict(lr=0.01, p_scale=1024.0, g_bound=3.0, eps=0.0),
                "large-exponents": dict(lr=1.0, p_scale=1e6, g_bound=10.0)}[case]
    grads = [torch.randn(129, 67, generator=gen) * 10.0 ** -(k % 4) for k in range(30)]
    if case == "eps0":
        grads[:3] = [torch.zeros(129, 67)] * 3
        grads[5][:, :10] = 0.0
    fused, eager = _fused_and_eager(p0, grads, **settings)
    for t, ((p_f, v_f), (p_e, v_e)) in enumerate(zip(fused, eager), start=1):
        # each step's exp is within 2 float ulps: a relative 3e-7 per step at most
        torch.testing.assert_close(p_f, p_e, rtol=3e-7 * t + 1e-6, atol=0.0, msg=f"step {t}")
        torch.testing.assert_close(v_f, v_e, rtol=1e-6, atol=0.0, msg=f"step {t}")
        assert torch.all(p_f[0, :5] == 0.0)
    if case == "clamps":  # the bound acted, and the kernel put entries exactly on it
        bound = settings["p_scale"] * p0.square().mean().sqrt()
        on_bound = eager[-1][0].abs() == bound
        assert on_bound.any() and torch.equal(fused[-1][0].abs() == bound, on_bound)


def test_auto_uses_the_tensor_operations_where_the_kernel_does_not_run():
    """float64 (and any non-CPU or non-float32 parameter) takes the tensor operations, bit for
    bit; ``fused=True`` there is an error naming the dtype; a bad ``fused`` names itself."""
    gen = torch.Generator().manual_seed(2)
    p0 = torch.randn(30, 20, generator=gen, dtype=torch.float64)
    grads = [torch.randn(30, 20, generator=gen, dtype=torch.float64) for _ in range(4)]
    runs = []
    for fused in ("auto", False):
        p = torch.nn.Parameter(p0.clone())
        opt = Madam([p], lr=0.01, fused=fused)
        for g in grads:
            p.grad = g.clone()
            opt.step()
        runs.append(p.detach())
    assert torch.equal(*runs)
    p = torch.nn.Parameter(p0.clone())
    p.grad = grads[0]
    with pytest.raises(ValueError, match="float64"):
        Madam([p], fused=True).step()
    with pytest.raises(ValueError, match="fused='yes'"):
        Madam([p], fused="yes")


def test_auto_falls_back_to_the_tensor_operations_with_one_warning_when_the_kernel_cannot_be_built(
        monkeypatch):
    from deq_core.fused import FusedUnavailable
    import deq_modules.kernels as kernels

    def no_compiler():
        raise FusedUnavailable("deq_modules' kernels: building kernels.cpp failed (no compiler)")

    monkeypatch.setattr(kernels, "load", no_compiler)
    monkeypatch.setattr(kernels, "_warned", False)
    gen = torch.Generator().manual_seed(4)
    p0 = torch.randn(50, 40, generator=gen)
    grads = [torch.randn(50, 40, generator=gen) for _ in range(3)]
    runs = []
    for fused in ("auto", False):
        p = torch.nn.Parameter(p0.clone())
        opt = Madam([p], lr=0.01, fused=fused)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for g in grads:
                p.grad = g.clone()
                opt.step()
        runs.append((p.detach(), [str(w.message) for w in caught]))
    (p_auto, said), (p_eager, _) = runs
    assert torch.equal(p_auto, p_eager)
    assert len(said) == 1 and "no compiler" in said[0] and "tensor operations" in said[0]
    p = torch.nn.Parameter(p0.clone())
    p.grad = grads[0]
    with pytest.raises(FusedUnavailable, match="no compiler"):
        Madam([p], fused=True).step()
