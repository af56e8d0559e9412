"""`python -m bench.speed --tiny` end to end, so that the benchmark cannot rot.

The FLOP formula is checked against torch's own FLOP counter on a real training step, and the
DEQ's memory against the property that the forward solve keeps no graph.
"""
import importlib.util
import json
import math
import shutil

import pytest
import torch
import torch._dynamo
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, flop_registry

from bench import speed
from bench.flops import step_flops
from bench.rows import build_module, make_batch, row_layers, sample_iterations, training_step
from deq_modules.experiments import EXPERIMENTS, FAST, Experiment

RECORD_KEYS = {
    "key", "mode", "layers", "solver", "precision", "forward_iter", "fwd_iters", "fwd_sample_iters",
    "backward_iter",
    "ms_median", "ms_q25", "ms_q75", "ms_samples", "gflop_per_step", "gflops", "peak_gflops",
    "roofline", "mem_kind", "mem_bytes", "mem_bytes_10x", "torchdeq_ms", "steps", "sweep_hours",
}
HAS_TORCHDEQ = importlib.util.find_spec("torchdeq") is not None


def run_tiny(tmp_path, *extra):
    path = tmp_path / "speed.json"
    assert speed.main(["--tiny", "--device", "cpu", "--json", str(path), *extra]) == 0
    return json.loads(path.read_text())


def check_record(r):
    assert set(r) >= RECORD_KEYS, RECORD_KEYS - set(r)
    exp = Experiment.from_key(r["key"])
    assert 0 < r["ms_q25"] <= r["ms_median"] <= r["ms_q75"]
    assert len(r["ms_samples"]) == 2 and all(t > 0 for t in r["ms_samples"])
    assert 1 <= r["fwd_iters"] <= exp.forward_iter
    assert r["gflop_per_step"] > 0 and r["peak_gflops"] > 0
    # the rate is the step's work over its median time, the roofline that rate over the peak
    assert r["gflops"] == pytest.approx(r["gflop_per_step"] / (r["ms_median"] / 1e3), rel=1e-9)
    assert r["roofline"] == pytest.approx(r["gflops"] / r["peak_gflops"], rel=1e-9)
    assert 0 < r["roofline"] < 2  # a matmul roofline: above it only by timing noise
    assert r["mem_kind"] == "saved_for_backward" and r["mem_bytes"] > 0
    # The forward solve runs without a graph: 10x the iterations, the same memory.
    assert r["mem_bytes_10x"] == pytest.approx(r["mem_bytes"], rel=0.01)
    assert r["steps"] == math.ceil(60000 / 64) * exp.epochs * 5
    assert r["sweep_hours"] == pytest.approx(r["ms_median"] / 1e3 * r["steps"] / 3600)


def test_tiny_json_has_every_column_with_sane_values(tmp_path, capsys):
    out = run_tiny(tmp_path)
    assert out["device"] == "cpu" and out["threads"] >= 1 and out["torch"] == torch.__version__
    assert [r["key"] for r in out["records"]] == list(speed.TINY_ROWS)
    for r in out["records"]:
        assert r["mode"] == "paper" and r["fwd_iters"] == r["forward_iter"]
        check_record(r)
        if Experiment.from_key(r["key"]).model == "ham" and HAS_TORCHDEQ:
            assert r["torchdeq_ms"] > 0
        else:
            assert r["torchdeq_ms"] is None
    assert out["sweep_hours"]["paper"] == pytest.approx(
        sum(r["sweep_hours"] for r in out["records"]))
    table = capsys.readouterr().out
    assert table.startswith("device: cpu") and "| HAM-EO-DEQ-L3 | paper |" in table
    assert ("torchdeq is not installed" in table) != HAS_TORCHDEQ


def test_fast_mode_columns(tmp_path):
    out = run_tiny(tmp_path, "--mode", "both", "--rows", "HAM-EO-DEQ-L3", "--no-peer")
    paper, fast = out["records"]
    assert (paper["mode"], fast["mode"]) == ("paper", "fast")
    for r in (paper, fast):
        check_record(r)
        assert 1 <= r["fwd_sample_iters"] <= r["fwd_iters"]
    assert paper["fwd_sample_iters"] == paper["fwd_iters"] == paper["forward_iter"]
    assert fast["torchdeq_ms"] is None
    assert set(out["sweep_hours"]) == {"paper", "fast"}


