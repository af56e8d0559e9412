"""deq_core.solvers.anderson's variants (tikhonov, safeguard, returns) against a reference
written out here, step by step, from their definitions."""
import shutil

import pytest
import torch

from custom_callbacks import iterations_to_converge
from deq_core.solvers import PUBLISHED_ANDERSON, anderson, picard

VARIANTS = [dict(tikhonov=t, safeguard=s, returns=r)
            for t in ("relative", "absolute") for s in ("after", "before")
            for r in ("best", "last")]
IDS = ["-".join(v.values()) for v in VARIANTS]


def reference(f, z0, max_iter, m=4, lam=1e-10, tikhonov="relative", safeguard="after",
              returns="best"):
    """Anderson type II, one sample at a time, in float64: (z, step_trace)."""
    outs, zs = [], []
    for z in z0.double():
        X, Fs, gs, outputs = [], [], [], []
        x = z.clone()
        anchor = best = None  # (image, residual)
        mixed_last = False
        for n in range(max_iter):
            fx = f(x[None])[0]
            g = fx - x
            res = (g.norm() / (fx.norm() + 1e-30)).item()
            outputs.append(fx)
            Fs, gs = (Fs + [fx])[-m:], (gs + [g])[-m:]
            if best is None or returns == "last" or res <= best[1]:
                best = (fx, res)
            if anchor is None or safeguard == "before" or not mixed_last or res <= anchor[1]:
                anchor = (fx, res)
            k = len(gs)
            G = torch.stack(gs)
            gram = G @ G.T
            reg = lam * gram.diagonal().mean() + torch.finfo(torch.float64).tiny ** 0.5 \
                if tikhonov == "relative" else lam
            alpha = torch.linalg.solve(gram + reg * torch.eye(k, dtype=gram.dtype),
                                       torch.ones(k, dtype=gram.dtype))
            alpha = alpha / alpha.sum()
            use = k > 1 and bool(torch.isfinite(alpha).all())
            if safeguard == "after":
                use = use and anchor[0] is fx  # the point just evaluated was accepted
            else:
                use = use and (alpha @ G).norm() <= g.norm()
            x = alpha @ torch.stack(Fs) if use else anchor[0]
            mixed_last = use
        zs.append(best[0])
        o = torch.stack(outputs)
        outs.append((o[1:] - o[:-1]).norm(dim=1) / (o[1:].norm(dim=1) + 1e-30))
    return torch.stack(zs), torch.stack(outs, dim=1)


def contraction(width=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(width, width, generator=g, dtype=torch.float64) * 0.9 / width ** 0.5
    b = torch.randn(width, generator=g, dtype=torch.float64)
    return lambda z: torch.tanh(z @ W.T + b)


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_each_variant_is_its_definition_step_for_step(variant):
    f = contraction()
    z0 = torch.randn(5, 12, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for iters in (1, 2, 6, 17):
        z, stats = anderson(f, z0, max_iter=iters, trace=True, **variant)
        ref_z, ref_trace = reference(f, z0, iters, **variant)
        torch.testing.assert_close(z, ref_z, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(stats.step_trace, ref_trace, rtol=1e-7, atol=1e-13)


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_with_a_window_of_one_every_variant_is_picard(variant):
    f = contraction(seed=1)
    z0 = torch.zeros(4, 12, dtype=torch.float64)
    ref, ref_stats = picard(f, z0, max_iter=9, trace=True)
    z, stats = anderson(f, z0, max_iter=9, trace=True, m=1, **variant)
    torch.testing.assert_close(stats.step_trace, ref_stats.step_trace, rtol=1e-8, atol=1e-14)
    if variant["returns"] == "last":
        torch.testing.assert_close(z, ref, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_every_variant_needs_fewer_iterations_than_picard(variant):
    f = contraction(width=30, seed=2)
    z0 = torch.zeros(5, 30, dtype=torch.float64)
    z, stats = anderson(f, z0, max_iter=40, trace=True, **variant)
    # An absolute Tikhonov term of 1e-10 swamps the Gram matrix once residuals are ~1e-5, and
    # the mix then averages the window: precision stalls there, well below the 1e-4 test.
    assert (f(z) - z).norm(dim=1).max() < 1e-6
    _, plain = picard(f, z0, max_iter=40, trace=True)
    ours, _ = iterations_to_converge(stats.step_trace, 1e-4)
    base, _ = iterations_to_converge(plain.step_trace, 1e-4)
    assert (ours <= base).all() and ours.double().mean() < base.double().mean()


def test_the_last_image_is_returned_when_asked():
    f = contraction(seed=3)
    seen = []
    z, _ = anderson(lambda x: seen.append(f(x)) or seen[-1], torch.zeros(3, 12, dtype=torch.float64),
                    max_iter=6, **PUBLISHED_ANDERSON)
    torch.testing.assert_close(z, seen[-1], rtol=0, atol=0)


def test_a_tolerance_stop_uses_the_returned_points_residual():
    f = contraction(seed=4)
    z0 = torch.zeros(3, 12, dtype=torch.float64)
    z, stats = anderson(f, z0, max_iter=50, tol=1e-8, returns="last")
    assert stats.n_iter < 50
    assert ((f(z) - z).norm(dim=1) / f(z).norm(dim=1)).max() < 1e-7


@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                    reason="no C++ compiler to build the fused kernel")
def test_the_published_variant_runs_fused():
    """The C++ kernel runs every variant (tests/deq_core/test_fused.py: all of them, step for
    step); with ``fused=True`` or ``"auto"`` on a CPU float32 state the published one is the
    eager solve to float rounding."""
    f = contraction()
    z0 = torch.zeros(2, 12)
    g = lambda z: f(z.double()).float()  # noqa: E731
    eager, s_e = anderson(g, z0, max_iter=8, trace=True, **PUBLISHED_ANDERSON)
    for fused in (True, "auto"):
        z, stats = anderson(g, z0, max_iter=8, trace=True, fused=fused, **PUBLISHED_ANDERSON)
        torch.testing.assert_close(z, eager, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(stats.step_trace, s_e.step_trace, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("option, bad", [("tikhonov", "relatve"), ("safeguard", "never"),
                                         ("returns", "first")])
def test_a_bad_variant_names_the_value(option, bad):
    with pytest.raises(ValueError, match=bad):
        anderson(contraction(), torch.zeros(1, 12, dtype=torch.float64), max_iter=3,
                 **{option: bad})
