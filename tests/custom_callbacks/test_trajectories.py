import os
import warnings

import numpy as np
import pytest
from lightning.pytorch.loggers import WandbLogger
from matplotlib.collections import QuadMesh
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from custom_callbacks import (DEFAULT_TOLERANCES, IterationsToConverge, ResidualTrajectories,
                              load_trajectories, merge_trajectories, plot_trajectory_heatmap)

ITERS = 40
TOL = 1e-4


def run(toy, root, x, y, batch_size=32, callbacks=(), logger=False, **module_kwargs):
    """trainer.test with a ResidualTrajectories writing to ``root``; (data, test results)."""
    module = toy.ToyLit(toy.RateMap(), **{"iters": ITERS, **module_kwargs})
    trajectories = ResidualTrajectories(out_dir=root)
    trainer = toy.make_trainer(root, [trajectories, *callbacks], logger=logger)
    (result,) = trainer.test(module, toy.loader(x, y, batch_size))
    assert trajectories.path == os.path.join(root, "trajectories.npz")
    return load_trajectories(trajectories.path), result, module


def test_saved_histogram_and_means_match_closed_form(toy, tmp_path):
    x, y = toy.make_data(70)
    data, result, module = run(toy, tmp_path, x, y, callbacks=[IterationsToConverge(TOL)])
    assert os.listdir(tmp_path) == ["trajectories.npz"]  # no temporary file left behind
    a = module.deq.f_module.rates(x).numpy()
    residuals = toy.closed_form_residuals(a, ITERS)  # (ITERS, 70), exact zeros where a = 0
    assert (residuals == 0).any() and (residuals > 1e-2).any()
    # Every sample at every iteration, once; below the range (and zero) in the lowest bin.
    assert data["counts"].shape == (ITERS, 400) and data["counts"].dtype == np.int64
    assert data["counts"].sum() == 70 * ITERS
    edges = data["log10_edges"]
    np.testing.assert_allclose(edges, np.linspace(-8, 0, 401))
    clipped = np.log10(np.clip(residuals, 1e-8, 1.0))
    for n in range(ITERS):
        want, _ = np.histogram(clipped[n], bins=edges)
        np.testing.assert_array_equal(data["counts"][n], want)
    assert data["counts"][1:, 0].sum() >= 2 * (ITERS - 1)  # the exact zeros of rate 0
    # Iterations to converge, per tolerance and per sample.
    np.testing.assert_allclose(data["tolerances"], DEFAULT_TOLERANCES)
    for tol, mean, not_conv in zip(data["tolerances"], data["mean_iters"], data["not_converged"]):
        iters, conv = toy.closed_form_iters(a, tol, ITERS)
        assert mean == pytest.approx(iters.mean(), rel=1e-12)
        assert not_conv == (~conv).sum()
    np.testing.assert_array_equal(data["iters_at_tol"], toy.closed_form_iters(a, TOL, ITERS)[0])
    assert (data["n_samples"], data["max_iter"], data["tol"], data["stage"]) == (70, ITERS, TOL, "test")
    # The Table 2 number agrees with IterationsToConverge over batches of 32, 32 and 6.
    at_tol = data["mean_iters"][np.isclose(data["tolerances"], TOL)][0]
    assert result["test/iters_to_converge"] == pytest.approx(at_tol, rel=1e-6)


def test_known_residual_lands_in_its_bin(toy, tmp_path):
    # Rate a = 0.5: residuals 1, 1/3, 1/7, ... = 2^-n / (2 - 2^-n); check a few by hand.
    x, y = toy.make_data(4)
    x[:, 0] = 0.5 / 0.995
    data, _, _ = run(toy, tmp_path, x, y, iters=30)
    for n in (0, 1, 5, 20, 29):
        r = 0.5**n * 0.5 / (1 - 0.5 ** (n + 1))
        b = int(np.floor((np.log10(r) + 8) / 8 * 400)) if r >= 1e-8 else 0
        b = min(b, 399)
        assert data["counts"][n, b] == 4, (n, r, b)


def test_solves_of_different_lengths_are_padded(toy, tmp_path):
    # The solver stops at 1e-3 once a whole batch is there; the slow samples are in batch 0 only.
    x, y = toy.make_data(70, seed=4)
    x[:, 0] = 0.8 * x[:, 0]
    x[:3, 0] = 0.99
    module_kwargs = dict(tol=1e-3)
    data, _, module = run(toy, tmp_path, x, y, **module_kwargs)
    a = module.deq.f_module.rates(x).numpy()
    lengths = [toy.closed_form_iters(a[s], 1e-3, ITERS)[0].max() for s in (slice(0, 32), slice(32, 64), slice(64, 70))]
    assert lengths[0] > max(lengths[1:])
    assert data["max_iter"] == lengths[0] == data["counts"].shape[0]
    per_row = data["counts"].sum(axis=1)
    for n in range(data["max_iter"]):
        assert per_row[n] == sum(size for size, length in zip((32, 32, 6), lengths) if length > n)


def test_merge_of_two_runs_equals_one_run_over_both(toy, tmp_path):
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
    assert (merged["n_samples"], merged["max_iter"], merged["stage"]) == (70, ITERS, "test")


