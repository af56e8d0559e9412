import numpy as np
import pytest
import torch

from custom_callbacks import (EnergyTracker, IterationsToConverge, ResidualTrajectories,
                              iterations_to_converge)

TOL = 1e-4
ITERS = 40


def rates_of(toy_module, x):
    return toy_module.rates(x).numpy()


def test_function_matches_closed_form(toy):
    a = np.array([0.0, 0.1, 0.5, 0.7, 0.8, 0.9, 0.97, 0.995])
    steps = torch.from_numpy(toy.closed_form_steps(a, ITERS))  # r_1 .. r_39
    for tol in (1e-2, TOL, 1e-8):
        iters, converged = iterations_to_converge(steps, tol)
        want_iters, want_conv = toy.closed_form_iters(a, tol, ITERS)
        assert iters.dtype == torch.long and converged.dtype == torch.bool
        np.testing.assert_array_equal(iters.numpy(), want_iters)
        np.testing.assert_array_equal(converged.numpy(), want_conv)
    assert not converged[-1] and iters[-1] == ITERS - 1  # never converged: T - 1
    assert converged[0] and iters[0] == 0  # rate 0: r_1 = 0 already
    # A grid of tolerances gives one row per tolerance.
    grid = [1e-2, TOL, 1e-8]
    iters_grid, conv_grid = iterations_to_converge(steps, grid)
    assert iters_grid.shape == (3, a.size)
    for row, tol in enumerate(grid):
        np.testing.assert_array_equal(iters_grid[row].numpy(), toy.closed_form_iters(a, tol, ITERS)[0])


def test_the_papers_rule_on_hand_made_traces():
    """T = 5 outputs, so r_1 .. r_4: the count is the 0-based position of the first r_n < tol,
    and T - 1 = 4 when there is none."""
    steps = torch.tensor([[5e-5, 1e-1, 1e-1, 1e-1, float("nan")],  # r_1
                          [1e-1, 1e-1, 1e-1, 1e-1, float("nan")],  # r_2
                          [1e-1, 1e-1, 1e-5, 1e-1, float("nan")],  # r_3
                          [1e-1, 1e-1, 1e-1, 9e-5, float("nan")]])  # r_4
    iters, converged = iterations_to_converge(steps, TOL)
    # first residual / never / late / at the last one / NaN never converges
    assert iters.tolist() == [0, 4, 2, 3, 4]
    assert converged.tolist() == [True, False, True, True, False]
    # Converged at position 0 is converged (the published code counted it as never: a defect).
    assert iterations_to_converge(steps[:, :1], TOL)[1].item() is True
    # A solve of one iteration has no r_n: nothing converged, count 0 = T - 1.
    iters, converged = iterations_to_converge(torch.zeros(0, 3), TOL)
    assert iters.tolist() == [0, 0, 0] and not converged.any()


def test_function_edge_cases():
    steps = torch.tensor([[1.0, 1.0, float("nan")], [0.0, 1e-5, float("nan")]])
    iters, converged = iterations_to_converge(steps, TOL)
    assert iters.tolist() == [1, 1, 2]  # converged at position 1; never: T - 1 = 2
    assert converged.tolist() == [True, True, False]  # NaN never converges
    # float32 residuals right at the float32 rounding of 1e-4: a single tolerance and a grid
    # compare the same rounded value, so Table 2 and the figure's curve agree.
    f = np.float32(TOL)
    edge = [float(f), float(np.nextafter(f, np.float32(0))), float(np.nextafter(f, np.float32(1)))]
    steps32 = torch.tensor([[1.0] * 3, edge], dtype=torch.float32)
    assert iterations_to_converge(steps32, TOL)[1].tolist() == [False, True, False]
    assert iterations_to_converge(steps32, np.array([TOL, 1e-8]))[1][0].tolist() == [False, True, False]
    with pytest.raises(ValueError, match=r"\btol\b.*\(1, 1\)"):  # tol and its shape
        iterations_to_converge(steps, [[1e-4]])
    with pytest.raises(ValueError, match="step_trace"):
        iterations_to_converge(steps[0], TOL)


def test_test_stage_logs_closed_form(toy, tmp_path):
    x, y = toy.make_data(70)  # batches of 32, 32 and 6
    module = toy.ToyLit(toy.RateMap(), iters=ITERS)
    want_iters, want_conv = toy.closed_form_iters(rates_of(module.deq.f_module, x), TOL, ITERS)
    assert 0 < (~want_conv).sum() < 70
    trainer = toy.make_trainer(tmp_path, [IterationsToConverge(tol=TOL)])
    (result,) = trainer.test(module, toy.loader(x, y))
    assert result["test/iters_to_converge"] == pytest.approx(want_iters.mean(), rel=1e-6)
    assert result["test/not_converged"] == (~want_conv).sum()
    assert module.deq.n_observers == 0


def test_fit_logs_train_steps_and_val_epoch(toy, tmp_path):
    x, y = toy.make_data(96, seed=1)
    xv, yv = toy.make_data(50, seed=2)
    module = toy.ToyLit(toy.RateMap(), iters=ITERS)
    logger = toy.RecordingLogger()
    trainer = toy.make_trainer(tmp_path, [IterationsToConverge(tol=TOL)], logger=logger,
                               limit_train_batches=3, limit_val_batches=2)
    trainer.fit(module, toy.loader(x, y, 32), toy.loader(xv, yv, 20))
    rates = rates_of(module.deq.f_module, x)
    batch_iters, batch_not_conv = [], []
    for b in range(3):
        iters, conv = toy.closed_form_iters(rates[32 * b: 32 * (b + 1)], TOL, ITERS)
        batch_iters.append(iters.mean())
        batch_not_conv.append((~conv).sum())
    assert np.allclose(logger.values("train/iters_to_converge_step"), batch_iters, rtol=1e-6)
    assert logger.values("train/not_converged_step") == batch_not_conv
    assert logger.values("train/iters_to_converge_epoch") == pytest.approx([np.mean(batch_iters)])
    assert logger.values("train/not_converged_epoch") == pytest.approx([np.mean(batch_not_conv)])
    iters, conv = toy.closed_form_iters(rates_of(module.deq.f_module, xv[:40]), TOL, ITERS)
    assert logger.values("val/iters_to_converge") == pytest.approx([iters.mean()], rel=1e-6)
    assert logger.values("val/not_converged") == [(~conv).sum()]
    assert module.deq.n_observers == 0


