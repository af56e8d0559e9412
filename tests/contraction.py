"""Trajectories built from the closed-form residuals of a linear contraction ``z <- a z + c``,
shared by the tests of the result files and of the figures' heatmap (numpy only)."""
import numpy as np
import pytest

TOL = 1e-4
GRID = 10.0 ** np.arange(-8, -1.5, 0.5)
ITERS = 40
N_BINS = 80


def contraction_residuals(a, n_iter=ITERS):
    """``(n_iter - 1, B)``: the papers' ``r_1 .. r_{T-1}`` of ``z <- a z + c`` from 0 (Picard's
    outputs are its iterates), ``a^n (1-a) / (1-a^{n+1})`` (exact zeros for ``a = 0``)."""
    n = np.arange(1, n_iter)[:, None]
    a = np.asarray(a, dtype=np.float64)[None, :]
    return a**n * (1 - a) / (1 - a ** (n + 1))


def iters_to_converge(residuals, tol):
    """Per sample, the papers' count: the 0-based position of the first ``r_n < tol``, else
    the number of rows (``T - 1``)."""
    below = residuals < tol
    return np.where(below.any(axis=0), below.argmax(axis=0), residuals.shape[0])


def trajectories_of(residuals, tol=TOL):
    """The trajectories.npz content for a matrix of residuals, straight from its definition."""
    edges = np.linspace(-8.0, 0.0, N_BINS + 1)
    logs = np.log10(np.clip(residuals, 1e-8, 1.0))
    counts = np.stack([np.histogram(row, bins=edges)[0] for row in logs]).astype(np.int64)
    iters = np.stack([iters_to_converge(residuals, t) for t in GRID])
    n = residuals.shape[1]
    return dict(counts=counts, log10_edges=edges, tolerances=GRID, sum_iters=iters.sum(axis=1),
                mean_iters=iters.mean(axis=1),
                not_converged=(residuals >= GRID[:, None, None]).all(axis=1).sum(axis=1),
                iters_at_tol=iters_to_converge(residuals, tol), tol=tol, stage="test",
                n_samples=n, max_iter=residuals.shape[0], format_version=2)


@pytest.fixture
def rates():
    a = np.random.default_rng(0).uniform(0.0, 0.995, size=70)
    a[:2], a[2:5] = 0.0, 0.995  # exact zeros; never converged at 1e-4 within 40 iterations
    return a
