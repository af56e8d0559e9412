import numpy as np
import pytest

from deq_modules.experiments import get_experiment
from paper_figures import energy
from paper_figures.runs import local_records
from runner.result_files import load_energy


def test_pooled_energy_is_the_sample_weighted_mean_over_seeds(store):
    data, used = energy.pooled_energy(local_records(store, "table2"), get_experiment("HAM", 3))
    assert sorted(r.seed for r in used) == [0, 1, 2]  # failed and running seeds left out
    files = [load_energy(store / "table2" / f"HAM-L3-s{s}" / "energy.npz") for s in (0, 1, 2)]
    assert len({f["mean_energy"].size for f in files}) == 2  # two lengths: padding is checked
    n_iter = max(f["mean_energy"].size for f in files)
    total, samples = np.zeros(n_iter), np.zeros(n_iter)
    for f in files:
        k = f["mean_energy"].size
        total[:k] += f["mean_energy"] * f["n_samples"]
        samples[:k] += f["n_samples"]
    np.testing.assert_allclose(data["mean_energy"], total / samples)
    np.testing.assert_array_equal(data["n_samples"], samples)
    # Weighted, not a plain mean of the seeds' curves (12, 7 and 12 samples).
    plain = np.mean([f["mean_energy"][0] for f in files])
    assert data["mean_energy"][0] != pytest.approx(plain)


def test_energy_figure_shows_each_ham_row_per_depth(store, tmp_path, capsys):
    out = tmp_path / "figures"
    assert energy.main(["--results", str(store), "--out", str(out)]) == 0
    assert (out / "energy.pdf").read_bytes().startswith(b"%PDF")
    assert (out / "energy.png").read_bytes().startswith(b"\x89PNG")
    assert "HAM-L3 3" in capsys.readouterr().out
    fig, counts = energy.make_figure(local_records(store, "table2"))
    assert fig.get_size_inches()[0] == pytest.approx(6.75)
    assert counts == {"HAM-L3": 3, "HAM-DEQ-L3": 0, "HAM-EO-L3": 0, "HAM-EO-DEQ-L3": 2,
                      "HAM-L5": 0, "HAM-DEQ-L5": 0, "HAM-EO-L5": 1, "HAM-EO-DEQ-L5": 0,
                      "HAM-L7": 1, "HAM-DEQ-L7": 0, "HAM-EO-L7": 0, "HAM-EO-DEQ-L7": 0}
    panels = {ax.get_title(): ax for ax in fig.axes}
    assert list(panels) == ["3-layer HAM", "5-layer HAM", "7-layer HAM"]
    assert [line.get_label() for line in panels["3-layer HAM"].lines] == ["HAM", "HAM-EO-DEQ"]
    # HAM-DEQ-L7 finished but left no energy file: the panel says which rows are missing.
    notes = " ".join(t.get_text() for t in panels["7-layer HAM"].texts)
    assert "HAM-DEQ" in notes and "HAM-EO-DEQ" in notes
    # The legend tells plain from even-odd and Picard from Anderson, once for all panels.
    (legend,) = fig.legends
    labels = [t.get_text() for t in legend.get_texts()]
    assert [x.split()[0] for x in labels] == ["HAM", "HAM-DEQ", "HAM-EO", "HAM-EO-DEQ"]
    styles = {line.get_label(): (line.get_color(), line.get_linestyle())
              for ax in fig.axes for line in ax.lines}
    assert styles["HAM"][0] != styles["HAM-EO-DEQ"][0]  # plain vs even-odd: colour
    assert styles["HAM"][1] != styles["HAM-EO-DEQ"][1]  # Picard vs Anderson: line style


def test_a_depth_without_energy_files_says_so(store, tmp_path, capsys):
    (store / "table2" / "HAM-EO-L5-s0" / "energy.npz").unlink()
    path = store / "table2" / "HAM-L7-s0" / "energy.npz"
    path.write_bytes(path.read_bytes()[:100])  # truncated
    out = tmp_path / "figures"
    assert energy.main(["--results", str(store), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "HAM-L7-s0" in err and str(path) in err
    fig, counts = energy.make_figure(local_records(store, "table2"))
    panels = {ax.get_title(): ax for ax in fig.axes}
    for depth in (5, 7):
        assert [t.get_text() for t in panels[f"{depth}-layer HAM"].texts] == ["no energy files"]
    assert counts["HAM-L7"] == 0


@pytest.mark.parametrize("curve, first, largest", [
    ([-1.0, -2.0, -3.0, -3.0], None, 0.0),                 # flat at the end is no rise
    ([-1.0, -2.0, -2.0 + 2e-7, -3.0], None, 1e-7 / 1.0),   # below RISE_TOL: rounding
    ([-4.0, -5.0, -4.0, -6.0, -5.7], 3, 0.25),             # two rises, the first at iteration 3
    ([-3.0], None, 0.0),
])
def test_rises_finds_the_first_and_the_largest_rise(curve, first, largest):
    found, size = energy.rises(curve)
    assert found == first
    assert size == pytest.approx(largest, rel=1e-6, abs=1e-12)


def test_the_report_says_per_row_which_seeds_descend(store, tmp_path, capsys):
    path = store / "table2" / "HAM-L3-s1" / "energy.npz"
    data = dict(np.load(path))
    e = data["mean_energy"].astype(np.float64)
    e[:] = -np.arange(1, e.size + 1, dtype=np.float64)  # monotone in seed 1 ...
    e[-1] = e[-2] + 0.5                                  # ... but the last iteration rises
    data["mean_energy"] = e.astype(data["mean_energy"].dtype)
    np.savez(path, **data)
    assert energy.main(["--results", str(store), "--out", str(tmp_path / "f")]) == 0
    out = capsys.readouterr().out
    lines = {line.split(":")[0]: line for line in out.splitlines()}
    ham = lines["HAM-L3"]
    assert "monotone in 2 of 3 seeds; rises in seed 1," in ham
    assert f"(seed 1, first rise at iteration {e.size})" in ham
    assert lines["HAM-EO-DEQ-L3"].endswith("monotone in 2 of 2 seeds")
