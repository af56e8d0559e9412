import csv
from statistics import mean, stdev

import pytest

from deq_modules.experiments import EXPERIMENTS
from paper_figures import table
from paper_figures.records import local_records


def rows_by_key(store):
    return {r["experiment"].key: r for r in table.table_rows(local_records(str(store), "table2"))}


def test_statistics_and_speedups_follow_their_definitions(store):
    rows = rows_by_key(store)
    ham = rows["HAM-L3"]
    assert ham["seeds"] == 3 and ham["unfinished"] == 2
    assert ham["iters"] == pytest.approx((12.0, stdev([12.0, 11.0, 13.0])))
    assert ham["acc"] == pytest.approx((mean([97.8, 98.0, 97.9]), stdev([97.8, 98.0, 97.9])))
    assert rows["HAM-EO-DEQ-L3"]["speedup"] == pytest.approx(12.0 / 6.5)
    assert rows["CHN-EO-L3"]["speedup"] == pytest.approx(40.0 / (17.0 * 20))  # 2 x 10 local
    assert rows["CHN-3ep-L3"]["iters"] == (40.0, 0.0)  # one seed: std 0
    assert rows["HAM-DEQ-L3"]["iters"] is None and rows["HAM-DEQ-L3"]["speedup"] is None
    assert rows["HAM-EO-L5"]["speedup"] is None  # no base row results at 5 layers


def test_files_are_written_with_every_row(store, tmp_path, capsys):
    out = tmp_path / "figures"
    assert table.main(["--results", str(store), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "8 finished runs, 2 failed or unfinished" in printed
    md = (out / "table2.md").read_text().splitlines()
    body = [line for line in md if line.startswith("| ") and "---" not in line][1:]
    assert len(body) == 17
    ham_eo_deq = next(line for line in body if line.startswith("| 3 | HAM-EO-DEQ |"))
    assert "| 6.5 (0.7) | 6.6 (0.2) | 1.8x | 1.8x | 97.9 (0.3) | 97.9 (0.1) | 2 |" in ham_eo_deq
    assert next(line for line in body if "| HAM-DEQ |" in line).count("—") == 3
    assert "3 (+2 unfinished)" in next(line for line in body if line.startswith("| 3 | HAM |"))
    assert any("reads the output layer" in line for line in md)
    tex = (out / "table2.tex").read_text()
    assert tex.count(r"\\") == 18 and tex.startswith(r"\begin{tabular}")
    assert r"\bottomrule" in tex and "—" not in tex
    records = list(csv.DictReader(open(out / "table2.csv")))
    assert [(int(r["layers"]), r["row"]) for r in records] == [(e.depth, e.row) for e in EXPERIMENTS]
    assert float(records[0]["paper_iters_mean"]) == EXPERIMENTS[0].published_iters[0]