class OpFlops(TorchDispatchMode):
    """Torch's own per-operation FLOP formulas (``flop_registry``, what ``FlopCounterMode``
    counts with) summed over every operation run inside. ``FlopCounterMode`` itself cannot
    watch a backward that calls ``torch.autograd.grad`` (the adjoint's vector-Jacobian
    products): its module tracker's gradient hooks raise there."""

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        count = flop_registry.get(func._overloadpacket)
        if count is not None:
            self.total += count(*args, **kwargs, out_val=out)
        return out


@pytest.mark.parametrize("key", [e.key for e in EXPERIMENTS if e.depth == 3] + ["HAM-EO-DEQ-L5"])
def test_flop_formula_matches_torch_flop_counter(key):
    exp = Experiment.from_key(key)
    layers = row_layers(exp, tiny=True)
    module = build_module(exp, layers, exp.forward_iter)
    x, y = make_batch(layers[0], exp.batch_size, torch.device("cpu"))
    step = training_step(module, x, y)
    with FlopCounterMode(display=False) as counter:
        step()
    want = step_flops(layers, exp.batch_size, exp.forward_iter, exp.backward_iter,
                      exp.structure, exp.solver, module.deq.f_module.state_size,
                      safeguard=exp.forward_kwargs.get("safeguard", "after"))
    assert counter.get_total_flops() == want


@pytest.mark.parametrize("key", ["HAM-EO-DEQ-L3", "HAM-L3"])
def test_flop_formula_with_compaction_matches_torch_flop_counter(key):
    # fast mode: converged samples leave the batch, so each costs only its own iterations
    exp = Experiment.from_key(key)
    layers = row_layers(exp, tiny=True)
    module = build_module(exp, layers, exp.forward_iter, FAST)
    x, y = make_batch(layers[0], exp.batch_size, torch.device("cpu"))
    per_sample = sample_iterations(module, x)  # same weights and batch as the step below
    assert per_sample is not None and min(per_sample) < max(per_sample)
    step = training_step(module, x, y)
    with OpFlops() as counter:
        step()
    assert module.deq.last_forward_stats.n_iter == max(per_sample)
    assert module.deq.backward_kwargs["method"] == "full_adjoint"  # the fast mode's backward
    want = step_flops(layers, exp.batch_size, max(per_sample), exp.backward_iter, exp.structure,
                      exp.solver, module.deq.f_module.state_size, sample_iters=per_sample,
                      backward_method="full_adjoint",
                      safeguard=exp.forward_kwargs.get("safeguard", "after"))
    assert counter.total == want


@pytest.mark.parametrize("key", ["HAM-EO-DEQ-L3", "HAM-L3", "CHN-DEQ-L3", "HAM-EO-L5"])
def test_flop_formula_of_the_truncated_adjoint_matches_torch_flop_counter(key):
    exp = Experiment.from_key(key)
    layers = row_layers(exp, tiny=True)
    module = build_module(exp, layers, exp.forward_iter)
    module.deq.backward_kwargs = exp.settings(FAST).backward
    x, y = make_batch(layers[0], exp.batch_size, torch.device("cpu"))
    step = training_step(module, x, y)
    with OpFlops() as counter:
        step()
    assert module.deq.last_backward_stats.n_iter == exp.backward_iter
    want = step_flops(layers, exp.batch_size, exp.forward_iter, exp.backward_iter,
                      exp.structure, exp.solver, module.deq.f_module.state_size,
                      backward_method="full_adjoint",
                      safeguard=exp.forward_kwargs.get("safeguard", "after"))
    assert counter.total == want
    module.deq.backward_kwargs = dict(exp.backward_kwargs)  # the counter agrees on backprop too
    with OpFlops() as counter:
        step()
    assert counter.total == step_flops(layers, exp.batch_size, exp.forward_iter,
                                       exp.backward_iter, exp.structure, exp.solver,
                                       module.deq.f_module.state_size,
                                       safeguard=exp.forward_kwargs.get("safeguard", "after"))
    with pytest.raises(ValueError, match=r"'neumann'.*'full_adjoint'"):
        step_flops(layers, exp.batch_size, 1, 1, exp.structure, exp.solver, 10,
                   backward_method="neumann")


@pytest.mark.slow
@pytest.mark.skipif(not torch._dynamo.is_dynamo_supported(),
                    reason="torch.compile is not supported on this Python / platform")
