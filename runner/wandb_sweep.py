"""The sweep as W&B runs it: credentials, the sweep's definition, continuing it, agents.

W&B agents run ``train.py`` as the sweep's program (``sweep.yaml`` is the whole table's
definition), so ``wandb agent ENTITY/PROJECT/ID`` on any machine works as well as
``python sweep.py --join``. Nothing here prompts for a login; ``sweep.py`` uses these pieces.
"""
from __future__ import annotations

import os
import signal
import socket
import sys
from pathlib import Path

from .config import RunConfig, SweepOptions
from .store import TEST_ACC, read_json

REPOSITORY = Path(__file__).resolve().parents[1]  # where train.py lives
PROGRAM = "train.py"  # what every W&B agent runs for a point of the grid
METRIC = dict(name=TEST_ACC, goal="maximize")
SWEEP_RECORD = "wandb_sweep.json"  # in <results>/<name>/: the W&B sweep of this grid
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
    """The sweep's command: ``train.py`` with the settings this sweep fixes, then the agent's
    ``--experiment=... --seed=...``. Machine settings (data directory, accelerator) are not
    in it: each machine has its own."""
    fixed = ["--wandb=online", f"--name={args.name}", f"--dataset={args.dataset}"]
    for flag, value in (("--results", None if args.results == "results" else args.results),
                        ("--epochs", args.epochs), ("--lr", args.lr),
                        ("--limit-train-batches", args.limit_train_batches),
                        ("--limit-test-batches", args.limit_test_batches)):
        if value is not None:
            fixed.append(f"{flag}={value}")
    if args.synthetic_sizes:
        sizes = args.synthetic_sizes
        fixed.append(f"--synthetic-sizes={sizes['n_train']},{sizes['n_test']}")
    if args.fast:
        fixed.append("--fast")
    return ["${env}", "${interpreter}", "${program}", *fixed, "${args}"]


def sweep_config(runs: list[RunConfig], args: SweepOptions) -> dict:
    """A W&B grid over (row key, seed) that agents run as ``train.py`` (``sweep.yaml`` is this
    for the whole table); everything else is fixed by the registry and the command."""
    return dict(
        program=PROGRAM, name=args.name, project=args.project, method="grid", metric=METRIC,
        parameters=dict(experiment=dict(values=list(dict.fromkeys(r.experiment.key
                                                                   for r in runs))),
                        seed=dict(values=sorted({r.seed for r in runs}))),
        command=agent_command(args),
    )


def same_grid(a: dict, b: dict) -> bool:
    return all(a.get(k) == b.get(k) for k in ("program", "method", "parameters", "command"))


def sweep_path(entity: str | None, project: str, sweep_id: str) -> str:
    return "/".join(p for p in (entity, project, sweep_id) if p)


def existing_sweep(api, config: dict, args: SweepOptions):
    """The W&B sweep of this grid from an earlier ``python sweep.py``: the one recorded in the
    results directory, else one of the same name and grid in the project; ``None`` if none."""
    record = read_json(Path(args.results) / args.name / SWEEP_RECORD) or {}
    if record.get("sweep_id") and record.get("project") == args.project \
            and args.entity in (None, record.get("entity")):
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
    where = sweep_path(args.entity, args.project, "")
    try:
        found = [s for s in api.project(args.project, args.entity).sweeps()
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
    if args.data_dir:
        os.environ["HOPFIELD_DATA_DIR"] = str(Path(args.data_dir).absolute())
    if args.accelerator != "auto":
        print(f"sweep.py: note: W&B agents run train.py with --accelerator auto; "
              f"--accelerator {args.accelerator} applies to local mode only")


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
