import copy
import math

import pytest
import torch

from deq_core import SOLVERS, anderson, get_solver, picard, relative_residual


def fixed_map(module, x):
    Ux = module.preprocess_inputs(x).detach()
    return lambda z: module(Ux, z)


@pytest.mark.parametrize("solver", [picard, anderson])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_reaches_fixed_point_on_contraction(solver, dtype, make_tanh_map):
    module = make_tanh_map(dtype=dtype)
    x = torch.randn(9, 5, dtype=dtype)
    f = fixed_map(module, x)
    with torch.no_grad():
        z, stats = solver(f, torch.zeros(9, 12, dtype=dtype), max_iter=200, tol=1e-6)
        # Checked independently of the solver's own bookkeeping.
        assert relative_residual(f(z), z).max() < 1e-6
    assert z.dtype == dtype
    assert stats.rel_residual.shape == (9,)
    assert (stats.rel_residual < 1e-6).all()
    assert stats.n_iter < 200


def test_anderson_beats_picard_on_slow_contraction(linear_map):
    x = torch.randn(8, 4, dtype=torch.float64)
    f = fixed_map(linear_map, x)
    z0 = torch.zeros(8, 30, dtype=torch.float64)
    with torch.no_grad():
        z_p, st_p = picard(f, z0, max_iter=5000, tol=1e-6)
        z_a, st_a = anderson(f, z0, max_iter=5000, tol=1e-6)
    # Picard contracts at rate 0.98: about log(1e-6)/log(0.98) ~ 680 steps.
    assert st_p.n_iter > 400
    assert st_a.n_iter < st_p.n_iter / 3  # measured: 141 vs 536 iterations
    exact = torch.linalg.solve(torch.eye(30, dtype=torch.float64) - linear_map.A.T,
                               linear_map.preprocess_inputs(x).T).T
    # Error bound of a contraction at rate q: residual * q / (1 - q) relative, q = 0.98.
    err = (z_a - exact).norm(dim=1) / exact.norm(dim=1)
    assert (err < 1e-6 * 0.98 / 0.02).all()


@pytest.mark.parametrize("solver", [picard, anderson])
def test_without_tol_runs_exactly_max_iter(solver, tanh_map):
    f = fixed_map(tanh_map, torch.randn(3, 5, dtype=torch.float64))
    seen = []
    with torch.no_grad():
        _, stats = solver(f, torch.zeros(3, 12, dtype=torch.float64), max_iter=17, trace=True,
                          on_iterate=lambda n, z: seen.append((n, z.shape)))
    assert stats.n_iter == 17
    assert stats.trace.shape == (17, 3)
    assert seen == [(n, (3, 12)) for n in range(17)]


def test_picard_trace_is_the_relative_residual_of_each_step(tanh_map):
    f = fixed_map(tanh_map, torch.randn(4, 5, dtype=torch.float64))
    z = torch.zeros(4, 12, dtype=torch.float64)
    with torch.no_grad():
        _, stats = picard(f, z, max_iter=6, trace=True)
        for n in range(6):
            fz = f(z)
            expected = (fz - z).norm(dim=1) / fz.norm(dim=1)
            assert torch.allclose(stats.trace[n], expected)
            z = fz
    assert torch.equal(stats.trace[-1], stats.rel_residual)


def test_anderson_returns_its_best_point(linear_map):
    f = fixed_map(linear_map, torch.randn(5, 4, dtype=torch.float64))
    with torch.no_grad():
        z, stats = anderson(f, torch.zeros(5, 30, dtype=torch.float64), max_iter=30, trace=True)
    assert torch.equal(stats.rel_residual, stats.trace.min(dim=0).values)


