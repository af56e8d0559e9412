"""runner/history.py: the lines a nohup log gets while a run trains."""
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
    assert re.search(r"^HAM-EO-L3-s0 epoch 2/2  train/loss \S+  val/acc \S+  "
                     r"val/iters_to_converge \S+  \S+$", out, re.M)
