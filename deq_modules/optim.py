"""Madam: a multiplicative Adam-style optimiser (Bernstein et al., 2020); `from madam import Madam`
also works (madam.py re-exports it)."""

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim import Optimizer

from . import kernels


class Madam(Optimizer):
    """Madam optimiser from "Learning compositional functions via multiplicative
    weight updates" (Bernstein, Zhao, Meister, Liu, Anandkumar, Yue; NeurIPS 2020).

    For each parameter tensor ``p`` with gradient ``g``, at step ``t``::

        v      <- beta * v + (1 - beta) * g**2
        g_n    <- clamp(g / (sqrt(v / (1 - beta**t)) + eps), -g_bound, g_bound)
        p      <- p * exp(-lr * g_n * sign(p))
        p      <- clamp(p, -p_max, p_max)

    ``p_max = p_scale * rms(p)`` is fixed the first time the tensor is updated:
    ``p_scale`` times the tensor's initial root-mean-square. A zero gradient
    leaves every entry within that bound unchanged (``exp(0) = 1``); with a
    small ``p_scale`` (the original default is 3) the first step clips initial
    outliers, with this project's ``p_scale = 1024`` nothing is ever that large.

    Because the update is multiplicative, each entry keeps its sign, and an
    entry that is exactly zero stays zero forever. Parameters must therefore be
    initialised to nonzero values (in this project biases are drawn from
    N(0, 0.01), not zeroed). Parameters whose ``grad`` is ``None`` are skipped.

    Args:
        params: iterable of parameters or parameter groups.
        lr: learning rate; the largest relative change of an entry per step is
            ``exp(lr * g_bound)``.
        p_scale: bound on ``|p|`` in units of the tensor's initial RMS.
        g_bound: clamp on the normalised gradient.
        beta: decay of the running mean of squared gradients.
        eps: added to the root-mean-square before dividing.
        fused: ``"auto"`` (default) updates each CPU float32 parameter in one pass of a C++
            kernel (:mod:`deq_modules.kernels`: compiled at the first step; where it cannot
            be built, a warning and the tensor operations below), any other parameter with
            the tensor operations; ``True`` insists on the kernel; ``False`` never uses it.
            The two agree to float rounding (the kernel's exponential is within 2 ulps).
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 0.01,
        p_scale: float = 3.0,
        g_bound: float = 10.0,
        beta: float = 0.999,
        eps: float = 1e-8,
        fused: bool | str = "auto",
    ) -> None:
        if not lr > 0.0:
            raise ValueError(f"Invalid learning rate: lr={lr} (must be > 0)")
        if not p_scale > 0.0:
            raise ValueError(f"Invalid p_scale: {p_scale} (must be > 0)")
        if not g_bound > 0.0:
            raise ValueError(f"Invalid g_bound: {g_bound} (must be > 0)")
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"Invalid beta: {beta} (must be in [0, 1))")
        if not eps >= 0.0:
            raise ValueError(f"Invalid eps: {eps} (must be >= 0)")
        kernels.check_fused(fused, "Madam")
        self.fused = fused
        defaults = dict(lr=lr, p_scale=p_scale, g_bound=g_bound, beta=beta, eps=eps)
        super().__init__(params, defaults)

    def _scratch(self, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Two work tensors shaped like ``p``: views of two buffers per device and dtype,
        as large as the largest parameter seen, kept between steps (not part of the state).
        Allocated afresh, temporaries this large come from new memory every step on the
        CPU: for this project's 3-layer networks that was ~3000 page faults per step (two
        6 MB temporaries for the 784 x 1990 matrix) and about a third of the update's time."""
        buffers = self.__dict__.setdefault("_work", {})  # also after unpickling, copying
        key = (p.device, p.dtype)
        pair = buffers.get(key)
        if pair is None or pair[0].numel() < p.numel():
            pair = buffers[key] = (p.new_empty(p.numel()), p.new_empty(p.numel()))
        return tuple(b[: p.numel()].view(p.shape) for b in pair)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """Perform one optimisation step; ``closure`` re-evaluates the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        for group in self.param_groups:
            lr, beta, eps = group["lr"], group["beta"], group["eps"]
            g_bound = group["g_bound"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if grad.is_sparse:
                    raise RuntimeError("Madam does not support sparse gradients")

                state = self.state[p]
                if len(state) == 0:
                    # A Python int step keeps the bias correction on the host
                    # (no device sync) and round-trips through state_dict.
                    state["step"] = 0
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["p_max"] = group["p_scale"] * p.square().mean().sqrt()
                p_max = state["p_max"]
                if isinstance(p_max, torch.Tensor):
                    # Read once (one host sync per tensor and run; a resumed state saved
                    # with a tensor bound is converted here): clamping to a Python number
                    # is one vectorised pass, while a 0-dim tensor bound takes torch's
                    # broadcasting kernel: 17x slower on the CPU, a quarter of the update.
                    # The value is the float32/float64 number itself, so the clamp is
                    # unchanged.
                    p_max = state["p_max"] = p_max.item()

                state["step"] += 1
                exp_avg_sq = state["exp_avg_sq"]
                bias_correction = 1.0 - beta ** state["step"]
                tiny = torch.finfo(p.dtype).tiny
                # an optimiser pickled before the option has no self.fused
                kernel = kernels.get(getattr(self, "fused", "auto"), p, grad, exp_avg_sq,
                                     where="Madam")
                if kernel is not None:
                    kernel.madam_step(p, grad, exp_avg_sq, lr, beta, bias_correction, eps,
                                      0.0 if eps >= tiny else tiny, g_bound, p_max)
                    continue
                exp_avg_sq.mul_(beta).addcmul_(grad, grad, value=1.0 - beta)
                denom, signs = self._scratch(p)
                torch.div(exp_avg_sq, bias_correction, out=denom).sqrt_().add_(eps)
                if not eps >= tiny:
                    # With eps == 0 and an all-zero gradient history the denominator is 0;
                    # flooring it keeps 0 / denom == 0 instead of NaN (with eps >= tiny
                    # the floor cannot act, and its pass over the tensor is saved).
                    denom.clamp_min_(tiny)
                # g_normed overwrites denom, then becomes the factor
                # exp(-lr * g_normed * sign(p)) by which p is multiplied in place.
                g_normed = torch.div(grad, denom, out=denom).clamp_(-g_bound, g_bound)
                factor = g_normed.mul_(torch.sign(p, out=signs)).mul_(-lr).exp_()
                p.mul_(factor).clamp_(min=-p_max, max=p_max)

        return loss
