import gc
import math

import pytest
import torch
from torch import nn

from deq_core import DEQ, relative_residual

F64 = torch.float64
TIGHT = dict(solver="anderson", iter=200, tol=1e-13)
BACKWARDS = {
    "backprop": dict(solver="picard", iter=150, method="backprop"),
    "full_adjoint": dict(solver="anderson", iter=200, tol=1e-13, method="full_adjoint"),
}


# What the tests below that need only some solve use (the engine has no defaults).
FORWARD = dict(solver="anderson", iter=40)
BACKPROP = dict(solver="picard", iter=8, method="backprop")


def unrolled(module, x, n=300, damping=0.0):
    """Reference: autograd through a long plain Picard chain from zero."""
    Ux = module.preprocess_inputs(x)
    z = torch.zeros(x.shape[0], module.state_size, dtype=x.dtype)
    for _ in range(n):
        z = damping * z + (1 - damping) * module(Ux, z)
    return z


def grads(module, x, out):
    weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
    loss = (weights * out).sum() + (out**2).sum()
    params = list(module.parameters())
    return torch.autograd.grad(loss, [x] + params)


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("method", list(BACKWARDS))
@pytest.mark.parametrize("damping", [0.0, 0.5])
def test_gradients_match_unrolled_reference(method, damping, make_tanh_map):
    module = make_tanh_map(contraction=0.9)
    x = torch.randn(5, 5, dtype=F64, requires_grad=True)
    deq = DEQ(module, None, forward_kwargs=TIGHT, backward_kwargs=BACKWARDS[method],
              damping_factor=damping)
    got = grads(module, x, deq(x))
    want = grads(module, x, unrolled(module, x, n=600, damping=damping))
    for g, w in zip(got, want):
        assert rel_err(g, w) < 1e-5


@pytest.mark.parametrize("method", ["backprop", "full_adjoint"])
def test_the_value_is_the_forward_solution_also_when_not_converged(method, make_tanh_map):
    """Loss and prediction are taken at the solve's z* (as the papers train); the gradient of
    backprop is dL/dz*, evaluated at z*, back-propagated through T Picard steps from z*."""
    module = make_tanh_map(contraction=0.97)
    x = torch.randn(5, 5, dtype=F64, requires_grad=True)
    T = 4
    deq = DEQ(module, None, forward_kwargs=dict(solver="anderson", iter=3),  # far from z*
              backward_kwargs=dict(solver="picard", iter=T, method=method))
    with torch.no_grad():
        z_star = deq(x)
    assert relative_residual(module(module.preprocess_inputs(x), z_star), z_star).min() > 1e-3
    z = deq(x)
    assert torch.equal(z.detach(), z_star)
    got = grads(module, x, z)
    # Reference: the loss's gradient v at z*, pushed back through T steps from z* (backprop),
    # or through f(z*) after the truncated Neumann series sum_{i<T} (J^T)^i v at z* (adjoint).
    Ux = module.preprocess_inputs(x)
    v = torch.linspace(-1, 1, z_star.numel(), dtype=F64).reshape(z_star.shape) + 2 * z_star
    inputs = [x, *module.parameters()]
    if method == "backprop":
        z_T = z_star
        for _ in range(T):
            z_T = module(Ux, z_T)
        want = torch.autograd.grad(z_T, inputs, v)
    else:
        leaf = z_star.clone().requires_grad_(True)
        fz = module(Ux, leaf)
        term, series = v, v
        for _ in range(T - 1):
            (term,) = torch.autograd.grad(fz, leaf, term, retain_graph=True)
            series = series + term
        want = torch.autograd.grad(fz, inputs, series)
    for g, w in zip(got, want):
        assert rel_err(g, w) < 1e-12


