"""runner/config.py: one mapping between command lines and runs, and early, clear refusals."""
import argparse
from dataclasses import asdict

import pytest

import sweep
import train
from runner.config import RunConfig, parse_batches


def test_to_argv_rebuilds_the_same_run_through_train_py():
    cfg = RunConfig(row="HAM-EO-DEQ", depth=5, seed=3, dataset="synthetic", data_dir="/data",
                    download=False, epochs=2, limit_train_batches=0.5, limit_test_batches=4,
                    results="out", sweep="quick", accelerator="cpu", devices=3,
                    wandb_mode="offline", wandb_project="p", wandb_entity="me",
                    synthetic_kwargs=dict(n_train=256, n_test=128), lr=0.02, fast=True,
                    compile_f=True, fused_anderson=True)
    args = train.parse_args(cfg.to_argv())
    again = RunConfig.from_args(args, row=args.row, depth=args.layers, seed=args.seed,
                                wandb_mode=args.wandb)
    assert asdict(again) == asdict(cfg)
    assert again.experiment == cfg.experiment and again.experiment.lr == 0.02


def test_quick_sizes_survive_the_subprocess_path():
    args = sweep.parse_args(["--quick", "--rows", "HAM", "--layers", "3", "--devices", "3"])
    cfg = sweep.plan(args)[0]
    rebuilt = train.parse_args(cfg.to_argv())
    assert rebuilt.synthetic_sizes == cfg.synthetic_kwargs == dict(n_train=256, n_test=128)
    assert rebuilt.dataset == "synthetic" and rebuilt.limit_train_batches == 2


def test_differences_name_the_defining_settings_only():
    cfg = RunConfig(row="HAM", depth=3, seed=0, dataset="synthetic", epochs=1)
    stored = {**cfg.to_dict(), "results": "elsewhere", "devices": 4, "wandb_run_id": "x",
              "compile_f": True, "fused_anderson": True}
    from runner.store import jsonable
    assert cfg.differences(jsonable(stored)) == []
    other = RunConfig(row="HAM", depth=3, seed=0, dataset="fashion-mnist", epochs=1)
    diff = other.differences(jsonable(stored))
    assert diff == ["dataset: stored 'synthetic', now 'fashion-mnist'"]


def test_fast_runs_stored_before_a_fast_mode_key_existed_still_match(monkeypatch):
    """A fast run stored before ``FAST_MODE["adjoint_precision"]`` existed computed in float32,
    what ``None`` computes now: it is the same run (an interrupted one resumes); stored with
    another value, or with the paper's validation, it is not."""
    from deq_modules import experiments
    from runner.store import jsonable
    cfg = RunConfig(row="HAM", depth=3, seed=0, dataset="synthetic", epochs=1, fast=True)
    stored = jsonable(cfg.to_dict())
    assert stored["fast_mode"]["adjoint_precision"] is None
    del stored["fast_mode"]["adjoint_precision"]
    assert cfg.differences(stored) == []
    for key, value in [("adjoint_precision", "auto"), ("validation", "paper")]:
        changed = dict(stored, fast_mode={**stored["fast_mode"], key: value})
        (diff,) = cfg.differences(changed)
        assert diff.startswith("fast_mode: stored ") and repr(value) in diff
    monkeypatch.setitem(experiments.FAST_MODE, "adjoint_precision", "bf16")
    assert cfg.differences(stored)  # the stored run computed in float32, this one would not


@pytest.mark.parametrize("text", ["0", "-1", "1.5", "nan", "inf", "-0.5", "x", "0.0"])
def test_bad_batch_limits_are_refused(text):
    with pytest.raises(argparse.ArgumentTypeError):
        parse_batches(text)


@pytest.mark.parametrize("text, value", [("5", 5), ("0.25", 0.25), ("1.0", 1.0), ("1", 1)])
def test_batch_limits(text, value):
    assert parse_batches(text) == value and type(parse_batches(text)) is type(value)


@pytest.mark.parametrize("kwargs, message", [
    (dict(epochs=0), "epochs must be a whole number >= 1"),
    (dict(epochs=-3), "epochs must be a whole number >= 1"),
    (dict(limit_train_batches=0), "limit_train_batches must be"),
    (dict(limit_test_batches=float("nan")), "limit_test_batches must be"),
    (dict(seed=-1), "seed must be"),
    (dict(dataset="imagenet"), "unknown dataset 'imagenet'"),
    (dict(sweep="../x"), "plain folder name"),
    (dict(lr=float("nan")), "lr must be a positive number"),
    (dict(row="HAM-XL"), "unknown row 'HAM-XL'"),
    (dict(depth=5, row="CHN-DEQ"), "exists for \\[3\\] layers"),
])
def test_library_users_get_the_same_refusals(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RunConfig(**{"row": "HAM", "depth": 3, "seed": 0, **kwargs})
