"""paper_figures/heatmap.py: one panel of Figures 3-4, and the image the run layer logs to W&B,
on trajectories built here from the closed-form residuals of a linear contraction."""
import numpy as np
import pytest
from matplotlib.collections import QuadMesh
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from paper_figures.heatmap import figure_to_array, plot_trajectory_heatmap
from tests.contraction import rates  # noqa: F401 (a fixture)
from tests.contraction import ITERS, TOL, contraction_residuals, trajectories_of


def test_heatmap_has_the_figure_elements(rates, tmp_path):
    data = trajectories_of(contraction_residuals(rates))
    ax = plot_trajectory_heatmap(data, title="State dynamics for a toy")
    fig = ax.figure
    assert isinstance(fig, Figure)
    (mesh,) = [c for c in ax.collections if isinstance(c, QuadMesh)]
    assert isinstance(mesh.norm, LogNorm) and mesh.norm.vmin == 1
    assert mesh.norm.vmax == data["counts"].max()
    assert np.ma.count_masked(mesh.get_array()) == (data["counts"] == 0).sum()  # zeros blank
    # Column n holds r_{n+1}, position n of the papers' count: centred on n, like the circle.
    x_edges = mesh.get_coordinates()[0, :, 0]
    np.testing.assert_array_equal(x_edges, np.arange(ITERS) - 0.5)
    assert ax.get_yscale() == "log" and ax.get_ylim() == pytest.approx((1e-8, 1.0))
    lines = ax.get_lines()
    dashed = [ln for ln in lines if ln.get_linestyle() == "--"]
    assert len(dashed) == 1 and list(dashed[0].get_ydata()) == [TOL, TOL]
    assert dashed[0].get_color() == "white"
    (curve,) = [ln for ln in lines if ln.get_color() == "tab:cyan"]
    order = np.argsort(data["tolerances"])
    np.testing.assert_allclose(curve.get_xdata(), data["mean_iters"][order])
    np.testing.assert_allclose(curve.get_ydata(), data["tolerances"][order])
    circle = [ln for ln in lines if ln.get_marker() == "o" and ln.get_markeredgecolor() == "white"]
    assert len(circle) == 1 and circle[0].get_markerfacecolor() == "none"
    assert circle[0].get_xdata()[0] == pytest.approx(data["iters_at_tol"].mean())
    assert list(circle[0].get_ydata()) == [TOL]
    assert ax.get_title() == "State dynamics for a toy"
    assert len(fig.axes) == 2  # the heatmap and its colour bar
    path = tmp_path / "heatmap.png"
    fig.savefig(path, dpi=100)  # Agg through Figure.savefig: no pyplot needed
    assert path.stat().st_size > 10_000


def test_heatmap_into_given_axes_with_shared_norm(rates):
    data = trajectories_of(contraction_residuals(rates[:20]))
    fig = Figure()
    axes = fig.subplots(1, 2)
    norm = LogNorm(1, 100)
    for ax in axes:
        assert plot_trajectory_heatmap(data, ax=ax, norm=norm) is ax
    assert len(fig.axes) == 2  # no colour bar unless asked
    assert all(ax.collections[0].norm is norm for ax in axes)


def test_figure_to_array_gives_the_rendered_pixels():
    fig = Figure(figsize=(2.0, 1.0), dpi=50, facecolor=(1.0, 0.0, 0.0))
    image = figure_to_array(fig)
    assert image.dtype == np.uint8 and image.shape == (50, 100, 3)  # (height, width, RGB)
    assert (image == np.array([255, 0, 0], dtype=np.uint8)).all()


def test_heatmap_renders_to_an_rgb_image(rates):
    # What the run layer logs to W&B as test/residual_heatmap.
    fig = plot_trajectory_heatmap(trajectories_of(contraction_residuals(rates))).figure
    image = figure_to_array(fig)
    width, height = fig.get_size_inches() * fig.dpi
    assert image.dtype == np.uint8 and image.shape == (round(height), round(width), 3)
    assert (image == 255).all(axis=2).any()  # white background
    assert (image.max(axis=2) < 128).any()  # dark cells of the dense region and the text
