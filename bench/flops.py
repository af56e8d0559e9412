"""Analytic FLOP count of one training step of a Hopfield DEQ (matrix products only).

A product ``(B x m) @ (m x n)`` costs ``2 B m n`` FLOPs. With the batch ``B``, the layer sizes
``layers = [n_0, h_0, ..., h_{H-1}]`` (``n_0`` the input, ``h_k`` the state layers) and
``P = sum_k h_k h_{k+1}`` (the entries of the blocks ``W_k``):

- one evaluation of ``f``: ``F_f = 4 B P``. Every block ``W_k`` is used once in each
  direction (``rho(s_k) W_k`` drives layer ``k+1``, ``rho(s_{k+1}) W_k^T`` drives layer ``k``).
  This holds for both structures and both models: the OneMatrix map applies all blocks at once;
  the even-odd map applies every block once for the odd half and once for the even half (the
  CHN-EO inner loops are elementwise, with the drives fixed);
- the input drive ``U rho(x)``, once per step: ``F_in = 2 B n_0 h_0``; its backward computes
  only ``dU = rho(x)^T dUx`` (no gradient w.r.t. the data): another ``F_in``;
- Anderson (window ``m``, state width ``D``), per iteration ``i`` with ``k_i = min(i + 1, m)``:
  the Gram matrix ``G G^T`` (``2 B k_i^2 D``) and the mix ``alpha F`` (``2 B k_i D``); the
  ``k x k`` solves are negligible and not counted;
- recurrent backprop: ``T_b`` differentiable Picard steps (``T_b F_f``) and their backward,
  ``2 T_b F_f`` (for each product, one for the input's gradient and one for the weight's) less
  ``s F_f``: the first step starts from the detached ``z*``, so the products that read
  ``rho(z*)`` need no input gradient; that is all of them in the OneMatrix map (``s = 1``) and
  the first half in the even-odd map (``s = 1/2``): each structure's ``first_step_saving`` in
  the registry ``deq_modules.hopfield.STRUCTURES``;
- the truncated adjoint instead (``full_adjoint`` with ``T_b`` Picard steps, the fast mode's
  backward): the differentiable step ``f(z*)`` and the step whose graph gives the
  vector-Jacobian products (``2 F_f``), ``T_b`` products ``g J`` (``T_b F_f``: the gradient
  w.r.t. the state only, one product per product of ``f``), and the backward of ``f(z*)``
  (``(2 - s) F_f``: every weight's gradient, and the input gradients ``z*`` does not spare),
  ``(T_b + 4 - s) F_f`` in all instead of ``(3 T_b - s) F_f``.

    step FLOPs = 2 F_in + (T_f + 3 T_b - s) F_f + [Anderson] sum_{i < T_f} 2 B D (k_i^2 + k_i)

with ``T_f`` the forward iterations actually used and ``T_b`` the backward iterations. When
the solve compacts the batch (fast mode: converged samples leave it), ``T_f F_f`` and the
Anderson term are summed per sample over the iterations each sample was still in the batch.
Elementwise work (``rho``, ``rho'``, damping, residual norms, the Madam update) is left out,
so the roofline fraction also shows how much time goes to what is not a matrix product.

The roofline (``mix_peak``) is the step's own product mix run at the best throughput measured
for each shape: FLOPs over sum_shape FLOPs_shape / peak_shape. A 3-layer step is half the
big ``(64 x 784) @ (784 x 1990)`` input drive and half thin ``(64 x 1990) @ (1990 x 10)``
products, whose peaks differ many times over; one overall peak would flatter neither.
Anderson's small batched products are counted in the FLOPs, at the mix's rate.
"""
from __future__ import annotations

from collections.abc import Sequence

from deq_modules.hopfield import get_structure


def matmul_flops(batch: int, m: int, n: int) -> int:
    """FLOPs of ``(batch x m) @ (m x n)``."""
    return 2 * batch * m * n


def block_entries(layers: Sequence[int]) -> int:
    """``P = sum_k h_k h_{k+1}``: the entries of the blocks ``W_k`` between state layers."""
    h = list(layers[1:])
    return sum(a * b for a, b in zip(h[:-1], h[1:]))


def f_flops(layers: Sequence[int], batch: int) -> int:
    """``F_f = 4 B P``: one evaluation of the Hopfield map (either structure, CHN or HAM)."""
    return 2 * matmul_flops(batch, 1, block_entries(layers))


def input_flops(layers: Sequence[int], batch: int) -> int:
    """``F_in = 2 B n_0 h_0``: the input drive ``U rho(x)``."""
    return matmul_flops(batch, layers[0], layers[1])


def anderson_flops(n_iter: int, m: int, width: int, batch: int, safeguard: str = "after") -> int:
    """Gram matrix and mixing products of ``n_iter`` Anderson iterations (window ``m``);
    ``safeguard="before"`` adds the predicted residual ``sum_i alpha_i g_i`` (one more product)."""
    ks = [min(i + 1, m) for i in range(n_iter)]
    extra = 1 if safeguard == "before" else 0
    return sum(2 * batch * width * (k * k + k + extra * k) for k in ks)


