"""deq_core/registry.py: solvers and gradient methods added from outside the package, and the
one check of every option."""
import pytest
import torch

from deq_core import (DEQ, GRADIENTS, SOLVERS, Backward, SolverStats, Step, backprop,
                      register_gradient, register_solver, relative_residual,
                      unregister_gradient, unregister_solver)
from deq_core.registry import check_nonnegative

F64 = torch.float64


class Relaxation(Step):
    """A toy solver written here, not in deq_core: the relaxed step ``x + a (f(x) - x)``
    (Krasnoselskii-Mann), which is all it defines; the shared loop does the rest."""

    def __init__(self, x, *, a=0.8):
        self.a = a

    def __call__(self, n, x, fx):
        self.res = self.best_res = relative_residual(fx, x)
        self.best = fx
        return x + self.a * (fx - x)


def check_a(label, value):
    if not (isinstance(value, float) and 0 < value <= 1):
        raise ValueError(f"{label} must be a float in (0, 1], got {value!r}")


def plain_function_solver(f, z0, *, max_iter, tol=None, trace=False, on_iterate=None, a=0.5):
    """A toy solver as a bare function: relaxed steps, no tolerance stop, no trace."""
    z = z0
    for n in range(max_iter):
        z = z + a * (f(z) - z)
        if on_iterate is not None:
            on_iterate(n, z)
    return z, SolverStats("plain", max_iter, relative_residual(f(z), z))


@pytest.fixture
def toy_solvers():
    register_solver("relaxation", Relaxation, options={"a": check_a})
    register_solver("plain", plain_function_solver, options={"a": check_nonnegative})
    yield
    unregister_solver("relaxation")
    unregister_solver("plain")


def unrolled(module, x, n=600):
    """Reference: autograd through a long plain Picard chain from zero."""
    Ux = module.preprocess_inputs(x)
    z = torch.zeros(x.shape[0], module.state_size, dtype=x.dtype)
    for _ in range(n):
        z = module(Ux, z)
    return z


def grads(module, x, out):
    loss = (torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape) * out).sum()
    return torch.autograd.grad(loss, [x, *module.parameters()])


@pytest.mark.parametrize("compact", [False, True])
def test_a_solver_registered_from_outside_runs_a_deq_forward_and_backward(
        compact, toy_solvers, make_tanh_map):
    module = make_tanh_map(contraction=0.8)
    forward = dict(solver="relaxation", iter=500, tol=1e-12, a=0.7, compact=compact)
    backward = dict(solver="relaxation", iter=500, tol=1e-12, method="full_adjoint")
    deq = DEQ(module, forward_kwargs=forward, backward_kwargs=backward)
    x = torch.randn(6, 5, dtype=F64, generator=torch.Generator().manual_seed(0),
                    requires_grad=True)
    traces = []
    with deq.observe(on_solve=traces.append):
        z = deq(x)
    assert deq.last_forward_stats.solver == "relaxation"
    assert 1 < deq.last_forward_stats.n_iter < 500  # stopped by the tolerance
    assert traces[0].trace.shape == (deq.last_forward_stats.n_iter, 6)  # the loop traced it
    f_z = module(module.preprocess_inputs(x), z)
    assert (f_z - z).norm(dim=1).max() < 1e-10 * f_z.norm(dim=1).max()  # f(z*) = z*
    got, want = grads(module, x, z), grads(module, x, unrolled(module, x))
    for g, w in zip(got, want):
        assert ((g - w).norm() / w.norm()).item() < 1e-8
    assert deq.last_backward_stats.solver == "relaxation"  # the adjoint solve too


def test_a_function_solver_and_its_options(toy_solvers, tanh_map):
    deq = DEQ(tanh_map, forward_kwargs=dict(solver="plain", iter=200, a=0.9),
              backward_kwargs=dict(solver="plain", iter=200, method="full_adjoint"))
    x = torch.randn(4, 5, dtype=F64)
    z = deq(x)
    f_z = tanh_map(tanh_map.preprocess_inputs(x), z)
    assert (f_z - z).norm() < 1e-8 * f_z.norm()
    with pytest.raises(ValueError, match=r"forward_kwargs\['a'\].*-1.0"):
        DEQ(tanh_map, forward_kwargs=dict(solver="plain", iter=5, a=-1.0))
    with pytest.raises(ValueError, match=r"\['m'\].*'plain'.*valid options"):
        DEQ(tanh_map, forward_kwargs=dict(solver="plain", iter=5, m=3))
    with pytest.raises(ValueError, match=r"'plain'"):  # it takes no restrict: no compaction
        DEQ(tanh_map, forward_kwargs=dict(solver="plain", iter=5, tol=1e-3, compact=True))


def test_registered_solvers_check_their_arguments_before_evaluating(toy_solvers):
    def f(z):
        raise AssertionError("f must not be evaluated with bad options")

    relaxation = SOLVERS["relaxation"].fn
    assert relaxation.__name__ == "relaxation"
    for options, bad in [(dict(a=2.0), "2.0"), (dict(max_iter=0), "0"), (dict(tol=-1.0), "-1.0"),
                         (dict(b=1), "'b'")]:
        with pytest.raises(ValueError, match=rf"relaxation: .*{bad}"):
            relaxation(f, torch.zeros(2, 3), **{"max_iter": 5, **options})


def test_registering_refuses_what_it_cannot_run(toy_solvers):
    with pytest.raises(ValueError, match=r"'relaxation' is registered already"):
        register_solver("relaxation", Relaxation)
    with pytest.raises(TypeError, match=r"dict"):
        register_solver("not_a_step", dict)
    with pytest.raises(ValueError, match=r"'tol'"):
        register_solver("with_tol", plain_function_solver, options={"tol": check_a})
    with pytest.raises(ValueError, match=r"'nowhere'.*valid solvers"):
        unregister_solver("nowhere")
    assert "not_a_step" not in SOLVERS and "with_tol" not in SOLVERS


def test_a_gradient_method_registered_from_outside(tanh_map):
    """One differentiable step from z* (Jacobian-free backprop): backprop with iter=1."""
    @register_gradient("one_step", unrolls="picard")
    def one_step(b: Backward):
        z = b.step_map(b.Ux)(b.z_star)
        return b.z_star + (z - z.detach())

    try:
        x = torch.randn(4, 5, dtype=F64, requires_grad=True)
        forward = dict(solver="anderson", iter=60)
        results = []
        for method in ("one_step", "backprop"):
            deq = DEQ(tanh_map, forward_kwargs=forward,
                      backward_kwargs=dict(solver="picard", iter=1, method=method))
            results.append(grads(tanh_map, x, deq(x)))
        for g, w in zip(*results):
            torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-14)
        with pytest.raises(ValueError, match=r"'one_step'.*solver='anderson'"):
            DEQ(tanh_map, forward_kwargs=forward,
                backward_kwargs=dict(solver="anderson", iter=1, method="one_step"))
    finally:
        unregister_gradient("one_step")
    assert set(GRADIENTS) == {"backprop", "full_adjoint"} and GRADIENTS["backprop"].fn is backprop