@pytest.mark.parametrize("solver", [picard, anderson])
def test_tolerance_stops_early_with_the_same_answer(solver, tanh_map):
    f = fixed_map(tanh_map, torch.randn(6, 5, dtype=torch.float64))
    z0 = torch.zeros(6, 12, dtype=torch.float64)
    with torch.no_grad():
        z_full, _ = solver(f, z0, max_iter=300)
        z_tol, stats = solver(f, z0, max_iter=300, tol=1e-5)
    assert stats.n_iter < 300
    assert (stats.rel_residual < 1e-5).all()
    err = (z_tol - z_full).norm(dim=1) / z_full.norm(dim=1)
    # A contraction at rate q: distance to z* <= residual * q / (1 - q); q = 0.8 here.
    assert (err < 1e-5 * 0.8 / 0.2).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_anderson_survives_singular_gram_matrix(dtype):
    """Iterates that converge exactly (and states that are tiny or zero) make G G^T singular;
    a plain linear solve of the Anderson system dies there."""
    target = torch.randn(4, 10, dtype=dtype)
    target[1] = 1e-30  # tiny state: the Gram matrix underflows to zero in float32
    target[2] = 0.0  # exact zero state: residual 0/0
    const = lambda z: target  # noqa: E731  exact fixed point after one step
    z0 = torch.zeros(4, 10, dtype=dtype)
    # The reference design (unregularised solve of the Gram system) fails on this data.
    G = torch.stack([target - z0, target - target], dim=1)
    with pytest.raises(RuntimeError):
        torch.linalg.solve(G @ G.transpose(1, 2), torch.ones(4, 2, 1, dtype=dtype))
    z, stats = anderson(const, z0, max_iter=12, trace=True)
    assert torch.isfinite(z).all() and torch.isfinite(stats.trace).all()
    assert torch.equal(z, target)
    assert (stats.rel_residual == 0).all()


def test_anderson_mixed_batch_with_exactly_converged_samples(tanh_map):
    """Per-sample fallback: samples whose system is singular must not spoil the others."""
    x = torch.randn(6, 5, dtype=torch.float64)
    f_tanh = fixed_map(tanh_map, x)
    frozen = torch.tensor([True, False, True, False, False, True])
    f = lambda z: torch.where(frozen[:, None], 0.5, f_tanh(z))  # noqa: E731
    with torch.no_grad():
        z, stats = anderson(f, torch.zeros(6, 12, dtype=torch.float64), max_iter=60)
        assert relative_residual(f(z), z).max() < 1e-8
    assert torch.isfinite(z).all()


def test_registry_and_unknown_solver():
    assert set(SOLVERS) == {"picard", "anderson"}
    assert get_solver("anderson").fn is anderson
    with pytest.raises(ValueError, match=r"'broyden'.*\['anderson', 'picard'\]"):
        get_solver("broyden")


def test_anderson_safeguard_never_gets_stuck_where_picard_diverges():
    """Spectrum in [-1.3, 0.9]: Picard diverges, Anderson must still converge. A safeguard that
    restarts from the same plain step again and again would re-evaluate one point forever."""
    gen = torch.Generator().manual_seed(0)
    Q, _ = torch.linalg.qr(torch.randn(30, 30, generator=gen, dtype=torch.float64))
    A = Q @ torch.diag(torch.linspace(-1.3, 0.9, 30, dtype=torch.float64)) @ Q.T
    b = torch.randn(8, 30, generator=gen, dtype=torch.float64)
    f = lambda z: z @ A + b  # noqa: E731
    z0 = torch.zeros(8, 30, dtype=torch.float64)
    _, st_p = picard(f, z0, max_iter=200)
    assert st_p.rel_residual.min() > 0.1
    z, stats = anderson(f, z0, max_iter=200, trace=True)
    exact = torch.linalg.solve(torch.eye(30, dtype=torch.float64) - A.T, b.T).T
    assert ((z - exact).norm(dim=1) / exact.norm(dim=1)).max() < 1e-8
    stuck = (stats.trace[1:] == stats.trace[:-1]) & (stats.trace[1:] > 1e-12)
    assert not stuck.any()


