"""deq_core/compaction.py through the solvers and the DEQ: converged samples leave the batch."""
import pytest
import torch
from torch import nn

from deq_core import DEQ, anderson, picard

TOL = 1e-6


def linear_map(rates: torch.Tensor, counter: list):
    """``f(z) = a * z + 1`` per sample (rate ``a``), counting the samples it is evaluated on,
    and its restriction to a subset of the batch."""
    def make(a):
        def f(z):
            counter.append(z.shape[0])
            return a[:, None] * z + 1.0
        return f
    return make(rates), lambda idx: make(rates[idx])


@pytest.mark.parametrize("solver", [picard, anderson])
def test_each_sample_gets_the_result_of_its_own_solve_at_a_fraction_of_the_cost(solver):
    rates = torch.tensor([0.1, 0.9, 0.5, 0.97, 0.0, 0.7], dtype=torch.float64)
    counter: list = []
    f, restrict = linear_map(rates, counter)
    z0 = torch.zeros(6, 3, dtype=torch.float64)
    z, stats = solver(f, z0, max_iter=400, tol=TOL, trace=True, restrict=restrict)
    compacted_cost = sum(counter)
    for i in range(6):  # the reference: sample i solved alone with the same tolerance
        alone, alone_stats = solver(linear_map(rates[i:i + 1], [])[0], z0[i:i + 1],
                                    max_iter=400, tol=TOL, trace=True)
        torch.testing.assert_close(z[i:i + 1], alone, rtol=1e-13, atol=0)
        converged_at = int((stats.trace[:, i] < TOL).nonzero()[0]) + 1
        assert converged_at == alone_stats.n_iter
        assert stats.rel_residual[i] == alone_stats.rel_residual[0]
    assert stats.trace.shape == (stats.n_iter, 6)
    assert compacted_cost < 6 * stats.n_iter  # converged samples were not evaluated again
    if solver is picard:  # slow and fast samples: most evaluations were saved
        assert compacted_cost < 0.5 * 6 * stats.n_iter
    fixed_point = 1.0 / (1.0 - rates[:, None])
    assert ((z - fixed_point).abs() / fixed_point).max() < 1e-4


def test_on_iterate_sees_the_whole_batch():
    rates = torch.tensor([0.1, 0.9, 0.5])
    f, restrict = linear_map(rates, [])
    sizes = []
    picard(f, torch.zeros(3, 2), max_iter=100, tol=TOL, restrict=restrict,
           on_iterate=lambda n, z: sizes.append(z.shape[0]))
    assert set(sizes) == {3}


class Tanh(nn.Module):
    def __init__(self, width=8):
        super().__init__()
        torch.manual_seed(0)
        self.W = nn.Parameter(0.4 * torch.randn(width, width) / width ** 0.5)
        self.U = nn.Linear(5, width)
        self.state_size = width

    def preprocess_inputs(self, x):
        return self.U(x)

    def forward(self, Ux, z):
        return torch.tanh(z @ self.W + Ux)


@pytest.mark.parametrize("backward", [dict(solver="picard", iter=8, method="backprop"),
                                      dict(solver="picard", iter=30, method="full_adjoint")])
@pytest.mark.parametrize("solver", ["picard", "anderson"])
def test_compacted_deq_matches_the_plain_solve_and_its_gradients(solver, backward):
    x = torch.randn(16, 5)
    plain = DEQ(Tanh(), forward_kwargs=dict(solver=solver, iter=100, tol=1e-7),
                backward_kwargs=backward)
    fast = DEQ(Tanh(), forward_kwargs=dict(solver=solver, iter=100, tol=1e-7, compact=True),
               backward_kwargs=backward)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), plain(x), rtol=0, atol=1e-5)
    grads = []
    for deq in (plain, fast):
        xg = x.clone().requires_grad_()
        deq(xg).square().sum().backward()
        grads.append([xg.grad] + [p.grad for p in deq.f_module.parameters()])
    for g_plain, g_fast in zip(*grads):
        assert g_plain.abs().max() > 0  # a gradient that flows, so the comparison means something
        # both solves stop within the tolerance of the same fixed point: float32 rounding apart
        torch.testing.assert_close(g_fast, g_plain, rtol=1e-4, atol=1e-5)


