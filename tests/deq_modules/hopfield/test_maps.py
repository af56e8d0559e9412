"""Tests of the Hopfield maps (deq_modules/hopfield: base.py, onematrix.py, evenodd.py, models.py,
activations.py) against the mathematics of docs/papers.md."""

from __future__ import annotations

import math
import re

import pytest
import torch

from deq_modules.hopfield.activations import rho, rho_integral, rho_prime, rho_prime_from_rho
from deq_modules.hopfield import EvenOddFunction, OneMatrixFunction

LAYERS = [[5, 8, 3], [6, 9, 5, 7, 4], [7, 6, 5, 4, 3, 4, 2]]
DT = torch.float64


def _sig(u):  # the paper's rho, written independently of the module
    return 1.0 / (1.0 + torch.exp(-4.0 * (u - 0.5)))


def _om(layers, ham, scale=1.0, seed=0, **kw):
    torch.manual_seed(seed)
    om = OneMatrixFunction(layers, model="ham" if ham else "chn", **kw).to(DT)
    if scale != 1.0:
        with torch.no_grad():
            for p in [om.U, *om.W]:
                p.mul_(scale)
    return om


def _inputs(om, batch=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, om.layers[0], generator=g, dtype=DT)
    states = [torch.randn(batch, n, generator=g, dtype=DT) for n in om.layers[1:]]
    return x, states


def _dense_map(om, x, s_full, ham):
    """The Hopfield map written with the full matrix: [rho'(s) *] (W rho(s) + b + [U rho(x); 0])."""
    r = _sig(s_full)
    inp = torch.zeros_like(s_full)
    inp[:, : om.layers[1]] = _sig(x) @ om.U
    pre = r @ om.dense_W().T + torch.cat(list(om.b)) + inp
    return pre if ham else 4.0 * r * (1.0 - r) * pre


def _picard(f, z, damping=0.5, tol=1e-12, max_iter=20000):
    for _ in range(max_iter):
        z_new = damping * z + (1.0 - damping) * f(z)
        if (z_new - z).abs().max() < tol:
            return z_new
        z = z_new
    raise AssertionError("the test's Picard loop did not converge")


# ---------------------------------------------------------------- activations


def test_rho_derivative_and_antiderivative():
    u = torch.linspace(-3, 3, 101, dtype=DT, requires_grad=True)
    torch.testing.assert_close(rho(u), _sig(u))
    (g,) = torch.autograd.grad(rho(u).sum(), u)
    torch.testing.assert_close(rho_prime(u), g)
    torch.testing.assert_close(rho_prime_from_rho(rho(u)), g)
    (g,) = torch.autograd.grad(rho_integral(u).sum(), u)
    torch.testing.assert_close(g, rho(u))
    assert rho_integral(torch.tensor(-20.0, dtype=DT)) < 1e-30  # L(-inf) = 0, L >= 0


# ---------------------------------------------------------------- OneMatrix map vs dense matrix


@pytest.mark.parametrize("layers", LAYERS)
@pytest.mark.parametrize("ham", [True, False])
def test_block_map_equals_dense_map(layers, ham):
    om = _om(layers, ham)
    x, states = _inputs(om)
    z = torch.cat(states, 1)
    torch.testing.assert_close(om(om.preprocess_inputs(x), z), _dense_map(om, x, z, ham))


@pytest.mark.parametrize("layers", LAYERS)
def test_dense_W_structure(layers):
    om = _om(layers, True)
    W = om.dense_W()
    N = sum(layers[1:])
    assert W.shape == (N, N)
    torch.testing.assert_close(W, W.T, rtol=0, atol=0)
    o = [0]
    for n in layers[1:]:
        o.append(o[-1] + n)
    for i in range(len(layers) - 1):
        for j in range(len(layers) - 1):
            blk = W[o[i] : o[i + 1], o[j] : o[j + 1]]
            if j == i + 1:
                torch.testing.assert_close(blk, om.W[i].detach(), rtol=0, atol=0)
            elif abs(i - j) != 1:
                assert torch.count_nonzero(blk) == 0, (i, j)
    eo = EvenOddFunction.from_OneMatrix(om)
    torch.testing.assert_close(eo.dense_W(), W, rtol=0, atol=0)


