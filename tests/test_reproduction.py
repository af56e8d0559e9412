"""docs/reproduction/<sweep>/: the committed results of a real sweep. The table and the claims
made from the committed store must equal the committed ones (results and scripts cannot drift
apart), every figure must be there, and no file may hold a machine path."""
import re
from pathlib import Path

import pytest

from paper_figures import claims, table

REPO = Path(__file__).resolve().parents[1]
DOCS = Path("docs") / "reproduction"  # relative: the tables name their source by it
SWEEPS = sorted(p.name for p in (REPO / DOCS).iterdir() if p.is_dir()) \
    if (REPO / DOCS).is_dir() else []
MACHINE_PATH = re.compile(rb"(/work/|/home/|/usr/|/tmp/|/root/|/Users/|[A-Z]:\\\\)")
ALLOWED = {"config.json", "summary.json", "metrics.csv", "trajectories.npz", "energy.npz"}
OUTPUTS = ("table2.md", "table2.tex", "table2.csv", "claims.md", "fig3.png", "fig3.pdf",
           "fig4.png", "fig4.pdf", "energy.png", "energy.pdf", "README.md")


def test_there_is_a_committed_sweep():
    assert SWEEPS, f"no sweep under {DOCS}"


@pytest.mark.parametrize("sweep", SWEEPS)
def test_table_and_claims_regenerate_from_the_committed_store(sweep, tmp_path, monkeypatch,
                                                               capsys):
    monkeypatch.chdir(REPO)
    committed = DOCS / sweep
    args = ["--results", str(DOCS), "--sweep", sweep, "--out", str(tmp_path)]
    assert table.main(args) == 0 and claims.main(args) == 0
    capsys.readouterr()
    for name in ("table2.md", "table2.tex", "table2.csv", "claims.md"):
        assert (tmp_path / name).read_text() == (committed / name).read_text(), name


@pytest.mark.parametrize("sweep", SWEEPS)
def test_the_committed_sweep_holds_small_files_and_no_machine_path(sweep):
    root = REPO / DOCS / sweep
    for name in OUTPUTS:
        assert (root / name).is_file(), f"{name} missing in {root}"
    runs = [p for p in root.iterdir() if p.is_dir()]
    assert runs
    total = 0
    for path in root.rglob("*"):
        if path.is_file():
            total += path.stat().st_size
            if path.parent != root:
                assert path.name in ALLOWED, path
            generated = path.parent != root or path.name != "README.md"  # README: commands
            if generated and path.suffix in (".json", ".csv", ".md", ".tex"):
                assert not MACHINE_PATH.search(path.read_bytes()), path
    assert total < 20e6, f"{root} holds {total / 1e6:.1f} MB"
