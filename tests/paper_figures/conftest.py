import numpy as np
import pytest

from deq_modules.results import atomic_write_json

# (row, depth, seed) -> (iters_to_converge, accuracy)
RUNS = {
    ("HAM", 3, 0): (12.0, 0.978), ("HAM", 3, 1): (11.0, 0.980), ("HAM", 3, 2): (13.0, 0.979),
    ("HAM-EO-DEQ", 3, 0): (6.0, 0.981), ("HAM-EO-DEQ", 3, 1): (7.0, 0.977),
    ("CHN-3ep", 3, 0): (40.0, 0.970), ("CHN-EO", 3, 0): (16.0, 0.971),
    ("CHN-EO", 3, 1): (18.0, 0.969),
}


def trajectories(n_samples, n_iter, iters, seed):
    rng = np.random.default_rng(seed)
    counts = np.zeros((n_iter, 400), dtype=np.int64)
    for n in range(n_iter):
        counts[n] = np.bincount(rng.integers(0, 400, n_samples), minlength=400)
    tolerances = 10.0 ** np.arange(-8, -1.5, 0.5)
    return dict(counts=counts, log10_edges=np.linspace(-8, 0, 401), tolerances=tolerances,
                sum_iters=np.full(tolerances.shape, int(iters * n_samples)),
                mean_iters=np.full(tolerances.shape, float(iters)),
                not_converged=np.zeros(tolerances.shape, dtype=np.int64),
                iters_at_tol=np.full(n_samples, int(iters)), tol=1e-4, stage="test",
                n_samples=n_samples, max_iter=n_iter, format_version=1)


@pytest.fixture
def store(tmp_path):
    """A results store with known numbers, one failed and one running run."""
    root = tmp_path / "results" / "table2"
    for (row, depth, seed), (iters, acc) in RUNS.items():
        d = root / f"{row}-L{depth}-s{seed}"
        atomic_write_json(d / "config.json", dict(row=row, depth=depth, seed=seed))
        atomic_write_json(d / "summary.json", {"status": "finished", "test/acc": acc,
                                               "test/iters_to_converge": iters})
        np.savez(d / "trajectories.npz", **trajectories(50 + seed, 40, iters, seed))
    for seed, status in ((3, "failed"), (4, "running")):
        d = root / f"HAM-L3-s{seed}"
        atomic_write_json(d / "config.json", dict(row="HAM", depth=3, seed=seed))
        atomic_write_json(d / "summary.json", {"status": status})
    return tmp_path / "results"
