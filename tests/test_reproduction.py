"""docs/reproduction/<sweep>/: the committed results of a real sweep. The table and the claims
made from the committed store must equal the committed ones (results and scripts cannot drift
apart), every figure must be there, and no file may hold a machine path."""
import json
import importlib.util
import re
from pathlib import Path

import pytest

from paper_figures import claims, table

REPO = Path(__file__).resolve().parents[1]
DOCS = Path("docs") / "reproduction"  # relative: the tables name their source by it
SWEEPS = sorted(p.parent.name for p in (REPO / DOCS).glob("*/table2.md"))
MACHINE_PATH = re.compile(rb"(/work/|/home/|/usr/|/tmp/|/root/|/Users/|[A-Z]:\\\\)")
ALLOWED = {"config.json", "summary.json", "metrics.csv", "trajectories.npz", "energy.npz"}
OUTPUTS = ("table2.md", "table2.tex", "table2.csv", "claims.md", "fig3.png", "fig3.pdf",
           "fig4.png", "fig4.pdf", "energy.png", "energy.pdf", "curves.png", "curves.pdf",
           "README.md")


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


README = REPO / "README.md"


def _refresh_module():
    spec = importlib.util.spec_from_file_location("refresh", REPO / DOCS / "refresh.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_shows_the_committed_table_and_verdicts():
    """The README's results table and its claims in short (verdicts and numbers) are the
    committed ones: refresh.py's splices change nothing."""
    refresh = _refresh_module()
    text = README.read_text()
    names = re.findall(r"<!-- results-table ([\w.-]+) -->", text)
    assert names, "README has no <!-- results-table NAME --> block"
    for sweep in names:
        table2 = (REPO / DOCS / sweep / "table2.md").read_text()
        spliced, n = refresh.splice_table(text, sweep, table2)
        assert n == 1 and spliced == text, f"README's table of {sweep} is out of date"
        assert refresh.table_block(table2) in text
        claims_md = (REPO / DOCS / sweep / "claims.md").read_text()
        spliced, n = refresh.splice_claims(text, sweep, claims_md)
        assert n == 1 and spliced == text, f"README's claims of {sweep} are out of date"
        verdicts = next(line for line in claims_md.splitlines() if line.startswith("Verdicts: "))
        assert verdicts in refresh.claims_block(claims_md) and verdicts in text


def _fast_vs_paper_module():
    spec = importlib.util.spec_from_file_location("fast_vs_paper",
                                                  REPO / DOCS / "fast_vs_paper.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_compares_fast_and_paper_runs_that_differ_only_in_the_mode():
    fvp = _fast_vs_paper_module()
    pairs = fvp.twins()  # raises if a pair differs in more than the mode
    assert {(t.key, t.seed) for t in pairs} == {
        (key, seed) for key in ("CHN-DEQ-L3", "HAM-EO-DEQ-L3", "HAM-EO-DEQ-L5")
        for seed in (0, 1, 2)} | {("HAM-EO-DEQ-L5", seed) for seed in (3, 4, 5)}
    for t in pairs:
        assert t.paper["status"] == t.neumann["status"] == "finished"
        assert (t.fast is None) == (t.seed > 2)  # seeds 3-5 came after the unrolled fast mode
        assert t.fast is None or t.fast["status"] == "finished"
        assert t.bf16 is not None and t.bf16["status"] == "finished"
        config = json.loads((REPO / DOCS / fvp.BF16 / f"{t.key}-s{t.seed}" / "config.json")
                            .read_text())
        assert config["fast_mode"]["adjoint_precision"] == "auto"  # bfloat16 on its machine
    text = (REPO / fvp.PAGE).read_text()
    spliced, n = fvp.splice(text, fvp.markdown(pairs))
    assert n == 1 and spliced == text, "docs/performance.md's fast-vs-paper table is out of date"
    same = fvp.same_machine()  # raises if a pair differs in more than the mode
    assert [(k, seed) for k, seed, *_ in same] == [("HAM-EO-DEQ-L5", s) for s in range(6)]
    spliced, n = fvp.splice(text, fvp.same_machine_markdown(same), "bf16-vs-float32")
    assert n == 1 and spliced == text, "docs/performance.md's bf16-vs-float32 table is out of date"
    neumann = {(t.key, t.seed): t.neumann for t in pairs}
    for key, seed, float32, _ in same:  # the README: bitwise the runs of the other VM
        for metric in ("test/acc", "test/loss"):
            assert float32[metric] == neumann[key, seed][metric], (key, seed, metric)
    for sweep in (fvp.PAPER, fvp.NEUMANN, fvp.BF16, fvp.FAST_BF16_VM):
        root = REPO / DOCS / sweep
        assert (root / "README.md").is_file()  # the commands that made it
        for path in root.rglob("*"):
            if path.is_file() and path.parent != root:
                assert path.name in ALLOWED, path
                if path.suffix in (".json", ".csv"):
                    assert not MACHINE_PATH.search(path.read_bytes()), path


def _run(root, sweep, name, fast, **config):
    import json
    run = root / sweep / name
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(
        {"fast": fast, "sweep": sweep, "epochs": 1, "seed": 0, **config}))
    (run / "summary.json").write_text(json.dumps(
        {"status": "finished", "row": "HAM", "depth": 3, "seed": 0, "test/acc": 0.5,
         "test/iters_to_converge": 9.0, "seconds_per_epoch": 10.0}))


def test_fast_vs_paper_refuses_twins_that_differ_in_more_than_the_mode(tmp_path):
    fvp = _fast_vs_paper_module()
    _run(tmp_path, fvp.PAPER, "HAM-L3-s0", False)
    with pytest.raises(ValueError, match=r"HAM-L3-s0\b.*fmnist-1ep-fast-neumann"):
        fvp.twins(tmp_path)
    _run(tmp_path, fvp.NEUMANN, "HAM-L3-s0", True)
    (pair,) = fvp.twins(tmp_path)  # the unrolled twin is optional (later seeds have none)
    assert pair.fast is None and pair.neumann["test/acc"] == 0.5
    table = fvp.markdown([pair])
    assert "| HAM-L3 | 0 | 50.00 | - | 50.00 | - | - | +0.00 | - | 9.00 / 9.00 |" in table
    _run(tmp_path, fvp.BF16, "HAM-L3-s0", True)
    assert fvp.twins(tmp_path)[0].bf16["test/acc"] == 0.5
    assert "| HAM-L3 | 0 | 50.00 | - | 50.00 | 50.00 | - | +0.00 | +0.00 | 9.00 / 9.00 |" in \
        fvp.markdown(fvp.twins(tmp_path))
    _run(tmp_path, fvp.FAST, "HAM-L3-s0", True, epochs=2)
    with pytest.raises(ValueError, match=r"HAM-L3-s0\b.*fmnist-1ep-paper\b.*fmnist-1ep-fast\b"
                                         r".*'epochs'"):
        fvp.twins(tmp_path)
    (tmp_path / fvp.FAST / "HAM-L3-s0").rename(tmp_path / "wrong")
    _run(tmp_path, fvp.FAST, "HAM-L3-s0", True)
    assert fvp.twins(tmp_path)[0].fast is not None
    assert fvp.same_machine(tmp_path) == []  # no float32 twin on the bfloat16 VM yet
    _run(tmp_path, fvp.FAST_BF16_VM, "HAM-L3-s0", True, fast_mode={"adjoint_precision": None})
    (pair,) = fvp.same_machine(tmp_path)
    assert pair[:2] == ("HAM-L3", 0)
    assert "| **HAM-L3, mean** | 1 seeds | 50.00 | 50.00 | +0.00 |" in \
        fvp.same_machine_markdown([pair])
    (tmp_path / fvp.FAST_BF16_VM / "HAM-L3-s0").rename(tmp_path / "wrong-vm")
    _run(tmp_path, fvp.FAST_BF16_VM, "HAM-L3-s0", True, fast_mode={"adjoint_precision": "bf16"})
    with pytest.raises(ValueError, match=r"'adjoint_precision'"):
        fvp.same_machine(tmp_path)
    (tmp_path / fvp.NEUMANN / "HAM-L3-s0").rename(tmp_path / "wrong-neumann")
    _run(tmp_path, fvp.NEUMANN, "HAM-L3-s0", False)
    with pytest.raises(ValueError, match=r"fmnist-1ep-fast-neumann\b.*'fast'"):
        fvp.twins(tmp_path)
