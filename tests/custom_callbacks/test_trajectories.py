import os

import numpy as np
import pytest

from custom_callbacks import DEFAULT_TOLERANCES, IterationsToConverge, ResidualTrajectories
from runner.result_files import (TRAJECTORY_KEYS, load_trajectories, merge_trajectories,
                                 save_npz)

ITERS = 40
TOL = 1e-4


def run(toy, root, x, y, batch_size=32, callbacks=(), **module_kwargs):
    """trainer.test with a ResidualTrajectories; (its result, test metrics, module)."""
    module = toy.ToyLit(toy.RateMap(), **{"iters": ITERS, **module_kwargs})
    trajectories = ResidualTrajectories(tol=TOL)
    assert trajectories.result is None  # nothing before a test
    trainer = toy.make_trainer(root, [trajectories, *callbacks])
    (metrics,) = trainer.test(module, toy.loader(x, y, batch_size))
    return trajectories.result, metrics, module


def test_result_histogram_and_means_match_closed_form(toy, tmp_path):
    x, y = toy.make_data(70)
    data, metrics, module = run(toy, tmp_path, x, y, callbacks=[IterationsToConverge(tol=TOL)])
    assert not os.listdir(tmp_path)  # the callback writes no file
    a = module.deq.f_module.rates(x).numpy()
    residuals = toy.closed_form_steps(a, ITERS)  # r_1 .. r_39 (70 columns), zeros where a = 0
    assert (residuals == 0).any() and (residuals > 1e-2).any()
    # Every sample at every r_n, once; below the range (and zero) in the lowest bin.
    assert isinstance(data["counts"], np.ndarray)
    assert data["counts"].shape == (ITERS - 1, 400) and data["counts"].dtype == np.int64
    assert data["counts"].sum() == 70 * (ITERS - 1)
    edges = data["log10_edges"]
    np.testing.assert_allclose(edges, np.linspace(-8, 0, 401))
    clipped = np.log10(np.clip(residuals, 1e-8, 1.0))
    for n in range(ITERS - 1):
        want, _ = np.histogram(clipped[n], bins=edges)
        np.testing.assert_array_equal(data["counts"][n], want)
    assert data["counts"][:, 0].sum() >= 2 * (ITERS - 1)  # the exact zeros of rate 0
    # Iterations to converge, per tolerance and per sample.
    np.testing.assert_allclose(data["tolerances"], DEFAULT_TOLERANCES)
    for tol, mean, total, not_conv in zip(data["tolerances"], data["mean_iters"],
                                          data["sum_iters"], data["not_converged"]):
        iters, conv = toy.closed_form_iters(a, tol, ITERS)
        assert total == iters.sum()
        assert mean == pytest.approx(iters.mean(), rel=1e-12)
        assert not_conv == (~conv).sum()
    np.testing.assert_array_equal(data["iters_at_tol"], toy.closed_form_iters(a, TOL, ITERS)[0])
    assert (data["n_samples"], data["max_iter"], data["tol"], data["stage"]) == \
        (70, ITERS - 1, TOL, "test")
    # The Table 2 number agrees with IterationsToConverge over batches of 32, 32 and 6.
    at_tol = data["mean_iters"][np.isclose(data["tolerances"], TOL)][0]
    assert metrics["test/iters_to_converge"] == pytest.approx(at_tol, rel=1e-6)


def test_known_residual_lands_in_its_bin(toy, tmp_path):
    # Rate a = 0.5: r_n = 1/3, 1/7, ... = 2^-n / (2 - 2^-n) at row n - 1; a few by hand.
    x, y = toy.make_data(4)
    x[:, 0] = 0.5 / 0.995
    data, _, _ = run(toy, tmp_path, x, y, iters=30)
    for n in (1, 2, 6, 21, 29):
        r = 0.5**n * 0.5 / (1 - 0.5 ** (n + 1))
        b = int(np.floor((np.log10(r) + 8) / 8 * 400)) if r >= 1e-8 else 0
        b = min(b, 399)
        assert data["counts"][n - 1, b] == 4, (n, r, b)