def test_merge_pads_and_refuses_mismatches():
    def fake(rows, n, tolerances=(1e-4, 1e-2)):
        return dict(counts=np.ones((rows, 3), dtype=np.int64), log10_edges=np.linspace(-8, 0, 4),
                    tolerances=np.array(tolerances), sum_iters=np.array([2 * n, n]),
                    not_converged=np.array([1, 0]), iters_at_tol=np.full(n, 2), tol=1e-4,
                    stage="test", n_samples=n, max_iter=rows)
    merged = merge_trajectories([fake(2, 5), fake(4, 15)])
    np.testing.assert_array_equal(merged["counts"][:, 0], [2, 2, 1, 1])
    np.testing.assert_allclose(merged["mean_iters"], [2.0, 1.0])
    assert merged["max_iter"] == 4 and merged["iters_at_tol"].size == 20
    with pytest.raises(ValueError, match="tolerances"):
        merge_trajectories([fake(2, 5), fake(2, 5, tolerances=(1e-5, 1e-2))])
    with pytest.raises(ValueError, match="at least one"):
        merge_trajectories([])


def test_plot_has_the_figure_elements(toy, tmp_path):
    x, y = toy.make_data(70)
    data, _, _ = run(toy, tmp_path, x, y)
    ax = plot_trajectory_heatmap(data, title="State dynamics for a toy")
    fig = ax.figure
    assert isinstance(fig, Figure)
    (mesh,) = [c for c in ax.collections if isinstance(c, QuadMesh)]
    assert isinstance(mesh.norm, LogNorm) and mesh.norm.vmin == 1
    assert mesh.norm.vmax == data["counts"].max()
    assert np.ma.count_masked(mesh.get_array()) == (data["counts"] == 0).sum()  # zeros blank
    assert ax.get_yscale() == "log" and ax.get_ylim() == pytest.approx((1e-8, 1.0))
    lines = {line.get_label(): line for line in ax.get_lines()}
    dashed = [ln for ln in lines.values() if ln.get_linestyle() == "--"]
    assert len(dashed) == 1 and list(dashed[0].get_ydata()) == [TOL, TOL]
    assert dashed[0].get_color() == "white"
    curve = [ln for ln in lines.values() if ln.get_color() == "tab:cyan"]
    assert len(curve) == 1
    order = np.argsort(data["tolerances"])
    np.testing.assert_allclose(curve[0].get_xdata(), data["mean_iters"][order])
    circle = [ln for ln in lines.values()
              if ln.get_marker() == "o" and ln.get_markeredgecolor() == "white"]
    assert len(circle) == 1 and circle[0].get_markerfacecolor() == "none"
    assert circle[0].get_xdata()[0] == pytest.approx(data["iters_at_tol"].mean())
    assert list(circle[0].get_ydata()) == [TOL]
    assert len(fig.axes) == 2  # the heatmap and its colour bar
    path = tmp_path / "heatmap.png"
    fig.savefig(path, dpi=100)  # Agg through Figure.savefig: no pyplot needed
    assert path.stat().st_size > 10_000


def test_plot_into_given_axes_with_shared_norm(toy, tmp_path):
    x, y = toy.make_data(20)
    data, _, _ = run(toy, tmp_path, x, y)
    fig = Figure()
    axes = fig.subplots(1, 2)
    norm = LogNorm(1, 100)
    for ax in axes:
        assert plot_trajectory_heatmap(data, ax=ax, norm=norm) is ax
    assert len(fig.axes) == 2  # no colour bar unless asked
    assert all(ax.collections[0].norm is norm for ax in axes)


def test_image_is_logged_to_wandb_and_failures_only_warn(toy, tmp_path, monkeypatch,
                                                          no_wandb_run):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    logged = []

    class Recording(WandbLogger):
        def log_image(self, key, images, step=None, **kwargs):
            logged.append((key, images))
            raise RuntimeError("no network")

    x, y = toy.make_data(10)
    with pytest.warns(UserWarning, match="could not log 'test/residual_heatmap'"):
        data, _, _ = run(toy, tmp_path, x, y, logger=Recording(save_dir=str(tmp_path)))
    ((key, (image,)),) = logged
    assert key == "test/residual_heatmap" and image.ndim == 3 and image.shape[2] == 3
    assert data["n_samples"] == 10  # the file is still written
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        run(toy, tmp_path / "quiet", x, y, logger=False)  # no W&B logger: nothing to warn about


def test_invalid_arguments():
    with pytest.raises(ValueError, match="n_bins"):
        ResidualTrajectories(n_bins=0)
    with pytest.raises(ValueError, match="range"):
        ResidualTrajectories(range=(0.0, 1.0))
    with pytest.raises(ValueError, match="tol_grid"):
        ResidualTrajectories(tol_grid=[1e-4, -1.0])


def test_wandb_offline_run_gets_the_image(toy, tmp_path, monkeypatch, no_wandb_run):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    try:
        logger = WandbLogger(save_dir=str(tmp_path), offline=True, project="test-callbacks")
        logger.experiment  # starts the offline run
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"wandb cannot start an offline run here: {exc!r}")
    try:
        x, y = toy.make_data(10)
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            run(toy, tmp_path / "out", x, y, logger=logger)
        run_dir = logger.experiment.dir
    finally:
        no_wandb_run.finish()
    images = [f for _, _, files in os.walk(run_dir) for f in files
              if f.startswith("residual_heatmap") and f.endswith(".png")]
    assert len(images) == 1
