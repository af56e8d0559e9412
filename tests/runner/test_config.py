"""runner/config.py: one mapping between command lines and runs, and early, clear refusals."""
import argparse
import re
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
                    synthetic_kwargs=dict(n_train=512, n_test=128), lr=0.02, fast=True,
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
    stored = {**cfg.to_dict(), "results": "elsewhere", "accelerator": "gpu", "wandb_run_id": "x",
              "data_dir": "/elsewhere", "download": False, "wandb_mode": "offline",
              "compile_f": True, "fused_anderson": True, "extra_tags": ["x"]}
    from runner.store import jsonable
    assert cfg.differences(jsonable(stored)) == []
    other = RunConfig(row="HAM", depth=3, seed=0, dataset="fashion-mnist", epochs=1)
    diff = other.differences(jsonable(stored))
    assert diff == ["dataset: stored 'synthetic', now 'fashion-mnist'"]


def test_a_run_trained_by_the_earlier_training_recipe_is_not_reused():
    """Runs stored before the papers' training details (loss at z*, lr per epoch, full
    batches) have no ``recipe``: the same command line would compute something else."""
    from runner.store import jsonable
    cfg = RunConfig(row="HAM", depth=3, seed=0, dataset="synthetic", epochs=1)
    old = {k: v for k, v in jsonable(cfg.to_dict()).items() if k != "recipe"}
    assert cfg.differences(old) == ["recipe: stored None, now 2"]


@pytest.mark.parametrize("stored, now, same", [
    (4, 1, False), (1, 2, False), (2, "0,1", True), ("1", 1, True), ("auto", 1, False),
    ("auto", "auto", True),
])
def test_the_number_of_devices_defines_the_run(stored, now, same):
    """DDP over N ranks trains on N x the batch per step and tests N x the batch limit: the
    number of ranks is part of the run, however it was written (2 and "0,1" are both 2)."""
    from runner.store import jsonable
    cfg = RunConfig(row="HAM", depth=3, seed=0, dataset="synthetic", devices=now)
    diff = cfg.differences(jsonable({**cfg.to_dict(), "devices": stored}))
    assert diff == ([] if same else [f"devices: stored {stored!r}, now {now!r}"])


def test_sweep_refuses_a_store_trained_on_another_number_of_devices(tmp_path, capsys):
    args = ["--rows", "HAM", "--layers", "3", "--seeds", "0", "--dataset", "synthetic",
            "--no-wandb", "--results", str(tmp_path), "--dry-run"]
    (cfg,) = sweep.plan(sweep.parse_args(args))
    from runner.store import atomic_write_json
    atomic_write_json(cfg.directory / "config.json", cfg.to_dict())  # trained with 1 device
    assert sweep.main([*args, "--devices", "2"]) == 2
    err = capsys.readouterr().err
    assert re.search(r"HAM-L3-s0\b.*\bdevices\b.*\b1\b.*\b2\b", err), err  # stored, then now
    assert sweep.main(args) == 0


def test_fast_runs_stored_before_a_fast_mode_key_existed_still_match():
    """A fast run stored before ``fast_mode["adjoint_precision"]`` existed computed in float32,
    what ``None`` computes now: it is the same run (an interrupted one resumes); stored with
    another value (the removed bfloat16 option), or with the paper's validation, it is not."""
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


@pytest.mark.parametrize("text", ["0", "-1", "1.5", "nan", "inf", "-0.5", "x", "0.0"])
def test_bad_batch_limits_are_refused(text):
    with pytest.raises(argparse.ArgumentTypeError):
        parse_batches(text)


@pytest.mark.parametrize("text, value", [("5", 5), ("0.25", 0.25), ("1.0", 1.0), ("1", 1)])
def test_batch_limits(text, value):
    assert parse_batches(text) == value and type(parse_batches(text)) is type(value)


