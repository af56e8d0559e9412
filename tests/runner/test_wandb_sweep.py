"""runner/wandb_sweep.py: the agents' command and sweep.yaml come from the run options."""
from pathlib import Path

import yaml

import sweep
from runner import wandb_sweep
from runner.grid import SweepOptions

ROOT = Path(__file__).resolve().parents[2]


def test_the_committed_sweep_yaml_is_what_the_code_generates():
    """Regenerate with ``python -m runner.wandb_sweep --write-yaml``."""
    assert (ROOT / "sweep.yaml").read_text() == wandb_sweep.sweep_yaml()


def test_the_generated_yaml_is_the_sweep_config_of_the_whole_table(capsys):
    text = wandb_sweep.sweep_yaml()
    assert yaml.safe_load(text) == wandb_sweep.sweep_config(sweep.parse_args([]))
    assert wandb_sweep.main([]) == 0
    assert capsys.readouterr().out == text


def _command(argv: list[str]) -> list[str]:
    return wandb_sweep.agent_command(sweep.parse_args(argv))[3:-1]


def test_the_agents_command_fixes_what_defines_the_runs_and_no_machine_setting():
    assert _command([]) == ["--wandb=online", "--name=table2", "--dataset=emnist-mnist"]
    given = _command(["--fast", "--epochs", "2", "--lr", "0.02", "--synthetic-sizes", "300,100",
                      "--dataset", "synthetic", "--results", "out"])
    assert set(given) == {"--wandb=online", "--name=table2", "--dataset=synthetic", "--fast",
                          "--epochs=2", "--lr=0.02", "--synthetic-sizes=300,100",
                          "--results=out"}
    machine = _command(["--data-dir", "/data", "--no-download", "--compile", "--no-fused-anderson",
                        "--accelerator", "cpu", "--project", "p", "--entity", "e"])
    assert machine == _command([])


def test_the_same_grid_whatever_the_order_of_the_fixed_options():
    args = sweep.parse_args(["--fast", "--epochs", "2", "--rows", "HAM", "--layers", "3"])
    config = wandb_sweep.sweep_config(args)
    command = config["command"]
    shuffled = {**config, "command": [*command[:3], *reversed(command[3:-1]), command[-1]]}
    assert wandb_sweep.same_grid(config, shuffled)
    other = {**config, "command": [w for w in command if w != "--fast"]}
    assert not wandb_sweep.same_grid(config, other)
    assert not wandb_sweep.same_grid(config, {**config, "parameters": {}})


def test_table_sweep_is_sweep_py_without_arguments():
    default = sweep.parse_args([])
    table = wandb_sweep.table_sweep()
    assert isinstance(table, SweepOptions)
    assert (table.experiments, table.seeds, table.settings) == (
        default.experiments, default.seeds, default.settings)
