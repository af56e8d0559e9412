"""runner/history.py: the lines a nohup log gets while a run trains."""
import csv
import json
import re

from runner.config import RunConfig
from runner.run import run_experiment


def test_progress_lines_every_tenth_of_an_epoch_without_escape_codes(tmp_path, capsys):
    cfg = RunConfig(row="HAM-EO", depth=3, seed=0, dataset="synthetic", epochs=2,
                    limit_train_batches=20, limit_test_batches=1, results=str(tmp_path),
                    sweep="t", accelerator="cpu", synthetic_kwargs=dict(n_train=1280, n_test=64))
    run_experiment(cfg)
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\r" not in out
    progress = re.findall(r"^HAM-EO-L3-s0 epoch (\d)/2 batch (\d+)/20 \((\d+)%\)  "
                          r"[\d.e+]+ batch/s  run ETA \S+$", out, re.M)
    # every 2 batches (10% of 20), batches 2..18 of both epochs; the epoch's end has its own line
    assert [(int(e), int(b)) for e, b, _ in progress] == [
        (e, b) for e in (1, 2) for b in range(2, 20, 2)]
    assert re.search(r"^HAM-EO-L3-s0 epoch 1/2  train/loss \S+  val/acc \S+  "
                     r"val/iters_to_converge \S+  \S+$", out, re.M)
    # the last epoch is not validated: the test that follows evaluates the same weights on
    # the same images (validation serves the test set)
    assert re.search(r"^HAM-EO-L3-s0 epoch 2/2  train/loss \S+  \S+$", out, re.M)
    rows = list(csv.DictReader(open(tmp_path / "t" / "HAM-EO-L3-s0" / "metrics.csv")))
    assert [r["epoch"] for r in rows] == ["0", "1"]
    assert rows[0]["val/acc"] and rows[0]["train/loss"]
    assert rows[1]["val/acc"] == "" and rows[1]["train/loss"]  # not epoch 0's, repeated
    summary = json.loads((tmp_path / "t" / "HAM-EO-L3-s0" / "summary.json").read_text())
    assert summary["status"] == "finished" and 0 <= summary["test/acc"] <= 1


def test_validation_and_test_passes_print_progress_lines(tmp_path, capsys):
    """A test pass at paper settings takes minutes (157 batches): it reports like training."""
    cfg = RunConfig(row="HAM-EO", depth=3, seed=0, dataset="synthetic", epochs=2,
                    limit_train_batches=2, results=str(tmp_path), sweep="t", accelerator="cpu",
                    synthetic_kwargs=dict(n_train=128, n_test=640))  # 10 test batches
    run_experiment(cfg)
    out = capsys.readouterr().out
    line = r"^HAM-EO-L3-s0 {} batch (\d+)/10 \((\d+)%\)  [\d.e+]+ batch/s  ETA \S+$"
    # every batch (10% of 10) but the last; validation only in the first of the two epochs
    assert [int(b) for b, _ in re.findall(line.format("test"), out, re.M)] == list(range(1, 10))
    assert [int(b) for b, _ in re.findall(line.format("val"), out, re.M)] == list(range(1, 10))
    assert out.index("HAM-EO-L3-s0 val batch 9/10") < out.index("HAM-EO-L3-s0 epoch 1/2  ")
    assert out.index("HAM-EO-L3-s0 epoch 2/2  ") < out.index("HAM-EO-L3-s0 test batch 1/10")