@pytest.mark.parametrize("kwargs, message", [
    (dict(epochs=0), r"\bepochs\b.*\b0\b"),  # the field and its bad value, in any wording
    (dict(epochs=-3), r"\bepochs\b.*-3\b"),
    (dict(limit_train_batches=0), r"\blimit_train_batches\b.*\b0\b"),
    (dict(limit_test_batches=float("nan")), r"\blimit_test_batches\b.*\bnan\b"),
    (dict(seed=-1), r"\bseed\b.*-1\b"),
    (dict(dataset="imagenet"), r"'imagenet'.*'mnist'"),  # and a valid one
    (dict(sweep="../x"), r"'\.\./x'"),
    (dict(lr=float("nan")), r"\blr\b.*\bnan\b"),
    (dict(row="HAM-XL"), r"'HAM-XL'.*'HAM'"),
    (dict(depth=5, row="CHN-DEQ"), r"'CHN-DEQ'.*\b5\b.*\[3\]"),
])
def test_library_users_get_the_same_refusals(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RunConfig(**{"row": "HAM", "depth": 3, "seed": 0, **kwargs})


def test_the_run_identity_is_the_audited_keys():
    """What makes two runs the same (issue 24's audit): changing this set changes which stored
    runs are reused, so it is written out here."""
    from runner.config import DEFINING_KEYS
    assert set(DEFINING_KEYS) == {
        "row", "depth", "seed", "dataset", "epochs", "limit_train_batches",
        "limit_test_batches", "synthetic_kwargs", "lr", "fast", "fast_mode", "experiment",
        "devices", "recipe"}


def _stored_runs():
    import json
    from pathlib import Path
    root = Path(__file__).resolve().parents[2] / "docs" / "reproduction"
    return [json.loads(p.read_text()) for p in sorted(root.glob("*/*/config.json"))]


def test_committed_runs_of_the_current_recipe_are_recognised_as_the_same_runs():
    """Each committed run's config.json, given back as the run's settings, is that run: the
    store keeps recognising runs made before the options were generated from RunConfig."""
    import inspect
    from deq_modules.experiments import TRAINING_RECIPE
    keys = set(inspect.signature(RunConfig).parameters)
    current = [c for c in _stored_runs() if c.get("recipe") == TRAINING_RECIPE]
    assert current, "no committed run of the current training recipe"
    for stored in current:
        settings = {k: v for k, v in stored.items() if k in keys and v is not None}
        cfg = RunConfig(**settings)
        assert cfg.differences(stored) == [], stored["run_name"]
        assert cfg.name == stored["run_name"]


def test_a_defining_option_a_stored_run_lacks_counts_at_its_default():
    from runner.store import jsonable
    cfg = RunConfig(row="HAM", depth=3, seed=0, dataset="synthetic", epochs=1)
    stored = jsonable(cfg.to_dict())
    for key in ("lr", "fast", "limit_train_batches", "devices"):
        older = {k: v for k, v in stored.items() if k != key}
        assert cfg.differences(older) == [], key
    faster = RunConfig(row="HAM", depth=3, seed=0, dataset="synthetic", epochs=1, fast=True)
    (diff, _) = faster.differences({k: v for k, v in stored.items() if k != "fast"})
    assert diff.startswith("fast: stored False, now True")


def test_every_shared_option_is_declared_read_and_written_back(capsys):
    """The flags of train.py and sweep.py are the RunConfig fields that have one; to_argv
    writes each non-default value."""
    from runner.config import CLI_OPTIONS
    flags = {opt.flag for opt in CLI_OPTIONS.values()}
    assert {"--dataset", "--name", "--no-download", "--compile", "--synthetic-sizes",
            "--devices", "--project", "--entity"} <= flags
    for parser in (train.parse_args, sweep.parse_args):
        with pytest.raises(SystemExit):
            parser(["--help"])
        shown = capsys.readouterr().out
        assert [f for f in flags if f not in shown] == []
    cfg = RunConfig(row="HAM", depth=3, seed=1, dataset="synthetic", download=False,
                    compile_f=True, wandb_entity="me", sweep="s")
    argv = cfg.to_argv()
    for flag in ("--no-download", "--compile", "--entity", "--name", "--dataset"):
        assert flag in argv
    assert "--fast" not in argv and "--lr" not in argv