def test_from_OneMatrix_copies_independent_parameters():
    om = _om([6, 9, 5, 7, 4], False)
    eo = EvenOddFunction.from_OneMatrix(om, inner_iter=3, inner_damping=0.2)
    assert (eo.layers, eo.model.name, eo.inner_iter, eo.inner_damping) == (om.layers, "chn", 3, 0.2)
    assert eo.U.dtype == DT
    with torch.no_grad():
        om.W[0].add_(1.0)
    assert not torch.equal(om.W[0], eo.W[0])
    assert {n for n, _ in eo.named_parameters()} == {n for n, _ in om.named_parameters()}


# ---------------------------------------------------------------- fixed points and Theorem 2


@pytest.mark.parametrize("layers", LAYERS)
@pytest.mark.parametrize("ham", [True, False])
def test_even_odd_has_the_same_fixed_point(layers, ham):
    om = _om(layers, ham, scale=0.3)
    eo = EvenOddFunction.from_OneMatrix(om, inner_iter=10, inner_damping=0.5)
    x, states = _inputs(om)
    Ux = om.preprocess_inputs(x).detach()
    with torch.no_grad():
        z_om = _picard(lambda z: om(Ux, z), torch.zeros(len(x), om.state_size, dtype=DT))
        z_eo = _picard(lambda z: eo(Ux, z), torch.zeros(len(x), eo.state_size, dtype=DT))
        # the solved OneMatrix state is a fixed point of the dense map too (not a block artefact)
        torch.testing.assert_close(_dense_map(om, x, z_om, ham), z_om, rtol=0, atol=1e-10)
        for s_om, s_eo in zip(om.layer_states(z_om), eo.layer_states(z_eo, Ux)):
            torch.testing.assert_close(s_eo, s_om, rtol=0, atol=1e-6)


@pytest.mark.parametrize("layers", LAYERS)
def test_theorem2_one_even_odd_step_is_two_synchronous_half_steps(layers):
    om = _om(layers, True)
    eo = EvenOddFunction.from_OneMatrix(om)
    x, states = _inputs(om)
    Ux = om.preprocess_inputs(x)
    odd, even = range(0, len(states), 2), range(1, len(states), 2)
    # half step 1: odd layers from the synchronous map, even kept; 2: even from the new odd
    f1 = om.layer_states(om(Ux, om.from_layer_states(states)))
    mid = [f1[k] if k in odd else states[k] for k in range(len(states))]
    f2 = om.layer_states(om(Ux, om.from_layer_states(mid)))
    expected = torch.cat([f2[k] for k in even], 1)
    torch.testing.assert_close(eo(Ux, eo.from_layer_states(states)), expected)


@pytest.mark.parametrize("layers", LAYERS[:2])
def test_chn_even_odd_halves_reach_local_equilibria(layers):
    """With enough inner steps each half solves s = rho'(s) * drive (the OneMatrix CHN map)."""
    om = _om(layers, False, scale=0.5)
    eo = EvenOddFunction.from_OneMatrix(om, inner_iter=300, inner_damping=0.5)
    x, states = _inputs(om)
    Ux = om.preprocess_inputs(x)
    new = eo.layer_states(eo(Ux, eo.from_layer_states(states)))
    # odd half: OneMatrix map at (old even, new odd); even half: at (new even, new odd)
    mixed = [new[k] if k % 2 == 0 else states[k] for k in range(len(states))]
    f_mixed = om.layer_states(om(Ux, om.from_layer_states(mixed)))
    f_new = om.layer_states(om(Ux, om.from_layer_states(new)))
    for k in range(len(states)):
        f = f_mixed if k % 2 == 0 else f_new
        torch.testing.assert_close(new[k], f[k], rtol=0, atol=1e-9)


