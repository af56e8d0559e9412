"""`python -m bench.solver_overhead`: it times the map the model really solves, and runs."""
import pytest
import torch

from bench import solver_overhead
from bench.rows import build_module, make_batch, row_layers
from deq_core.solvers import anderson
from deq_modules.experiments import EXPERIMENTS, Experiment

ANDERSON_ROWS = [e.key for e in EXPERIMENTS if e.solver == "anderson"]


@pytest.mark.parametrize("key", ["CHN-DEQ-L3", "HAM-EO-DEQ-L3"])  # damped and undamped
def test_the_timed_map_is_the_models_own(key):
    # Anderson on the bench's map from the bench's start state, with the row's options, gives
    # the DEQ's own forward result at paper settings: the bench times the solve a step runs.
    exp = Experiment.from_key(key)
    layers = row_layers(exp, tiny=True)
    torch.manual_seed(0)
    module = build_module(exp, layers, exp.forward_iter).double()
    x, _ = make_batch(layers[0], exp.batch_size, torch.device("cpu"))
    x = x.double()
    with torch.no_grad():
        f, z0 = solver_overhead.damped_map(module, x)
        options = {k: v for k, v in module.deq.forward_kwargs.items() if k not in ("solver", "iter")}
        z, _ = anderson(f, z0, max_iter=exp.forward_iter, **options)
        want = module.deq(x)
    assert module.deq.damping_factor == exp.damping == (0.5 if key == "CHN-DEQ-L3" else 0.0)
    torch.testing.assert_close(z, want, rtol=1e-12, atol=1e-12)


def test_tiny_prints_one_line_per_anderson_row(capsys):
    assert solver_overhead.main(["--tiny", "--device", "cpu"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("device: cpu")
    rows = [line.split(" | ") for line in out[3:]]
    assert [r[0].lstrip("| ") for r in rows] == list(solver_overhead.TINY_ROWS)
    for r in rows:
        iters, width, map_ms, picard_ms, anderson_ms = int(r[1]), int(r[2]), *map(float, r[3:6])
        assert iters == 40 and width >= 10
        assert map_ms > 0 and picard_ms > 0 and anderson_ms > 0


def test_measure_reports_overheads_per_iteration():
    r = solver_overhead.measure(Experiment.from_key("HAM-DEQ-L3"), torch.device("cpu"), 2, True)
    assert r["iters"] == 40
    assert r["anderson_us_per_iter"] == pytest.approx(
        (r["anderson_ms"] - r["map_ms"]) / 40 * 1e3)
    assert r["picard_us_per_iter"] == pytest.approx((r["picard_ms"] - r["map_ms"]) / 40 * 1e3)


def test_default_rows_are_every_anderson_row():
    assert [e.key for e in solver_overhead.anderson_rows(None, False)] == ANDERSON_ROWS
    assert len(ANDERSON_ROWS) == 8


def test_a_picard_row_is_refused_with_the_valid_ones(capsys):
    with pytest.raises(SystemExit) as info:
        solver_overhead.main(["--rows", "HAM-L3", "--device", "cpu"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    error = err.strip().splitlines()[-1]  # the line after the usage
    assert "HAM-L3" in error  # the refused row (no Anderson row's name contains it)
    assert all(key in error for key in ANDERSON_ROWS)