@pytest.mark.parametrize("damping", [0.0, 0.5])
@pytest.mark.parametrize("steps", [1, 3, 8])
def test_truncated_adjoint_equals_backprop_through_as_many_steps(steps, damping, make_tanh_map):
    """At a fixed point, T Picard steps of the adjoint from zero (the truncated Neumann series
    sum_{i<T} (J^T)^i v) give exactly the gradient of backpropagating through T unrolled steps:
    the fast mode's cheap backward computes the paper's gradient. Few steps, so the two are far
    from the exact implicit gradient and would differ if the series were summed differently."""
    module = make_tanh_map(contraction=0.95)
    x = torch.randn(5, 5, dtype=F64, requires_grad=True)
    got, want = [
        grads(module, x, DEQ(module, None, forward_kwargs=TIGHT, damping_factor=damping,
                             backward_kwargs=dict(solver="picard", iter=steps, method=method))(x))
        for method in ("full_adjoint", "backprop")]
    exact = grads(module, x, DEQ(module, None, forward_kwargs=TIGHT, damping_factor=damping,
                                 backward_kwargs=BACKWARDS["full_adjoint"])(x))
    for g, w, e in zip(got, want, exact):
        assert rel_err(g, w) < 1e-10
        assert rel_err(w, e) > 1e-4  # truncated: not the implicit gradient


@pytest.mark.parametrize("damping", [0.0, 0.3])
def test_step_map_is_the_damped_map_the_forward_solve_iterates(damping, make_tanh_map):
    module = make_tanh_map(contraction=0.9)
    x = torch.randn(5, 5, dtype=F64)
    deq = DEQ(module, None, forward_kwargs=dict(solver="picard", iter=7),
              damping_factor=damping)
    Ux = module.preprocess_inputs(x)
    step = deq.step_map(Ux)
    z = torch.randn(5, module.state_size, dtype=F64)
    torch.testing.assert_close(step(z), damping * z + (1 - damping) * module(Ux, z),
                               rtol=0, atol=0)
    with torch.no_grad():  # seven Picard steps of step_map from the DEQ's start: its output
        want = deq.initial_state(Ux)
        for _ in range(7):
            want = step(want)
        torch.testing.assert_close(deq(x), want, rtol=0, atol=0)


@pytest.mark.parametrize("method", list(BACKWARDS))
def test_gradients_match_finite_differences(method, make_tanh_map):
    module = make_tanh_map(width=6, n_in=3)
    x = torch.randn(2, 3, dtype=F64, requires_grad=True)
    deq = DEQ(module, None, forward_kwargs=TIGHT, backward_kwargs=BACKWARDS[method])
    assert torch.autograd.gradcheck(deq, (x,), eps=1e-6, atol=1e-7, rtol=1e-5)
    # Parameters: central differences of a scalar loss along a random direction.
    loss = lambda: (deq(x.detach()) ** 3).sum()  # noqa: E731
    module.zero_grad()
    loss().backward()
    for p in module.parameters():
        direction = torch.randn_like(p)
        analytic = (p.grad * direction).sum().item()
        with torch.no_grad():
            p += 1e-6 * direction
            up = loss().item()
            p -= 2e-6 * direction
            down = loss().item()
            p += 1e-6 * direction
        numeric = (up - down) / 2e-6
        assert abs(analytic - numeric) < 1e-5 * max(1.0, abs(numeric))


@pytest.mark.parametrize("method", list(BACKWARDS))
def test_parameter_gradients_without_input_gradient(method, tanh_map):
    x = torch.randn(4, 5, dtype=F64)
    deq = DEQ(tanh_map, None, forward_kwargs=TIGHT, backward_kwargs=BACKWARDS[method])
    out = deq(x)
    out.sum().backward()
    assert not x.requires_grad and x.grad is None
    want = torch.autograd.grad(unrolled(tanh_map, x).sum(), list(tanh_map.parameters()))
    for p, w in zip(tanh_map.parameters(), want):
        assert rel_err(p.grad, w) < 1e-5


