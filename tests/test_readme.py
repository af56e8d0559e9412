"""The README's code must run as printed."""
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_make_your_own_deq_example_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "README lost its Python example"
    exec(compile(blocks[0], "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "SolverStats(solver='anderson'" in out
    assert "torch.Size([" in out


def test_ci_runs_the_readme_install_and_test_commands():
    """.ci/run installs and tests exactly as the README says; the README keeps both commands."""
    text = README.read_text()
    install = "python3 -m venv .venv && . .venv/bin/activate && pip install -r requirements.txt"
    assert f"{install} && python -m pytest" in text
    assert f"{install} && python sweep.py" in text
    ci = (README.parent / ".ci" / "run").read_text()
    for line in ('python3 -m venv "$venv"', '. "$venv/bin/activate"',
                 "pip install -q -r requirements.txt", "\npython -m pytest\n"):
        assert line in ci, line
