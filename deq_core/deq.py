"""The DEQ layer: solve ``z* = f(x, z*)`` without a graph, then attach gradients.

The value of ``deq(x)`` is always the forward solve's ``z*``, in training too, so that the
loss and the prediction are taken where the solver stopped (as the papers do), whichever
gradient is attached. Gradients, selected by ``backward_kwargs["method"]``:

- ``backprop`` (recurrent backpropagation): from the detached fixed point, ``iter`` more
  differentiable (damped) Picard steps; the incoming gradient ``dL/dz*`` is back-propagated
  through those steps only (their end state is not the value: a sample that has not
  converged would otherwise be scored ``iter`` steps further on).
- ``full_adjoint`` (implicit function theorem): one differentiable step ``f(z*)`` whose
  incoming gradient ``v`` is replaced by the solution of the adjoint fixed point
  ``g = J^T g + v`` (``J = df/dz`` at ``z*``), solved with vector-Jacobian products.

With ``solver="picard"``, ``iter=T`` and no ``tol``, ``full_adjoint`` sums the first ``T`` terms
of the Neumann series ``sum_i (J^T)^i v``: at a fixed point, exactly the gradient ``backprop``
gets from ``T`` unrolled steps (each of its steps multiplies by ``J^T`` at an iterate, here at
``z*``), for one state-only vector-Jacobian product per step instead of a differentiable step
and its backward through the parameters.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .solvers import (COMMON_OPTIONS, SolverStats, check_positive_int, check_tol, checked_map,
                      get_solver, relative_residual)

BACKWARD_METHODS = ("backprop", "full_adjoint")
# ``adjoint_precision``: the full adjoint's vector-Jacobian products in float32 (None), in
# bfloat16 ("bf16"), or in bfloat16 where the device multiplies bfloat16 matrices natively
# ("auto": CPUs with AMX or AVX512-BF16, CUDA GPUs with bfloat16 tensor cores).
ADJOINT_PRECISIONS = (None, "bf16", "auto")


@dataclass
class _Observer:
    on_solve: Callable[[SolverStats], None] | None
    on_iterate: Callable[[int, Tensor], None] | None


class ObserverHandle:
    """Returned by :meth:`DEQ.observe`; ``remove()`` it, or use it as a context manager."""

    def __init__(self, observers: list[_Observer], observer: _Observer):
        self._observers, self._observer = observers, observer

    def remove(self) -> None:
        if self._observer in self._observers:
            self._observers.remove(self._observer)

    def __enter__(self) -> ObserverHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def fast_bf16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bfloat16 matrices natively (faster than float32): a CPU
    with AMX or AVX512-BF16 (elsewhere torch emulates them, several times slower), a CUDA GPU
    of compute capability 8.0 or more."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.get_device_capability(device)[0] >= 8
    if device.type == "cpu":
        checks = (getattr(torch.cpu, name, None) for name in
                  ("_is_amx_tile_supported", "_is_avx512_bf16_supported"))
        return any(check is not None and check() for check in checks)
    return False


def _check_kwargs(kind: str, kwargs: Mapping[str, Any], extra: frozenset[str]) -> dict[str, Any]:
    kwargs = dict(kwargs)
    if "solver" not in kwargs or "iter" not in kwargs:
        raise ValueError(f"{kind} needs 'solver' and 'iter'; got keys {sorted(kwargs)}")
    spec = get_solver(kwargs["solver"])
    # ``restrict`` is the DEQ's to give (``compact=True`` asks for it)
    allowed = ({"solver", "iter"} | COMMON_OPTIONS | set(spec.options) | extra) - {"restrict"}
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise ValueError(
            f"unknown {kind} option(s) {unknown} for solver {kwargs['solver']!r}; "
            f"valid options: {sorted(allowed)}"
        )
    check_positive_int(f"{kind}['iter']", kwargs["iter"])
    check_tol(f"{kind}['tol']", kwargs.get("tol"))
    for name, check in spec.options.items():
        if name in kwargs:
            check(f"{kind}[{name!r}]", kwargs[name])
    return kwargs


def _in_state_dtype(fz: Tensor, z: Tensor) -> Tensor:
    """Under autocast ``f`` computes in low precision; the state (and the residuals and the
    convergence test computed from it) keeps its own dtype. Outside autocast a dtype change is
    an error of ``f``, reported by the solver's check."""
    if isinstance(fz, Tensor) and fz.dtype != z.dtype and torch.is_autocast_enabled(z.device.type):
        return fz.to(z.dtype)
    return fz