def test_damping_keeps_fixed_point_and_follows_damped_steps(tanh_map):
    x = torch.randn(3, 5, dtype=F64)
    with torch.no_grad():
        plain = DEQ(tanh_map, None, forward_kwargs=TIGHT)(x)
        damped = DEQ(tanh_map, None, forward_kwargs=TIGHT, damping_factor=0.5)(x)
        assert torch.allclose(plain, damped, atol=1e-10)
        few = DEQ(tanh_map, None, forward_kwargs=dict(solver="picard", iter=3), damping_factor=0.3)(x)
        Ux = tanh_map.preprocess_inputs(x)
        z = torch.zeros(3, 12, dtype=F64)
        for _ in range(3):
            z = 0.3 * z + 0.7 * tanh_map(Ux, z)
        assert torch.allclose(few, z)


@pytest.mark.parametrize("shape", [(12,), (1, 12)])
def test_any_batch_size_with_one_z_init(shape, tanh_map):
    z_init = 0.1 * torch.ones(shape, dtype=F64)
    deq = DEQ(tanh_map, z_init, forward_kwargs=dict(solver="picard", iter=60))
    for batch in (1, 7, 64):
        x = torch.randn(batch, 5, dtype=F64)
        z = deq(x)
        assert z.shape == (batch, 12)
        assert relative_residual(tanh_map(tanh_map.preprocess_inputs(x), z), z).max() < 1e-5
    with pytest.raises(ValueError, match=r"z_init\b.*\b3\b.*\b7\b"):
        DEQ(tanh_map, torch.zeros(3, 12, dtype=F64),
            forward_kwargs=FORWARD)(torch.randn(7, 5, dtype=F64))


def test_inside_sequential_train_and_eval(tanh_map):
    model = nn.Sequential(DEQ(tanh_map, None, forward_kwargs=FORWARD, backward_kwargs=BACKPROP),
                          nn.Linear(12, 3, dtype=F64))
    x = torch.randn(8, 5, dtype=F64)
    model.train()
    model(x).pow(2).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    with torch.no_grad():
        out_ng = model(x)
    with torch.inference_mode():
        out_inf = model(x)
    assert out_ng.grad_fn is None and out_inf.grad_fn is None
    assert torch.allclose(out_ng, out_inf)


def test_eval_without_grad_returns_the_solver_fixed_point(tanh_map):
    x = torch.randn(4, 5, dtype=F64)
    deq = DEQ(tanh_map, None, forward_kwargs=dict(solver="anderson", iter=40))
    with torch.no_grad():
        z = deq(x)
    assert deq.last_forward_stats.n_iter == 40
    assert relative_residual(tanh_map(tanh_map.preprocess_inputs(x), z), z).max() < 1e-8


@pytest.mark.filterwarnings("ignore:.*reduce_op.*:FutureWarning")  # from gc.get_objects()
@pytest.mark.parametrize("method", list(BACKWARDS))
def test_repeated_calls_do_not_accumulate_graphs(method, tanh_map):
    deq = DEQ(tanh_map, None, forward_kwargs=dict(solver="anderson", iter=20),
              backward_kwargs=dict(BACKWARDS[method], iter=10))
    x = torch.randn(16, 5, dtype=F64)

    def live_tensors():
        gc.collect()
        return sum(1 for o in gc.get_objects() if torch.is_tensor(o))

    deq(x).sum().backward()
    before = live_tensors()
    for _ in range(10):
        deq(x).sum().backward()
    assert live_tensors() <= before
    assert not deq.last_forward_stats.rel_residual.requires_grad
    assert not deq.last_backward_stats.rel_residual.requires_grad


@pytest.mark.parametrize("method", list(BACKWARDS))
def test_last_stats_give_forward_and_backward_residuals(method, tanh_map):
    deq = DEQ(tanh_map, None, forward_kwargs=FORWARD,
              backward_kwargs=dict(BACKWARDS[method], iter=50))
    deq(torch.randn(3, 5, dtype=F64)).sum().backward()
    assert 0 <= float(deq.last_forward_stats.rel_residual.mean()) < 1e-6
    assert 0 <= float(deq.last_backward_stats.rel_residual.mean()) < 1e-3