def test_chn_even_odd_single_undamped_inner_step():
    om = _om([6, 9, 5, 7, 4], False)
    eo = EvenOddFunction.from_OneMatrix(om, inner_iter=1, inner_damping=0.0)
    x, s = _inputs(om)
    Ux = om.preprocess_inputs(x)
    r = [_sig(t) for t in s]
    W, b = om.W, om.b
    s1 = 4 * r[0] * (1 - r[0]) * (_sig(x) @ om.U + b[0] + r[1] @ W[0].T)
    s3 = 4 * r[2] * (1 - r[2]) * (b[2] + r[1] @ W[1] + r[3] @ W[2].T)
    r1, r3 = _sig(s1), _sig(s3)
    s2 = 4 * r[1] * (1 - r[1]) * (b[1] + r1 @ W[0] + r3 @ W[1].T)
    s4 = 4 * r[3] * (1 - r[3]) * (b[3] + r3 @ W[2])
    torch.testing.assert_close(eo(Ux, eo.from_layer_states(s)), torch.cat([s2, s4, s1, s3], 1))


def test_chn_even_odd_damped_inner_steps_follow_eq7():
    """Two damped inner steps per half, ``s <- d s + (1 - d) rho'(s) drive``, written plainly."""
    om = _om([6, 9, 5, 7, 4], False)
    d = 0.3
    eo = EvenOddFunction.from_OneMatrix(om, inner_iter=2, inner_damping=d)
    x, s = _inputs(om)
    Ux = om.preprocess_inputs(x)
    W, b = om.W, om.b

    def settle(state, drive):
        for _ in range(2):
            r = _sig(state)
            state = d * state + (1 - d) * 4 * r * (1 - r) * drive
        return state

    r = [_sig(t) for t in s]
    s1 = settle(s[0], _sig(x) @ om.U + b[0] + r[1] @ W[0].T)
    s3 = settle(s[2], b[2] + r[1] @ W[1] + r[3] @ W[2].T)
    r1, r3 = _sig(s1), _sig(s3)
    s2 = settle(s[1], b[1] + r1 @ W[0] + r3 @ W[1].T)
    s4 = settle(s[3], b[3] + r3 @ W[2])
    torch.testing.assert_close(eo(Ux, eo.from_layer_states(s)), torch.cat([s2, s4, s1, s3], 1))


@pytest.mark.parametrize("structure", ["onematrix", "evenodd"])
@pytest.mark.parametrize("ham", [True, False])
def test_maps_have_the_gradients_of_their_finite_differences(structure, ham):
    """Autograd through the maps (in-place steps in rho, fused inner steps) is exact."""
    om = _om([5, 6, 4, 5, 3], ham, scale=0.5)
    f = om if structure == "onematrix" else EvenOddFunction.from_OneMatrix(om, inner_iter=3)
    x, states = _inputs(om, batch=2)
    Ux = om.preprocess_inputs(x).detach().requires_grad_()
    z = f.from_layer_states(states).detach().requires_grad_()
    assert torch.autograd.gradcheck(f, (Ux, z), eps=1e-6, atol=1e-7, rtol=1e-5)
    params = list(f.parameters())
    assert torch.autograd.gradcheck(
        lambda *ps: torch.func.functional_call(f, dict(zip([n for n, _ in f.named_parameters()],
                                                             ps)), (Ux, z)),
        tuple(p.detach().requires_grad_() for p in params), eps=1e-6, atol=1e-7, rtol=1e-5)


# ---------------------------------------------------------------- energy


@pytest.mark.parametrize("layers", LAYERS)
@pytest.mark.parametrize("ham", [True, False])
def test_energy_gradient_identity(layers, ham):
    om = _om(layers, ham)
    x, states = _inputs(om)
    z = torch.cat(states, 1).requires_grad_(True)
    (g,) = torch.autograd.grad(om.energy(x, z).sum(), z)
    with torch.no_grad():
        f = _dense_map(om, x, z, ham)
        r = _sig(z)
        expected = 4 * r * (1 - r) * (z - f) if ham else z - f  # HAM: rho'(s)(s - f); CHN: s - f
    torch.testing.assert_close(g, expected)


