"""``trajectories.npz`` / ``energy.npz``: save, load, pool, on data built here from the
closed-form residuals of a linear contraction (no torch, no Lightning)."""
import os

import numpy as np
import pytest

from runner.result_files import (BadResultFile, load_energy, load_trajectories,
                                 merge_trajectories, save_npz)
from tests.contraction import rates  # noqa: F401 (a fixture)
from tests.contraction import ITERS, N_BINS, contraction_residuals, trajectories_of


def assert_same(got, want):
    assert set(got) == set(want)
    for key, value in want.items():
        if isinstance(value, np.ndarray):
            np.testing.assert_allclose(got[key], value, rtol=1e-12, err_msg=key)
        else:
            assert got[key] == value, key


# -- save and load ---------------------------------------------------------------------------
def test_save_load_round_trip_is_atomic(rates, tmp_path):
    data = trajectories_of(contraction_residuals(rates))
    path = tmp_path / "run" / "trajectories.npz"  # the folder is made
    save_npz(path, data)
    assert os.listdir(path.parent) == ["trajectories.npz"]  # no temporary file left
    loaded = load_trajectories(path)
    assert_same(loaded, data)
    assert loaded["counts"].dtype == np.int64
    scalars = (loaded["tol"], loaded["stage"], loaded["n_samples"])
    assert tuple(map(type, scalars)) == (float, str, int)  # 0-d arrays back as Python values
    # Saving again replaces the file.
    other = trajectories_of(contraction_residuals(rates[:10]))
    save_npz(path, other)
    assert_same(load_trajectories(path), other)
    assert os.listdir(path.parent) == ["trajectories.npz"]


def test_failed_save_keeps_the_old_file(rates, tmp_path):
    class Unsaveable:
        def __array__(self, *args, **kwargs):
            raise RuntimeError("cannot convert")

    data = trajectories_of(contraction_residuals(rates))
    path = tmp_path / "trajectories.npz"
    save_npz(path, data)
    with pytest.raises(RuntimeError, match="cannot convert"):
        save_npz(path, dict(data, counts=Unsaveable()))
    assert os.listdir(tmp_path) == ["trajectories.npz"]
    assert_same(load_trajectories(path), data)


@pytest.mark.parametrize("keep", [0.0, 0.5, 0.99])
def test_truncated_file_is_a_bad_result_file(rates, tmp_path, keep):
    whole = tmp_path / "whole.npz"
    save_npz(whole, trajectories_of(contraction_residuals(rates)))
    raw = whole.read_bytes()
    cut = tmp_path / "trajectories.npz"
    cut.write_bytes(raw[: int(len(raw) * keep)])
    with pytest.raises(BadResultFile) as info:
        load_trajectories(cut)
    assert isinstance(info.value, ValueError)
    assert str(cut) in str(info.value)


def test_truncated_energy_file_is_a_bad_result_file(tmp_path):
    whole = tmp_path / "whole.npz"
    save_npz(whole, dict(mean_energy=np.linspace(3.0, 1.0, 50), n_samples=np.full(50, 7)))
    cut = tmp_path / "energy.npz"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(BadResultFile) as info:
        load_energy(cut)
    assert str(cut) in str(info.value)


def test_not_an_npz_is_a_bad_result_file(tmp_path):
    path = tmp_path / "trajectories.npz"
    path.write_text("not a zip archive\n")
    with pytest.raises(BadResultFile) as info:
        load_trajectories(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("load, key", [(load_trajectories, "counts"),
                                       (load_trajectories, "n_samples"),
                                       (load_energy, "mean_energy")])
def test_missing_key_is_a_bad_result_file(rates, tmp_path, load, key):
    data = dict(trajectories_of(contraction_residuals(rates)), mean_energy=np.ones(3))
    del data[key]
    path = tmp_path / "result.npz"
    save_npz(path, data)
    with pytest.raises(BadResultFile) as info:
        load(path)
    assert str(path) in str(info.value) and repr(key) in str(info.value)


def test_missing_file_is_not_a_bad_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_trajectories(tmp_path / "absent.npz")


# -- pooling ---------------------------------------------------------------------------------
def test_merge_of_two_runs_equals_one_run_over_both(rates):
    residuals = contraction_residuals(rates)
    first, second = trajectories_of(residuals[:, :40]), trajectories_of(residuals[:, 40:])
    merged = merge_trajectories([first, second])
    assert_same(merged, trajectories_of(residuals))
    weighted = (40 * first["mean_iters"] + 30 * second["mean_iters"]) / 70
    np.testing.assert_allclose(merged["mean_iters"], weighted, rtol=1e-12)


def test_merge_pads_a_shorter_run(rates):
    # A run whose solves stopped after 25 iterations has no rows beyond them.
    residuals = contraction_residuals(rates)
    short, full = trajectories_of(residuals[:25, :40]), trajectories_of(residuals[:, 40:])
    merged = merge_trajectories([short, full])
    assert merged["max_iter"] == ITERS - 1 and merged["counts"].shape == (ITERS - 1, N_BINS)
    np.testing.assert_array_equal(merged["counts"][:25], short["counts"] + full["counts"][:25])
    np.testing.assert_array_equal(merged["counts"][25:], full["counts"][25:])
    np.testing.assert_array_equal(merged["sum_iters"], short["sum_iters"] + full["sum_iters"])
    np.testing.assert_array_equal(merged["iters_at_tol"],
                                  np.concatenate([short["iters_at_tol"], full["iters_at_tol"]]))
    assert merged["n_samples"] == 70


def test_merge_pads_and_refuses_mismatches():
    def fake(rows, n, tolerances=(1e-4, 1e-2), tol=1e-4):
        return dict(counts=np.ones((rows, 3), dtype=np.int64), log10_edges=np.linspace(-8, 0, 4),
                    tolerances=np.array(tolerances), sum_iters=np.array([2 * n, n]),
                    not_converged=np.array([1, 0]), iters_at_tol=np.full(n, 2), tol=tol,
                    stage="test", n_samples=n, max_iter=rows)
    merged = merge_trajectories([fake(2, 5), fake(4, 15)])
    np.testing.assert_array_equal(merged["counts"][:, 0], [2, 2, 1, 1])
    np.testing.assert_allclose(merged["mean_iters"], [2.0, 1.0])
    assert merged["max_iter"] == 4 and merged["iters_at_tol"].size == 20
    with pytest.raises(ValueError, match="tolerances"):
        merge_trajectories([fake(2, 5), fake(2, 5, tolerances=(1e-5, 1e-2))])
    with pytest.raises(ValueError, match="log10_edges"):
        merge_trajectories([fake(2, 5), dict(fake(2, 5), log10_edges=np.linspace(-6, 0, 4))])
    with pytest.raises(ValueError, match="tol"):
        merge_trajectories([fake(2, 5), fake(2, 5, tol=1e-3)])
    with pytest.raises(ValueError, match="merge_trajectories"):  # nothing to merge
        merge_trajectories([])


def test_energy_round_trip(tmp_path):
    mean = np.array([3.0, 2.0, 1.5])
    data = dict(mean_energy=mean, sum_energy=10 * mean, n_samples=np.full(3, 10, dtype=np.int64),
                stage="val", format_version=1)
    save_npz(tmp_path / "energy.npz", data)
    assert_same(load_energy(tmp_path / "energy.npz"), data)
