"""runner/wandb_run.py: the run layer's one W&B object, and its no-op variant."""
import numpy as np
import pytest

from runner.config import RunConfig
from runner.wandb_run import UPLOAD, NoWandb, WandbLog, wandb_log


class RecordingRun:
    name = "HAM-L3-s0"

    def __init__(self):
        self.logged, self.summary, self.finished = [], {}, None

    def log(self, data):
        self.logged.append(data)

    def finish(self, exit_code=None):
        self.finished = exit_code or 0


def config(mode, **kw):
    return RunConfig(row="HAM", depth=3, seed=0, dataset="synthetic", wandb_mode=mode, **kw)


def test_the_mode_picks_the_logger():
    assert type(wandb_log(config("disabled"))) is NoWandb
    assert type(wandb_log(config("offline"))) is WandbLog
    assert type(wandb_log(config("online"))) is WandbLog


def test_without_wandb_nothing_is_logged_and_the_stored_id_is_kept(tmp_path):
    log = wandb_log(config("disabled"))
    assert log.run_id({"wandb_run_id": "abc"}) == "abc" and log.run_id(None) is None
    log.start(tmp_path, None)
    assert log.loggers(tmp_path) == [] and log.pending() == {}
    log.log_heatmap({}, 0)  # draws nothing: an empty dict would fail to draw
    log.end({"status": "failed"}, exit_code=1)
    assert log.finish({"status": "finished"}, tmp_path) == {}
    summary = {"status": "finished"}
    assert log.publish_stored(tmp_path, summary, None) is summary
    assert list(tmp_path.iterdir()) == []


def test_with_wandb_a_run_gets_an_id_and_its_heatmap(monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setattr(wandb, "Image", lambda array: ("image", array.shape))
    log = wandb_log(config("offline", wandb_run_id=None))
    assert log.run_id(None) and log.run_id({"wandb_run_id": "abc"}) == "abc"
    log.log_heatmap({}, 0)  # no run started: nothing to log to
    log.run = RecordingRun()
    counts = np.zeros((5, 8), dtype=np.int64)
    counts[:, 2] = 3
    data = dict(counts=counts, log10_edges=np.linspace(-8, 0, 9), tol=1e-4,
                tolerances=np.array([1e-6, 1e-4]), mean_iters=np.array([4.0, 2.0]),
                iters_at_tol=np.array([2, 2, 3]))
    log.log_heatmap(data, step=7)
    (logged,) = log.run.logged
    kind, shape = logged["test/residual_heatmap"]
    assert kind == "image" and shape[2] == 3 and logged["trainer/global_step"] == 7
    assert log.pending() == {}  # offline: nothing to upload later
    log.end({"status": "failed"}, exit_code=1)
    assert log.run.finished == 1


def test_online_runs_record_their_upload(monkeypatch):
    log = wandb_log(config("online"))
    log.run = RecordingRun()
    assert log.pending() == {UPLOAD: "pending"}
    import runner.wandb_run as wandb_run
    monkeypatch.setattr(wandb_run, "finish_wandb", lambda run, summary, out: "done")
    assert log.finish({"status": "finished", UPLOAD: "pending"}, None) == {UPLOAD: "done"}
