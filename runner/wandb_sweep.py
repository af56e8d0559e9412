"""The sweep as W&B runs it: credentials, the sweep's definition, continuing it, agents.

W&B agents run ``train.py`` as the sweep's program (``sweep.yaml`` is the whole table's
definition), so ``wandb agent ENTITY/PROJECT/ID`` on any machine works as well as
``python sweep.py --join``. Nothing here prompts for a login; ``sweep.py`` uses these pieces.
The agents' command comes from the run options (``runner.config``); ``sweep.yaml`` is written
by ``python -m runner.wandb_sweep --write-yaml`` (a test checks that it is current).
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
from dataclasses import replace
from pathlib import Path

from deq_modules.experiments import SEEDS, Experiment, select

from .config import CLI_OPTIONS, OPTION_DEFAULTS, RunConfig
from .grid import SweepOptions, print_plan, run_local
from .names import DEFAULT_TABLE, EXIT_SIGNAL, REPOSITORY, SWEEP_RECORD, TRAIN_SCRIPT
from .store import (FAILED, INTERRUPTED, RUNNING, TEST_ACC, atomic_write_json, is_locked,
                    read_json, status_of, summary_of)

PROGRAM = TRAIN_SCRIPT  # what every W&B agent runs for a point of the grid
METRIC = dict(name=TEST_ACC, goal="maximize")
SWEEP_YAML = "sweep.yaml"  # in the repository: the whole Table 2 as a W&B sweep
ENDED_STATES = ("FINISHED", "CANCELED", "CANCELLED", "FAILED", "CRASHED")
AGENT_ENV = ("WANDB_SWEEP_ID", "WANDB_RUN_ID", "WANDB_SWEEP_PARAM_PATH")  # set by wandb.agent


def wandb_base_url() -> str:
    """The W&B server of this machine: WANDB_BASE_URL, else wandb's own setting."""
    if os.environ.get("WANDB_BASE_URL"):
        return os.environ["WANDB_BASE_URL"]
    try:
        from wandb.sdk import wandb_setup

        return wandb_setup.singleton().settings.base_url
    except Exception:  # noqa: BLE001 - another wandb version: its long-standing default
        return "https://api.wandb.ai"


def has_wandb_key() -> bool:
    """Whether ``wandb`` has credentials for its server, asked of ``wandb`` itself and never
    prompting: WANDB_API_KEY, an identity-token file (WANDB_IDENTITY_TOKEN_FILE), $NETRC or
    ~/.netrc (what ``wandb login`` writes), or the api_key of a wandb settings file."""
    try:
        from wandb.sdk.lib import wbauth
    except ImportError:
        wbauth = None
    if wbauth is not None and hasattr(wbauth, "authenticate_session"):
        try:
            auth = wbauth.authenticate_session(host=wandb_base_url(), source="sweep.py",
                                               prompt=False, update_session=False)
        except TypeError:  # a wandb whose signature differs: ask the older way
            return _has_wandb_key_legacy()
        except Exception as err:  # noqa: BLE001 - a key of the wrong form, a bad token file
            print(f"sweep.py: the W&B credentials of this machine are unusable: {err}",
                  file=sys.stderr)
            return False
        return auth is not None
    return _has_wandb_key_legacy()


def _has_wandb_key_legacy() -> bool:
    """wandb before its ``wbauth`` module: the internal API resolves the key (environment,
    netrc, settings) without prompting."""
    try:
        from wandb.apis import InternalApi

        return bool(InternalApi().api_key)
    except Exception:  # noqa: BLE001 - no way to ask: the environment is all we know
        return bool(os.environ.get("WANDB_API_KEY"))


def wandb_reachable(timeout: float = 5.0) -> bool:
    from urllib.parse import urlparse

    url = urlparse(wandb_base_url())
    try:
        port = url.port or (80 if url.scheme == "http" else 443)
        socket.create_connection((url.hostname, port), timeout=timeout).close()
        return True
    except (OSError, ValueError):
        return False


