"""bench.profile_step: where a training step's time goes, for fresh rows and trained runs."""
import json
import re

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from bench import profile_step


def test_a_fresh_row_splits_its_profiled_step(tmp_path, capsys):
    out = tmp_path / "p.json"
    assert profile_step.main(["--rows", "HAM-EO-DEQ-L3", "--tiny", "--steps", "1", "--mode",
                              "paper", "--map-batches", "1,4", "--json", str(out)]) == 0
    (record,) = json.loads(out.read_text())
    assert (record["name"], record["mode"], record["steps"]) == ("HAM-EO-DEQ-L3", "paper", 1)
    assert record["products_ms"] > 0 and record["other_ms"] > 0 and record["other_calls"] > 0
    # The split adds up to the profiled wall time, always: the self times of operations on one
    # thread cannot exceed it (a few percent for the profiler's and the timer's clocks), so
    # ``outside_ms`` is never a clamped zero that hides a double count.
    parts = record["products_ms"] + record["other_ms"] + record["outside_ms"]
    assert record["outside_ms"] >= 0
    assert parts == pytest.approx(record["profiled_ms"], rel=0.05)
    assert "aten::addmm" in {t["op"] for t in record["top"]}
    # the map: the tiny row's only weight block is (1990 // 16) x 10 float32
    scaling = record["map"]
    assert scaling["weight_bytes"] == 124 * 10 * 4
    assert [q["batch"] for q in scaling["points"]] == [1, 4]
    for q in scaling["points"]:
        assert q["ms"] > 0 and q["ms_per_sample"] == pytest.approx(q["ms"] / q["batch"])
        assert q["weight_gbs"] == pytest.approx(2 * 124 * 10 * 4 / (q["ms"] / 1e3) / 1e9)
    printed = capsys.readouterr().out
    assert "HAM-EO-DEQ-L3, paper:" in printed and "matrix products" in printed
    assert "batch   4:" in printed


def test_a_trained_run_is_profiled_in_both_modes(tmp_path, trained_run):
    out = tmp_path / "p.json"
    assert profile_step.main(["--runs", "HAM-EO-DEQ-L3-s0", "--results", str(tmp_path),
                              "--sweep", "sw", "--data-dir", str(tmp_path), "--steps", "1",
                              "--json", str(out)]) == 0
    records = json.loads(out.read_text())
    assert [r["mode"] for r in records] == ["paper", "fast"]
    for r in records:
        assert r["name"] == "HAM-EO-DEQ-L3-s0" and r["ms"] > 0 and r["products_ms"] > 0
        assert "map" not in r


def test_operations_are_counted_once_with_their_inner_calls():
    x = torch.ones(4)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        x.to(torch.float64)  # aten::to -> aten::_to_copy -> aten::copy_
    ops = [e for e in prof.events() if e.name.startswith("aten::")]
    assert {e.name for e in ops} >= {"aten::to", "aten::_to_copy", "aten::copy_"}
    assert [e.name for e in ops if profile_step._outermost_op(e)] == ["aten::to"]


@pytest.mark.parametrize("args, names", [
    ([], ["--runs", "--rows"]),
    (["--rows", "HAM-L5", "--runs", "HAM-L5-s0"], ["--runs", "--rows"]),
    (["--runs", "HAM-L5-s0"], ["--results", "--sweep"]),
    (["--runs", "HAM-L5", "--results", "r", "--sweep", "s", "--data-dir", "d"],
     ["--runs", "'HAM-L5'"]),
    (["--rows", "HAM-L4"], ["'HAM-L4'", "'HAM-L5'"]),  # the bad row and a valid one
    (["--rows", "HAM-L5", "--steps", "0"], ["--steps", r"\b0\b"]),
    (["--rows", "HAM-L5", "--map-batches", "1,x"], ["--map-batches", "'1,x'"]),
    (["--rows", "HAM-L5", "--map-batches", "0,4"], ["--map-batches", "'0,4'"]),
])
def test_bad_arguments_are_refused_by_name(args, names, capsys):
    with pytest.raises(SystemExit):
        profile_step.main(args)
    error = capsys.readouterr().err.strip().splitlines()[-1]  # the line after the usage
    for name in names:
        assert re.search(name, error), (name, error)


def test_the_table_has_a_line_per_run_and_mode():
    record = {"name": "HAM-L5-s0", "mode": "fast", "steps": 2, "ms": 190.0, "profiled_ms": 200.0,
              "products_ms": 110.0, "other_ms": 60.0, "other_calls": 2400.0, "outside_ms": 30.0,
              "top": []}
    with_map = dict(record, mode="paper", map={"weight_bytes": 8, "read_gbs": 28.0, "points": [
        {"batch": 1, "ms": 0.5, "ms_per_sample": 0.5, "weight_gbs": 12.0},
        {"batch": 8, "ms": 0.75, "ms_per_sample": 0.09, "weight_gbs": 8.0},
        {"batch": 64, "ms": 2.0, "ms_per_sample": 0.03, "weight_gbs": 3.0}]})
    lines = profile_step.table([with_map, record]).splitlines()
    assert len(lines) == 4
    assert lines[2] == ("| HAM-L5-s0 | paper | 190 | 55% | 30% (2400, 25) | 15% | 0.25 / 0.38 | "
                        "12.0 (28.0) |")
    assert lines[3] == "| HAM-L5-s0 | fast | 190 | 55% | 30% (2400, 25) | 15% |  |  |"


def test_restoring_the_weights_is_neither_timed_nor_profiled():
    from bench.rows import build_module, make_batch, row_layers
    from deq_modules.experiments import Experiment
    exp = Experiment.from_key("HAM-EO-DEQ-L3")
    module = build_module(exp, row_layers(exp, tiny=True), exp.forward_iter)
    state = {k: v.clone() for k, v in module.state_dict().items()}
    restore, restored = module.load_state_dict, []

    def marked_restore(sd):  # an operation the training step never makes
        restored.append(torch.ones(3).cumsum(0))
        return restore(sd)

    module.load_state_dict = marked_restore
    batch = make_batch(row_layers(exp, tiny=True)[0], exp.batch_size, torch.device("cpu"))
    record = profile_step.profile_steps(module, state, [batch, batch], top=1000)
    assert len(restored) == 5  # warm-up, two timed, two profiled steps, each from the weights
    assert "aten::cumsum" not in {t["op"] for t in record["top"]}
    assert "aten::addmm" in {t["op"] for t in record["top"]}


def test_runs_read_the_dataset_from_hopfield_data_dir(tmp_path, monkeypatch):
    """--runs without --data-dir: the dataset directory is $HOPFIELD_DATA_DIR."""
    monkeypatch.setenv("HOPFIELD_DATA_DIR", str(tmp_path / "from-env"))
    args = profile_step._parse(["--runs", "HAM-L5-s0", "--results", "r", "--sweep", "s"])
    assert args.data_dir == tmp_path / "from-env"
