"""The DEQ layer: solve ``z* = f(x, z*)`` without a graph, then attach a gradient.

The layer owns the map (``f_module``, damping, ``torch.compile``, the state's dtype), the
starting state and the forward solve with its observers; the solvers
(:mod:`deq_core.solvers`), the gradient methods (:mod:`deq_core.gradients`) and the checks of
their options (:mod:`deq_core.registry`) are looked up by name.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from .gradients import Backward
from .loop import checked_map
from .observe import ObserverHandle, Observers, SolverStats
from .registry import (check_backward_kwargs, check_bool, check_damping, check_forward_kwargs,
                       get_gradient)
from .solvers import solve



def _in_state_dtype(fz: Tensor, z: Tensor) -> Tensor:
    """Under autocast ``f`` computes in low precision; the state (and the residuals and the
    convergence test computed from it) keeps its own dtype. Outside autocast a dtype change is
    an error of ``f``, reported by the solver's check."""
    if isinstance(fz, Tensor) and fz.dtype != z.dtype and torch.is_autocast_enabled(z.device.type):
        return fz.to(z.dtype)
    return fz


def _check_z_init(z_init: Tensor, state_size: int | None) -> None:
    """With a declared ``state_size`` D, ``z_init`` must be ``(D,)``, ``(1, D)`` or ``(B, D)``."""
    if state_size is None or (z_init.dim() in (1, 2) and z_init.shape[-1] == state_size):
        return
    raise ValueError(
        f"z_init of shape {tuple(z_init.shape)} does not fit f_module.state_size {state_size}; "
        f"expected ({state_size},), (1, {state_size}) or (B, {state_size})"
    )


def _check_input(x: Tensor, z_init: Tensor | None) -> None:
    if x.dim() < 2:
        raise ValueError(
            f"x needs a batch dimension, got shape {tuple(x.shape)}; for one sample pass "
            f"x[None], of shape {(1, *x.shape)}"
        )
    if z_init is not None and x.is_floating_point() and x.dtype != z_init.dtype:
        raise ValueError(
            f"z_init has dtype {z_init.dtype} but x has {x.dtype}; convert one of them "
            "(deq.to(x.dtype) converts z_init with the parameters)"
        )


class _NoBackward(torch.autograd.Function):
    """``z*`` unchanged, tied to the inputs that need a gradient, whose backward is an error:
    the value of a DEQ without ``backward_kwargs`` (a gradient through it would be wrong)."""

    @staticmethod
    def forward(ctx: Any, z_star: Tensor, *inputs: Tensor) -> Tensor:
        return z_star.view_as(z_star)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Any:
        raise ValueError(
            "a gradient reached a DEQ built without backward_kwargs, which has none; pass "
            "backward_kwargs=dict(method=..., solver=..., iter=...) to train through it")