def agent_command(args: SweepOptions) -> list[str]:
    """The sweep's command: ``train.py`` online, in the sweep's folder (``--name``), with the
    settings this sweep fixes (the run options marked ``agent="always"``, and those marked
    ``"given"`` that differ from their default), then the agent's ``--experiment=...
    --seed=...``. Machine-only settings (data directory, accelerator) are not in it: each
    machine has its own."""
    fixed = ["--wandb=online", f"--name={args.name}"]
    for name, opt in CLI_OPTIONS.items():
        value = args.settings[name]
        if name != "sweep" and (opt.agent == "always" or (
                opt.agent == "given" and value != OPTION_DEFAULTS[name])):
            fixed += opt.argv(value, sep="=")
    return ["${env}", "${interpreter}", "${program}", *fixed, "${args}"]


def sweep_config(args: SweepOptions) -> dict:
    """A W&B grid over (row key, seed) that agents run as ``train.py`` (``sweep.yaml`` is this
    for the whole table); everything else is fixed by the registry and the command."""
    return dict(
        program=PROGRAM, name=args.name, project=args.settings["wandb_project"],
        method="grid", metric=METRIC,
        parameters=dict(experiment=dict(values=[e.key for e in args.experiments]),
                        seed=dict(values=sorted(set(args.seeds)))),
        command=agent_command(args),
    )


def same_grid(a: dict, b: dict) -> bool:
    """Whether two sweep configs run the same points the same way (the options of their
    commands in any order: ``train.py`` reads them alike)."""
    def command(config: dict) -> tuple:
        words = [str(w) for w in config.get("command") or ()]
        return (words[:3], sorted(words[3:-1]), words[-1:])

    return command(a) == command(b) and all(
        a.get(k) == b.get(k) for k in ("program", "method", "parameters"))


def sweep_path(entity: str | None, project: str, sweep_id: str) -> str:
    return "/".join(p for p in (entity, project, sweep_id) if p)


def existing_sweep(api, config: dict, args: SweepOptions):
    """The W&B sweep of this grid from an earlier ``python sweep.py``: the one recorded in the
    results directory, else one of the same name and grid in the project; ``None`` if none."""
    project, entity = args.settings["wandb_project"], args.settings["wandb_entity"]
    record = read_json(Path(args.store) / SWEEP_RECORD) or {}
    if record.get("sweep_id") and record.get("project") == project \
            and entity in (None, record.get("entity")):
        path = sweep_path(record.get("entity"), record.get("project"), record["sweep_id"])
        try:
            sweep = api.sweep(path)
        except ValueError as err:  # what wandb raises for a sweep that is not there (deleted)
            print(f"sweep.py: the recorded W&B sweep {path} is not available ({err})")
        except Exception as err:  # noqa: BLE001 - never a second sweep for a network hiccup
            raise SystemExit(f"sweep.py: could not ask W&B about the recorded sweep {path} "
                             f"({type(err).__name__}: {err}); nothing was run") from None
        else:
            if same_grid(sweep.config, config):
                return sweep
            print(f"sweep.py: the recorded W&B sweep {path} has another grid; not reused")
    where = sweep_path(entity, project, "")
    try:
        found = [s for s in api.project(project, entity).sweeps()
                 if s.config.get("name") == args.name and same_grid(s.config, config)]
        running = [s for s in found if str(s.state).upper() not in ENDED_STATES]
    except ValueError as err:  # wandb's "Could not find project": no sweep there yet
        print(f"sweep.py: no W&B sweeps in {where} yet ({err})")
        return None
    except Exception as err:  # noqa: BLE001 - 401, 5xx, no network: a new sweep would be a duplicate
        raise SystemExit(f"sweep.py: could not list the W&B sweeps of {where} "
                         f"({type(err).__name__}: {err}); nothing was run and no sweep was "
                         "created: check the network and the W&B credentials, then start "
                         "sweep.py again") from None
    return (running or found or [None])[0]