def forward_flops(layers: Sequence[int], sample_iters: Sequence[int], solver: str, width: int,
                  m: int = 4, safeguard: str = "after") -> int:
    """FLOPs of the forward solve when sample ``b`` is iterated ``sample_iters[b]`` times (all
    ``T_f`` without compaction; with it, converged samples leave the batch and cost nothing)."""
    total = sum(sample_iters) * f_flops(layers, 1)
    if solver == "anderson":
        total += sum(anderson_flops(t, m, width, 1, safeguard) for t in sample_iters)
    return total


# Evaluations of f's products the backward costs, per backward method (before the saving s).
BACKWARD_USES = {"backprop": lambda t: 3 * t, "full_adjoint": lambda t: t + 4}


def backward_uses(backward_iter: int, method: str) -> int:
    """How many times the backward uses every product of ``f`` (see the module docstring)."""
    return BACKWARD_USES[method](backward_iter)


def step_flops(layers: Sequence[int], batch: int, forward_iter: int, backward_iter: int,
               structure: str, solver: str, width: int, m: int = 4,
               sample_iters: Sequence[int] | None = None,
               backward_method: str = "backprop", safeguard: str = "after") -> int:
    """FLOPs of one training step (see the module docstring for the formula).

    Args:
        layers: layer sizes, input first.
        batch: batch size ``B``.
        forward_iter: forward iterations ``T_f`` (the solver's ``n_iter``).
        backward_iter: differentiable Picard steps of recurrent backprop ``T_b``.
        structure: a registered structure; its ``first_step_saving`` is ``s``.
        solver: forward solver name; ``"anderson"`` adds its mixing products.
        width: state width ``D`` (``f_module.state_size``).
        m: Anderson window.
        sample_iters: iterations of each sample when the solve compacts the batch (converged
            samples leave); ``None``: every sample gets ``forward_iter``.
        backward_method: ``"backprop"`` (unrolled steps) or ``"full_adjoint"`` (the adjoint
            by ``backward_iter`` Picard steps).
        safeguard: Anderson's ``safeguard`` option (``"before"`` costs one more product).
    """
    saving = get_structure(structure).first_step_saving  # a ValueError names the valid ones
    if backward_method not in BACKWARD_USES:
        raise ValueError(f"unknown backward method {backward_method!r}; valid: "
                         f"{sorted(BACKWARD_USES)}")
    if sample_iters is None:
        sample_iters = [forward_iter] * batch
    s = saving if backward_iter > 0 else 0.0
    backward = round((backward_uses(backward_iter, backward_method) - s)
                     * f_flops(layers, batch))
    return (2 * input_flops(layers, batch) + backward
            + forward_flops(layers, sample_iters, solver, width, m, safeguard))


Shape = tuple[int, int, int, bool]  # (batch, m, n, transposed): (batch x m) @ (m x n)


def dominant_shapes(layers: Sequence[int], batch: int) -> list[Shape]:
    """The products of one step's forward maps as ``(batch, m, n, transposed)``: the input
    drive ``(B x n_0) @ (n_0 x h_0)`` and, per block ``W_k`` of shape ``(h_k, h_{k+1})``,
    ``(B x h_k) @ W_k`` and ``(B x h_{k+1}) @ W_k^T`` (a transposed view, as the model uses it)."""
    h = list(layers[1:])
    shapes = [(batch, layers[0], layers[1], False)]
    for a, b in zip(h[:-1], h[1:]):
        shapes += [(batch, a, b, False), (batch, b, a, True)]
    return shapes


def product_mix(layers: Sequence[int], batch: int, forward_iter: float,
                backward_iter: int, backward_method: str = "backprop") -> dict[Shape, float]:
    """FLOPs of one step spent in each shape of :func:`dominant_shapes`: the input drive
    ``2 F_in`` (forward and ``dU``), every block product ``T_f + 3 T_b`` times (``T_f + T_b +
    4`` with the truncated adjoint; the first step's saving is left out: it hardly moves the
    mix)."""
    shapes = dominant_shapes(layers, batch)
    mix = {shapes[0]: 2.0 * matmul_flops(*shapes[0][:3])}
    uses = forward_iter + backward_uses(backward_iter, backward_method)
    for shape in shapes[1:]:
        mix[shape] = mix.get(shape, 0.0) + uses * matmul_flops(*shape[:3])
    return mix


def mix_peak(mix: dict[Shape, float], gflops: dict[Shape, float]) -> float:
    """The matmul roofline of a step (GFLOP/s): its products' FLOPs over the time they take
    when each shape runs at its own measured best throughput ``gflops[shape]``, i.e. the
    FLOP-weighted harmonic mean of the per-shape peaks."""
    return sum(mix.values()) / sum(f / gflops[s] for s, f in mix.items())
