import os

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from custom_callbacks import EnergyTracker, load_energy, plot_energy_curve

ITERS = 25


def direct_mean_energy(f_module, x, iters):
    """Reference: unroll the Picard iterations from zero and average the energy per iteration."""
    with torch.no_grad():
        Ux = f_module.preprocess_inputs(x)
        z = torch.zeros(x.shape[0], f_module.state_size, dtype=x.dtype)
        means = []
        for _ in range(iters):
            z = f_module(Ux, z)
            means.append(f_module.energy(x, z).mean().item())
    return np.array(means)


def test_energy_of_gradient_descent_map_decreases_and_matches(toy, tmp_path):
    x, y = toy.make_data(70)
    module = toy.ToyLit(toy.QuadraticDescent(), iters=ITERS)
    tracker = EnergyTracker(stage="test", out_dir=tmp_path)
    (result,) = toy.make_trainer(tmp_path, [tracker]).test(module, toy.loader(x, y, 32))
    assert tracker.path == os.path.join(tmp_path, "energy.npz")
    assert os.listdir(tmp_path) == ["energy.npz"]  # written atomically, no temporary file left
    data = load_energy(tracker.path)
    want = direct_mean_energy(module.deq.f_module, x, ITERS)
    np.testing.assert_allclose(data["mean_energy"], want, rtol=1e-10)
    assert (np.diff(data["mean_energy"]) <= 1e-12).all()  # gradient descent never goes up
    assert data["mean_energy"][0] > data["mean_energy"][-1]
    np.testing.assert_array_equal(data["n_samples"], np.full(ITERS, 70))
    assert data["stage"] == "test"
    assert result["test/energy_final"] == pytest.approx(want[-1], rel=1e-6)
    assert module.deq._observers == []


def test_validation_energy_is_logged_per_epoch(toy, tmp_path):
    x, y = toy.make_data(40)
    module = toy.ToyLit(toy.QuadraticDescent(), iters=ITERS)
    logger = toy.RecordingLogger()
    tracker = EnergyTracker(stage="val", out_dir=tmp_path, filename="val_energy.npz")
    trainer = toy.make_trainer(tmp_path, [tracker], logger=logger, max_epochs=2,
                               limit_train_batches=1, num_sanity_val_steps=1)
    trainer.fit(module, toy.loader(x, y), toy.loader(x, y, 20))
    finals = logger.values("val/energy_final")
    assert len(finals) == 2  # one per epoch, none for the sanity check
    data = load_energy(tmp_path / "val_energy.npz")  # the last epoch's
    want = direct_mean_energy(module.deq.f_module, x, ITERS)
    np.testing.assert_allclose(data["mean_energy"], want, rtol=1e-10)
    assert finals[-1] == pytest.approx(want[-1], rel=1e-6)
    assert "train/energy_final" not in {k for m, _ in logger.records for k in m}


def test_early_stopped_solves_drop_out_of_later_means(toy, tmp_path):
    x, y = toy.make_data(40)
    module = toy.ToyLit(toy.RateMap(), iters=ITERS, tol=1e-3)
    x[:20, 0] = 0.3 / 0.995  # batch 0 converges fast, batch 1 holds slow samples
    tracker = EnergyTracker(out_dir=tmp_path)
    toy.make_trainer(tmp_path, [tracker]).test(module, toy.loader(x, y, 20))
    counts = load_energy(tracker.path)["n_samples"]
    assert counts[0] == 40 and counts[-1] == 20 and (np.diff(counts) <= 0).all()


def test_plot_energy_curve():
    ax = plot_energy_curve({"mean_energy": np.array([3.0, 2.0, 1.5])}, title="HAM-EO")
    assert isinstance(ax.figure, Figure)
    (line,) = ax.get_lines()
    np.testing.assert_array_equal(line.get_xdata(), [1, 2, 3])


def test_invalid_stage():
    with pytest.raises(ValueError, match="valid stages"):
        EnergyTracker(stage="validation")


def test_curve_is_logged_to_wandb(toy, tmp_path, monkeypatch, no_wandb_run):
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "disabled")
    logged = []

    class Recording(WandbLogger):
        def log_image(self, key, images, step=None, **kwargs):
            logged.append((key, images[0].shape))

    x, y = toy.make_data(10)
    module = toy.ToyLit(toy.QuadraticDescent(), iters=5)
    trainer = toy.make_trainer(tmp_path, [EnergyTracker(out_dir=tmp_path)],
                               logger=Recording(save_dir=str(tmp_path)))
    trainer.test(module, toy.loader(x, y))
    ((key, shape),) = logged
    assert key == "test/energy_curve" and len(shape) == 3
