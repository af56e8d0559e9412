"""Paper settings compute exactly what they computed before the fast mode and the refactors.

The reference file holds the state, the residual trace and the parameter gradients of four
small Hopfield DEQs (HAM/CHN, OneMatrix/EvenOdd, Picard/Anderson, damped and not) at fixed
iteration counts, computed in float64 by commit 0c2d9ce (before this work) with the same
construction as below, on one thread. Later optimisations of the paper path must keep them to
float rounding. One thread here too: with more, BLAS sums in another order, and 30 Anderson
steps amplify that rounding (we saw 3e-5 relative on the CHN).
"""
from pathlib import Path

import pytest
import torch

from deq_core import DEQ
from deq_modules.functions import EvenOddFunction, OneMatrixFunction

REFERENCE = torch.load(Path(__file__).parent / "reference" / "paper_iterates_0c2d9ce.pt")
CASES = {"ham_eo_anderson": (EvenOddFunction, True, "anderson", 0.0),
         "ham_om_picard": (OneMatrixFunction, True, "picard", 0.0),
         "chn_om_anderson": (OneMatrixFunction, False, "anderson", 0.5),
         "chn_eo_picard": (EvenOddFunction, False, "picard", 0.0)}


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", sorted(CASES))
def test_paper_settings_reproduce_the_reference_iterates(name, one_thread):
    cls, ham, solver, damping = CASES[name]
    torch.manual_seed(0)
    f = cls([784, 48, 24, 16, 10], ham=ham).double()
    x = torch.rand(8, 784, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    deq = DEQ(f, None, forward_kwargs=dict(solver=solver, iter=30), damping_factor=damping,
              backward_kwargs=dict(solver="picard", iter=6, method="backprop"))
    traces = []
    with deq.observe(on_solve=lambda stats: traces.append(stats.trace)):
        z = deq(x)
    z.sum().backward()
    ref = REFERENCE[name]
    torch.testing.assert_close(z.detach(), ref["z"], rtol=1e-12, atol=1e-14)
    # Converged residuals are differences of nearly equal O(1) states: a few float64 eps
    # (2.2e-16) absolute is rounding, whatever it is relative to a residual of 1e-9.
    torch.testing.assert_close(traces[0], ref["trace"], rtol=1e-10, atol=1e-15)
    grads = [p.grad for p in f.parameters()]
    torch.testing.assert_close(torch.stack([g.sum() for g in grads]), ref["grad_sums"],
                               rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(torch.stack([g.norm() for g in grads]), ref["grad_norms"],
                               rtol=1e-10, atol=1e-12)