@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                    reason="torch.compile on the CPU needs a C++ compiler")
def test_compile_times_the_compiled_map(tmp_path, monkeypatch):
    """``--compile`` times steps whose map really runs compiled: torch.compile is asked for it,
    dynamo captures a graph (no silent fall-back to eager), and the compiled function is what
    the timed steps' solves call."""
    from torch._dynamo.utils import counters
    real_compile, compiled_calls = torch.compile, []

    def counting_compile(fn, *args, **kwargs):
        compiled = real_compile(fn, *args, **kwargs)

        def call(*a, **kw):
            compiled_calls.append(1)
            return compiled(*a, **kw)
        return call

    monkeypatch.setattr(torch, "compile", counting_compile)
    torch._dynamo.reset()
    counters.clear()
    # dynamo's own patch: monkeypatch's undo would delete the config entry for later tests
    with torch._dynamo.config.patch(suppress_errors=False):
        payload = run_tiny(tmp_path, "--rows", "HAM-EO-DEQ-L3", "--no-peer", "--compile")
    record, = payload["records"]
    check_record(record)
    assert record["mode"] == "paper+compile" and record["compiled"] is True
    assert counters["stats"]["unique_graphs"] >= 1
    # the warm-up and the two timed steps, each at least its forward iterations
    assert len(compiled_calls) >= 3 * Experiment.from_key("HAM-EO-DEQ-L3").forward_iter


def test_a_run_cut_short_keeps_the_rows_measured(tmp_path, capsys, monkeypatch):
    """Each row's table line is printed and the JSON rewritten as soon as it is measured, so a
    benchmark stopped by a time limit (a lent GPU, a CI job) keeps what it measured."""
    real = speed.measure_row
    calls = []

    def second_row_dies(exp, *args, **kwargs):
        calls.append(exp.key)
        if len(calls) == 2:
            raise KeyboardInterrupt  # what a timeout's signal does to the loop
        return real(exp, *args, **kwargs)

    monkeypatch.setattr(speed, "measure_row", second_row_dies)
    path = tmp_path / "speed.json"
    with pytest.raises(KeyboardInterrupt):
        speed.main(["--tiny", "--device", "cpu", "--no-peer", "--json", str(path)])
    out = json.loads(path.read_text())
    assert out["complete"] is False
    assert [r["key"] for r in out["records"]] == [speed.TINY_ROWS[0]]
    check_record(out["records"][0])
    printed = capsys.readouterr().out
    assert printed.count(f"| {speed.TINY_ROWS[0]} ") == 1 and "whole sweep" not in printed
    assert not list(tmp_path.glob("*.tmp"))


def test_a_finished_run_says_complete(tmp_path, capsys):
    out = run_tiny(tmp_path, "--no-peer")
    assert out["complete"] is True and len(out["records"]) == len(speed.TINY_ROWS)
    printed = capsys.readouterr().out
    assert printed.index("| --- ") < printed.index(f"| {speed.TINY_ROWS[-1]} ") \
        < printed.index("whole sweep")


@pytest.mark.slow
def test_fused_anderson_times_the_kernel_on_anderson_rows_only(tmp_path, monkeypatch):
    from deq_core import fused
    calls = []
    step = fused.step
    monkeypatch.setattr(fused, "step", lambda *a: (calls.append(a[0].shape[0]), step(*a))[1])
    payload = run_tiny(tmp_path, "--no-peer", "--fused-anderson", "--rows", "HAM-EO-DEQ-L3,HAM-L3")
    by_key = {r["key"]: r for r in payload["records"]}
    for key, record in by_key.items():
        check_record(record)
        anderson = Experiment.from_key(key).solver == "anderson"
        assert record["fused_anderson"] is anderson
        assert record["mode"] == ("paper+fused" if anderson else "paper")
    totals = speed.sweep_totals(payload["records"])
    assert list(totals) == ["paper"]  # one mode: --fused-anderson changes the Anderson rows only
    assert totals["paper"] == pytest.approx(sum(r["sweep_hours"] for r in by_key.values()))
    assert payload["sweep_hours"] == totals
    assert speed.table_totals(payload["records"]) == (
        "whole sweep, paper settings (Anderson rows with --fused-anderson) (2 rows x 5 seeds): "
        f"{totals['paper']:.2f} h")
    # every forward iteration of the warm-up and the two timed steps of the Anderson row (the
    # FLOP count's traced solve and the memory steps may add more)
    assert len(calls) >= 3 * Experiment.from_key("HAM-EO-DEQ-L3").forward_iter


def test_fused_anderson_is_refused_off_the_cpu(capsys):
    with pytest.raises(SystemExit):
        speed.parse_args(["--fused-anderson", "--device", "cuda:0"])
    error = capsys.readouterr().err.strip().splitlines()[-1]  # the line after the usage
    assert "--fused-anderson" in error and "cuda:0" in error
