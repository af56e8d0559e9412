"""The W&B path: sweep.py online, train.py under a sweep agent, sweep.yaml, credentials.

No W&B server is reachable from the tests, so ``wandb.sweep``, ``wandb.agent``, ``wandb.init``
and ``wandb.Api`` are replaced by a recording stand-in (:class:`FakeWandb`) that checks what
the code asks W&B to do. Its agent does what ``wandb agent`` does for a grid sweep: it hands
each point out once per sweep, building the command line from the sweep's ``command`` as
wandb's own agent does, and runs it (``train.main`` in this process) with the variables a
real agent sets (WANDB_SWEEP_ID, WANDB_RUN_ID, WANDB_PROJECT, WANDB_ENTITY and the parameter
file WANDB_SWEEP_PARAM_PATH). It models what wandb 0.31 does that the code depends on: a sweep
is created in the settings' entity (WANDB_ENTITY, settings file), which may differ from the
account's default entity, and written back to WANDB_ENTITY; an agent looks its sweep up in that
entity; the sweep's parameters are locked in the run's config (an update that would change
them is ignored); the public API raises ``ValueError`` for what is not there and other errors
(401, 5xx) for the rest. wandb's own ``Agent`` with ``train.py`` subprocesses is tested too.
"""
import contextlib
import copy
import io
import json
import queue
import sys
import re
import itertools
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import wandb
import yaml

import sweep
import train
from runner import wandb_run, wandb_sweep
from runner.config import RunConfig
from runner.store import atomic_write_json, jsonable, read_json

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--dataset", "synthetic", "--epochs", "1", "--limit-train-batches", "2",
        "--limit-test-batches", "2", "--synthetic-sizes", "256,128"]
GRID = ["--rows", "HAM", "--layers", "3", "--seeds", "0,1"]
TEST_METRICS = ("test/acc", "test/iters_to_converge", "test/not_converged")
AGENT_VARS = ("WANDB_SWEEP_ID", "WANDB_RUN_ID", "WANDB_PROJECT", "WANDB_ENTITY",
              "WANDB_SWEEP_PARAM_PATH")


def agent_command(config: dict, params: dict) -> list[str]:
    """The command line wandb's agent builds for one point (wandb_agent.Agent._command_run)."""
    macros = {"env": ["/usr/bin/env"], "interpreter": ["python"], "program": [config["program"]],
              "args": [f"--{k}={v}" for k, v in params.items()]}
    argv = []
    for part in config.get("command") or ["${env}", "${interpreter}", "${program}", "${args}"]:
        part = str(part)
        argv += macros[part[2:-1]] if part.startswith("${") and part.endswith("}") else [part]
    return argv


class FakeRun:
    """What ``wandb.init`` returns, recording everything the code does with it. Like wandb, it
    keeps its local files in ``<dir>/wandb/[offline-]run-<time>-<id>/run-<id>.wandb``."""

    def __init__(self, kwargs: dict):
        self.kwargs = kwargs
        self.id = os.environ.get("WANDB_RUN_ID") or kwargs.get("id") or "local001"
        self.name, self.group, self.tags = kwargs.get("name"), kwargs.get("group"), kwargs.get("tags")
        self.project = os.environ.get("WANDB_PROJECT") or kwargs.get("project")
        self.entity = os.environ.get("WANDB_ENTITY") or kwargs.get("entity")
        self.config = FakeConfig(kwargs.get("config") or {})
        if os.environ.get("WANDB_SWEEP_ID") and os.environ.get("WANDB_SWEEP_PARAM_PATH"):
            params = yaml.safe_load(Path(os.environ["WANDB_SWEEP_PARAM_PATH"]).read_text())
            self.config.lock({k: v["value"] for k, v in params.items()})
        if kwargs.get("dir") and kwargs.get("mode") != "disabled":
            prefix = "offline-run" if kwargs.get("mode") == "offline" else "run"
            files = Path(kwargs["dir"]) / "wandb" / f"{prefix}-20260101_000000-{self.id}"
            files.mkdir(parents=True, exist_ok=True)
            (files / f"run-{self.id}.wandb").touch()
        self.summary: dict = {}
        self.history: list[dict] = []
        self.metrics: list[tuple] = []
        self.artifacts: list = []
        self.exit_code = None

    def define_metric(self, name, **kwargs):
        self.metrics.append((name, kwargs))

    def log(self, data, step=None, commit=None):
        self.history.append(dict(data))

    def log_artifact(self, artifact):
        self.artifacts.append(artifact)

    def finish(self, exit_code=None, quiet=None):
        assert self.exit_code is None, "run finished twice"
        self.exit_code = exit_code or 0


class FakeConfig(dict):
    """A run's config; a sweep's parameters are locked: updates that change them are ignored
    (wandb warns "Config item ... was locked by 'sweep'"), and recorded in ``ignored``."""

    def __init__(self, values: dict):
        super().__init__(values)
        self.locked: dict = {}
        self.ignored: list = []

    def lock(self, params: dict) -> None:
        super().update(params)
        self.locked.update(params)

    def update(self, d, allow_val_change=None):
        for key, value in dict(d).items():
            if key in self.locked and value != self.locked[key]:
                self.ignored.append(key)
            else:
                self[key] = value


