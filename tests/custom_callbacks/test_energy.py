import os

import numpy as np
import pytest
import torch

from custom_callbacks import EnergyTracker
from runner.result_files import ENERGY_KEYS, load_energy, save_npz

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
    tracker = EnergyTracker(stage="test")
    assert tracker.result is None
    (metrics,) = toy.make_trainer(tmp_path, [tracker]).test(module, toy.loader(x, y, 32))
    assert not os.listdir(tmp_path)  # the callback writes no file
    data = tracker.result
    want = direct_mean_energy(module.deq.f_module, x, ITERS)
    np.testing.assert_allclose(data["mean_energy"], want, rtol=1e-10)
    assert (np.diff(data["mean_energy"]) <= 1e-12).all()  # gradient descent never goes up
    assert data["mean_energy"][0] > data["mean_energy"][-1]
    np.testing.assert_array_equal(data["n_samples"], np.full(ITERS, 70))
    np.testing.assert_allclose(data["sum_energy"], 70 * want, rtol=1e-10)
    assert data["stage"] == "test"
    assert metrics["test/energy_final"] == pytest.approx(want[-1], rel=1e-6)
    assert module.deq.n_observers == 0


def test_validation_energy_is_logged_per_epoch(toy, tmp_path):
    x, y = toy.make_data(40)
    module = toy.ToyLit(toy.QuadraticDescent(), iters=ITERS)
    logger = toy.RecordingLogger()
    tracker = EnergyTracker(stage="val")
    trainer = toy.make_trainer(tmp_path, [tracker], logger=logger, max_epochs=2,
                               limit_train_batches=1, num_sanity_val_steps=1)
    trainer.fit(module, toy.loader(x, y), toy.loader(x, y, 20))
    finals = logger.values("val/energy_final")
    assert len(finals) == 2  # one per epoch, none for the sanity check
    data = tracker.result  # the last epoch's, over both validation batches
    want = direct_mean_energy(module.deq.f_module, x, ITERS)
    np.testing.assert_allclose(data["mean_energy"], want, rtol=1e-10)
    np.testing.assert_array_equal(data["n_samples"], np.full(ITERS, 40))
    assert data["stage"] == "val"
    assert finals[-1] == pytest.approx(want[-1], rel=1e-6)
    assert "train/energy_final" not in {k for m, _ in logger.records for k in m}


def test_early_stopped_solves_drop_out_of_later_means(toy, tmp_path):
    x, y = toy.make_data(40)
    module = toy.ToyLit(toy.RateMap(), iters=ITERS, tol=1e-3)
    x[:20, 0] = 0.3 / 0.995  # batch 0 converges fast, batch 1 holds slow samples
    tracker = EnergyTracker()
    toy.make_trainer(tmp_path, [tracker]).test(module, toy.loader(x, y, 20))
    counts = tracker.result["n_samples"]
    assert counts[0] == 40 and counts[-1] == 20 and (np.diff(counts) <= 0).all()


def test_result_is_what_the_run_layer_saves(toy, tmp_path):
    x, y = toy.make_data(10)
    tracker = EnergyTracker()
    toy.make_trainer(tmp_path / "run", [tracker]).test(
        toy.ToyLit(toy.QuadraticDescent(), iters=5), toy.loader(x, y))
    assert set(ENERGY_KEYS) <= set(tracker.result)
    save_npz(tmp_path / "energy.npz", tracker.result)
    loaded = load_energy(tmp_path / "energy.npz")
    assert set(loaded) == set(tracker.result)
    for key in ("mean_energy", "sum_energy", "n_samples"):
        np.testing.assert_array_equal(loaded[key], tracker.result[key])
    assert (loaded["stage"], loaded["format_version"]) == ("test", 1)


def test_no_iterate_gives_no_result(toy, tmp_path):
    class NoSolve(toy.ToyLit):
        def test_step(self, batch, batch_idx):
            return None

    x, y = toy.make_data(8)
    tracker = EnergyTracker()
    with pytest.warns(UserWarning, match=r"EnergyTracker\b.*\btest\b"):
        toy.make_trainer(tmp_path, [tracker]).test(NoSolve(toy.QuadraticDescent(), iters=5),
                                                   toy.loader(x, y))
    assert tracker.result is None


def test_invalid_stage():
    with pytest.raises(ValueError, match=r"'validation'.*'val'"):  # the bad stage, a valid one
        EnergyTracker(stage="validation")


@pytest.mark.parametrize("structure", ["onematrix", "evenodd"])
def test_hopfield_energy_takes_the_input_drive_once_per_batch(toy, tmp_path, structure):
    """The Hopfield modules' energy accepts ``Ux``: the tracker computes ``U rho(x)`` once per
    batch instead of at every iterate, with the same energies."""
    from deq_modules.lit import LitHopfieldDEQ

    torch.manual_seed(0)
    module = LitHopfieldDEQ(layers=[20, 16, 8, 12, 3], model="ham", structure=structure,
                            forward_kwargs=dict(solver="picard", iter=ITERS)).double()
    f = module.deq.f_module
    x = torch.rand(50, 20, dtype=torch.float64)
    y = torch.nn.functional.one_hot(torch.arange(50) % 3, 3).double()
    calls = []
    preprocess = f.preprocess_inputs
    f.preprocess_inputs = lambda inputs: calls.append(len(inputs)) or preprocess(inputs)
    tracker = EnergyTracker(stage="test")
    toy.make_trainer(tmp_path, [tracker]).test(module, toy.loader(x, y, 32))
    assert calls == [32, 32, 18, 18]  # per batch: the DEQ's, the tracker's; not one per iterate
    f.preprocess_inputs = preprocess
    with torch.no_grad():  # the reference: energy(x, z) computing U rho(x) itself
        Ux = f.preprocess_inputs(x)
        z = torch.zeros(50, f.state_size, dtype=torch.float64)
        want = []
        for _ in range(ITERS):
            z = f(Ux, z)
            want.append(f.energy(x, z).mean().item())
    np.testing.assert_allclose(tracker.result["mean_energy"], want, rtol=1e-10)