def created_entity(api, asked: str | None) -> str | None:
    """The entity of the sweep that ``wandb.sweep(entity=asked)`` just created, read back as
    wandb's own ``wandb sweep`` does: the one asked for, else WANDB_ENTITY (which wandb sets
    to the server's answer when it creates a sweep), else the settings' entity (a settings
    file, read by ``wandb.Api``), else the account's default entity. Not simply the default
    entity: with a team entity in the settings, the sweep is the team's."""
    settings = getattr(api, "settings", None) or {}
    return (asked or os.environ.get("WANDB_ENTITY") or settings.get("entity")
            or getattr(api, "default_entity", None))


def prepare_agents(args: SweepOptions) -> None:
    """W&B agents start ``python train.py`` from the current directory: make that this
    repository's train.py in this Python, with this machine's data directory."""
    here = Path.cwd() / PROGRAM
    if not (here.exists() and here.samefile(REPOSITORY / PROGRAM)):
        raise SystemExit(f"sweep.py: W&B agents run the sweep's program {PROGRAM} from the "
                         f"current directory: start sweep.py from the repository root "
                         f"({REPOSITORY})")
    os.environ["PATH"] = os.pathsep.join([os.path.dirname(sys.executable),
                                          os.environ.get("PATH", "")])
    data_dir, accelerator = args.settings["data_dir"], args.settings["accelerator"]
    if data_dir:
        os.environ["HOPFIELD_DATA_DIR"] = str(Path(data_dir).absolute())
    if accelerator != OPTION_DEFAULTS["accelerator"]:
        print(f"sweep.py: note: W&B agents run train.py with --accelerator auto; "
              f"--accelerator {accelerator} applies to local mode only")


def run_agent(sweep_id: str, entity: str | None, project: str,
              count: int | None = None) -> int | None:
    """``wandb.agent`` on the sweep: each point it is handed runs as the sweep's command (a
    ``train.py`` process). SIGINT and SIGTERM reach it as Ctrl-C: it waits for its running
    point to end, a second signal stops that point (resumable). Returns the first signal's
    number (``None``: the agent ended by itself), leaving this process out of the sweep."""
    import wandb

    received: list[int] = []

    def on_signal(signum: int, frame: object) -> None:
        received.append(signum)
        raise KeyboardInterrupt

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        wandb.agent(sweep_id, entity=entity, project=project, count=count)
    except KeyboardInterrupt:
        pass
    except Exception as err:  # noqa: BLE001 - one line, not wandb's traceback
        raise SystemExit(f"sweep.py: the W&B agent of {sweep_path(entity, project, sweep_id)} "
                         f"stopped: {type(err).__name__}: {err}") from None
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for name in AGENT_ENV:  # else a later wandb.init here would join the agent's last run
            os.environ.pop(name, None)
        wandb.teardown()
    return received[0] if received else None


# -- running the grid as a W&B sweep ---------------------------------------------------------
def upload_unsent(runs: list[RunConfig]) -> None:
    """Upload the runs this machine finished whose upload to W&B did not complete (the
    network went down, say): ``run_experiment`` publishes such a stored run into its own W&B
    run, training nothing."""
    from .run import run_experiment
    from .wandb_run import needs_upload

    for cfg in runs:
        if needs_upload(summary_of(cfg.directory) or {}) and not is_locked(cfg.directory):
            try:
                run_experiment(cfg)
            except Exception as err:  # noqa: BLE001 - the result is safe in the store
                print(f"{cfg.name}: W&B upload failed again ({type(err).__name__}: {err}); "
                      "start sweep.py again to retry", flush=True)