class FakeArtifact:
    def __init__(self, name, type):
        self.name, self.type, self.files = name, type, []

    def add_file(self, path, name=None):
        assert Path(path).exists()
        self.files.append(name)


class FakeWandb:
    """The recording stand-in: sweeps on the 'server', runs created, agents started."""

    def __init__(self, monkeypatch, tmp_path):
        self.monkeypatch, self.tmp_path = monkeypatch, tmp_path
        self.default_entity = "me"  # the account's own entity (Api().default_entity)
        self.settings_entity = None  # WANDB_ENTITY or the settings file's entity (a team)
        self.errors: dict[str, Exception] = {}  # "sweep", "sweeps": what the public API raises
        self.remote: dict[str, SimpleNamespace] = {}  # path -> sweep on the "server"
        self.created: list[dict] = []  # wandb.sweep calls
        self.agents: list[dict] = []  # wandb.agent calls
        self.runs: list[FakeRun] = []  # wandb.init calls
        self.exits: list[int] = []  # train.py's exit status for each point handed out
        self._ids = itertools.count(1)
        for name in ("sweep", "agent", "init", "Api", "Artifact", "teardown"):
            monkeypatch.setattr(wandb, name, getattr(self, name))
        monkeypatch.setattr(wandb, "Image", lambda array: ("image", getattr(array, "shape", None)))

    # -- the module's functions
    def entity(self, given=None):
        """The entity wandb uses where none is given: the settings', else the account's."""
        return given or os.environ.get("WANDB_ENTITY") or self.settings_entity \
            or self.default_entity

    def sweep(self, config, entity=None, project=None):
        sweep_id = f"swp{next(self._ids)}"
        self.created.append(dict(config=copy.deepcopy(config), entity=entity, project=project))
        entity = self.entity(entity)
        self.add_sweep(sweep_id, entity, project, yaml.safe_load(yaml.safe_dump(config)))
        self.monkeypatch.setenv("WANDB_ENTITY", entity)  # as wandb's _upsert_sweep does
        return sweep_id

    def add_sweep(self, sweep_id, entity, project, config, state="RUNNING"):
        self.remote[f"{entity}/{project}/{sweep_id}"] = SimpleNamespace(
            id=sweep_id, entity=entity, project=project, config=config, state=state, handed=set())

    def agent(self, sweep_id, function=None, entity=None, project=None, count=None):
        self.agents.append(dict(sweep_id=sweep_id, function=function, entity=entity,
                                project=project, count=count))
        assert function is None, "agents must run the sweep's program, not a function"
        path = f"{self.entity(entity)}/{project}/{sweep_id}"
        if path not in self.remote:  # what wandb's agent finds in the wrong entity
            raise ValueError(f"Could not find sweep {path}")
        remote = self.remote[path]
        grid = remote.config["parameters"]
        points = [dict(experiment=e, seed=s) for e in grid["experiment"]["values"]
                  for s in grid["seed"]["values"]]
        for params in points[:count] if count else points:
            key = (params["experiment"], params["seed"])
            if key in remote.handed:
                continue  # a grid hands each point out once, whatever became of it
            remote.handed.add(key)
            self.run_point(remote, params)

    def run_point(self, remote, params):
        argv = agent_command(remote.config, params)
        assert argv[:3] == ["/usr/bin/env", "python", "train.py"], argv
        run_id = f"agentrun{next(self._ids)}"
        param_file = self.tmp_path / "agent" / f"config-{run_id}.yaml"
        param_file.parent.mkdir(parents=True, exist_ok=True)
        param_file.write_text(yaml.safe_dump({k: {"value": v} for k, v in params.items()}))
        with self.monkeypatch.context() as m:
            m.setenv("WANDB_SWEEP_ID", remote.id)
            m.setenv("WANDB_RUN_ID", run_id)
            m.setenv("WANDB_PROJECT", remote.project)
            m.setenv("WANDB_ENTITY", remote.entity)
            m.setenv("WANDB_SWEEP_PARAM_PATH", str(param_file))
            self.exits.append(train.main(argv[3:]))

    def init(self, **kwargs):
        run = FakeRun(kwargs)
        self.runs.append(run)
        return run

    def Api(self):
        fake = self

        class Api:
            default_entity = fake.default_entity
            settings = {"entity": os.environ.get("WANDB_ENTITY") or fake.settings_entity}

            def sweep(self, path):
                if "sweep" in fake.errors:
                    raise fake.errors["sweep"]
                if path not in fake.remote:
                    raise ValueError(f"Could not find sweep {path}")
                return fake.remote[path]

            def project(self, name, entity=None):
                entity = entity or self.settings["entity"] or self.default_entity

                def sweeps():
                    if "sweeps" in fake.errors:
                        raise fake.errors["sweeps"]
                    found = [s for s in fake.remote.values()
                             if (s.entity, s.project) == (entity, name)]
                    if not found:
                        raise ValueError(f"Could not find project {name!r}")
                    return found
                return SimpleNamespace(sweeps=sweeps)
        return Api()

    def Artifact(self, name, type):
        return FakeArtifact(name, type)

    def teardown(self, exit_code=None):
        pass