def check_forward_kwargs(kind: str, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """``kwargs`` as a DEQ's forward options (``forward_kwargs`` and the like), checked; ``kind``
    names them in the error."""
    kwargs = _check_kwargs(kind, kwargs, frozenset({"compact"}))
    compact = kwargs.get("compact", False)
    if not isinstance(compact, bool) or (compact and kwargs.get("tol") is None):
        raise ValueError(f"{kind}['compact'] must be True or False, and True needs a 'tol' "
                         f"(samples leave the batch once below it); got {compact!r} with "
                         f"tol={kwargs.get('tol')!r}")
    return kwargs


def _check_z_init(z_init: Tensor, state_size: int | None) -> None:
    """With a declared ``state_size`` D, ``z_init`` must be ``(D,)``, ``(1, D)`` or ``(B, D)``."""
    if state_size is None or (z_init.dim() in (1, 2) and z_init.shape[-1] == state_size):
        return
    raise ValueError(
        f"z_init of shape {tuple(z_init.shape)} does not fit f_module.state_size {state_size}; "
        f"expected ({state_size},), (1, {state_size}) or (B, {state_size})"
    )


def _valued_at(value: Tensor, graph: Tensor) -> Tensor:
    """``value``'s numbers with ``graph``'s gradient: the incoming gradient (taken at
    ``value``) flows into ``graph`` unchanged."""
    return value + (graph - graph.detach())


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


class DEQ(nn.Module):
    """A Deep Equilibrium layer around ``f_module``.

    Args:
        f_module: ``nn.Module`` with ``preprocess_inputs(x) -> Ux`` (computed once per call) and
            ``forward(Ux, z) -> f(z)``; if ``z_init`` is ``None`` it must declare ``state_size``.
        z_init: initial state, ``(D,)`` or ``(1, D)`` broadcast to the batch, or ``(B, D)``;
            ``None`` means zeros of width ``f_module.state_size``.
        forward_kwargs: ``{solver, iter}`` plus ``tol``, ``trace``, ``compact`` (with ``tol``:
            converged samples leave the batch, :mod:`deq_core.compaction`) and solver options
            (``m``, ``lam`` for Anderson).
        train_forward_kwargs: the same, used instead of ``forward_kwargs`` while the module is
            in training mode (e.g. a tolerance stop with compaction to train fast, and the
            fixed iteration count of ``forward_kwargs`` to evaluate); ``None``: always
            ``forward_kwargs``.
        backward_kwargs: ``{solver, iter, method}``; ``method`` is ``backprop`` (Picard only)
            or ``full_adjoint`` (which also accepts ``tol`` and solver options).
        damping_factor: ``d`` in ``[0, 1)``; every step is ``z <- d z + (1 - d) f(z)``,
            forward Euler with step ``1 - d``.
        compile_f: evaluate ``f_module.forward`` through ``torch.compile`` (opt-in; needs a C++
            compiler on CPU, Triton on GPU). It fuses the many small elementwise operations of
            one evaluation, which is what bounds small models; the first calls pay the
            compilation (a minute or more), and results agree with eager to float rounding.
        fused_anderson: run the bookkeeping of every Anderson solve whose state is float32 on
            the CPU as one C++ kernel (``anderson(..., fused=True)``, :mod:`deq_core.fused`;
            opt-in, built at first use with a C++ compiler and ninja); other solves, and
            states on other devices or dtypes, stay eager. Results agree to float rounding.
        adjoint_precision: the precision of the ``full_adjoint`` method's vector-Jacobian
            products: ``None`` (the state's dtype), ``"bf16"`` (their graph built under
            bfloat16 autocast), or ``"auto"`` (bfloat16 where :func:`fast_bf16` says the
            device has native bfloat16 products, else the state's). The adjoint's iterate,
            its residuals, the forward value and the final products into the parameters'
            gradients keep the state's dtype; the gradient changes by bfloat16 rounding (about
            0.5% relative on the Hopfield rows). ``backprop`` has no adjoint and refuses it.

    ``deq(x)`` returns the equilibrium state, differentiable w.r.t. ``x`` and the parameters of
    ``f_module``. Statistics of the latest solves are in ``last_forward_stats`` and
    ``last_backward_stats``; :meth:`observe` gives them (and the iterates) to callers.
    """

    def __init__(
        self,
        f_module: nn.Module,
        z_init: Tensor | None = None,
        forward_kwargs: Mapping[str, Any] | None = None,
        backward_kwargs: Mapping[str, Any] | None = None,
        damping_factor: float = 0.0,
        train_forward_kwargs: Mapping[str, Any] | None = None,
        compile_f: bool = False,
        fused_anderson: bool = False,
        adjoint_precision: str | None = None,
    ):
        super().__init__()
        self.f_module = f_module
        self.forward_kwargs = check_forward_kwargs(
            "forward_kwargs", forward_kwargs or dict(solver="anderson", iter=40))
        self.train_forward_kwargs = None if train_forward_kwargs is None else \
            check_forward_kwargs("train_forward_kwargs", train_forward_kwargs)
        self._forward_override: dict[str, Any] | None = None  # set by forward_options()
        bkw = dict(backward_kwargs or dict(solver="picard", iter=8, method="backprop"))
        method = bkw.setdefault("method", "backprop")
        if method not in BACKWARD_METHODS:
            raise ValueError(f"unknown backward method {method!r}; valid: {list(BACKWARD_METHODS)}")
        self.backward_kwargs = _check_kwargs("backward_kwargs", bkw, frozenset({"method"}))
        if method == "backprop":
            extra = sorted(set(bkw) - {"solver", "iter", "method"})
            if bkw["solver"] != "picard" or extra:
                raise ValueError(
                    "backward method 'backprop' unrolls plain Picard steps: it takes only "
                    f"solver='picard', iter and method; got solver={bkw['solver']!r}, extra {extra}"
                )
        if isinstance(damping_factor, bool) or not 0.0 <= damping_factor < 1.0:
            raise ValueError(f"damping_factor must be in [0, 1), got {damping_factor!r}")
        self.damping_factor = float(damping_factor)
        if not isinstance(compile_f, bool):
            raise ValueError(f"compile_f must be True or False, got {compile_f!r}")
        self.compile_f = compile_f
        if not isinstance(fused_anderson, bool):
            raise ValueError(f"fused_anderson must be True or False, got {fused_anderson!r}")
        self.fused_anderson = fused_anderson
        if adjoint_precision not in ADJOINT_PRECISIONS:
            raise ValueError(f"unknown adjoint_precision {adjoint_precision!r}; valid: "
                             f"{list(ADJOINT_PRECISIONS)}")
        if adjoint_precision is not None and method != "full_adjoint":
            raise ValueError(f"adjoint_precision={adjoint_precision!r} sets the precision of "
                             "the full adjoint's products; backward method "
                             f"{method!r} has none (use method='full_adjoint' or leave it None)")
        self.adjoint_precision = adjoint_precision
        self._compiled_forward: Callable[..., Tensor] | None = None  # built at the first call
        if z_init is None and self._state_size() is None:
            raise ValueError("z_init=None needs f_module.state_size (an int) to build zeros")
        if z_init is not None:
            _check_z_init(z_init, self._state_size())
        self.register_buffer("z_init", None if z_init is None else z_init.detach().clone())
        self.last_forward_stats: SolverStats | None = None
        self.last_backward_stats: SolverStats | None = None
        self._observers: list[_Observer] = []

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
        observer = _Observer(on_solve, on_iterate)
        self._observers.append(observer)
        return ObserverHandle(self._observers, observer)

    @property
    def n_observers(self) -> int:
        """How many observers are registered (removed ones no longer count)."""
        return len(self._observers)

    def _on_iterate(self) -> Callable[[int, Tensor], None] | None:
        hooks = [o.on_iterate for o in self._observers if o.on_iterate is not None]
        if not hooks:
            return None

        def call_all(n: int, z: Tensor) -> None:
            for hook in hooks:
                hook(n, z)

        return call_all

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

    def _solve(self, step: Callable[[Tensor], Tensor], z0: Tensor, kwargs: Mapping[str, Any],
               on_iterate: Callable[[int, Tensor], None] | None = None,
               trace: bool = False, Ux: Tensor | None = None) -> tuple[Tensor, SolverStats]:
        options = {k: v for k, v in kwargs.items()
                   if k not in ("solver", "iter", "method", "compact")}
        if kwargs.get("compact") and Ux is not None:
            options["restrict"] = lambda idx: self.step_map(Ux[idx])
        options["trace"] = bool(options.get("trace", False)) or trace
        if self.fused_anderson and kwargs["solver"] == "anderson" and "fused" not in options \
                and z0.device.type == "cpu" and z0.dtype == torch.float32:
            options["fused"] = True
        spec = get_solver(kwargs["solver"])
        return spec.fn(step, z0, max_iter=kwargs["iter"], on_iterate=on_iterate, **options)

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
            step = self.step_map(Ux.detach())
            z_star, stats = self._solve(
                step, self.initial_state(Ux), self.active_forward_kwargs,
                on_iterate=self._on_iterate(), trace=bool(self._observers), Ux=Ux.detach(),
            )
        self.last_forward_stats = stats
        for observer in list(self._observers):
            if observer.on_solve is not None:
                observer.on_solve(stats)
        z_star = z_star.detach()
        if not (torch.is_grad_enabled() and (Ux.requires_grad or self._has_trainable_params())):
            return z_star
        if self.backward_kwargs["method"] == "backprop":
            return self._backprop(Ux, z_star)
        return self._full_adjoint(Ux, z_star)

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

    def adjoint_dtype(self, device: torch.device) -> torch.dtype | None:
        """The dtype of the full adjoint's products on ``device`` (``None``: the state's)."""
        if self.adjoint_precision == "bf16" or (
                self.adjoint_precision == "auto" and fast_bf16(device)):
            return torch.bfloat16
        return None

    def _backprop(self, Ux: Tensor, z_star: Tensor) -> Tensor:
        if self.adjoint_precision is not None:  # backward_kwargs were changed after __init__
            raise ValueError(f"adjoint_precision={self.adjoint_precision!r} needs backward "
                             "method 'full_adjoint'; this DEQ's is 'backprop'")
        step = self.step_map(Ux)
        z = z_star
        for _ in range(self.backward_kwargs["iter"]):
            z_prev, z = z, step(z)
        stats = SolverStats("picard", self.backward_kwargs["iter"],
                            relative_residual(z.detach(), z_prev.detach()))
        self.last_backward_stats = stats
        return _valued_at(z_star, z)

    def _full_adjoint(self, Ux: Tensor, z_star: Tensor) -> Tensor:
        z = self.step_map(Ux)(z_star)  # carries the gradient to Ux and the parameters
        z_leaf = z_star.clone().requires_grad_(True)
        low = self.adjoint_dtype(z_star.device)
        autocast = nullcontext() if low is None else torch.autocast(z_star.device.type, dtype=low)
        with torch.enable_grad(), autocast:
            # Its graph gives J^T g by autograd, once per adjoint iteration (retain_graph): built
            # eagerly, since a compiled graph may donate its buffers to a single backward. Built
            # under autocast, its products (and their vector-Jacobian products) are in ``low``.
            fz_leaf = self.step_map(Ux.detach(), eager=True)(z_leaf)

        def adjoint(v: Tensor | None) -> Tensor | None:
            if v is None:  # an undefined incoming gradient stays undefined
                return None

            def vjp_step(g: Tensor) -> Tensor:
                (jtg,) = torch.autograd.grad(fz_leaf, z_leaf, g, retain_graph=True)
                return jtg + v

            with torch.no_grad():
                g, stats = self._solve(vjp_step, torch.zeros_like(v), self.backward_kwargs)
            self.last_backward_stats = stats
            return g

        if z.requires_grad:
            z.register_hook(adjoint)
        return _valued_at(z_star, z)

    def extra_repr(self) -> str:
        train = "" if self.train_forward_kwargs is None else \
            f"train_forward_kwargs={self.train_forward_kwargs}, "
        compiled = (", compile_f=True" if self.compile_f else "") + \
            (", fused_anderson=True" if self.fused_anderson else "") + \
            (f", adjoint_precision={self.adjoint_precision!r}" if self.adjoint_precision else "")
        return (f"forward_kwargs={self.forward_kwargs}, {train}backward_kwargs={self.backward_kwargs}, "
                f"damping_factor={self.damping_factor}{compiled}")