@pytest.mark.parametrize("layers", LAYERS)
@pytest.mark.parametrize("ham", [True, False])
def test_energy_decreases_along_forward_euler(layers, ham):
    om = _om(layers, ham)
    x, states = _inputs(om, batch=6)
    z = 2.0 * torch.cat(states, 1)
    with torch.no_grad():
        Ux = om.preprocess_inputs(x)
        E = om.energy(x, z)
        E0 = E
        for _ in range(300):
            z = z + 0.01 * (-z + om(Ux, z))  # ds/dt = -s + f(s), h = 0.01
            E_new = om.energy(x, z)
            assert (E_new <= E + 1e-12 * E.abs().clamp_min(1.0)).all()
            E = E_new
    assert (E < E0 - 1e-3).all()


@pytest.mark.parametrize("layers", LAYERS)
@pytest.mark.parametrize("ham", [True, False])
def test_even_odd_energy_equals_one_matrix_energy(layers, ham):
    om = _om(layers, ham)
    eo = EvenOddFunction.from_OneMatrix(om)
    x, states = _inputs(om)
    Ux = om.preprocess_inputs(x)
    z_eo = eo.from_layer_states(states)
    z_om = om.from_layer_states(eo.layer_states(z_eo, Ux))  # HAM: odd layers recomputed (Eq. 8)
    torch.testing.assert_close(eo.energy(x, z_eo), om.energy(x, z_om))
    if ham:  # the recomputed odd layers are stationary points of E with the even layers fixed
        z = z_om.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(om.energy(x, z).sum(), z)
        for k, gk in enumerate(om.layer_states(g)):
            if k % 2 == 0:
                torch.testing.assert_close(gk, torch.zeros_like(gk), rtol=0, atol=1e-12)


# ---------------------------------------------------------------- state layout


@pytest.mark.parametrize("layers", LAYERS)
@pytest.mark.parametrize("structure", ["om", "eo-ham", "eo-chn"])
def test_readout_and_layer_state_round_trip(layers, structure):
    om = _om(layers, structure != "eo-chn")
    f = om if structure == "om" else EvenOddFunction.from_OneMatrix(om)
    x, states = _inputs(om)
    Ux = f.preprocess_inputs(x)
    z = f.from_layer_states(states)
    assert z.shape == (len(x), f.state_size)
    torch.testing.assert_close(f.readout(z), states[-1], rtol=0, atol=0)
    back = f.layer_states(z, Ux)
    torch.testing.assert_close(f.from_layer_states(back), z, rtol=0, atol=0)
    torch.testing.assert_close(f.readout(z), back[-1], rtol=0, atol=0)
    kept = range(len(states)) if structure != "eo-ham" else range(1, len(states), 2)
    for k in kept:
        torch.testing.assert_close(back[k], states[k], rtol=0, atol=0)
    assert f(Ux, z).shape == z.shape


def test_state_sizes():
    layers = [7, 6, 5, 4, 3, 4, 2]
    assert OneMatrixFunction(layers).state_size == 24
    assert EvenOddFunction(layers, model="ham").state_size == 5 + 3 + 2
    assert EvenOddFunction(layers, model="chn").state_size == 24


def test_even_odd_ham_needs_inputs_for_layer_states():
    eo = EvenOddFunction([5, 8, 3])
    with pytest.raises(ValueError, match="Ux"):
        eo.layer_states(torch.zeros(2, 3))


# ---------------------------------------------------------------- init and validation


