import numpy as np
import pytest

from custom_callbacks import load_trajectories
from deq_modules.experiments import get_experiment
from paper_figures import trajectories
from paper_figures.runs import local_records


def seed_files(store, key, seeds):
    return [load_trajectories(str(store / "table2" / f"{key}-s{s}" / "trajectories.npz"))
            for s in seeds]


def test_real_callback_files_differ_so_pooling_is_checked(trajectory_files):
    a, b = (load_trajectories(f) for f in trajectory_files)
    assert (a["n_samples"], a["counts"].shape[0]) == (12, 30)
    assert (b["n_samples"], b["counts"].shape[0]) == (7, 45)


def test_pooled_counts_are_the_sum_over_seeds(store):
    records = local_records(store, "table2")
    data, used = trajectories.pooled_trajectories(records, get_experiment("HAM", 3))
    assert sorted(r.seed for r in used) == [0, 1, 2]  # the failed and running seeds are left out
    seeds = seed_files(store, "HAM-L3", (0, 1, 2))
    rows = max(s["counts"].shape[0] for s in seeds)
    expected = np.zeros((rows, seeds[0]["counts"].shape[1]), dtype=np.int64)
    for s in seeds:
        expected[: s["counts"].shape[0]] += s["counts"]
    np.testing.assert_array_equal(data["counts"], expected)
    assert data["n_samples"] == sum(s["n_samples"] for s in seeds) == 12 + 7 + 12
    assert data["counts"].sum() == sum(s["counts"].sum() for s in seeds)
    pooled_mean = np.concatenate([s["iters_at_tol"] for s in seeds]).mean()
    assert trajectories._mean_at_tol(data) == pytest.approx(pooled_mean)


def test_panel_slots_come_from_the_registry_structure_and_solver():
    plain_chn = trajectories.panel_rows("chn", 3, "onematrix", "picard")
    assert [e.row for e in plain_chn] == ["CHN-10ep", "CHN-3ep"]
    assert trajectories.choose(plain_chn, ("CHN-10ep",)).row == "CHN-10ep"
    assert trajectories.choose(plain_chn, ("CHN-3ep", "CHN-10ep")).row == "CHN-3ep"
    ham_eo_deq = trajectories.panel_rows("ham", 5, "evenodd", "anderson")
    assert [e.row for e in ham_eo_deq] == ["HAM-EO-DEQ"]
    assert trajectories.panel_rows("chn", 5, "evenodd", "anderson") == []


def test_figures_are_written_and_missing_panels_say_so(store, tmp_path, capsys):
    out = tmp_path / "figures"
    assert trajectories.main(["--results", str(store), "--out", str(out)]) == 0
    for name in ("fig3.png", "fig4.png"):
        assert (out / name).read_bytes().startswith(b"\x89PNG")
    assert sorted(p.name for p in out.iterdir()) == ["fig3.png", "fig4.png"]  # no temporaries
    printed = capsys.readouterr().out
    assert "HAM-L3 3" in printed and "HAM-DEQ-L3 0" in printed
    fig, counts = trajectories.make_figure(local_records(store, "table2"),
                                           trajectories.FIGURES["fig3.png"])
    assert counts == {"CHN-10ep-L3": 0, "CHN-DEQ-L3": 0, "CHN-EO-L3": 2, "CHN-EO-DEQ-L3": 0,
                      "HAM-L3": 3, "HAM-DEQ-L3": 0, "HAM-EO-L3": 0, "HAM-EO-DEQ-L3": 2}
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    ham = seed_files(store, "HAM-L3", (0, 1, 2))
    mean = np.concatenate([s["iters_at_tol"] for s in ham]).mean()
    assert f"HAM: {mean:.1f} iters at 1e-4\n3 seeds, 31 trajectories" in titles
    assert "HAM-DEQ" in titles and "CHN-10ep" in titles  # empty panels, named
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert texts.count("no results") == 5
    suptitles = [sub.get_suptitle() for sub in fig.subfigs]
    assert suptitles == ["3-layer CHN — shown: CHN-10ep (not shown: CHN-3ep)", "3-layer HAM"]


def test_preferring_the_papers_3_epoch_chn(store, tmp_path):
    fig, counts = trajectories.make_figure(local_records(store, "table2"),
                                           trajectories.FIGURES["fig3.png"], ("CHN-3ep",))
    assert counts["CHN-3ep-L3"] == 2 and "CHN-10ep-L3" not in counts
    assert "CHN-3ep (not shown: CHN-10ep)" in fig.subfigs[0].get_suptitle()


def test_an_empty_store_still_gives_both_figures(tmp_path):
    written = trajectories.write_figures([], tmp_path / "figures")
    assert all(n == 0 for counts in written.values() for n in counts.values())
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == ["fig3.png", "fig4.png"]


def test_python_m_paper_figures_makes_table_and_figures(store, tmp_path):
    from paper_figures.__main__ import main

    out = tmp_path / "all"
    assert main(["--results", str(store), "--out", str(out), "--prefer", "CHN-3ep"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["fig3.png", "fig4.png", "table2.csv",
                                                     "table2.md", "table2.tex"]