def retry_unfinished(runs: list[RunConfig], args: SweepOptions, entity: str | None,
                     path: str) -> int:
    """Train here, online, the points this machine started that did not finish (failed,
    interrupted, killed): a W&B grid never hands them out again. Each resumes its checkpoint
    and its W&B run (the id in its config.json) in the sweep's entity. Runs finished here whose
    upload did not complete are uploaded."""
    runs = [replace(cfg, wandb_mode="online", wandb_entity=entity) for cfg in runs]
    upload_unsent(runs)
    retry = [cfg for cfg in runs if status_of(cfg.directory) in (FAILED, INTERRUPTED, RUNNING)
             and not is_locked(cfg.directory)]
    missing = [cfg.name for cfg in runs if status_of(cfg.directory) is None]
    if missing:
        print(f"sweep {args.name}: {len(missing)} of {len(runs)} runs have no result in "
              f"{Path(args.store)} (other machines', or not handed out yet); "
              f"python -m paper_figures --wandb {path} reads the whole sweep", flush=True)
    if not retry:
        return 0
    print(f"sweep {args.name}: {len(retry)} run(s) started here did not finish; training "
          f"them again in this process: {', '.join(r.name for r in retry)}", flush=True)
    return run_local(retry, args)


def run_wandb(runs: list[RunConfig], args: SweepOptions) -> int:
    """Create (or continue) the W&B sweep of the grid and run an agent on it here, then train
    the points this machine started that did not finish; with ``--join``, only the agent.
    Returns the exit status."""
    import wandb

    if args.settings["devices"] not in (1, "1"):
        raise SystemExit("sweep.py: --devices > 1 is supported in local mode only "
                         "(add --offline); W&B agents run one device per run")
    prepare_agents(args)
    if args.join:
        entity, project, sweep_id = args.join.split("/")
        signum = run_agent(sweep_id, entity, project, args.count)
        return 0 if signum is None else EXIT_SIGNAL + signum
    print_plan(runs, args)
    config = sweep_config(args)
    project = config["project"]
    api = wandb.Api()
    sweep = existing_sweep(api, config, args)
    if sweep is None:
        asked = args.settings["wandb_entity"]
        try:
            sweep_id = wandb.sweep(config, entity=asked, project=project)
        except Exception as err:  # noqa: BLE001 - one line, not wandb's traceback
            raise SystemExit(f"sweep.py: could not create the W&B sweep in {project} "
                             f"({type(err).__name__}: {err}); nothing was run") from None
        entity, state = created_entity(api, asked), "RUNNING"
        print(f"created W&B sweep {sweep_path(entity, project, sweep_id)}", flush=True)
    else:
        sweep_id, entity, state = sweep.id, sweep.entity, str(sweep.state).upper()
        print(f"continuing W&B sweep {sweep_path(entity, project, sweep_id)} ({state})",
              flush=True)
    path = sweep_path(entity, project, sweep_id)
    atomic_write_json(Path(args.store) / SWEEP_RECORD,
                      dict(sweep_id=sweep_id, entity=entity, project=project, config=config))
    if state in ENDED_STATES:
        print(f"W&B sweep {path} has handed out its whole grid; no agent started", flush=True)
    elif state == "PAUSED":
        print(f"W&B sweep {path} is paused: resume it (wandb sweep --resume {path}) and start "
              "sweep.py again", flush=True)
        return 0
    else:
        print(f"add machines with: python sweep.py --join {path}  (or: wandb agent {path})",
              flush=True)
        signum = run_agent(sweep_id, entity, project)
        if signum is not None:
            print(f"sweep {args.name}: agent stopped by {signal.Signals(signum).name}; start "
                  "sweep.py again to continue the sweep", flush=True)
            return EXIT_SIGNAL + signum
    from .safety import install_signal_handlers

    install_signal_handlers()  # the retries train in this process
    return retry_unfinished(runs, args, entity, path)