BAD_OPTIONS = [
    (dict(tol="1e-3"), r"\btol\b.*'1e-3'"),  # the option and its bad value, in any wording
    (dict(tol=math.nan), r"\btol\b.*\bnan\b"),
    (dict(tol=math.inf), r"\btol\b.*\binf\b"),
    (dict(tol=0.0), r"\btol\b.*\b0\.0\b"),
    (dict(tol=-1e-3), r"\btol\b.*-0\.001\b"),
    (dict(max_iter=0), r"\bmax_iter\b.*\b0\b"),
    (dict(max_iter=-2), r"\bmax_iter\b.*-2\b"),
    (dict(max_iter=True), r"\bmax_iter\b.*\bTrue\b"),
    (dict(max_iter=3.0), r"\bmax_iter\b.*\b3\.0\b"),
]
BAD_ANDERSON_OPTIONS = [
    (dict(m=2.5), r"\bm\b.*\b2\.5\b"),
    (dict(m=True), r"\bm\b.*\bTrue\b"),
    (dict(m=0), r"\bm\b.*\b0\b"),
    (dict(lam=math.nan), r"\blam\b.*\bnan\b"),
    (dict(lam=math.inf), r"\blam\b.*\binf\b"),
    (dict(lam=-1.0), r"\blam\b.*-1\.0\b"),
]


@pytest.mark.parametrize(
    "solver, options, message",
    [(s, o, m) for s in (picard, anderson) for o, m in BAD_OPTIONS]
    + [(anderson, o, m) for o, m in BAD_ANDERSON_OPTIONS],
)
def test_bad_options_are_refused_before_any_evaluation(solver, options, message):
    def f(z):
        raise AssertionError("f must not be evaluated with bad options")

    options = dict(dict(max_iter=5), **options)
    with pytest.raises(ValueError, match=rf"\b{solver.__name__}\b.*{message}"):
        solver(f, torch.zeros(2, 3), **options)


@pytest.mark.parametrize("solver", [picard, anderson])
@pytest.mark.parametrize(
    "bad_f, message",
    [
        (lambda z: torch.cat([z, z[:, :1]], dim=1), r"\(4, 7\).*\(4, 6\)"),  # returned, wanted
        (lambda z: 0.5 * z[:1], r"\(1, 6\).*\(4, 6\)"),  # broadcastable
        (lambda z: 0.5 * z.double(), r"torch\.float64.*torch\.float32"),
        (lambda z: (0.5 * z).tolist(), r"\blist\b.*\bTensor\b"),
    ],
)
def test_f_must_return_the_shape_and_dtype_of_its_input(solver, bad_f, message):
    with pytest.raises(ValueError, match=rf"\b{solver.__name__}\b.*\bf\b.*{message}"):
        solver(bad_f, torch.ones(4, 6), max_iter=5)


@pytest.mark.parametrize("solver", [picard, anderson])
def test_z0_needs_a_batch_dimension(solver):
    with pytest.raises(ValueError, match=r"\bz0\b.*\(\)"):  # z0 and its shape ()
        solver(lambda z: z, torch.tensor(1.0), max_iter=5)


@pytest.mark.parametrize("solver", [picard, anderson])
@pytest.mark.parametrize("tol", [None, 1e-6])
def test_empty_batch_gives_an_empty_result(solver, tol):
    f = lambda z: 0.5 * z + 1.0  # noqa: E731
    z, stats = solver(f, torch.zeros(0, 6, 2), max_iter=7, tol=tol, trace=True)
    assert z.shape == (0, 6, 2)
    assert stats.rel_residual.shape == (0,)
    assert stats.trace.shape == (stats.n_iter, 0)
    assert 1 <= stats.n_iter <= 7


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_anderson_in_low_precision_reaches_the_float64_fixed_point(dtype, make_tanh_map):
    module = make_tanh_map()
    x = torch.randn(6, 5, dtype=torch.float64)
    with torch.no_grad():
        exact, _ = anderson(fixed_map(module, x), torch.zeros(6, 12, dtype=torch.float64),
                            max_iter=200, tol=1e-13)
        assert relative_residual(fixed_map(module, x)(exact), exact).max() < 1e-12
        low = copy.deepcopy(module).to(dtype)
        z, stats = anderson(fixed_map(low, x.to(dtype)), torch.zeros(6, 12, dtype=dtype),
                            max_iter=60)
    assert z.dtype == dtype
    # The map itself is rounded (eps/2 relative per weight) and the contraction rate q = 0.8
    # amplifies that by 1 / (1 - q) = 5: a few eps; measured worst 1e-2 (bf16), 1e-3 (fp16).
    bound = {torch.bfloat16: 2e-2, torch.float16: 4e-3}[dtype]
    err = (z.double() - exact).norm(dim=1) / exact.norm(dim=1)
    assert (err < bound).all()


