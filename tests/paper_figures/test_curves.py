"""paper_figures.curves: accuracy and iterations after each epoch, seeds pooled."""
import json

import numpy as np
import pytest

from deq_modules.experiments import get_experiment
from paper_figures import curves
from paper_figures.runs import local_records

METRICS = "epoch,train/loss,val/acc,val/iters_to_converge\n0,0.5,{a0},{i0}\n1,0.4,{a1},{i1}\n2,0.3,,\n"


def write(fixtures, root, seed, acc, iters, val_acc, val_iters):
    fixtures.write_run(root, "HAM", 5, seed, fixtures.finished_summary(iters, acc),
                       metrics=METRICS.format(a0=val_acc[0], i0=val_iters[0], a1=val_acc[1],
                                              i1=val_iters[1]))


def test_curves_are_validation_epochs_then_the_test_mean_and_band_over_seeds(tmp_path, fixtures):
    root = tmp_path / "results"
    # three epochs: two validated, the last scored by the test (summary.json)
    write(fixtures, root, 0, 0.80, 40.0, (0.70, 0.75), (50.0, 45.0))
    write(fixtures, root, 1, 0.84, 44.0, (0.72, 0.79), (54.0, 47.0))
    records = local_records(root, fixtures.SWEEP)
    exp = get_experiment("HAM", 5)
    data, n = curves.pooled(records, exp)
    assert n == 2
    mean, low, high = data["acc"]
    np.testing.assert_allclose(mean, [71.0, 77.0, 82.0])
    np.testing.assert_allclose(low, [70.0, 75.0, 80.0])
    np.testing.assert_allclose(high, [72.0, 79.0, 84.0])
    np.testing.assert_allclose(data["iters"][0], [52.0, 46.0, 42.0])
    fig, counts = curves.make_figure(records)
    assert counts["HAM-L5"] == 2 and counts["HAM-DEQ-L5"] == 0
    acc_ax = [ax for ax in fig.axes if ax.get_title() == "5-layer HAM"][0]
    lines = {line.get_marker(): line for line in acc_ax.lines}
    np.testing.assert_allclose(lines["."].get_ydata(), [71.0, 77.0, 82.0])
    assert list(lines["D"].get_xdata()) == [exp.epochs]
    assert list(lines["D"].get_ydata()) == [exp.published_acc[0]]


def test_the_script_writes_the_figure(tmp_path, fixtures, capsys):
    root = tmp_path / "results"
    write(fixtures, root, 0, 0.80, 40.0, (0.70, 0.75), (50.0, 45.0))
    assert curves.main(["--results", str(root), "--sweep", fixtures.SWEEP,
                        "--out", str(tmp_path / "out")]) == 0
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"curves.pdf", "curves.png"}
    assert "HAM-L5 1" in capsys.readouterr().out