def test_observers_see_trace_and_iterates(tanh_map):
    deq = DEQ(tanh_map, None, forward_kwargs=dict(solver="picard", iter=9))
    x = torch.randn(5, 5, dtype=F64)
    stats_seen, iterates = [], []
    with deq.observe(on_solve=stats_seen.append):
        handle = deq.observe(on_iterate=lambda n, z: iterates.append(z.clone()))
        assert deq.n_observers == 2
        out = deq(x)
        handle.remove()
        assert deq.n_observers == 1
        deq(x)
    deq(x)
    assert len(stats_seen) == 2 and len(iterates) == 9
    assert stats_seen[0].trace.shape == (9, 5)
    assert deq.n_observers == 0
    # The iterates are the plain Picard sequence, and the traced residual is theirs.
    Ux = tanh_map.preprocess_inputs(x)
    z = torch.zeros(5, 12, dtype=F64)
    for n in range(9):
        fz = tanh_map(Ux, z)
        assert torch.allclose(iterates[n], fz)
        assert torch.allclose(stats_seen[0].trace[n], relative_residual(fz, z))
        z = fz
    assert deq.last_forward_stats.trace is None  # no observer, no trace cost
    assert torch.allclose(out.detach(), deq(x).detach())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(forward_kwargs=dict(solver="newton", iter=5)), r"'newton'.*\banderson\b"),
        (dict(forward_kwargs=dict(solver="anderson", iter=5, tolerance=1e-3)),
         r"forward_kwargs\b.*'tolerance'.*'tol'"),
        (dict(forward_kwargs=dict(solver="picard", iter=5, m=3)), r"\['m'\].*'picard'"),
        (dict(forward_kwargs=dict(solver="picard", iter=0)), r"'iter'\].*\b0\b"),
        (dict(forward_kwargs=dict(solver="picard", iter=2.5)), r"'iter'\].*\b2\.5\b"),
        (dict(forward_kwargs=dict(solver="picard")), r"forward_kwargs\b.*'iter'"),
        (dict(forward_kwargs=dict(solver="picard", iter=3, tol=-1.0)), r"'tol'\].*-1\.0\b"),
        (dict(backward_kwargs=dict(solver="picard", iter=3, method="implicit")),
         r"'implicit'.*'full_adjoint'"),
        (dict(backward_kwargs=dict(solver="picard", iter=3, method="backprop", mm=4)),
         r"backward_kwargs\b.*'mm'"),
        (dict(backward_kwargs=dict(solver="anderson", iter=3, method="backprop")),
         r"'backprop'.*\banderson\b"),
        (dict(damping_factor=1.0), r"damping_factor\b.*\b1\.0\b"),
        (dict(damping_factor=-0.1), r"damping_factor\b.*-0\.1\b"),
        (dict(forward_kwargs=dict(solver="picard", iter=3, tol="1e-3")),
         r"forward_kwargs\['tol'\].*'1e-3'"),
        (dict(forward_kwargs=dict(solver="picard", iter=3, tol=math.nan)), r"'tol'\].*\bnan\b"),
        (dict(forward_kwargs=dict(solver="picard", iter=3, tol=math.inf)), r"'tol'\].*\binf\b"),
        (dict(forward_kwargs=dict(solver="picard", iter=True)), r"'iter'\].*\bTrue\b"),
        (dict(forward_kwargs=dict(solver="picard", iter=-4)), r"'iter'\].*-4\b"),
        (dict(forward_kwargs=dict(solver="anderson", iter=3, m=2.5)),
         r"forward_kwargs\['m'\].*\b2\.5\b"),
        (dict(forward_kwargs=dict(solver="anderson", iter=3, m=True)), r"'m'\].*\bTrue\b"),
        (dict(forward_kwargs=dict(solver="anderson", iter=3, m=0)), r"'m'\].*\b0\b"),
        (dict(forward_kwargs=dict(solver="anderson", iter=3, lam=math.nan)),
         r"forward_kwargs\['lam'\].*\bnan\b"),
        (dict(forward_kwargs=dict(solver="anderson", iter=3, lam=-1.0)), r"'lam'\].*-1\.0\b"),
        (dict(backward_kwargs=dict(solver="anderson", iter=3, method="full_adjoint", tol="x")),
         r"backward_kwargs\['tol'\].*'x'"),
        (dict(backward_kwargs=dict(solver="anderson", iter=3, method="full_adjoint", m=2.5)),
         r"backward_kwargs\['m'\].*\b2\.5\b"),
        (dict(backward_kwargs=dict(solver="anderson", iter=3, method="full_adjoint", lam=math.inf)),
         r"backward_kwargs\['lam'\].*\binf\b"),
        (dict(backward_kwargs=dict(solver="picard", iter=0, method="full_adjoint")),
         r"backward_kwargs\['iter'\].*\b0\b"),
    ],
)
def test_bad_options_are_refused_with_the_valid_choices(kwargs, message, tanh_map):
    with pytest.raises(ValueError, match=message):
        DEQ(tanh_map, None, **{"forward_kwargs": FORWARD, **kwargs})


