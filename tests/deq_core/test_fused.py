"""deq_core/fused.py: Anderson's bookkeeping as one C++ kernel, against the eager solver."""
import shutil

import pytest
import torch

from deq_core import anderson
from deq_core.solvers import PUBLISHED_ANDERSON, get_solver

pytestmark = pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                                reason="no C++ compiler to build the fused kernel")


def tanh_problem(batch=12, width=40, contraction=1.2, seed=0):
    """``f(z) = tanh(z W + c)``; above 1 the plain iteration does not contract, so Anderson's
    safeguard rejects some mixed points and some samples converge late or not at all."""
    gen = torch.Generator().manual_seed(seed)
    W = torch.randn(width, width, generator=gen)
    W *= contraction / torch.linalg.matrix_norm(W, 2)
    c = torch.randn(batch, width, generator=gen)

    def make(rows):
        return lambda z: torch.tanh(z @ W + c[rows])

    return make(slice(None)), make, torch.zeros(batch, width)


@pytest.mark.parametrize("m", [1, 2, 4, 6])
@pytest.mark.parametrize("contraction", [0.9, 1.2])
def test_fused_iterates_are_the_eager_ones(m, contraction):
    f, _, z0 = tanh_problem(contraction=contraction)
    eager_its, fused_its = [], []
    z_e, s_e = anderson(f, z0, max_iter=25, m=m, trace=True,
                        on_iterate=lambda n, z: eager_its.append(z))
    z_f, s_f = anderson(f, z0, max_iter=25, m=m, trace=True, fused=True,
                        on_iterate=lambda n, z: fused_its.append(z))
    assert s_f.n_iter == s_e.n_iter == 25
    # every iterate, not only the end: the kernel takes the same steps (to float rounding)
    for a, b in zip(eager_its, fused_its):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(z_f, z_e, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(s_f.trace, s_e.trace, rtol=1e-3, atol=1e-6)
    torch.testing.assert_close(s_f.rel_residual, s_e.rel_residual, rtol=1e-3, atol=1e-6)
    assert len({id(z) for z in fused_its}) == 25  # observers keep what they were given


def test_fused_solve_reaches_the_fixed_point_with_compaction_and_tolerance():
    f, make, z0 = tanh_problem(batch=16, width=30, contraction=0.95)
    counted = []

    def restrict(idx):
        g = make(idx)
        return lambda z: (counted.append(z.shape[0]), g(z))[1]

    z, stats = anderson(f, z0, max_iter=200, tol=1e-5, trace=True, restrict=restrict, fused=True)
    assert (stats.rel_residual < 1e-5).all()
    assert ((f(z) - z).norm(dim=1) <= 1e-4 * f(z).norm(dim=1)).all()  # f(z*) = z*
    assert min(counted) < 16  # samples left the batch
    z_e, s_e = anderson(f, z0, max_iter=200, tol=1e-5, restrict=make, trace=True)
    torch.testing.assert_close(z, z_e, rtol=1e-4, atol=1e-4)
    z_nc, s_nc = anderson(f, z0, max_iter=200, tol=1e-5, fused=True)  # stop, no compaction
    assert s_nc.n_iter == stats.n_iter and (s_nc.rel_residual < 1e-5).all()


VARIANTS = [dict(tikhonov=t, safeguard=s, returns=r)
            for t in ("relative", "absolute") for s in ("after", "before")
            for r in ("best", "last")]
IDS = ["-".join(v.values()) for v in VARIANTS]


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
@pytest.mark.parametrize("lam", [1e-10, 1e-4])
@pytest.mark.parametrize("contraction", [0.9, 1.2])
def test_fused_runs_every_variant_as_the_eager_step(variant, lam, contraction):
    """The kernel's three flags against AndersonStep, the specification. ``lam=1e-4`` with the
    absolute Tikhonov term makes the predicted-residual rule of ``safeguard="before"`` refuse
    mixes early on, at residuals far above float32 rounding."""
    f, _, z0 = tanh_problem(contraction=contraction)
    runs = []
    for fused in (False, True):
        its = []
        z, stats = anderson(f, z0, max_iter=25, m=4, lam=lam, trace=True, fused=fused,
                            on_iterate=lambda n, z: its.append(z), **variant)
        runs.append((its, z, stats))
    (eager_its, z_e, s_e), (fused_its, z_f, s_f) = runs
    assert s_f.n_iter == s_e.n_iter == 25
    for a, b in zip(eager_its, fused_its):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(z_f, z_e, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(s_f.step_trace, s_e.step_trace, rtol=1e-3, atol=1e-6)
    torch.testing.assert_close(s_f.trace, s_e.trace, rtol=1e-3, atol=1e-6)
    torch.testing.assert_close(s_f.rel_residual, s_e.rel_residual, rtol=1e-3, atol=1e-6)
    if variant["returns"] == "last":  # the image of the point evaluated last (x_24)
        torch.testing.assert_close(z_f, f(fused_its[-2]), rtol=0, atol=0)


def test_fused_safeguard_before_refuses_the_mixes_the_eager_step_refuses(monkeypatch):
    """Where the linear model predicts a larger residual than the newest one, both take the
    plain step: the same decisions, sample by sample, while residuals are far above rounding."""
    from deq_core import fused, solvers

    f, _, z0 = tanh_problem(contraction=1.2)
    decisions = {False: [], True: []}
    step, call = fused.step, solvers.AndersonStep.__call__

    def fused_step(*args):
        step(*args)
        decisions[True].append(args[10].clone())  # was_mixed

    def eager_call(self, n, x, fx):
        out = call(self, n, x, fx)
        decisions[False].append(self.was_mixed.clone())
        return out

    monkeypatch.setattr(fused, "step", fused_step)
    monkeypatch.setattr(solvers.AndersonStep, "__call__", eager_call)
    for on in (False, True):
        anderson(f, z0, max_iter=10, m=4, lam=1e-4, fused=on, **PUBLISHED_ANDERSON)
    eager, kernel = torch.stack(decisions[False]), torch.stack(decisions[True])
    assert torch.equal(kernel, eager)
    assert not kernel[1:].all()  # some mixes were refused (from n=1 on, two pairs or more)
    assert kernel[1:].any()


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_fused_runs_every_variant_with_compaction_and_tolerance(variant):
    f, make, z0 = tanh_problem(batch=16, width=40, contraction=1.2)
    counted = []

    def restrict(idx):
        g = make(idx)
        return lambda z: (counted.append(z.shape[0]), g(z))[1]

    options = dict(max_iter=80, tol=1e-5, lam=1e-4, trace=True, **variant)
    z, stats = anderson(f, z0, restrict=restrict, fused=True, **options)
    z_e, s_e = anderson(f, z0, restrict=make, **options)
    assert min(counted) < 16  # samples left the batch
    assert stats.n_iter == s_e.n_iter < 80 and (stats.rel_residual < 1e-5).all()
    torch.testing.assert_close(z, z_e, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(stats.step_trace, s_e.step_trace, rtol=1e-3, atol=1e-6)
    torch.testing.assert_close(stats.rel_residual, s_e.rel_residual, rtol=1e-3, atol=1e-6)


def test_fused_is_refused_where_the_kernel_does_not_run():
    f, _, z0 = tanh_problem()
    with pytest.raises(ValueError, match=r"torch\.float64"):  # the dtype it cannot run on
        anderson(lambda z: f(z.float()).double(), z0.double(), max_iter=3, fused=True)
    with pytest.raises(ValueError, match=r"\bfused\b.*\b1\b"):
        anderson(f, z0, max_iter=3, fused=1)
    with pytest.raises(ValueError, match=r"(?=.*\b17\b).*\b16\b"):  # m and the largest, any order
        anderson(f, z0, max_iter=3, m=17, fused=True)
    assert "fused" in get_solver("anderson").options


def test_fused_auto_runs_the_kernel_on_cpu_float32_states_only(monkeypatch):
    """``fused="auto"``, an ordinary solver option: the kernel where the state is CPU float32,
    in the DEQ's forward and adjoint solves alike, the eager step elsewhere."""
    from torch import nn

    from deq_core import DEQ, fused

    class Tanh(nn.Module):
        state_size = 20

        def __init__(self):
            super().__init__()
            gen = torch.Generator().manual_seed(1)
            self.W = nn.Parameter(0.15 * torch.randn(20, 20, generator=gen))
            self.U = nn.Parameter(torch.randn(6, 20, generator=gen))

        def preprocess_inputs(self, x):
            return x @ self.U

        def forward(self, Ux, z):
            return torch.tanh(z @ self.W + Ux)

    calls = []
    step = fused.step
    monkeypatch.setattr(fused, "step", lambda *a: (calls.append(a[0].shape[0]), step(*a))[1])
    forward = dict(solver="anderson", iter=30)
    backward = dict(solver="anderson", iter=30, method="full_adjoint")
    auto = dict(forward_kwargs=dict(forward, fused="auto"),
                backward_kwargs=dict(backward, fused="auto"))
    eager = DEQ(Tanh(), forward_kwargs=forward, backward_kwargs=backward)
    fast = DEQ(Tanh(), **auto)
    x = torch.randn(9, 6)
    z_e, z_f = eager(x), fast(x)
    assert calls == [9] * 30  # the forward solve ran the kernel, every iteration
    torch.testing.assert_close(z_f, z_e, rtol=1e-5, atol=1e-6)
    z_e.square().sum().backward()
    z_f.square().sum().backward()  # the adjoint's Anderson solve too
    assert len(calls) == 60
    for p_e, p_f in zip(eager.parameters(), fast.parameters()):
        torch.testing.assert_close(p_f.grad, p_e.grad, rtol=1e-4, atol=1e-6)
    calls.clear()
    z64 = DEQ(Tanh().double(), **auto)(x.double())  # float64: eager
    assert calls == [] and z64.dtype == torch.float64
    with pytest.raises(ValueError, match=r"\bfused\b.*'yes'"):
        DEQ(Tanh(), forward_kwargs=dict(forward, fused="yes"))


def test_fused_auto_takes_the_tensor_operations_where_the_kernel_cannot_run_or_be_built(
        monkeypatch):
    """``fused="auto"`` never fails for the kernel's sake: a window over the kernel's largest
    runs the tensor operations; so does every solve, after one warning, when the kernel cannot
    be built (simulated), with the eager iterates exactly."""
    import warnings

    from deq_core import fused, solvers

    f, _, z0 = tanh_problem()
    eager, _ = anderson(f, z0, max_iter=12, m=17)
    wide, _ = anderson(f, z0, max_iter=12, m=17, fused="auto")
    assert torch.equal(wide, eager)

    def no_compiler():
        raise fused.FusedUnavailable("fused Anderson: building anderson_step.cpp failed (no g++)")

    monkeypatch.setattr(fused, "load", no_compiler)
    monkeypatch.setattr(solvers, "_warned_unavailable", False)
    eager, _ = anderson(f, z0, max_iter=12)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runs = [anderson(f, z0, max_iter=12, fused="auto")[0] for _ in range(3)]
    assert all(torch.equal(z, eager) for z in runs)
    said = [str(w.message) for w in caught]
    assert len(said) == 1 and "no g++" in said[0] and "tensor operations" in said[0]
