"""The README's quick start, run as written: its commands, in a fresh directory, must print what
the README says and write every file it names."""
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
# What the quick start promises: the files of one run and those in figures/.
RUN = "results/quick/HAM-EO-DEQ-L3-s0"
RUN_FILES = ("config.json", "metrics.csv", "summary.json", "trajectories.npz", "energy.npz",
             "checkpoints/last.ckpt")
FIGURE_FILES = ("table2.md", "table2.tex", "table2.csv", "claims.md", "fig3.png", "fig4.png",
                "energy.png", "curves.png", "fig3.pdf", "fig4.pdf", "energy.pdf", "curves.pdf")
LAST_LINE = "sweep quick: 17 of 17 runs finished"


def quick_start_section() -> str:
    text = README.read_text()
    match = re.search(r"^## Quick start\n(.*?)^## ", text, re.S | re.M)
    assert match, "README lost its '## Quick start' section"
    return match[1]


def quick_start_commands() -> list[list[str]]:
    """The command lines of the section's first bash block, comments dropped."""
    block = re.search(r"```bash\n(.*?)```", quick_start_section(), re.S)
    assert block, "the quick start has no bash block"
    commands = [shlex.split(line, comments=True) for line in block[1].splitlines()]
    return [c for c in commands if c]


def as_subprocess(command: list[str]) -> list[str]:
    """A README command for subprocess: ``python`` is this interpreter and the repository's
    scripts are found from the fresh working directory (``-m`` finds the packages through
    PYTHONPATH)."""
    assert command[0] == "python", command
    args = [sys.executable, *command[1:]]
    if len(command) > 1 and command[1].endswith(".py"):
        args[1] = str(REPO / command[1])
    return args


def test_the_quick_start_is_the_sweep_then_the_figures():
    commands = quick_start_commands()
    assert [c[:3] for c in commands] == [["python", "sweep.py", "--quick"],
                                         ["python", "-m", "paper_figures"]]
    assert commands[1][3:] == ["--sweep", "quick"]


def test_the_readme_names_every_file_checked_here():
    section = quick_start_section()
    for name in (RUN, *RUN_FILES, *(n for n in FIGURE_FILES if not n.endswith(".pdf")), LAST_LINE,
                 "figures/"):
        assert name in section, name


@pytest.mark.slow
def test_the_quick_start_runs_as_written_and_writes_what_it_promises(tmp_path):
    env = dict(os.environ, WANDB_MODE="disabled", HOME=str(tmp_path), OMP_NUM_THREADS="1",
               MPLBACKEND="Agg", PYTHONPATH=str(REPO))
    env.pop("WANDB_API_KEY", None)
    outputs = []
    for command in quick_start_commands():
        done = subprocess.run(as_subprocess(command), cwd=tmp_path, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=900)
        assert done.returncode == 0, f"{shlex.join(command)} failed:\n{done.stdout[-3000:]}"
        outputs.append(done.stdout)
    assert LAST_LINE in outputs[0]
    runs = sorted(p.name for p in (tmp_path / "results" / "quick").iterdir() if p.is_dir())
    assert len(runs) == 17 and "HAM-EO-DEQ-L3-s0" in runs
    for run in runs:
        for name in RUN_FILES:
            assert (tmp_path / "results" / "quick" / run / name).is_file(), (run, name)
    for name in FIGURE_FILES:
        assert (tmp_path / "figures" / name).stat().st_size > 0, name
    assert "results/quick" in (tmp_path / "figures" / "table2.md").read_text()