# -- sweep.yaml: the whole table as a W&B sweep, generated ------------------------------------
def table_sweep(table: str = DEFAULT_TABLE) -> SweepOptions:
    """``python sweep.py --table TABLE``'s grid at the paper's settings (every row, depth and
    seed, every option at its default)."""
    return SweepOptions(experiments=select(None, None, table), seeds=list(SEEDS),
                        settings={**OPTION_DEFAULTS, "sweep": table})


def sweep_yaml(args: SweepOptions | None = None) -> str:
    """``sweep.yaml``: :func:`sweep_config` of ``args`` (default: :func:`table_sweep`) as YAML,
    with a comment that says how to use it."""
    args = args or table_sweep()
    config = sweep_config(args)
    grid = config["parameters"]
    keys, seeds = grid["experiment"]["values"], grid["seed"]["values"]
    fixed = [w for w in config["command"] if not w.startswith("${")]
    example = "HAM-EO-DEQ-L3" if "HAM-EO-DEQ-L3" in keys else keys[0]
    lines = [
        f"# The Table 2 sweep as a W&B sweep: {len(keys)} rows x {len(seeds)} seeds = "
        f"{len(keys) * len(seeds)} runs, each one `train.py` process.",
        "#",
        "#   wandb sweep sweep.yaml                    # prints ENTITY/PROJECT/SWEEP_ID",
        "#   wandb agent ENTITY/PROJECT/SWEEP_ID       # on every machine, from the repository root",
        "#",
        "# Each agent runs, for the point it is handed:",
        f"#   python {PROGRAM} {' '.join(fixed)} --experiment={example} --seed={seeds[0]}",
        "# Settings not given are the paper's (deq_modules/experiments.py); results land in",
        f"# results/{args.name}/<run>/ on the machine that ran it. `python sweep.py` creates this "
        "same sweep",
        "# (tests/test_wandb.py checks that the two agree); it also continues it when started "
        "again.",
        "# Written by `python -m runner.wandb_sweep --write-yaml` from the run options "
        "(runner/config.py):",
        "# edit those, not this file (tests/runner/test_wandb_sweep.py checks that it is current).",
        f"program: {config['program']}",
        f"name: {config['name']}",
        f"project: {config['project']}",
        f"method: {config['method']}",
        "metric:",
        *(f"  {k}: {v}" for k, v in config["metric"].items()),
        "parameters:",
        "  experiment:",
        *_flow_list("    values: ", keys, _row_groups(keys)),
        "  seed:",
        *_flow_list("    values: ", seeds, [seeds]),
        "command:",
        *(f"  - {word}" for word in config["command"]),
    ]
    return "\n".join(lines) + "\n"


def _row_groups(keys: list[str]) -> list[list[str]]:
    """Experiment keys in runs of the same model and depth (a line of ``sweep.yaml`` each)."""
    groups: list[list[str]] = []
    for key in keys:
        exp = Experiment.from_key(key)
        if groups and Experiment.from_key(groups[-1][0]).model == exp.model \
                and Experiment.from_key(groups[-1][0]).depth == exp.depth:
            groups[-1].append(key)
        else:
            groups.append([key])
    return groups


def _flow_list(prefix: str, values: list, groups: list[list]) -> list[str]:
    """A YAML flow sequence of ``values``, one line per group, aligned after ``prefix``."""
    indent = " " * (len(prefix) + 1)
    lines = [", ".join(str(v) for v in group) for group in groups]
    text = [(prefix + "[" if i == 0 else indent) + line
            + ("]" if i == len(lines) - 1 else ",") for i, line in enumerate(lines)]
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Write (or check) sweep.yaml, the whole Table 2 as a W&B sweep, from the "
                    "run options.")
    parser.add_argument("--write-yaml", action="store_true",
                        help=f"write {SWEEP_YAML} in the repository (else print it)")
    args = parser.parse_args(argv)
    text = sweep_yaml()
    if args.write_yaml:
        (REPOSITORY / SWEEP_YAML).write_text(text)
        print(f"wrote {REPOSITORY / SWEEP_YAML}")
    else:
        print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