def test_compact_needs_a_tolerance():
    with pytest.raises(ValueError, match=r"'compact'.*'tol'"):
        DEQ(Tanh(), forward_kwargs=dict(solver="picard", iter=10, compact=True))
    with pytest.raises(ValueError, match=r"forward_kwargs\b.*'restrict'"):
        DEQ(Tanh(), forward_kwargs=dict(solver="picard", iter=10, restrict=lambda i: None))


def test_under_autocast_the_state_keeps_its_dtype():
    x = torch.randn(16, 5)
    deq = DEQ(Tanh(), forward_kwargs=dict(solver="anderson", iter=60, tol=1e-2, compact=True))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = deq(x)
    assert z.dtype == torch.float32 and deq.last_forward_stats.rel_residual.dtype == torch.float32
    with torch.no_grad():
        exact = DEQ(Tanh(), forward_kwargs=dict(solver="anderson", iter=200, tol=1e-9))(x)
    assert (z - exact).abs().max() < 5e-2  # bf16 products: about 3 significant digits


def test_train_forward_kwargs_apply_in_training_mode_only():
    x = torch.randn(16, 5)
    deq = DEQ(Tanh(), forward_kwargs=dict(solver="anderson", iter=50),
              train_forward_kwargs=dict(solver="anderson", iter=50, tol=1e-4, compact=True))
    deq.train()
    deq(x)
    assert deq.last_forward_stats.n_iter < 50  # stopped by the tolerance
    deq.eval()
    with torch.no_grad():
        deq(x)
    assert deq.last_forward_stats.n_iter == 50  # evaluation: the fixed count
    with pytest.raises(ValueError, match="train_forward_kwargs\\['compact'\\]"):
        DEQ(Tanh(), forward_kwargs=dict(solver="picard", iter=5),
            train_forward_kwargs=dict(solver="picard", iter=5, compact=True))


def test_forward_options_override_the_mode_inside_their_block_only():
    x = torch.randn(16, 5)
    fast = dict(solver="anderson", iter=50, tol=1e-4, compact=True)
    deq = DEQ(Tanh(), forward_kwargs=dict(solver="anderson", iter=50)).eval()
    with torch.no_grad():
        reference = deq(x)
        with deq.forward_options(fast):
            z = deq(x)
            assert deq.last_forward_stats.n_iter < 50  # eval mode, yet the tolerance stop
            assert deq.active_forward_kwargs == fast
            with deq.forward_options(dict(solver="picard", iter=3)):  # blocks nest
                deq(x)
                assert deq.last_forward_stats.n_iter == 3
            deq(x)
            assert deq.last_forward_stats.n_iter < 50  # the outer block's options again
        assert torch.allclose(z, reference, atol=1e-3)  # the same fixed point, to the tolerance
        f_z = deq.step_map(deq.f_module.preprocess_inputs(x))(z)
        assert (f_z - z).norm(dim=1).max() <= 1e-4 * f_z.norm(dim=1).max()
        deq(x)
        assert deq.last_forward_stats.n_iter == 50  # after the block: the fixed count
        with deq.forward_options(None):  # None changes nothing
            deq(x)
        assert deq.last_forward_stats.n_iter == 50
        with pytest.raises(RuntimeError, match="boom"), deq.forward_options(fast):
            raise RuntimeError("boom")
        assert deq.active_forward_kwargs == deq.forward_kwargs  # restored after an exception
    deq.train()
    with deq.forward_options(dict(solver="anderson", iter=7)):  # also in training mode
        deq(x)
    assert deq.last_forward_stats.n_iter == 7
    with pytest.raises(ValueError, match=r"'newton'"):
        with deq.forward_options(dict(solver="newton", iter=5)):
            pass
    with pytest.raises(ValueError, match=r"forward_options\['compact'\]"):
        with deq.forward_options(dict(solver="picard", iter=5, compact=True)):
            pass