class DEQ(nn.Module):
    """A Deep Equilibrium layer around ``f_module``.

    Args:
        f_module: ``nn.Module`` with ``preprocess_inputs(x) -> Ux`` (computed once per call) and
            ``forward(Ux, z) -> f(z)``; if ``z_init`` is ``None`` it must declare ``state_size``.
        z_init: initial state, ``(D,)`` or ``(1, D)`` broadcast to the batch, or ``(B, D)``;
            ``None`` means zeros of width ``f_module.state_size``.
        forward_kwargs: ``{solver, iter}`` plus ``tol``, ``trace``, ``compact`` (with ``tol``:
            converged samples leave the batch, :mod:`deq_core.compaction`) and the solver's
            options (``m``, ``lam``, ``fused`` for Anderson); any registered solver
            (:func:`deq_core.register_solver`).
        backward_kwargs: ``{solver, iter, method}``; ``method`` is a registered gradient method
            (:mod:`deq_core.gradients`): ``backprop`` (the default; Picard only) or
            ``full_adjoint`` (which also takes ``tol`` and solver options). ``None``: the layer
            has no gradient (for evaluation), and a backward pass through it is an error.
        damping_factor: ``d`` in ``[0, 1)``; every step is ``z <- d z + (1 - d) f(z)``,
            forward Euler with step ``1 - d``.
        train_forward_kwargs: the same as ``forward_kwargs``, used instead of it while the
            module is in training mode (e.g. a tolerance stop with compaction to train fast,
            and the fixed iteration count of ``forward_kwargs`` to evaluate); ``None``: always
            ``forward_kwargs``.
        compile_f: evaluate ``f_module.forward`` through ``torch.compile`` (opt-in; needs a C++
            compiler on CPU, Triton on GPU). It fuses the many small elementwise operations of
            one evaluation, which is what bounds small models; the first calls pay the
            compilation (a minute or more), and results agree with eager to float rounding.

    ``deq(x)`` returns the equilibrium state, differentiable w.r.t. ``x`` and the parameters of
    ``f_module``. Statistics of the latest solves are in ``last_forward_stats`` and
    ``last_backward_stats``; :meth:`observe` gives them (and the iterates) to callers.
    """

    def __init__(
        self,
        f_module: nn.Module,
        z_init: Tensor | None = None,
        *,
        forward_kwargs: Mapping[str, Any],
        backward_kwargs: Mapping[str, Any] | None = None,
        damping_factor: float = 0.0,
        train_forward_kwargs: Mapping[str, Any] | None = None,
        compile_f: bool = False,
    ):
        super().__init__()
        self.f_module = f_module
        self.forward_kwargs = check_forward_kwargs("forward_kwargs", forward_kwargs)
        self.train_forward_kwargs = None if train_forward_kwargs is None else \
            check_forward_kwargs("train_forward_kwargs", train_forward_kwargs)
        self._forward_override: dict[str, Any] | None = None  # set by forward_options()
        self.backward_kwargs = None if backward_kwargs is None else \
            check_backward_kwargs("backward_kwargs", backward_kwargs)
        self.damping_factor = check_damping(damping_factor)
        check_bool("compile_f", compile_f)
        self.compile_f = compile_f
        self._compiled_forward: Callable[..., Tensor] | None = None  # built at the first call
        if z_init is None and self._state_size() is None:
            raise ValueError("z_init=None needs f_module.state_size (an int) to build zeros")
        if z_init is not None:
            _check_z_init(z_init, self._state_size())
        self.register_buffer("z_init", None if z_init is None else z_init.detach().clone())
        self.last_forward_stats: SolverStats | None = None
        self.last_backward_stats: SolverStats | None = None
        self._observers = Observers()

    def _state_size(self) -> int | None:
        size = getattr(self.f_module, "state_size", None)
        return size if isinstance(size, int) and not isinstance(size, bool) else None

    # -- observation -------------------------------------------------------------------
    def observe(
        self,
        on_solve: Callable[[SolverStats], None] | None = None,
        on_iterate: Callable[[int, Tensor], None] | None = None,
    ) -> ObserverHandle:
        """Register an observer of the forward solves.

        ``on_solve(stats)`` is called after every forward solve with the per-iteration residual
        trace filled in; ``on_iterate(n, z_{n+1})`` with every new iterate (detached). Returns a
        handle: call ``remove()`` or use ``with deq.observe(...):``. Observers never change the
        result, and several can be active at once.
        """
        return self._observers.add(on_solve, on_iterate)

    @property
    def n_observers(self) -> int:
        """How many observers are registered (removed ones no longer count)."""
        return len(self._observers)

    # -- the map -------------------------------------------------------------------------
    def _f(self, Ux: Tensor, z: Tensor, eager: bool = False) -> Tensor:
        if not self.compile_f or eager:
            return self.f_module(Ux, z)
        if self._compiled_forward is None:
            # Compaction hands f a smaller batch at many iterations: one graph for every batch
            # size (dynamic) instead of a recompilation per size, which would soon hit
            # torch._dynamo's recompile limit and fall back to eager.
            compacts = any(kw is not None and kw.get("compact") for kw in (
                self.forward_kwargs, self.train_forward_kwargs, self._forward_override))
            self._compiled_forward = torch.compile(self.f_module.forward,
                                                   dynamic=True if compacts else None)
        return self._compiled_forward(Ux, z)

    def step_map(self, Ux: Tensor, eager: bool = False) -> Callable[[Tensor], Tensor]:
        """The map the solvers iterate for a batch whose preprocessed input is ``Ux``:
        ``z -> d z + (1 - d) f(Ux, z)`` (``d`` the damping factor), in the state's dtype, with
        the shape check of :func:`checked_map`. The forward solve runs it without a graph.
        ``eager`` evaluates ``f`` without ``torch.compile`` even when ``compile_f`` is set."""
        # Checked before damping, where a wrong width would broadcast or fail inside torch.
        f, d = checked_map("DEQ", lambda z: _in_state_dtype(self._f(Ux, z, eager), z)), \
            self.damping_factor
        if d == 0.0:
            return f
        return lambda z: d * z + (1.0 - d) * f(z)

    def initial_state(self, Ux: Tensor) -> Tensor:
        """The starting state for a batch whose preprocessed input is ``Ux``.

        It has ``Ux``'s dtype, but at least float32 under autocast: low precision is for the
        products inside ``f``, not for the state, its residuals and the convergence test.
        """
        batch = Ux.shape[0]
        dtype = Ux.dtype
        if torch.is_autocast_enabled(Ux.device.type) and Ux.is_floating_point():
            dtype = torch.promote_types(dtype, torch.float32)
        if self.z_init is None:
            return Ux.new_zeros(batch, self.f_module.state_size, dtype=dtype)
        _check_z_init(self.z_init, self._state_size())  # the buffer may have been reassigned
        z0 = self.z_init.to(dtype=dtype)
        if z0.dim() == 1 or z0.shape[0] == 1:
            return z0.reshape(1, -1).expand(batch, -1)
        if z0.shape[0] != batch:
            raise ValueError(f"z_init has batch {z0.shape[0]} but the input has batch {batch}")
        return z0

    def _report_backward(self, stats: SolverStats) -> None:
        self.last_backward_stats = stats

    # -- forward -------------------------------------------------------------------------
    def _drive(self, x: Tensor) -> Tensor:
        """``Ux = f_module.preprocess_inputs(x)``, one row per sample: the state is
        ``(batch, width)``, and a drive with more dimensions would fail, or worse broadcast,
        somewhere inside ``f``; the error says which ``x`` the DEQ expects instead."""
        def wrong_shape(what: str) -> ValueError:
            batch = x.shape[0]
            return ValueError(
                f"x of shape {tuple(x.shape)}: {what}; the DEQ's state is (batch, "
                f"{self._state_size() or 'width'}), so it takes x of shape (batch, features), "
                f"e.g. x.reshape({batch}, -1), unless f_module.preprocess_inputs flattens x "
                "itself")
        try:
            Ux = self.f_module.preprocess_inputs(x)
        except RuntimeError as err:
            if x.dim() == 2:
                raise  # a width f_module does not take: its own message says so
            raise wrong_shape(f"f_module.preprocess_inputs fails on it ({err})") from err
        if Ux.dim() != 2 or Ux.shape[0] != x.shape[0]:
            raise wrong_shape(f"f_module.preprocess_inputs makes a drive of shape "
                              f"{tuple(Ux.shape)}, not (batch, features)")
        return Ux

    def forward(self, x: Tensor) -> Tensor:
        _check_input(x, self.z_init)
        Ux = self._drive(x)
        with torch.no_grad():
            drive = Ux.detach()
            z_star, stats = solve(
                self.step_map(drive), self.initial_state(Ux), self.active_forward_kwargs,
                on_iterate=self._observers.on_iterate(), trace=bool(self._observers),
                restrict=lambda idx: self.step_map(drive[idx]),
            )
        self.last_forward_stats = stats
        self._observers.solved(stats)
        z_star = z_star.detach()
        if not (torch.is_grad_enabled() and (Ux.requires_grad or self._has_trainable_params())):
            return z_star
        return self._attach_gradient(Ux, z_star)

    def _attach_gradient(self, Ux: Tensor, z_star: Tensor) -> Tensor:
        if self.backward_kwargs is None:  # the value, with a backward that says what is missing
            return _NoBackward.apply(z_star, Ux, *self.f_module.parameters())
        spec = get_gradient(self.backward_kwargs["method"])
        return spec.fn(Backward(Ux, z_star, self.backward_kwargs, self.step_map,
                                self._report_backward))

    @property
    def active_forward_kwargs(self) -> dict[str, Any]:
        """The forward options in use now: those of :meth:`forward_options` inside its block,
        else ``train_forward_kwargs`` while training, else ``forward_kwargs``."""
        if self._forward_override is not None:
            return self._forward_override
        if self.training and self.train_forward_kwargs is not None:
            return self.train_forward_kwargs
        return self.forward_kwargs

    @contextmanager
    def forward_options(self, forward_kwargs: Mapping[str, Any] | None) -> Iterator[None]:
        """Inside the block, every forward solve uses ``forward_kwargs`` (checked like
        ``forward_kwargs``), in training and in eval mode; ``None`` changes nothing. For
        example, a tolerance-stopped validation pass of a module whose test keeps a fixed
        iteration count. Blocks nest; the previous options come back on leaving, also on an
        exception."""
        if forward_kwargs is None:
            yield
            return
        checked = check_forward_kwargs("forward_options", forward_kwargs)
        saved, self._forward_override = self._forward_override, checked
        try:
            yield
        finally:
            self._forward_override = saved

    def _has_trainable_params(self) -> bool:
        return any(p.requires_grad for p in self.f_module.parameters())

    def extra_repr(self) -> str:
        train = "" if self.train_forward_kwargs is None else \
            f"train_forward_kwargs={self.train_forward_kwargs}, "
        compiled = ", compile_f=True" if self.compile_f else ""
        return (f"forward_kwargs={self.forward_kwargs}, {train}backward_kwargs={self.backward_kwargs}, "
                f"damping_factor={self.damping_factor}{compiled}")