def test_z_init_none_needs_state_size():
    class NoSize(nn.Module):
        def preprocess_inputs(self, x):
            return x

        def forward(self, Ux, z):
            return z

    with pytest.raises(ValueError, match="state_size"):
        DEQ(NoSize(), None, forward_kwargs=FORWARD)


class WrongWidth(nn.Module):
    """Declares a state of width 6 but maps it to width 7."""

    state_size = 6

    def preprocess_inputs(self, x):
        return x

    def forward(self, Ux, z):
        return torch.cat([z, Ux[:, :1]], dim=1)


@pytest.mark.parametrize("shape", [(5,), (1, 5), (3, 5)])
def test_z_init_of_the_wrong_width_is_refused(shape, make_tanh_map):
    with pytest.raises(ValueError, match=rf"z_init\b.*\({shape[0]},.*state_size\b.*\b6\b"):
        DEQ(make_tanh_map(width=6), torch.zeros(shape, dtype=F64), forward_kwargs=FORWARD)


def test_z_init_must_have_the_dtype_of_x(make_tanh_map):
    deq = DEQ(make_tanh_map(dtype=torch.float32), torch.zeros(12, dtype=F64),
              forward_kwargs=FORWARD)
    with pytest.raises(ValueError, match=r"z_init\b.*torch\.float64.*torch\.float32"):
        deq(torch.randn(4, 5, dtype=torch.float32))


def test_unbatched_x_is_refused(tanh_map):
    with pytest.raises(ValueError, match=r"\(5,\).*\(1, 5\)"):
        DEQ(tanh_map, None, forward_kwargs=FORWARD)(torch.randn(5, dtype=F64))


@pytest.mark.parametrize("shape", [(3, 2, 5), (3, 5, 2)])
def test_x_with_more_dimensions_says_which_shape_the_deq_expects(shape, tanh_map):
    """(3, 2, 5) makes a drive of (3, 2, 12) that broadcasts inside f; (3, 5, 2) fails inside
    preprocess_inputs: either way the error names x's shape and the one expected."""
    with pytest.raises(ValueError, match=rf"\({shape[0]}, {shape[1]}, {shape[2]}\)"
                                         r".*x\.reshape\(3, -1\)"):
        DEQ(tanh_map, None, forward_kwargs=FORWARD)(torch.randn(*shape, dtype=F64))