def recording(f):
    """``f`` that keeps every output it returns, in order: the papers' ``s_1, s_2, ...``."""
    outputs = []

    def g(z):
        outputs.append(f(z).clone())
        return outputs[-1]

    return g, outputs


def change_between_outputs(outputs):
    """``r_n = |s_{n+1} - s_n| / |s_{n+1}|`` for ``n = 1 .. T-1``, computed directly."""
    return torch.stack([(b - a).flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1)
                        for a, b in zip(outputs[:-1], outputs[1:])])


@pytest.mark.parametrize("solver,kwargs", [(picard, {}), (anderson, {}),
                                           (anderson, {"fused": True})])
def test_step_trace_is_the_change_between_consecutive_map_outputs(solver, kwargs,
                                                                  make_linear_map):
    dtype = torch.float32 if kwargs.get("fused") else torch.float64
    module = make_linear_map(dtype=dtype)
    f, outputs = recording(fixed_map(module, torch.randn(6, 4, dtype=dtype)))
    with torch.no_grad():
        _, stats = solver(f, torch.zeros(6, 30, dtype=dtype), max_iter=25, trace=True, **kwargs)
    assert len(outputs) == 25 and stats.step_trace.shape == (24, 6)
    expected = change_between_outputs(outputs)
    torch.testing.assert_close(stats.step_trace, expected, rtol=1e-5 if dtype == torch.float32
                               else 1e-12, atol=0)
    if solver is picard:  # its iterates are its outputs: the trace without the zero start's row
        assert torch.equal(stats.step_trace, stats.trace[1:])
    else:  # the mixed points are not the outputs: a different measure
        assert not torch.allclose(stats.step_trace, stats.trace[1:])


@pytest.mark.parametrize("solver", ["picard", "anderson"])
def test_step_trace_of_a_sample_that_left_the_batch_is_zero(solver, make_linear_map):
    """Compaction: a sample's outputs stop changing when it leaves; before, they are the
    uncompacted solve's."""
    from deq_core import DEQ

    module = make_linear_map(rate=0.9)
    x = torch.randn(7, 4, dtype=torch.float64) * torch.logspace(-3, 1, 7, dtype=torch.float64)[:, None]
    traces = {}
    for compact in (False, True):
        deq = DEQ(module, None, forward_kwargs=dict(solver=solver, iter=400, tol=1e-8,
                                                    compact=compact))
        with torch.no_grad(), deq.observe(on_solve=lambda st, c=compact: traces.update({c: st})):
            deq(x)
    plain, compacted = traces[False].step_trace, traces[True].step_trace
    assert compacted.shape == plain.shape
    left = compacted == 0
    assert left[-1].any() and not left[0].any()  # some samples left, none at the start
    assert (left[:-1] <= left[1:]).all()  # once zero, zero for good
    # A smaller batch sums its products in another order (BLAS blocking, threads), and
    # Anderson's least squares amplifies that float64 rounding: measured up to 1.7e-15 absolute
    # (6e-8 relative, on residuals near 3e-8) with 2 threads and AVX2 kernels. Residuals are
    # changes of O(1) states, so rounding is absolute: 1e-12 leaves a 500x margin, while a
    # sample's solve itself moves its residual by orders of magnitude per iteration.
    torch.testing.assert_close(compacted[~left], plain[~left], rtol=1e-6, atol=1e-12)