def test_solver_stopping_early_counts_its_own_length(toy, tmp_path):
    # The solver stops at 1e-3 once the whole batch is there; at 1e-4 the slow samples count as
    # the length of their solve and as not converged.
    x, y = toy.make_data(20, seed=3)
    x[2:5, 0] = 0.5  # no sample too slow for 1e-3 within 40 iterations
    module = toy.ToyLit(toy.RateMap(), iters=ITERS, tol=1e-3)
    trainer = toy.make_trainer(tmp_path, [IterationsToConverge(tol=TOL)])
    (result,) = trainer.test(module, toy.loader(x, y))
    n_solve = module.deq.last_forward_stats.n_iter
    assert n_solve < ITERS
    want_iters, want_conv = toy.closed_form_iters(rates_of(module.deq.f_module, x), TOL, n_solve)
    assert (~want_conv).sum() > 0
    assert result["test/iters_to_converge"] == pytest.approx(want_iters.mean(), rel=1e-6)
    assert result["test/not_converged"] == (~want_conv).sum()


def run_test(toy, root, callbacks, x, y):
    module = toy.ToyLit(toy.RateMap(), iters=ITERS)
    (result,) = toy.make_trainer(root, callbacks).test(module, toy.loader(x, y))
    assert module.deq.n_observers == 0
    return result


def test_callback_order_does_not_matter(toy, tmp_path):
    x, y = toy.make_data(70)
    alone = run_test(toy, tmp_path / "alone", [IterationsToConverge(tol=TOL)], x, y)
    tight = run_test(toy, tmp_path / "tight", [IterationsToConverge(tol=1e-6)], x, y)

    def callbacks():
        return [IterationsToConverge(tol=TOL), IterationsToConverge(tol=1e-6, suffix="@1e-6"),
                ResidualTrajectories(tol=TOL), EnergyTracker()]

    fwd_callbacks, bwd_callbacks = callbacks(), callbacks()
    forward = run_test(toy, tmp_path / "fwd", fwd_callbacks, x, y)
    backward = run_test(toy, tmp_path / "bwd", bwd_callbacks[::-1], x, y)
    assert forward == backward
    for key in alone:
        assert forward[key] == alone[key]
    assert forward["test/iters_to_converge@1e-6"] == tight["test/iters_to_converge"]
    assert forward["test/not_converged@1e-6"] == tight["test/not_converged"]
    assert forward["test/iters_to_converge@1e-6"] > forward["test/iters_to_converge"]
    for fwd_cb, bwd_cb in zip(fwd_callbacks[2:], bwd_callbacks[2:]):  # trajectories, energy
        fwd, bwd = fwd_cb.result, bwd_cb.result
        assert fwd is not None and set(fwd) == set(bwd)
        for key in fwd:
            np.testing.assert_array_equal(fwd[key], bwd[key])


@pytest.mark.parametrize("stage", ["train", "val", "test"])
def test_no_observer_left_after_a_failed_step(toy, tmp_path, stage):
    x, y = toy.make_data(70)
    module = toy.ToyLit(toy.RateMap(), iters=5, fail_at=(stage, 1))
    callbacks = [IterationsToConverge(tol=TOL), ResidualTrajectories(tol=TOL),
                 EnergyTracker(stage=stage)]
    trainer = toy.make_trainer(tmp_path, callbacks)
    with pytest.raises(RuntimeError, match="planned failure"):
        if stage == "test":
            trainer.test(module, toy.loader(x, y))
        else:
            trainer.fit(module, toy.loader(x, y), toy.loader(x, y))
    assert module.deq.n_observers == 0
    # The callbacks are usable again after the failure.
    module.fail_at = None
    (result,) = toy.make_trainer(tmp_path, callbacks).test(module, toy.loader(x, y))
    assert "test/iters_to_converge" in result
    assert module.deq.n_observers == 0
    # Nothing of the failed run's partial batches is counted.
    assert callbacks[1].result["n_samples"] == 70


def test_a_module_without_deq_is_a_clear_error(toy, tmp_path):
    class NoDEQ(toy.ToyLit):
        def __init__(self):
            super().__init__(toy.RateMap(), iters=3)
            self.solver = self.deq
            del self.deq

        def test_step(self, batch, batch_idx):
            return None

    x, y = toy.make_data(8)
    with pytest.raises(AttributeError, match="pl_module.deq"):
        toy.make_trainer(tmp_path, [IterationsToConverge(tol=TOL)]).test(NoDEQ(), toy.loader(x, y))


def test_invalid_arguments():
    with pytest.raises(TypeError, match="tol"):
        IterationsToConverge()  # the criterion has no default
    with pytest.raises(TypeError):
        IterationsToConverge(TOL)  # keyword only
    with pytest.raises(ValueError, match=r"\btol\b.*\b0\b"):
        IterationsToConverge(tol=0)
    with pytest.raises(ValueError, match=r"'validation'.*'val'"):  # the bad stage, a valid one
        IterationsToConverge(tol=TOL, stages=("validation",))