def test_a_preprocess_that_flattens_takes_images(make_tanh_map):
    """The shape rule is the drive's, not x's: an f_module that flattens takes (B, H, W)."""
    class Flattening(make_tanh_map):
        def preprocess_inputs(self, x):
            return x.reshape(x.shape[0], -1) @ self.U

    x = torch.randn(3, 5, 1, dtype=F64)
    z = DEQ(Flattening(), None, forward_kwargs=FORWARD)(x)
    # the same equilibrium as the plain map's on the flattened input (same weights: same seed)
    torch.testing.assert_close(z, DEQ(make_tanh_map(), None, forward_kwargs=FORWARD)(x.reshape(3, 5)), rtol=0, atol=0)


@pytest.mark.parametrize("solver", ["picard", "anderson"])
@pytest.mark.parametrize("damping", [0.0, 0.5])
def test_f_of_the_wrong_width_is_refused(solver, damping):
    deq = DEQ(WrongWidth(), None, forward_kwargs=dict(solver=solver, iter=5),
              damping_factor=damping)
    with pytest.raises(ValueError, match=r"\(4, 7\).*\(4, 6\)"):
        deq(torch.randn(4, 5, dtype=F64))


@pytest.mark.parametrize("method", list(BACKWARDS))
def test_empty_batch_returns_an_empty_state_and_zero_gradients(method, tanh_map):
    deq = DEQ(tanh_map, None, forward_kwargs=FORWARD, backward_kwargs=BACKWARDS[method])
    x = torch.zeros(0, 5, dtype=F64, requires_grad=True)
    z = deq(x)
    assert z.shape == (0, 12)
    assert deq.last_forward_stats.rel_residual.shape == (0,)
    (z**2).sum().backward()
    assert x.grad.shape == (0, 5)
    for p in tanh_map.parameters():
        assert p.grad is not None and not p.grad.any()


@pytest.mark.slow
@pytest.mark.parametrize("method", ["backprop", "full_adjoint"])
def test_compiled_map_gives_the_eager_fixed_point_and_gradients(method, make_tanh_map):
    """``compile_f`` changes how f is evaluated, not what: the same fixed point and gradients
    (to float rounding), also when compaction shrinks the batch between iterations, and with
    the adjoint's vector-Jacobian products (the fast mode's backward), which reuse one graph."""
    from torch._dynamo.utils import counters
    x = torch.randn(6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    results = []
    torch._dynamo.reset()
    counters.clear()
    for compile_f in (False, True):
        f = make_tanh_map()
        deq = DEQ(f, forward_kwargs=dict(solver="anderson", iter=30),
                  train_forward_kwargs=dict(solver="anderson", iter=30, tol=1e-6, compact=True),
                  backward_kwargs=dict(solver="picard", iter=8, method=method),
                  compile_f=compile_f)
        z = deq(x)  # training mode: the compacting solve, then the backward's steps
        z.square().sum().backward()
        deq.eval()
        with torch.no_grad():
            z_eval = deq(x)
        results.append((z.detach(), z_eval, [p.grad.clone() for p in f.parameters()]))
    (z0, e0, g0), (z1, e1, g1) = results
    torch.testing.assert_close(z1, z0)
    torch.testing.assert_close(e1, e0)
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b)
    assert "compile_f=True" in repr(deq)
    assert counters["stats"]["unique_graphs"] >= 1  # compiled indeed, not eager twice


def test_compile_f_must_be_a_bool(tanh_map):
    with pytest.raises(ValueError, match=r"compile_f\b.*'yes'"):
        DEQ(tanh_map, forward_kwargs=FORWARD, compile_f="yes")


def test_without_backward_kwargs_the_value_comes_and_a_backward_is_refused(tanh_map):
    """No default gradient: a DEQ built for evaluation gives its value also with grad enabled,
    and a backward pass through it is an error that names backward_kwargs, never a silently
    missing gradient."""
    deq = DEQ(tanh_map, None, forward_kwargs=FORWARD)
    x = torch.randn(3, 5, dtype=F64)
    z = deq(x)
    with torch.no_grad():
        torch.testing.assert_close(z.detach(), deq(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="backward_kwargs"):
        z.sum().backward()
    assert deq.last_backward_stats is None
