"""bench.anderson_variants: the measurement (the variants themselves: tests/deq_core)."""
import pytest

from bench import anderson_variants as av
from deq_modules.data.synthetic import make_synthetic


def test_the_measurement_of_a_trained_run(trained_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(av, "load_dataset", lambda name, data_dir: make_synthetic(40, 30))
    out = tmp_path / "variants.md"
    assert av.main(["--results", str(tmp_path), "--sweep", "sw", "--runs", "HAM-EO-DEQ-L3-s0",
                    "--batch", "16", "--write", str(out)]) == 0
    printed = capsys.readouterr().out
    row = next(line for line in printed.splitlines() if line.startswith("| HAM-EO-DEQ-L3-s0"))
    cells = row.strip("|").split("|")
    assert len(cells) == 2 + len(av.VARIANTS)
    for cell in cells[1:-1]:
        iters, never, acc = (float(v.strip(" %")) for v in cell.split("/"))
        assert 0 <= iters <= 39 and 0 <= never <= 100 and 0 <= acc <= 100
    assert row in out.read_text()


def test_a_picard_run_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="HAM-L3-s0"):
        av.main(["--results", str(tmp_path), "--sweep", "sw", "--runs", "HAM-L3-s0"])
