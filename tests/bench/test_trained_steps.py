"""bench.trained_steps: training steps of a run's trained weights, timed in every mode."""
import json

import pytest

from bench import trained_steps
from bench.flops import step_flops
from deq_modules.experiments import Experiment


def test_every_mode_is_timed_from_the_run_checkpoint(tmp_path, trained_run, capsys):
    trained = trained_run
    out = tmp_path / "times.json"
    args = ["--results", str(tmp_path), "--sweep", "sw", "--data-dir", str(tmp_path),
            "--batches", "2", "--eval-batches", "2", "--json", str(out)]
    assert trained_steps.main(args + ["--runs", "HAM-EO-DEQ-L3-s0"]) == 0
    (record,) = json.loads(out.read_text())
    assert set(trained_steps.MODES) <= set(record)
    for mode in trained_steps.MODES:
        assert len(record[mode]["samples"]) == 2 and record[mode]["ms"] > 0
    assert record["paper"]["iters"] == 40  # the paper's fixed count
    assert record["fast"]["iters"] < 40  # the tolerance stop
    exp = Experiment.from_key("HAM-EO-DEQ-L3")
    width = trained.deq.f_module.state_size  # the even-odd state: the even layers
    paper_flops = step_flops(list(exp.layers), 64, 40, 8, "evenodd", "anderson", width,
                             safeguard=exp.forward_kwargs["safeguard"])
    assert record["paper"]["gflop"] == pytest.approx(paper_flops / 1e9)
    assert record["fast"]["gflop"] < record["paper"]["gflop"]
    printed = capsys.readouterr().out
    assert "| HAM-EO-DEQ-L3-s0 |" in printed
    steps = 938 * 10 * 5  # batches per epoch x the row's epochs x seeds
    assert record["steps"] == steps
    # evaluation: 157 batches of the 10000 test images per pass; validation after epochs 1-9,
    # the test after the last; 5 seeds
    assert (record["val_batches"], record["test_batches"]) == (157 * 9 * 5, 157 * 5)
    paper, fast = record["paper"], record["fast"]
    # the fast mode validates with its tolerance stop (iterations, not times: those are noise
    # at two batches of a barely trained checkpoint)
    assert paper["val_iters"] == 40 > fast["val_iters"] > 0 and fast["val_ms"] > 0
    assert fast["test_ms"] == paper["test_ms"] > 0  # the test: the paper's forward + energy
    assert fast["test_iters"] == paper["test_iters"] == 40
    assert record["fast-unrolled"]["val_ms"] == fast["val_ms"]
    for c in (paper, fast):
        assert c["eval_h"] == pytest.approx(
            (c["val_ms"] * 157 * 9 * 5 + c["test_ms"] * 157 * 5) / 3.6e6)
    hours = trained_steps.sweep_hours([record])
    assert hours["paper"] == pytest.approx(paper["ms"] * steps / 3.6e6 + paper["eval_h"])
    assert hours["fast"] == pytest.approx(fast["ms"] * steps / 3.6e6 + fast["eval_h"])
    assert "1 of 17 rows (not the whole sweep, 5 seeds, paper epochs), fast:" in printed
    assert (f"fast: {hours['fast']:.1f} h ({hours['paper'] / hours['fast']:.2f}x less) = "
            f"training steps {fast['ms'] * steps / 3.6e6:.1f} h + evaluation "
            f"{fast['eval_h']:.1f} h") in printed
    work = trained_steps.sweep_arithmetic([record])
    assert work["fast"] == pytest.approx(record["fast"]["gflop"] * steps / 1e6)
    assert f"arithmetic of the training steps (FLOP model), fast: {work['fast']:.1f} PFLOP" in printed
    with pytest.raises(SystemExit):
        trained_steps.main(args + ["--runs", "HAM-EO-DEQ-L3"])
    error = capsys.readouterr().err.strip().splitlines()[-1]  # the line after the usage
    assert "--runs" in error and "'HAM-EO-DEQ-L3'" in error
    with pytest.raises(SystemExit, match=r"HAM-EO-DEQ-L3-s1/checkpoints/last\.ckpt"):
        trained_steps.main(args + ["--runs", "HAM-EO-DEQ-L3-s1"])


@pytest.mark.parametrize("given", [False, True])
def test_data_dir_defaults_to_hopfield_data_dir(tmp_path, monkeypatch, given):
    """Without --data-dir the dataset is read from $HOPFIELD_DATA_DIR; --data-dir wins."""
    seen = []

    def load(name, data_dir):
        seen.append(data_dir)
        raise RuntimeError("stop here")

    monkeypatch.setattr(trained_steps, "load_dataset", load)
    monkeypatch.setenv("HOPFIELD_DATA_DIR", str(tmp_path / "from-env"))
    args = ["--results", str(tmp_path), "--sweep", "sw", "--runs", "HAM-L3-s0"]
    if given:
        args += ["--data-dir", str(tmp_path / "given")]
    with pytest.raises(RuntimeError, match="stop here"):
        trained_steps.main(args)
    assert seen == [tmp_path / ("given" if given else "from-env")]
