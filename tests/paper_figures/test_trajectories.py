import numpy as np
import pytest

from runner.result_files import load_trajectories
from deq_modules.experiments import get_experiment
from paper_figures import style, trajectories
from paper_figures.runs import local_records


def seed_files(store, key, seeds):
    return [load_trajectories(str(store / "table2" / f"{key}-s{s}" / "trajectories.npz"))
            for s in seeds]


def test_real_callback_files_differ_so_pooling_is_checked(trajectory_files):
    a, b = (load_trajectories(f) for f in trajectory_files)
    assert (a["n_samples"], a["counts"].shape[0]) == (12, 29)  # 30 outputs: r_1 .. r_29
    assert (b["n_samples"], b["counts"].shape[0]) == (7, 44)


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
    assert data["iters_at_tol"].mean() == pytest.approx(pooled_mean)  # the white circle


def test_panel_slots_come_from_the_registry_structure_and_solver():
    plain_chn = trajectories.panel_rows("chn", 3, "onematrix", "picard")
    assert [e.row for e in plain_chn] == ["CHN-10ep", "CHN-3ep"]
    assert trajectories.choose(plain_chn, ("CHN-10ep",)).row == "CHN-10ep"
    assert trajectories.choose(plain_chn, ("CHN-3ep", "CHN-10ep")).row == "CHN-3ep"
    ham_eo_deq = trajectories.panel_rows("ham", 5, "evenodd", "anderson")
    assert [e.row for e in ham_eo_deq] == ["HAM-EO-DEQ"]
    assert trajectories.panel_rows("chn", 5, "evenodd", "anderson") == []


def panel(fig, title):
    """The heatmap axes whose title is ``title`` (a registry row)."""
    (ax,) = [ax for ax in fig.axes if ax.get_title() == title]
    return ax


def not_converged_at_tol(data):
    (i,) = np.flatnonzero(np.isclose(data["tolerances"], data["tol"]))
    return int(np.asarray(data["not_converged"])[i])


def test_figures_are_written_and_missing_panels_say_so(store, tmp_path, capsys):
    out = tmp_path / "figures"
    assert trajectories.main(["--results", str(store), "--out", str(out)]) == 0
    for name in ("fig3", "fig4"):
        assert (out / f"{name}.png").read_bytes().startswith(b"\x89PNG")
        assert (out / f"{name}.pdf").read_bytes().startswith(b"%PDF")
    assert sorted(p.name for p in out.iterdir()) == ["fig3.pdf", "fig3.png", "fig4.pdf",
                                                     "fig4.png"]  # no temporaries
    printed = capsys.readouterr().out
    assert "HAM-L3 3" in printed and "HAM-DEQ-L3 0" in printed
    fig, counts = trajectories.make_figure(local_records(store, "table2"),
                                           trajectories.FIGURES["fig3"])
    assert counts == {"CHN-10ep-L3": 0, "CHN-DEQ-L3": 0, "CHN-EO-L3": 2, "CHN-EO-DEQ-L3": 0,
                      "HAM-L3": 3, "HAM-DEQ-L3": 0, "HAM-EO-L3": 0, "HAM-EO-DEQ-L3": 2}
    # Panel titles are the paper's row names; empty panels are named too.
    titles = sorted(ax.get_title() for ax in fig.axes if ax.get_title())
    assert titles == sorted(["CHN-10ep", "CHN-DEQ", "CHN-EO", "CHN-EO-DEQ",
                             "HAM", "HAM-DEQ", "HAM-EO", "HAM-EO-DEQ"])
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert texts.count("no results") == 5
    suptitles = [sub.get_suptitle() for sub in fig.subfigs]
    assert suptitles == ["3-layer CHN (CHN-3ep not shown)", "3-layer HAM"]


def test_each_panel_says_how_many_seeds_and_samples_never_converged(store):
    fig, _ = trajectories.make_figure(local_records(store, "table2"), trajectories.FIGURES["fig3"])
    ham = seed_files(store, "HAM-L3", (0, 1, 2))
    stuck = sum(not_converged_at_tol(s) for s in ham)
    assert stuck > 0  # the toy rates 1.0 and 1.1 never converge
    assert [t.get_text() for t in panel(fig, "HAM").texts] == [f"3 seeds · {stuck} not conv."]
    eo = seed_files(store, "CHN-EO-L3", (0, 1))
    stuck = sum(not_converged_at_tol(s) for s in eo)
    assert [t.get_text() for t in panel(fig, "CHN-EO").texts] == [f"2 seeds · {stuck} not conv."]