@pytest.fixture
def fake_wandb(monkeypatch, tmp_path):
    """The stand-in, a machine with credentials and network, and the repository as the
    current directory (agents start ``train.py`` from there)."""
    for name in AGENT_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")  # were anything to reach the real wandb
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    monkeypatch.setenv("PATH", os.environ.get("PATH", ""))
    monkeypatch.setattr(sweep, "has_wandb_key", lambda: True)
    monkeypatch.setattr(sweep, "wandb_reachable", lambda timeout=5.0: True)
    monkeypatch.chdir(ROOT)
    return FakeWandb(monkeypatch, tmp_path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A local store with HAM-L3 seeds 0 and 1 finished (no W&B), and the sweep's log."""
    root = tmp_path_factory.mktemp("trained")
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        code = sweep.main([*GRID, *TINY, "--no-wandb", "--results", str(root), "--name", "t"])
    assert code == 0, log.getvalue()
    return SimpleNamespace(store=root / "t", log=log.getvalue())


def copy_store(trained, tmp_path) -> Path:
    shutil.copytree(trained.store, tmp_path / "t")
    return tmp_path / "t"


# -- sweep.yaml and the agent's command line ------------------------------------------------
def test_sweep_yaml_is_the_grid_that_sweep_py_creates():
    args = sweep.parse_args([])
    config = wandb_sweep.sweep_config(args)
    spec = yaml.safe_load((ROOT / "sweep.yaml").read_text())
    for key in ("program", "method", "name", "project", "metric", "parameters", "command"):
        assert spec[key] == config[key], key
    assert spec["program"] == "train.py" and spec["method"] == "grid"
    assert spec["metric"] == {"name": "test/acc", "goal": "maximize"}
    assert len(spec["parameters"]["experiment"]["values"]) == 17
    assert spec["parameters"]["seed"]["values"] == [0, 1, 2, 3, 4]
    assert spec["command"][:3] == ["${env}", "${interpreter}", "${program}"]
    assert spec["command"][-1] == "${args}"


def test_sweep_yaml_passes_the_schema_check_of_the_sweeps_package():
    """sweep.yaml, and the sweep sweep.py creates for a smaller grid, pass the schema check of
    W&B's `sweeps` package (PyPI), the one ``wandb controller`` validates sweeps with."""
    sweeps = pytest.importorskip(
        "sweeps", reason="W&B's `sweeps` package (its sweep-config schema) is not installed; "
                         "it declares numpy<2, so `pip install sweeps` would replace this "
                         "project's numpy 2: install it with --no-deps, with jsonschema, jsonref, "
                         "scipy and scikit-learn, to run this check")
    spec = yaml.safe_load((ROOT / "sweep.yaml").read_text())
    assert sweeps.schema_violations_from_proposed_config(spec) == []
    args = sweep.parse_args([*GRID, *TINY, "--lr", "0.02"])
    config = wandb_sweep.sweep_config(args)
    assert sweeps.schema_violations_from_proposed_config(config) == []
    broken = {**spec, "method": "grids"}  # the check is real: a wrong method is named
    assert any("grids" in v for v in sweeps.schema_violations_from_proposed_config(broken))


def test_train_py_reads_the_agents_command_line(monkeypatch):
    spec = yaml.safe_load((ROOT / "sweep.yaml").read_text())
    argv = agent_command(spec, dict(experiment="HAM-EO-DEQ-L3", seed=3))
    assert argv[3:] == ["--wandb=online", "--name=table2", "--dataset=emnist-mnist",
                        "--experiment=HAM-EO-DEQ-L3", "--seed=3"]
    args = train.parse_args(argv[3:])
    assert (args.row, args.layers, args.seed) == ("HAM-EO-DEQ", 3, 3)
    assert (args.name, args.dataset, args.wandb) == ("table2", "emnist-mnist", "online")
    # W&B's default command passes only the parameters: online under an agent, else disabled
    bare = agent_command({"program": "train.py"}, dict(experiment="HAM-L5", seed=0))[3:]
    for name in AGENT_VARS:
        monkeypatch.delenv(name, raising=False)
    assert train.parse_args(bare).wandb == "disabled"
    monkeypatch.setenv("WANDB_SWEEP_ID", "swp1")
    monkeypatch.setenv("WANDB_RUN_ID", "abc")
    assert (train.parse_args(bare).wandb, train.parse_args(bare).layers) == ("online", 5)


def test_sweep_config_fixes_the_settings_of_a_smaller_sweep(tmp_path):
    args = sweep.parse_args([*GRID, *TINY, "--lr", "0.02", "--results", str(tmp_path),
                             "--name", "small"])
    config = wandb_sweep.sweep_config(args)
    assert config["parameters"] == {"experiment": {"values": ["HAM-L3"]},
                                    "seed": {"values": [0, 1]}}
    argv = agent_command(config, dict(experiment="HAM-L3", seed=1))[3:]
    rebuilt = train.parse_args(argv)
    cfg = RunConfig.from_args(rebuilt, row=rebuilt.row, depth=rebuilt.layers, seed=rebuilt.seed,
                              wandb_mode="disabled")
    planned = sweep.plan(args)[1]
    assert cfg.differences(jsonable(planned.to_dict())) == []  # the very run sweep.py plans
    assert cfg.directory == planned.directory


# -- one run: the same identity online and offline --------------------------------------------
def test_online_and_offline_runs_have_the_same_identity(fake_wandb, tmp_path, monkeypatch):
    point = ["--experiment=HAM-L3", "--seed=0", *TINY]
    assert train.main([*point, "--wandb", "offline", "--results", str(tmp_path / "off")]) == 0
    with monkeypatch.context() as m:  # what a sweep agent sets for the program it starts
        m.setenv("WANDB_SWEEP_ID", "swp9")
        m.setenv("WANDB_RUN_ID", "agentrun9")
        m.setenv("WANDB_PROJECT", "hopfield-deq")
        assert train.main([*point, "--wandb=online", "--results", str(tmp_path / "on")]) == 0
    offline, online = fake_wandb.runs
    for run in (offline, online):
        assert run.kwargs["name"] == "HAM-L3-s0" and run.kwargs["group"] == "HAM-L3"
        assert run.kwargs["tags"] == ["HAM", "ham", "onematrix", "picard"]
        config = run.kwargs["config"]
        assert config["experiment"] == "HAM-L3" and config["row"] == "HAM"
        assert config["seed"] == 0 and config["depth"] == 3
        assert all(not isinstance(v, dict) for k, v in config.items() if k != "synthetic_kwargs")
        assert all(k in run.summary for k in TEST_METRICS)
        assert run.summary["status"] == "finished" and run.exit_code == 0
        assert ("*", {"step_metric": "trainer/global_step", "step_sync": True}) in run.metrics
        assert any(k.startswith("train/") for row in run.history for k in row)  # Lightning logged
        (artifact,) = run.artifacts
        assert artifact.type == "run-results" and "trajectories.npz" in artifact.files
    assert offline.kwargs["config"] == online.kwargs["config"]
    assert offline.kwargs["mode"] == "offline" and online.kwargs["mode"] == "online"
    # offline: our id (kept in config.json, for a resume); under an agent: the agent's run
    stored = read_json(tmp_path / "off" / "single" / "HAM-L3-s0" / "config.json")
    assert offline.kwargs["id"] == stored["wandb_run_id"] and offline.kwargs["resume"] == "allow"
    assert offline.kwargs["project"] == "hopfield-deq"
    assert not {"id", "project", "entity"} & set(online.kwargs)  # W&B takes the agent's
    stored = read_json(tmp_path / "on" / "single" / "HAM-L3-s0" / "config.json")
    assert stored["wandb_run_id"] == "agentrun9" and stored["wandb_mode"] == "online"


def test_a_failed_run_closes_its_wandb_run(fake_wandb, tmp_path, monkeypatch):
    args = ["--experiment=HAM-L3", "--seed=0", *TINY, "--wandb", "offline",
            "--results", str(tmp_path)]
    import runner.run

    def fail(*_):  # an error in training (an unreadable checkpoint is set aside instead)
        raise RuntimeError("training failed")

    monkeypatch.setattr(runner.run, "_train_and_test", fail)
    assert train.main(args) == 1  # one line on stderr, no traceback
    (run,) = fake_wandb.runs
    assert run.exit_code == 1 and run.summary["status"] == "failed"


# -- sweep.py online ------------------------------------------------------------------------
def test_sweep_py_creates_a_program_sweep_then_continues_it(fake_wandb, tmp_path, capsys):
    args = [*GRID, *TINY, "--results", str(tmp_path), "--name", "t"]
    assert sweep.main(args) == 0
    (created,) = fake_wandb.created
    config = created["config"]
    assert config["program"] == "train.py" and config["method"] == "grid"
    assert config["metric"] == {"name": "test/acc", "goal": "maximize"}
    assert config["parameters"]["experiment"] == {"values": ["HAM-L3"]}
    assert config["command"][-1] == "${args}" and "--name=t" in config["command"]
    assert created["project"] == "hopfield-deq"
    (agent,) = fake_wandb.agents
    assert agent["sweep_id"] == "swp1" and agent["function"] is None
    assert fake_wandb.exits == [0, 0]
    for run, seed in zip(fake_wandb.runs, (0, 1)):
        assert run.kwargs["name"] == f"HAM-L3-s{seed}" and run.kwargs["group"] == "HAM-L3"
        assert all(k in run.summary for k in TEST_METRICS)
        stored = read_json(tmp_path / "t" / f"HAM-L3-s{seed}" / "config.json")
        assert run.id.startswith("agentrun") and stored["wandb_run_id"] == run.id
    record = read_json(tmp_path / "t" / "wandb_sweep.json")
    assert (record["sweep_id"], record["entity"], record["project"]) == ("swp1", "me",
                                                                       "hopfield-deq")
    assert "add machines with: python sweep.py --join me/hopfield-deq/swp1" in capsys.readouterr().out

    # started again: the same sweep, nothing handed out twice, no new run
    assert sweep.main(args) == 0
    assert len(fake_wandb.created) == 1 and [a["sweep_id"] for a in fake_wandb.agents] == \
        ["swp1", "swp1"]
    assert len(fake_wandb.runs) == 2
    assert "continuing W&B sweep me/hopfield-deq/swp1 (RUNNING)" in capsys.readouterr().out

    # without the record (another results directory, say) the sweep is found by its name
    (tmp_path / "t" / "wandb_sweep.json").unlink()
    fake_wandb.remote["me/hopfield-deq/swp1"].state = "FINISHED"
    assert sweep.main(args) == 0
    assert len(fake_wandb.created) == 1 and len(fake_wandb.agents) == 2  # finished: no agent
    assert "continuing W&B sweep me/hopfield-deq/swp1 (FINISHED)" in capsys.readouterr().out


def test_finished_points_handed_out_are_published_not_trained(fake_wandb, trained, tmp_path):
    store = copy_store(trained, tmp_path)  # finished here before (offline, say)
    before = {p: p.stat().st_mtime_ns for p in store.rglob("*") if p.is_file()
              and p.name not in (".lock", "config.json", "summary.json")}  # both record W&B
    assert sweep.main([*GRID, *TINY, "--results", str(tmp_path), "--name", "t"]) == 0
    assert len(fake_wandb.created) == 1 and fake_wandb.exits == [0, 0]
    assert {p: p.stat().st_mtime_ns for p in before} == before  # nothing trained again
    for run, seed in zip(fake_wandb.runs, (0, 1)):
        assert run.kwargs["name"] == f"HAM-L3-s{seed}" and run.kwargs["group"] == "HAM-L3"
        summary = read_json(store / f"HAM-L3-s{seed}" / "summary.json")
        assert {k: run.summary[k] for k in TEST_METRICS} == {k: summary[k] for k in TEST_METRICS}
        assert run.summary["status"] == "finished" and run.summary["restored_from_store"]
        epochs = [row for row in run.history if "train/loss" in row]
        assert len(epochs) == 1 and epochs[0]["trainer/global_step"] == 2
        assert run.exit_code == 0 and run.artifacts[0].type == "run-results"


def test_runs_that_did_not_finish_are_retried_with_their_wandb_run(fake_wandb, trained,
                                                                    tmp_path, capsys):
    store = copy_store(trained, tmp_path)
    victim = store / "HAM-L3-s1"  # killed after its epoch checkpoint, in an earlier sweep
    config = read_json(victim / "config.json")
    atomic_write_json(victim / "config.json", {**config, "wandb_run_id": "crashed1",
                                               "wandb_mode": "online"})
    atomic_write_json(victim / "summary.json", {"status": "interrupted",
                                                "run_name": "HAM-L3-s1"})
    shutil.rmtree(store / "HAM-L3-s0")  # trained by another machine
    args = sweep.parse_args([*GRID, *TINY, "--results", str(tmp_path), "--name", "t"])
    config = wandb_sweep.sweep_config(args)
    fake_wandb.add_sweep("swp7", "me", "hopfield-deq", config, state="FINISHED")
    atomic_write_json(store / "wandb_sweep.json", dict(sweep_id="swp7", entity="me",
                                                       project="hopfield-deq"))
    assert sweep.main([*GRID, *TINY, "--results", str(tmp_path), "--name", "t"]) == 0
    assert not fake_wandb.created and not fake_wandb.agents  # a finished grid hands out nothing
    (run,) = fake_wandb.runs  # the retry, here, continuing the killed run's W&B run
    assert run.kwargs["id"] == "crashed1" and run.kwargs["resume"] == "allow"
    assert run.kwargs["name"] == "HAM-L3-s1" and run.kwargs["group"] == "HAM-L3"
    assert all(k in run.summary for k in TEST_METRICS) and run.summary["resumed"] is True
    assert read_json(victim / "summary.json")["status"] == "finished"
    assert not (store / "HAM-L3-s0").exists()  # another machine's run is not trained here
    out = capsys.readouterr().out
    assert "1 of 2 runs have no result" in out and "--wandb me/hopfield-deq/swp7" in out
    assert "1 run(s) started here did not finish" in out


def api_failure(status: int) -> Exception:
    """What wandb's public API raises for an HTTP error (401: bad key, 5xx: server down)."""
    try:
        from wandb.sdk.lib.service.service_connection import WandbApiFailedError as Failed
    except ImportError:  # wandb before wandb-core's API: CommError
        from wandb.errors import CommError as Failed
    return Failed(f"HTTP {status}: {'Unauthorized' if status == 401 else 'Bad Gateway'}")


@pytest.mark.parametrize("written_back", [True, False], ids=["wandb-0.31", "older-wandb"])
def test_the_sweep_is_recorded_and_joined_in_the_entity_it_was_created_in(
        fake_wandb, tmp_path, capsys, monkeypatch, written_back):
    """A team entity in the settings (not the account's default entity): wandb creates the
    sweep there; sweep.py records, prints and runs its agent there, and continues it there."""
    fake_wandb.settings_entity = "team"
    if not written_back:  # wandb before 0.30 did not write the sweep's entity to WANDB_ENTITY
        monkeypatch.setattr(fake_wandb.monkeypatch, "setenv",
                            lambda name, value: None if name == "WANDB_ENTITY" else
                            monkeypatch.setenv(name, value))
    args = [*GRID, *TINY, "--results", str(tmp_path), "--name", "t"]
    assert sweep.main(args) == 0
    assert list(fake_wandb.remote) == ["team/hopfield-deq/swp1"]
    assert [a["entity"] for a in fake_wandb.agents] == ["team"]
    assert fake_wandb.exits == [0, 0]
    assert read_json(tmp_path / "t" / "wandb_sweep.json")["entity"] == "team"
    assert "python sweep.py --join team/hopfield-deq/swp1" in capsys.readouterr().out
    assert sweep.main(args) == 0  # continued in the same entity, not a second sweep
    assert len(fake_wandb.created) == 1
    assert "continuing W&B sweep team/hopfield-deq/swp1" in capsys.readouterr().out


@pytest.mark.parametrize("where", ["sweeps", "sweep"])
@pytest.mark.parametrize("status", [401, 502])
def test_an_error_asking_wandb_for_the_sweep_creates_no_second_sweep(fake_wandb, tmp_path,
                                                                     capsys, status, where):
    """Only "not found" leads to a new sweep: an HTTP error listing the project's sweeps (or
    reading the recorded one) stops sweep.py with one line, nothing created or run."""
    args = [*GRID, *TINY, "--results", str(tmp_path), "--name", "t"]
    assert sweep.main(args) == 0
    if where == "sweeps":
        (tmp_path / "t" / "wandb_sweep.json").unlink()  # found by listing the project
    fake_wandb.errors[where] = api_failure(status)
    with pytest.raises(SystemExit) as stop:
        sweep.main(args)
    assert str(status) in str(stop.value) and "hopfield-deq" in str(stop.value)  # what, where
    assert len(fake_wandb.created) == 1 and len(fake_wandb.agents) == 1


def test_the_wandb_config_is_the_same_flat_keys_trained_and_restored(fake_wandb, tmp_path):
    """Lightning's log_hyperparams adds nothing to the run's config: a trained point and the
    same point restored from the store have exactly the keys of wandb_config, none nested,
    and nothing tried to change the sweep's locked parameters."""
    args = [*GRID, *TINY, "--results", str(tmp_path), "--name", "t"]
    assert sweep.main(args) == 0  # trained by the agent
    assert sweep.main([*args, "--project", "other"]) == 0  # a new sweep: restored from the store
    trained, restored = fake_wandb.runs[:2], fake_wandb.runs[2:]
    assert len(restored) == 2 and all(r.summary.get("restored_from_store") for r in restored)
    planned = sweep.plan(sweep.parse_args(args))[0]
    keys = set(wandb_run.wandb_config(planned))
    for run in trained + restored:
        assert set(run.config) == keys, set(run.config) ^ keys
        assert not [k for k, v in run.config.items() if isinstance(v, dict)
                    and k != "synthetic_kwargs"]
        assert run.config.ignored == []


def test_a_point_restored_into_the_agents_run_supersedes_its_offline_run(fake_wandb, tmp_path):
    """A point trained offline, then handed out by an agent, is published into the agent's run:
    the store records the agent's run id; the offline run is set aside where the printed
    `wandb sync .../*/wandb/offline-run-*` (or a sync of the run's wandb folder) does not see it,
    and the export names only the agent's run."""
    from runner.export import export_sweep

    args = [*GRID, *TINY, "--results", str(tmp_path), "--name", "t"]
    assert sweep.main([*args, "--offline"]) == 0
    store = tmp_path / "t"
    offline_ids = {d.name: read_json(store / d.name / "config.json")["wandb_run_id"]
                   for d in store.iterdir() if d.is_dir()}
    assert len(list(store.glob("*/wandb/offline-run-*"))) == 2
    assert sweep.main(args) == 0  # the agent hands out both points: restored from the store
    agent_runs = {r.name: r.id for r in fake_wandb.runs if r.id.startswith("agentrun")}
    assert len(agent_runs) == 2
    assert list(store.glob("*/wandb/offline-run-*")) == []  # what the sync advice matches
    assert list(store.glob("*/wandb/*/*.wandb")) == [  # what `wandb sync <run>/wandb` reads
        p for p in store.glob("*/wandb/run-*/*.wandb")]
    for name, agent_id in agent_runs.items():
        config = read_json(store / name / "config.json")
        assert config["wandb_run_id"] == agent_id
        assert list((store / name / "wandb" / "superseded").glob(
            f"offline-run-*-{offline_ids[name]}/run-{offline_ids[name]}.wandb"))
    export_sweep(tmp_path, "t", tmp_path / "export")
    for name, agent_id in agent_runs.items():
        exported = (tmp_path / "export" / name / "config.json").read_text()
        assert read_json(tmp_path / "export" / name / "config.json")["wandb_run_id"] == agent_id
        assert offline_ids[name] not in exported


def test_a_finished_run_whose_upload_failed_is_uploaded_on_the_next_start(fake_wandb, tmp_path,
                                                                          monkeypatch):
    """The store has the result, W&B does not (the artifact upload failed): the next start of
    sweep.py fills the same W&B run (its id, the sweep's entity) from the store, once."""
    fake_wandb.settings_entity = "team"
    failing = {"on": True}

    def log_artifact(run, artifact):
        if failing["on"]:
            raise api_failure(502)
        run.artifacts.append(artifact)

    monkeypatch.setattr(FakeRun, "log_artifact", log_artifact)
    args = [*GRID, *TINY, "--results", str(tmp_path), "--name", "t"]
    with pytest.warns(UserWarning, match="upload"):
        assert sweep.main(args) == 0  # (its retry at the end fails the same way)
    first, started = fake_wandb.runs[:2], len(fake_wandb.runs)
    assert all(r.summary["status"] == "finished" and not r.artifacts for r in first)
    failing["on"] = False
    assert sweep.main(args) == 0  # the grid is handed out: nothing trained, both uploaded
    again = fake_wandb.runs[started:]
    assert [r.kwargs["id"] for r in again] == [r.id for r in first]
    for run in again:
        assert run.kwargs["resume"] == "allow" and run.kwargs["entity"] == "team"
        assert run.artifacts and all(k in run.summary for k in TEST_METRICS)
    assert sweep.main(args) == 0  # uploaded: not again
    assert len(fake_wandb.runs) == started + 2


def test_wandbs_own_agent_is_not_stopped_by_a_point_another_process_trains(fake_wandb, tmp_path,
                                                                         monkeypatch):
    """wandb's own Agent (wandb_agent.Agent: its failure rule, its environment, train.py
    subprocesses with the stand-in wandb of tests/wandb_standin) is handed two points: one that
    another process is training (locked) and one stored with other settings. The locked one
    is reported into its W&B run and does not count as a failed run (three failures in 60 s
    stop the agent); the refused one is reported and does count (README: the agent stops)."""
    from wandb import wandb_agent
    from wandb.apis.public import sweeps as public_sweeps

    from runner.store import RunLock

    args = sweep.parse_args([*GRID, *TINY, "--results", str(tmp_path), "--name", "t"])
    planned = sweep.plan(args)
    config = wandb_sweep.sweep_config(args)
    busy, other = (cfg.directory for cfg in planned)
    other.mkdir(parents=True)
    atomic_write_json(other / "config.json", {**jsonable(planned[1].to_dict()), "epochs": 3})
    commands = [dict(type="run", run_id=f"agentrun{cfg.seed}", program="train.py",
                     args={"experiment": {"value": cfg.experiment.key},
                           "seed": {"value": cfg.seed}}) for cfg in planned]

    def heartbeat(api, agent_id, metrics, run_status):
        if run_status:  # a point is still running
            return []
        return [commands.pop(0)] if commands else [dict(type="exit")]

    monkeypatch.setattr(public_sweeps, "_sweep_with_runs",
                        lambda api, sweep_id, specs, **kw: {"config": yaml.safe_dump(config)})
    monkeypatch.setattr(public_sweeps, "_register_agent", lambda *a, **kw: {"id": "agent1"})
    monkeypatch.setattr(public_sweeps, "_agent_heartbeat", heartbeat)
    monkeypatch.setattr(wandb_agent.Agent, "POLL_INTERVAL", 0.1)
    log = tmp_path / "standin.jsonl"
    for name, value in dict(WANDB_SWEEP_ID="swp1", WANDB_PROJECT="hopfield-deq",
                            WANDB_ENTITY="team", WANDB_DIR=str(tmp_path),
                            WANDB_STANDIN_LOG=str(log), OMP_NUM_THREADS="1",
                            PYTHONPATH=str(ROOT / "tests" / "wandb_standin"),
                            PATH=os.pathsep.join([os.path.dirname(sys.executable),
                                                  os.environ["PATH"]])).items():
        monkeypatch.setenv(name, value)
    agent = wandb_agent.Agent(fake_wandb.Api(), queue.Queue(), sweep_id="swp1")
    with RunLock(busy):  # "another process" trains seed 0 meanwhile
        agent.run()
    assert not commands and agent._finished == 2
    assert agent._failed == 1  # the refused point only
    reports = {r["id"]: r for r in map(json.loads, log.read_text().splitlines())}
    assert reports["agentrun0"]["summary"]["status"] == "busy"
    assert "being trained by another process" in reports["agentrun0"]["summary"]["error"]
    assert reports["agentrun1"]["summary"]["status"] == "refused"
    assert "epochs" in reports["agentrun1"]["summary"]["error"]
    assert all(r["exit_code"] == 1 and r["sweep_id"] == "swp1" for r in reports.values())


def test_join_runs_an_agent_of_the_sweeps_program(fake_wandb):
    fake_wandb.add_sweep("abc123", "someone", "hopfield-deq",
                         dict(program="train.py", parameters=dict(experiment=dict(values=[]),
                                                                  seed=dict(values=[]))))
    assert sweep.main(["--join", "someone/hopfield-deq/abc123", "--count", "3"]) == 0
    assert fake_wandb.agents == [dict(sweep_id="abc123", function=None, entity="someone",
                                      project="hopfield-deq", count=3)]
    assert not fake_wandb.created


def test_sweep_eta_before_and_after_each_run(trained):
    """The plan ends with an ETA (none yet: no run of the row has finished); after seed 0
    finishes, seed 1 is estimated at seed 0's measured time; after seed 1, nothing is left."""
    lines = trained.log.splitlines()
    etas = [line for line in lines if line.startswith("sweep ETA: ")]
    assert len(etas) == 3, etas
    assert etas[0].startswith("sweep ETA: 2 runs left; no estimate yet")
    assert re.fullmatch(r"sweep ETA: 1 runs left, about \S+ on one worker: \S+ for 1 runs at "
                        r"their row's measured time", etas[1])
    assert etas[2] == "sweep ETA: nothing left to train"
    assert lines.index(etas[1]) == 1 + next(i for i, line in enumerate(lines)
                                            if "seed 0: finished in" in line)


# -- credentials: asked of wandb, never prompted for ------------------------------------------
@pytest.fixture
def no_credentials(monkeypatch, tmp_path):
    """A machine without any W&B credentials; wandb's settings reloaded before and after."""
    from wandb.sdk.lib.wbauth import prompt

    def no_prompt(*args, **kwargs):
        raise AssertionError("wandb was asked to prompt for a key")

    monkeypatch.setattr(prompt, "prompt_and_save_api_key", no_prompt)
    for name in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "NETRC", "WANDB_CONFIG_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("WANDB_BASE_URL", "https://api.wandb.ai")
    (tmp_path / "home").mkdir()
    wandb.teardown()  # wandb reads its settings files once per process
    yield tmp_path
    wandb.teardown()


def test_credentials_are_those_wandb_itself_accepts(no_credentials, monkeypatch, capsys):
    assert sweep.has_wandb_key() is False
    netrc = no_credentials / "elsewhere.netrc"
    netrc.write_text(f"machine api.wandb.ai\n  login user\n  password {'a' * 40}\n")
    monkeypatch.setenv("NETRC", str(netrc))
    assert sweep.has_wandb_key() is True
    monkeypatch.delenv("NETRC")
    token = no_credentials / "token"
    token.write_text("a.jwt.token")
    monkeypatch.setenv("WANDB_IDENTITY_TOKEN_FILE", str(token))
    assert sweep.has_wandb_key() is True
    monkeypatch.delenv("WANDB_IDENTITY_TOKEN_FILE")
    monkeypatch.setenv("WANDB_API_KEY", "short")
    assert sweep.has_wandb_key() is False
    err = capsys.readouterr().err  # said once, not silently treated as no key
    assert "W&B" in err and len(err.strip().splitlines()) == 1


def test_api_key_in_wandbs_settings_file_counts(no_credentials, monkeypatch):
    settings = no_credentials / "home" / ".config" / "wandb" / "settings"
    settings.parent.mkdir(parents=True)
    settings.write_text(f"[default]\napi_key = {'b' * 40}\n")
    wandb.teardown()
    assert sweep.has_wandb_key() is True


def test_quick_trains_on_the_same_data_online_and_offline():
    import train
    from runner.config import RunConfig
    from runner.store import jsonable

    args = sweep.parse_args(["--quick", "--rows", "HAM", "--layers", "3"])
    local = sweep.plan(args)[0]
    command = wandb_sweep.sweep_config(args)["command"]
    assert "--synthetic-sizes=256,128" in command
    agent_argv = [a for a in command if not a.startswith("${")] + [
        f"--experiment={local.experiment.key}", f"--seed={local.seed}"]
    parsed = train.parse_args(agent_argv)
    online = RunConfig.from_args(parsed, row=parsed.row, depth=parsed.layers, seed=parsed.seed,
                                 wandb_mode="offline")
    assert online.differences(jsonable(local.to_dict())) == []  # as if read from config.json
