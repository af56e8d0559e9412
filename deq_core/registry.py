"""The names a DEQ can be asked for, and the one check of every option.

Two open registries: solvers (:func:`register_solver`; :mod:`deq_core.solvers` registers
``picard`` and ``anderson``) and gradient methods (:func:`register_gradient`;
:mod:`deq_core.gradients` registers ``backprop`` and ``full_adjoint``). Each entry declares its
options with a check, and every option is checked here, once: a solver call's arguments before
the first evaluation, a DEQ's ``forward_kwargs`` and ``backward_kwargs`` when they are given.
An error names the bad value and the valid choices.
"""
from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from .loop import SolverFn, Step, stepped_solver

OptionCheck = Callable[[str, Any], None]  # (label, value); raises ValueError naming both


# -- checks of single values ------------------------------------------------------------------
def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_positive_int(label: str, value: Any) -> None:
    """``max_iter``, ``iter``, ``m``: an integer >= 1 (``True`` and ``2.0`` are refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{label} must be an integer >= 1, got {value!r}")


def check_tol(label: str, value: Any) -> None:
    """``tol``: ``None`` (run ``max_iter`` iterations) or a positive finite number."""
    if value is None:
        return
    if not _is_real(value) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"{label} must be a positive finite number or None, got {value!r}")


def check_nonnegative(label: str, value: Any) -> None:
    """``lam``: a non-negative finite number."""
    if not _is_real(value) or not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{label} must be a non-negative finite number, got {value!r}")


def check_bool(label: str, value: Any) -> None:
    """A switch: ``True`` or ``False`` (not 0/1)."""
    if not isinstance(value, bool):
        raise ValueError(f"{label} must be True or False, got {value!r}")


def check_restrict(label: str, value: Any) -> None:
    """``restrict``: ``None`` or a callable (active indices -> the map on those samples)."""
    if value is not None and not callable(value):
        raise ValueError(f"{label} must be a callable or None, got {value!r}")


def check_choice(*choices: Any) -> OptionCheck:
    """A check that ``value`` is one of ``choices`` (compared by type and value, so that
    ``1`` is not ``True``)."""
    def check(label: str, value: Any) -> None:
        if not any(type(value) is type(c) and value == c for c in choices):
            raise ValueError(f"{label} must be one of {list(choices)}, got {value!r}")

    return check


# -- solvers --------------------------------------------------------------------------------
SOLVE_ARGUMENTS = frozenset({"tol", "trace"})  # every solver's, beside f, z0, max_iter, on_iterate


@dataclass(frozen=True)
class SolverSpec:
    """A registered solver and the keyword options it takes beside the common ones."""

    fn: SolverFn
    options: Mapping[str, OptionCheck] = field(default_factory=dict)  # keyword -> its check


SOLVERS: dict[str, SolverSpec] = {}


def _check_call(name: str, options: Mapping[str, OptionCheck], z0: Any, max_iter: Any, tol: Any,
                given: Mapping[str, Any]) -> None:
    if not isinstance(z0, Tensor) or z0.dim() < 1:
        shape = tuple(z0.shape) if isinstance(z0, Tensor) else type(z0).__name__
        raise ValueError(f"{name}: z0 must have a batch dimension (B, ...), got shape {shape}")
    check_positive_int(f"{name}: max_iter", max_iter)
    check_tol(f"{name}: tol", tol)
    unknown = sorted(set(given) - set(options))
    if unknown:
        raise ValueError(f"{name}: unknown option(s) {unknown}; valid options: {sorted(options)}")
    for key, check in options.items():
        if key in given:
            check(f"{name}: {key}", given[key])


def register_solver(name: str, solver: SolverFn | type[Step] | None = None, *,
                    options: Mapping[str, OptionCheck] | None = None,
                    replace: bool = False) -> Any:
    """Make ``solver`` available as ``solver=name`` in a DEQ's options; returns the registered
    function (also usable as a decorator: ``@register_solver("name", options=...)``).

    ``solver`` is either a function ``solver(f, z0, *, max_iter, tol=None, trace=False,
    on_iterate=None, **options) -> (z, SolverStats)`` or a :class:`deq_core.Step` subclass,
    which the shared loop (:func:`deq_core.loop.iterate`) drives: tolerance stop, traces,
    observers and compaction (``restrict``) come with it. ``options`` maps each keyword option
    the solver takes to its check (``check(label, value)`` raising ``ValueError``); nothing else
    is accepted. The registered function checks its arguments before the first evaluation of
    ``f``. ``replace=True`` replaces an entry of the same name (else refused).
    """
    if solver is None:
        return lambda fn: register_solver(name, fn, options=options, replace=replace)
    if not isinstance(name, str) or not name:
        raise ValueError(f"a solver's name must be a non-empty string, got {name!r}")
    if name in SOLVERS and not replace:
        raise ValueError(f"solver {name!r} is registered already; pass replace=True to replace "
                         f"it (registered: {sorted(SOLVERS)})")
    checks = dict(options or {})
    if isinstance(solver, type):
        if not issubclass(solver, Step):
            raise TypeError(f"register_solver({name!r}, ...) takes a function or a subclass of "
                            f"deq_core.Step, got the class {solver.__name__}")
        checks.setdefault("restrict", check_restrict)  # the loop compacts
        fn = stepped_solver(name, solver)
    elif callable(solver):
        fn = solver
    else:
        raise TypeError(f"register_solver({name!r}, ...) takes a function or a subclass of "
                        f"deq_core.Step, got {solver!r}")
    for key, check in checks.items():
        if key in SOLVE_ARGUMENTS:
            raise ValueError(f"solver {name!r}: {key!r} is an argument of every solver already "
                             f"({sorted(SOLVE_ARGUMENTS)}); declare only the solver's own options")
        if not callable(check):
            raise ValueError(f"solver {name!r}: option {key!r} needs a check(label, value), "
                             f"got {check!r}")

    @functools.wraps(fn)
    def checked(f: Callable[[Tensor], Tensor], z0: Tensor, *, max_iter: int,
                tol: float | None = None, trace: bool = False,
                on_iterate: Callable[[int, Tensor], None] | None = None,
                **given: Any) -> tuple[Tensor, Any]:
        _check_call(name, checks, z0, max_iter, tol, given)
        return fn(f, z0, max_iter=max_iter, tol=tol, trace=trace, on_iterate=on_iterate, **given)

    SOLVERS[name] = SolverSpec(checked, checks)
    return checked


def unregister_solver(name: str) -> None:
    """Remove a registered solver (a test's, say); an unknown name is an error."""
    get_solver(name)
    del SOLVERS[name]


def get_solver(name: str) -> SolverSpec:
    """Look a solver up by name; an unknown name is a ``ValueError`` listing the valid ones."""
    try:
        return SOLVERS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown solver {name!r}; valid solvers: {sorted(SOLVERS)}") from None


# -- gradient methods -----------------------------------------------------------------------
@dataclass(frozen=True)
class GradientSpec:
    """A registered gradient method.

    Attributes:
        fn: ``fn(backward) -> z`` (:class:`deq_core.gradients.Backward`): the forward value
            ``z*`` with the method's gradient attached.
        unrolls: the one solver whose steps the method unrolls itself (then it takes only
            ``solver``, ``iter`` and ``method``); ``None``: it runs any registered solver with
            its options and ``tol``.
    """

    fn: Callable[..., Tensor]
    unrolls: str | None = None


GRADIENTS: dict[str, GradientSpec] = {}
DEFAULT_METHOD = "backprop"  # backward_kwargs without a "method"


def register_gradient(name: str, fn: Callable[..., Tensor] | None = None, *,
                      unrolls: str | None = None, replace: bool = False) -> Any:
    """Make the gradient method ``fn`` available as ``method=name`` in ``backward_kwargs``;
    returns ``fn`` (also usable as a decorator). See :class:`GradientSpec`."""
    if fn is None:
        return lambda f: register_gradient(name, f, unrolls=unrolls, replace=replace)
    if not isinstance(name, str) or not name or not callable(fn):
        raise ValueError(f"register_gradient takes a non-empty name and a function, got "
                         f"{name!r} and {fn!r}")
    if name in GRADIENTS and not replace:
        raise ValueError(f"backward method {name!r} is registered already; pass replace=True")
    GRADIENTS[name] = GradientSpec(fn, unrolls)
    return fn


def unregister_gradient(name: str) -> None:
    """Remove a registered gradient method; an unknown name is an error."""
    get_gradient(name)
    del GRADIENTS[name]


def get_gradient(name: str) -> GradientSpec:
    """Look a gradient method up by name; an unknown name is a ``ValueError`` listing the
    valid ones."""
    try:
        return GRADIENTS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown backward method {name!r}; valid: {sorted(GRADIENTS)}") from None


# -- a DEQ's options ------------------------------------------------------------------------
def _check_solve_kwargs(kind: str, kwargs: Mapping[str, Any],
                        extra: frozenset[str]) -> dict[str, Any]:
    if not isinstance(kwargs, Mapping):
        raise ValueError(f"{kind} must be a dict of solver options, got {kwargs!r}")
    kwargs = dict(kwargs)
    if "solver" not in kwargs or "iter" not in kwargs:
        raise ValueError(f"{kind} needs 'solver' and 'iter'; got keys {sorted(kwargs)}")
    spec = get_solver(kwargs["solver"])
    # ``restrict`` is the DEQ's to give (``compact=True`` asks for it)
    allowed = ({"solver", "iter"} | SOLVE_ARGUMENTS | set(spec.options) | extra) - {"restrict"}
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


def check_forward_kwargs(kind: str, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """``kwargs`` as a DEQ's forward options (``{solver, iter}`` plus ``tol``, ``trace``,
    ``compact`` and the solver's options), checked; ``kind`` names them in the error."""
    kwargs = _check_solve_kwargs(kind, kwargs, frozenset({"compact"}))
    compact = kwargs.get("compact", False)
    if not isinstance(compact, bool) or (compact and kwargs.get("tol") is None):
        raise ValueError(f"{kind}['compact'] must be True or False, and True needs a 'tol' "
                         f"(samples leave the batch once below it); got {compact!r} with "
                         f"tol={kwargs.get('tol')!r}")
    if compact and "restrict" not in get_solver(kwargs["solver"]).options:
        raise ValueError(f"{kind}['compact']=True needs a solver that takes 'restrict'; solver "
                         f"{kwargs['solver']!r} does not")
    return kwargs


def check_backward_kwargs(kind: str, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """``kwargs`` as a DEQ's backward options (``{solver, iter}``, ``method`` (default
    ``"backprop"``), and for a method that runs a solver, ``tol`` and the solver's options),
    checked; ``kind`` names them in the error."""
    if not isinstance(kwargs, Mapping):
        raise ValueError(f"{kind} must be a dict of backward options, got {kwargs!r}")
    kwargs = dict(kwargs)
    method = kwargs.setdefault("method", DEFAULT_METHOD)
    spec = get_gradient(method)
    kwargs = _check_solve_kwargs(kind, kwargs, frozenset({"method"}))
    if spec.unrolls is not None:
        extra = sorted(set(kwargs) - {"solver", "iter", "method"})
        if kwargs["solver"] != spec.unrolls or extra:
            raise ValueError(
                f"backward method {method!r} unrolls plain {spec.unrolls} steps: it takes only "
                f"solver={spec.unrolls!r}, iter and method; got solver={kwargs['solver']!r}, "
                f"extra {extra}"
            )
    return kwargs


def check_damping(value: Any) -> float:
    """``damping_factor``: a number in ``[0, 1)``."""
    if not _is_real(value) or not 0.0 <= value < 1.0:
        raise ValueError(f"damping_factor must be in [0, 1), got {value!r}")
    return float(value)