def test_figures_fit_a_papers_text_width_with_readable_labels(store, tmp_path):
    from matplotlib.text import Text

    from paper_figures.heatmap import figure_to_array

    fig, _ = trajectories.make_figure(local_records(store, "table2"), trajectories.FIGURES["fig4"])
    width, height = fig.get_size_inches()
    assert width == pytest.approx(6.75) and height <= 5  # leaves room for a caption
    figure_to_array(fig)  # draw, so that every tick label exists
    sizes = {t.get_fontsize() for t in fig.findobj(Text) if t.get_visible() and t.get_text()}
    assert sizes and min(sizes) >= 7 and max(sizes) <= 9
    # The legend explains the cyan curve, the dashed criterion, our circle, the seeds' ticks
    # and the published value's diamond.
    (legend,) = fig.legends
    labels = [t.get_text() for t in legend.get_texts()]
    assert len(labels) == 5
    assert any("mean" in x and "tolerance" in x for x in labels)
    assert any("criterion" in x and "1e-4" in x for x in labels)
    assert any("our mean" in x and "Table 2" in x for x in labels)
    assert "each seed's mean" in labels and "published Table 2" in labels
    # The PNG is written at the figure's size: printed at text width, a label stays 7-9 pt.
    trajectories.write_figures(local_records(store, "table2"), tmp_path)
    png = (tmp_path / "fig4.png").read_bytes()
    assert int.from_bytes(png[16:20], "big") == pytest.approx(6.75 * style.DPI, abs=1)


def test_preferring_the_papers_3_epoch_chn(store, tmp_path):
    fig, counts = trajectories.make_figure(local_records(store, "table2"),
                                           trajectories.FIGURES["fig3"], ("CHN-3ep",))
    assert counts["CHN-3ep-L3"] == 2 and "CHN-10ep-L3" not in counts
    assert fig.subfigs[0].get_suptitle() == "3-layer CHN (CHN-10ep not shown)"
    assert "CHN-3ep" in [ax.get_title() for ax in fig.axes]


def test_an_empty_store_still_gives_both_figures(tmp_path):
    written = trajectories.write_figures([], tmp_path / "figures")
    assert all(n == 0 for counts in written.values() for n in counts.values())
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == [
        "fig3.pdf", "fig3.png", "fig4.pdf", "fig4.png"]


def test_a_panel_whose_runs_are_all_unreadable_is_refused_and_the_figures_kept(store, tmp_path,
                                                                             capsys):
    """Runs of HAM-L3 finished, but none has a readable trajectories.npz: drawing its panel
    empty would replace a good figure with a wrong one. One error line naming the panel and
    its runs, exit 1, and fig3/fig4 as they were."""
    out = tmp_path / "figures"
    assert trajectories.main(["--results", str(store), "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    for seed in (0, 1, 2):
        path = store / "table2" / f"HAM-L3-s{seed}" / "trajectories.npz"
        path.write_bytes(path.read_bytes()[:100])
    (store / "table2" / "HAM-L3-s1" / "trajectories.npz").unlink()  # missing counts too
    capsys.readouterr()
    assert trajectories.main(["--results", str(store), "--out", str(out)]) == 1
    captured = capsys.readouterr()
    (error,) = [line for line in captured.err.splitlines() if "error:" in line]
    assert "HAM-L3" in error and "HAM-L3-s0" in error and "HAM-L3-s1" in error
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    from paper_figures.__main__ import main as all_figures
    assert all_figures(["--results", str(store), "--out", str(tmp_path / "all")]) == 1
    assert not (tmp_path / "all").exists()  # the table is not written either


def test_panels_mark_each_seed_and_the_published_value(store):
    records = local_records(store, "table2")
    fig, _ = trajectories.make_figure(records, trajectories.FIGURES["fig3"])
    ax = panel(fig, "HAM")
    marks = {line.get_marker(): list(line.get_xdata()) for line in ax.lines}
    seeds = sorted(r.iters for r in records if r.usable and (r.row, r.depth) == ("HAM", 3))
    assert len(seeds) == 3 and sorted(marks["|"]) == pytest.approx(seeds)
    assert marks["D"] == [get_experiment("HAM", 3).published_iters[0]]
