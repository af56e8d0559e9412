"""runner.recount: stored runs of the first counting rule, converted to the papers' rule.

The first rule is re-implemented here from its definition (count ``n + 1`` at the first
iteration ``n`` with ``|f(z_n) - z_n| / |f(z_n)| < tol``, ``T`` if none, histogram of that
residual per iteration) and applied to a real Picard solve; its conversion must equal the
papers' rule applied to the same solve's ``step_trace``.
"""
import json

import numpy as np
import pytest
import torch

from deq_core import picard
from paper_figures.runs import FINISHED, OLD_COUNT, local_records
from runner import recount
from runner.result_files import load_npz, save_npz

TOL = 1e-4
TOLERANCES = 10.0 ** np.arange(-8, -1.5, 0.5)
EDGES = np.linspace(-8, 0, 401)


def rate_solve(rates, T):
    """Picard on ``f(z) = a z + c`` per sample from zero: (old trace, papers' step trace)."""
    a = torch.tensor(rates, dtype=torch.float64)[:, None]
    c = torch.linspace(0.5, 1.5, 6, dtype=torch.float64)[None, :]
    with torch.no_grad():
        _, stats = picard(lambda z: a * z + c, torch.zeros(len(rates), 6, dtype=torch.float64),
                          max_iter=T, trace=True)
    return stats.trace.numpy(), stats.step_trace.numpy()


def arrays(rows, first_count, never_count):
    """The trajectories arrays of residual ``rows`` (n_rows, B) under one counting rule."""
    clipped = np.log10(np.clip(rows, 1e-8, 1.0))
    counts = np.stack([np.histogram(r, bins=EDGES)[0] for r in clipped]).astype(np.int64)

    def iters(tol):
        below = rows < tol
        return np.array([np.flatnonzero(col)[0] + first_count if col.any() else never_count
                         for col in below.T]), below.any(axis=0)

    per_tol = [iters(t) for t in TOLERANCES]
    n = rows.shape[1]
    sum_iters = np.array([i.sum() for i, _ in per_tol], dtype=np.int64)
    return dict(counts=counts, log10_edges=EDGES, tolerances=TOLERANCES, sum_iters=sum_iters,
                mean_iters=sum_iters / n,
                not_converged=np.array([(~c).sum() for _, c in per_tol], dtype=np.int64),
                iters_at_tol=iters(TOL)[0], tol=TOL, stage="test", n_samples=n,
                max_iter=rows.shape[0])


def first_below(rate, tol):
    """First iteration n whose fixed-point residual a^n (1 - a) / (1 - a^{n+1}) is below tol."""
    n = 0
    while rate**n * (1 - rate) / (1 - rate ** (n + 1)) >= tol:
        n += 1
    return n


@pytest.fixture
def solve():
    # 0.3 converges early, 0.7 exactly at the last iteration, 0.95 never.
    T = first_below(0.7, TOL) + 1
    rates = [0.3, 0.3, 0.7, 0.95, 0.95, 0.5]
    old_trace, steps = rate_solve(rates, T)
    old = {**arrays(old_trace, 1, T), "format_version": 1}
    new = {**arrays(steps, 0, T - 1), "format_version": 2}
    return old, new


def test_conversion_equals_the_papers_rule_on_the_same_solve(solve):
    old, new = solve
    never = int((new["iters_at_tol"] == new["max_iter"]).sum())
    assert never == 2 and (old["iters_at_tol"] == old["max_iter"]).sum() == 3  # the ambiguity
    converted = recount.recount_trajectories(old, never)
    for key in ("counts", "sum_iters", "not_converged", "max_iter", "format_version"):
        np.testing.assert_array_equal(converted[key], new[key], err_msg=key)
    np.testing.assert_allclose(converted["mean_iters"], new["mean_iters"], rtol=1e-15)
    np.testing.assert_array_equal(np.sort(converted["iters_at_tol"]),
                                  np.sort(new["iters_at_tol"]))


def test_conversion_refuses_what_it_cannot_shift(solve):
    old, _ = solve
    with pytest.raises(recount.CannotRecount, match=r"\bformat\b.*\b2\b"):
        recount.recount_trajectories({**old, "format_version": 2}, 2)
    stopped = {**old, "counts": old["counts"].copy()}
    stopped["counts"][-1] //= 2  # fewer samples at the last row: a tolerance stopped some
    with pytest.raises(recount.CannotRecount):
        recount.recount_trajectories(stopped, 2)


def write_run(root, name, row, summary_extra, trajectories):
    run = root / "sweep" / name
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(dict(row=row, depth=3, seed=0, run_name=name)))
    (run / "metrics.csv").write_text("epoch,train/loss\n0,1.0\n")
    summary = {"status": FINISHED, "row": row, "depth": 3, "seed": 0, "epochs_trained": 1,
               "test/acc": 0.8, "test/loss": 0.2,
               "test/iters_to_converge": float(trajectories["iters_at_tol"].mean()),
               "test/not_converged": float((trajectories["iters_at_tol"]
                                            == trajectories["max_iter"]).sum()),
               **summary_extra}
    (run / "summary.json").write_text(json.dumps(summary))
    save_npz(run / "trajectories.npz", trajectories)
    return run


def test_the_table_refuses_old_counts_and_recount_converts_picard_runs(solve, tmp_path, capsys):
    old, new = solve
    summary_old = {"test/not_converged": 2.0}  # the old callback's count at 1e-4
    picard_run = write_run(tmp_path, "HAM-L3-s0", "HAM", summary_old, old)
    anderson_run = write_run(tmp_path, "HAM-DEQ-L3-s0", "HAM-DEQ", summary_old, old)
    current = write_run(tmp_path, "HAM-EO-L3-s0", "HAM-EO", {"iters_rule": "papers"}, new)
    status = {r.name: r.status for r in local_records(tmp_path, "sweep")}
    assert status == {"HAM-L3-s0": OLD_COUNT, "HAM-DEQ-L3-s0": OLD_COUNT,
                      "HAM-EO-L3-s0": FINISHED}

    assert recount.main(["--results", str(tmp_path), "--sweep", "sweep", "--dry-run"]) == 0
    assert json.loads((picard_run / "summary.json").read_text()).get("iters_rule") is None
    assert recount.main(["--results", str(tmp_path), "--sweep", "sweep"]) == 0
    out = capsys.readouterr().out
    assert "HAM-DEQ-L3-s0: cannot convert" in out and "anderson" in out
    assert "HAM-EO-L3-s0: current" in out
    summary = json.loads((picard_run / "summary.json").read_text())
    assert summary["iters_rule"] == "papers"
    assert summary["test/iters_to_converge"] == pytest.approx(new["iters_at_tol"].mean())
    assert load_npz(picard_run / "trajectories.npz")["format_version"] == 2
    status = {r.name: r.status for r in local_records(tmp_path, "sweep")}
    assert status == {"HAM-L3-s0": FINISHED, "HAM-DEQ-L3-s0": OLD_COUNT,
                      "HAM-EO-L3-s0": FINISHED}
    assert json.loads((anderson_run / "summary.json").read_text()).get("iters_rule") is None
    assert current.is_dir()
