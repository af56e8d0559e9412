import numpy as np

from custom_callbacks import load_trajectories
from deq_modules.experiments import get_experiment
from paper_figures import trajectories
from paper_figures.records import local_records


def test_panels_pool_every_finished_seed(store):
    records = local_records(str(store), "table2")
    pooled = trajectories.pooled(records, get_experiment("HAM", 3))
    seeds = [load_trajectories(str(store / "table2" / f"HAM-L3-s{s}" / "trajectories.npz"))
             for s in range(3)]
    assert np.array_equal(pooled["counts"], sum(s["counts"] for s in seeds))
    assert pooled["n_samples"] == 50 + 51 + 52
    assert trajectories.pooled(records, get_experiment("HAM-DEQ", 3)) is None


def test_both_figures_are_written_even_with_missing_panels(store, tmp_path, capsys):
    out = tmp_path / "figures"
    assert trajectories.main(["--results", str(store), "--out", str(out)]) == 0
    for name in ("fig3.png", "fig4.png"):
        data = (out / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 20000
    assert not list(out.glob(".*"))
    fig = trajectories.draw(local_records(str(store), "table2"), ("3-layer CHN", "3-layer HAM"))
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert "HAM-EO-DEQ (6.5 iters, 101 traj.)" in titles
    assert "HAM-DEQ" in titles  # the empty panel says so instead of failing
