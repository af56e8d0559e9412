"""The command lines: ``python -m paper_figures`` and each script alone."""
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = ("__main__", "table", "claims", "trajectories", "energy")
GOOD_TABLE = "a good table2.md from an earlier run\n"


def script_main(name):
    return importlib.import_module(f"paper_figures.{name}").main


def run_module(*args, timeout=120):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_paper_figures_imports_without_torch_lightning_or_callbacks():
    heavy = ("torch", "lightning", "custom_callbacks")
    code = ("import sys, paper_figures.table, paper_figures.trajectories; "
            f"print(sorted(m for m in {heavy!r} if m in sys.modules))")
    result = run_module("-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_every_module_imports_light():
    heavy = ("torch", "lightning", "custom_callbacks")
    code = ("import sys, paper_figures.__main__, paper_figures.energy, paper_figures.claims; "
            f"print(sorted(m for m in {heavy!r} if m in sys.modules))")
    result = run_module("-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def _store_without_finished_runs(root, fixtures):
    fixtures.write_run(root, "HAM", 3, 0, {"status": "failed"}, metrics=None)
    fixtures.write_run(root, "HAM", 3, 1, {"status": "running"}, metrics=None)
    fixtures.write_run(root, "HAM", 3, 2, {"status": "diverged"}, metrics=None)
    return root


def _error_case(case, store, tmp_path, fixtures):
    """(arguments, strings the one-line error must hold) for each way the source is wrong."""
    if case == "mistyped sweep":
        fixtures.write_run(store, "HAM", 3, 0, fixtures.finished_summary(12.0, 0.97),
                           sweep="quick")
        return ["--results", str(store), "--sweep", "tabel2"], \
            ["tabel2", str(store), "quick"]  # the bad sweep, where, a valid one
    if case == "missing results":
        missing = tmp_path / "no-such-results"
        return ["--results", str(missing)], [str(missing)]
    root = _store_without_finished_runs(tmp_path / "unfinished", fixtures)
    return ["--results", str(root)], [str(root / "table2"), "1 failed", "1 killed",
                                      "1 diverged"]  # "running", but no process holds it


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("case", ["mistyped sweep", "missing results", "no finished run"])
def test_a_wrong_source_is_a_one_line_error_and_writes_nothing(script, case, store, tmp_path,
                                                                fixtures, capsys):
    args, expected = _error_case(case, store, tmp_path, fixtures)
    out = tmp_path / "figures"
    out.mkdir()
    (out / "table2.md").write_text(GOOD_TABLE)
    capsys.readouterr()
    assert script_main(script)(args + ["--out", str(out)]) != 0
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "error" in lines[0], captured.err
    for text in expected:
        assert text in lines[0]
    assert [p.name for p in out.iterdir()] == ["table2.md"]
    assert (out / "table2.md").read_text() == GOOD_TABLE


def test_python_m_paper_figures_exits_non_zero_on_a_mistyped_sweep(store, tmp_path):
    out = tmp_path / "figures"
    result = run_module("-m", "paper_figures", "--results", str(store), "--sweep", "tabel2",
                        "--out", str(out))
    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1 and "table2" in result.stderr
    assert not out.exists()


def test_paper_figures_runs_from_any_working_directory(store, tmp_path):
    """``python <repo>/paper_figures`` from elsewhere: the package is found from the script's
    own path (no PYTHONPATH, no install), and relative --results/--out are the caller's."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    store.rename(elsewhere / "results")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, str(REPO / "paper_figures"), "--out", "figs", "--prefer", "CHN-3ep"],
        cwd=elsewhere, env={**env, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"},
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "table2.md" in {p.name for p in (elsewhere / "figs").iterdir()}


def test_help_describes_every_script_and_what_it_writes(capsys):
    with pytest.raises(SystemExit) as exit_:
        script_main("__main__")(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for name in ("paper_figures.table", "paper_figures.trajectories", "paper_figures.energy",
                 "paper_figures.claims", "claims.md", "table2.md", "table2.tex", "table2.csv", "fig3.pdf", "fig3.png", "fig4.pdf",
                 "fig4.png", "energy.pdf", "energy.png", "paper_figures.curves", "curves.pdf",
                 "curves.png"):
        assert name in text


def test_python_m_paper_figures_makes_table_and_figures(store, tmp_path):
    out = tmp_path / "all"
    assert script_main("__main__")(["--results", str(store), "--out", str(out),
                                    "--prefer", "CHN-3ep"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "claims.md", "curves.pdf", "curves.png", "energy.pdf", "energy.png", "fig3.pdf",
        "fig3.png", "fig4.pdf", "fig4.png", "table2.csv", "table2.md", "table2.tex"]


def test_python_m_paper_figures_with_a_sweep_name_makes_everything_in_one_command(store, tmp_path):
    """``python -m paper_figures --sweep NAME`` (the README's command after ``sweep.py --quick``):
    the table, the claims and every figure of that sweep, into figures/ by default."""
    (store / "table2").rename(store / "quick")
    workdir = tmp_path / "work"
    workdir.mkdir()
    store.rename(workdir / "results")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg", "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "paper_figures", "--sweep", "quick"],
                            cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    written = sorted(p.name for p in (workdir / "figures").iterdir())
    assert written == ["claims.md", "curves.pdf", "curves.png", "energy.pdf", "energy.png",
                       "fig3.pdf", "fig3.png", "fig4.pdf", "fig4.png", "table2.csv",
                       "table2.md", "table2.tex"]
    assert "results/quick" in (workdir / "figures" / "table2.md").read_text()
    for name in ("table2.md", "claims.md", "fig3.pdf", "fig4.pdf", "energy.pdf", "curves.pdf"):
        assert name in result.stdout  # one "wrote ..." line per output
