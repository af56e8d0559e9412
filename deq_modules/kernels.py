"""The C++ kernels of deq_modules (``csrc/kernels.cpp``): Madam's step and the CHN layer's
local equilibrium, each one pass over a CPU float32 tensor instead of many tensor operations.

They are compiled with ``torch.utils.cpp_extension`` at their first use on a machine (a C++
compiler and ninja; about a minute, then cached by torch). Each caller takes a ``fused``
option: ``"auto"`` (the default) uses the kernels where the tensors fit (:func:`fits`) and the
tensor operations elsewhere, or everywhere, with one warning, when they cannot be built;
``True`` insists on them; ``False`` never uses them.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from types import ModuleType

import torch

SOURCE = Path(__file__).with_name("csrc") / "kernels.cpp"
FUSED_CHOICES = (False, True, "auto")
# no trapping or errno semantics: lets the compiler vectorise the clamps and the square root
# (the same values; about 12x faster than the scalar loop)
_FLAGS = ("-fno-trapping-math", "-fno-math-errno")
_module: ModuleType | None = None
_failure: str | None = None  # why the kernels could not be built
_warned = False


def check_fused(fused: object, where: str) -> None:
    """A ``ValueError`` naming ``fused`` unless it is one of :data:`FUSED_CHOICES`."""
    if not any(fused is c or (isinstance(c, str) and fused == c) for c in FUSED_CHOICES):
        raise ValueError(f"{where}: invalid fused={fused!r}; valid: {FUSED_CHOICES}")


def load() -> ModuleType:
    """The compiled kernels, built at the first call; ``deq_core.fused.FusedUnavailable`` when
    they cannot be built (then at once on later calls)."""
    global _module, _failure
    from deq_core.fused import FusedUnavailable, build
    if _module is None:
        if _failure is not None:
            raise FusedUnavailable(_failure)
        try:
            _module = build("deq_modules_kernels", SOURCE, "deq_modules' kernels", _FLAGS)
        except FusedUnavailable as error:
            _failure = str(error)
            raise
    return _module


def fits(*tensors: torch.Tensor) -> bool:
    """Whether the kernels run on these tensors: contiguous float32 on the CPU."""
    return all(t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous()
               for t in tensors)


def get(fused: bool | str, *tensors: torch.Tensor, where: str) -> ModuleType | None:
    """The kernels where ``fused`` and ``tensors`` call for them, else ``None`` (the caller
    then runs its tensor operations): see the module's docstring. ``where`` names the caller
    in errors and in the warning."""
    global _warned
    if fused is False:
        return None
    if fused is True:
        if not fits(*tensors):
            t = tensors[0]
            raise ValueError(f"{where}: fused=True runs on contiguous float32 CPU tensors, got "
                             f"{t.dtype} on {t.device}; use fused='auto' or False there")
        return load()
    if not fits(*tensors):
        return None
    from deq_core.fused import FusedUnavailable
    try:
        return load()
    except FusedUnavailable as error:
        if not _warned:
            _warned = True
            warnings.warn(f"{error}; {where} runs its tensor operations instead", stacklevel=3)
        return None


class _Settle(torch.autograd.Function):
    """``chn_settle`` with its backward (the kernel recomputes the inner steps)."""

    @staticmethod
    def forward(ctx, s: torch.Tensor, drive: torch.Tensor, n: int, d: float) -> torch.Tensor:
        ctx.save_for_backward(s, drive)
        ctx.n, ctx.d = n, d
        return load().chn_settle(s, drive, n, d)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        s, drive = ctx.saved_tensors
        grad_s, grad_drive = load().chn_settle_backward(s, drive, grad.contiguous(), ctx.n, ctx.d)
        return grad_s, grad_drive, None, None


MAX_INNER = 64  # kMaxInner of the kernel's backward


def chn_settle(s: torch.Tensor, drive: torch.Tensor, n: int, d: float,
               fused: bool | str) -> torch.Tensor | None:
    """The CHN layer's ``n`` damped inner steps for the fixed ``drive``, as one kernel pass
    (with a gradient into ``s`` and ``drive``), or ``None`` where ``fused`` and the tensors
    leave them to the tensor operations."""
    if n > MAX_INNER:
        if fused is True:
            raise ValueError(f"the CHN kernel runs at most {MAX_INNER} inner steps, got {n}")
        return None
    if s.device.type == "cpu" and s.dtype == torch.float32:  # the state's halves are slices
        s, drive = s.contiguous(), drive.contiguous()
    if get(fused, s, drive, where="the CHN local equilibrium") is None:
        return None
    if torch.is_grad_enabled() and (s.requires_grad or drive.requires_grad):
        return _Settle.apply(s, drive, n, d)
    return load().chn_settle(s, drive, n, d)