def test_xavier_per_block_and_small_biases():
    torch.manual_seed(0)
    layers = [784, 1280, 510, 200, 10]
    for f in (OneMatrixFunction(layers), EvenOddFunction(layers, model="chn")):
        for w, (m, n) in zip([f.U, *f.W], zip(layers[:-1], layers[1:])):
            bound = math.sqrt(6.0 / (m + n))
            assert w.shape == (m, n)
            assert w.abs().max() <= bound and w.abs().max() > 0.95 * bound
        b = torch.cat(list(f.b)).detach()
        assert b.abs().max() < 0.06 and abs(b.std().item() - 0.01) < 0.001


@pytest.mark.parametrize(
    "layers",
    [[784, 10], [784, 100, 50, 10], [784], [784, 0, 10], [784, -5, 10], [784, 100.0, 10],
     [784, True, 10]],
)
def test_bad_layers(layers):
    for cls in (OneMatrixFunction, EvenOddFunction):
        with pytest.raises(ValueError, match=re.escape(str(layers))):  # the bad list, named
            cls(layers)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(inner_iter=0), r"inner_iter\b.*\b0\b"),
        (dict(inner_iter=2.5), r"inner_iter\b.*\b2\.5\b"),
        (dict(inner_damping=1.0), r"inner_damping\b.*\b1\.0\b"),
        (dict(inner_damping=-0.1), r"inner_damping\b.*-0\.1\b"),
    ],
)
def test_bad_inner_settings(kw, match):
    with pytest.raises(ValueError, match=match):
        EvenOddFunction([5, 8, 3], model="chn", **kw)


# ---------------------------------------------------------------- small-world connections


def test_small_world_connections():
    layers = [6, 9, 5, 7, 4, 3, 2]
    om = _om(layers, True, small_world_proba=0.5)
    W = om.dense_W()
    assert "sw_mask" in om.state_dict()  # the random links are fixed and saved with the model
    assert OneMatrixFunction(layers).W_sw is None  # no dense parameter when off
    torch.testing.assert_close(W, W.T, rtol=0, atol=0)
    o = [0]
    for n in layers[1:]:
        o.append(o[-1] + n)
    extra = om.small_world_W()
    n_links = 0
    for i in range(len(layers) - 1):
        for j in range(len(layers) - 1):
            blk = extra[o[i] : o[i + 1], o[j] : o[j + 1]]
            if abs(i - j) < 2:
                assert torch.count_nonzero(blk) == 0, (i, j)  # only non-adjacent layers
            else:
                torch.testing.assert_close(W[o[i] : o[i + 1], o[j] : o[j + 1]], blk, rtol=0, atol=0)
                n_links += torch.count_nonzero(blk).item()
    assert n_links > 0
    # each candidate link (pairs of units in non-adjacent layers) is kept with probability p
    big = OneMatrixFunction([3, 40, 30, 40, 30, 40, 30], small_world_proba=0.3)
    n_candidates = 40 * (40 + 30 + 40 + 30) + 30 * (30 + 40 + 30) + 40 * (40 + 30) + 30 * 30
    assert abs(big.sw_mask.sum().item() / n_candidates - 0.3) < 0.03
    with pytest.raises(ValueError, match=r"small_world_proba\b.*\b1\.5\b"):
        OneMatrixFunction(layers, small_world_proba=1.5)
    with pytest.raises(ValueError, match=r"small_world_proba\b.*\b0\.5\b"):
        EvenOddFunction.from_OneMatrix(om)


@pytest.mark.parametrize("ham", [True, False])
def test_small_world_map_and_energy_use_the_extra_connections(ham):
    om = _om([6, 9, 5, 7, 4], ham, small_world_proba=0.7)
    x, states = _inputs(om)
    z = torch.cat(states, 1).requires_grad_(True)
    f_dense = _dense_map(om, x, z, ham)
    torch.testing.assert_close(om(om.preprocess_inputs(x), z), f_dense)
    (g,) = torch.autograd.grad(om.energy(x, z).sum(), z)
    r = _sig(z)
    expected = 4 * r * (1 - r) * (z - f_dense) if ham else z - f_dense
    torch.testing.assert_close(g, expected.detach())