def test_solves_of_different_lengths_are_padded(toy, tmp_path):
    # The solver stops at 1e-3 once a whole batch is there; the slow samples are in batch 0 only.
    x, y = toy.make_data(70, seed=4)
    x[:, 0] = 0.8 * x[:, 0]
    x[:3, 0] = 0.99
    data, _, module = run(toy, tmp_path, x, y, tol=1e-3)
    a = module.deq.f_module.rates(x).numpy()
    below = toy.closed_form_residuals(a, ITERS) < 1e-3  # the solver's own stopping test
    # A batch's solve ends at the first iteration where all its samples are below 1e-3; it
    # has T outputs, so T - 1 rows.
    ends = [np.flatnonzero(below[:, s].all(axis=1)) for s in (slice(0, 32), slice(32, 64),
                                                               slice(64, 70))]
    lengths = [int(end[0]) if end.size else ITERS - 1 for end in ends]
    assert lengths[0] > max(lengths[1:])
    assert data["max_iter"] == lengths[0] == data["counts"].shape[0]
    per_row = data["counts"].sum(axis=1)
    for n in range(data["max_iter"]):
        assert per_row[n] == sum(size for size, length in zip((32, 32, 6), lengths) if length > n)


def test_results_of_two_runs_pool_into_the_run_over_both(toy, tmp_path):
    # What paper_figures does with seeds: the callback's results are additive.
    x, y = toy.make_data(70)
    both, _, _ = run(toy, tmp_path / "both", x, y)
    first, _, _ = run(toy, tmp_path / "first", x[:40], y[:40])
    second, _, _ = run(toy, tmp_path / "second", x[40:], y[40:])
    merged = merge_trajectories([first, second])
    for key in ("counts", "sum_iters", "not_converged", "iters_at_tol", "tolerances"):
        np.testing.assert_array_equal(merged[key], both[key])
    np.testing.assert_allclose(merged["mean_iters"], both["mean_iters"], rtol=1e-12)
    weighted = (40 * first["mean_iters"] + 30 * second["mean_iters"]) / 70
    np.testing.assert_allclose(merged["mean_iters"], weighted, rtol=1e-12)
    assert (merged["n_samples"], merged["max_iter"], merged["stage"]) == (70, ITERS - 1, "test")


def test_result_is_what_the_run_layer_saves(toy, tmp_path):
    # The keys of trajectories.npz, every value surviving save_npz without pickling.
    x, y = toy.make_data(20)
    data, _, _ = run(toy, tmp_path / "run", x, y)
    assert set(TRAJECTORY_KEYS) <= set(data)
    save_npz(tmp_path / "trajectories.npz", data)
    loaded = load_trajectories(tmp_path / "trajectories.npz")
    assert set(loaded) == set(data)
    for key, value in data.items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(loaded[key], value)
            assert loaded[key].dtype == value.dtype
        else:
            assert loaded[key] == value and type(loaded[key]) is type(value), key


def test_no_solve_gives_no_result(toy, tmp_path):
    class NoSolve(toy.ToyLit):
        def test_step(self, batch, batch_idx):
            return None

    x, y = toy.make_data(8)
    trajectories = ResidualTrajectories(tol=TOL)
    toy.make_trainer(tmp_path, [trajectories]).test(toy.ToyLit(toy.RateMap(), iters=5),
                                                    toy.loader(x, y))
    assert trajectories.result["n_samples"] == 8
    # A later test that solves nothing must not leave the earlier test's arrays behind.
    with pytest.warns(UserWarning, match=r"ResidualTrajectories\b.*\btest\b"):
        toy.make_trainer(tmp_path, [trajectories]).test(NoSolve(toy.RateMap(), iters=5),
                                                        toy.loader(x, y))
    assert trajectories.result is None


def test_invalid_arguments():
    with pytest.raises(TypeError, match="tol"):
        ResidualTrajectories()  # the Table 2 criterion has no default
    with pytest.raises(TypeError):
        ResidualTrajectories(TOL)  # keyword only
    with pytest.raises(ValueError, match=r"\btol\b.*\b0\.0\b"):
        ResidualTrajectories(tol=0.0)
    with pytest.raises(ValueError, match=r"\bn_bins\b.*\b0\b"):
        ResidualTrajectories(tol=TOL, n_bins=0)
    with pytest.raises(ValueError, match=r"\brange\b.*\(0\.0, 1\.0\)"):
        ResidualTrajectories(tol=TOL, range=(0.0, 1.0))
    with pytest.raises(ValueError, match=r"\btol_grid\b.*-1\.0\b"):
        ResidualTrajectories(tol=TOL, tol_grid=[1e-4, -1.0])
