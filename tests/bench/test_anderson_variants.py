"""bench.anderson_variants: the written-out Anderson variants and the measurement."""
import pytest
import torch

from bench import anderson_variants as av
from deq_core.solvers import anderson, picard
from deq_modules.data.synthetic import make_synthetic


def contraction(width=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(width, width, generator=g, dtype=torch.float64) * 0.9 / width ** 0.5
    b = torch.randn(width, generator=g, dtype=torch.float64)
    return lambda z: torch.tanh(z @ W.T + b)


def test_ours_is_the_engines_anderson_step_for_step():
    f = contraction()
    z0 = torch.zeros(6, 12, dtype=torch.float64)
    for iters in (1, 2, 5, 17):
        z, trace = av.solve(f, z0, iters)
        ref, stats = anderson(f, z0, max_iter=iters, trace=True)
        torch.testing.assert_close(z, ref, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(trace, stats.step_trace, rtol=1e-8, atol=1e-14)


def test_with_a_window_of_one_every_variant_is_picard():
    # One pair: the mix is the plain step, whatever the regularisation or the safeguard.
    f = contraction(seed=1)
    z0 = torch.zeros(4, 12, dtype=torch.float64)
    ref, stats = picard(f, z0, max_iter=9, trace=True)
    for _, tikhonov, safeguard, returns in av.VARIANTS:
        z, trace = av.solve(f, z0, 9, m=1, tikhonov=tikhonov, safeguard=safeguard,
                            returns=returns)
        torch.testing.assert_close(trace, stats.step_trace, rtol=1e-8, atol=1e-14)
        if returns == "last":
            torch.testing.assert_close(z, ref, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("variant", av.VARIANTS, ids=[v[0] for v in av.VARIANTS])
def test_every_variant_finds_the_fixed_point_faster_than_picard(variant):
    _, tikhonov, safeguard, returns = variant
    f = contraction(width=30, seed=2)
    z0 = torch.zeros(5, 30, dtype=torch.float64)
    z, trace = av.solve(f, z0, 40, tikhonov=tikhonov, safeguard=safeguard, returns=returns)
    # An absolute Tikhonov term of 1e-10 swamps the Gram matrix once residuals are ~1e-5:
    # the mix then averages the window, so precision stalls there (well below the 1e-4 test).
    assert (f(z) - z).norm(dim=1).max() < 1e-6
    _, stats = picard(f, z0, max_iter=40, trace=True)
    from custom_callbacks import iterations_to_converge
    ours, _ = iterations_to_converge(trace, 1e-4)
    plain, _ = iterations_to_converge(stats.step_trace, 1e-4)
    assert (ours <= plain).all() and ours.double().mean() < plain.double().mean()


def test_the_last_image_is_returned_when_asked():
    f = contraction(seed=3)
    z0 = torch.zeros(3, 12, dtype=torch.float64)
    seen = []
    z, _ = av.solve(lambda x: seen.append(f(x)) or seen[-1], z0, 6, tikhonov="absolute",
                    safeguard="before", returns="last")
    torch.testing.assert_close(z, seen[-1], rtol=0, atol=0)


def test_a_bad_variant_names_the_value_and_the_choices():
    with pytest.raises(ValueError, match="sideways.*after"):
        av.solve(contraction(), torch.zeros(1, 12), 3, safeguard="sideways")


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
