"""Anderson's per-iteration bookkeeping as one C++ kernel (``csrc/anderson_step.cpp``), opt-in.

The eager Anderson step is some 65 small tensor operations per iteration, each reading or
writing a ``(B, D)`` or ``(B, m, D)`` tensor; on a CPU that costs 1 to 2.4 ms per iteration on
the states of the Hopfield rows, as much as or more than the map itself. The kernel does the
same work sample by sample in one pass over each history row, in any of Anderson's variants
(``tikhonov``, ``safeguard``, ``returns``). It is compiled with
``torch.utils.cpp_extension`` at first use (a C++ compiler and ``ninja`` are needed; about a
minute, then cached by torch) and runs on CPU float32 states.
"""
from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor

SOURCE = Path(__file__).with_name("csrc") / "anderson_step.cpp"
MAX_M = 16  # kMaxM of the kernel
_module: ModuleType | None = None


class FusedUnavailable(RuntimeError):
    """The kernel could not be built (no compiler, no ninja): use the eager solver instead."""


def build(name: str, source: Path, what: str, flags: Sequence[str] = ()) -> ModuleType:
    """The C++ extension ``name`` compiled from ``source`` with ``-O3 -fopenmp-simd`` and
    ``flags`` (cached by torch after the first build, which says so on stderr); a
    :class:`FusedUnavailable` naming ``what`` when it cannot be built."""
    from torch.utils import cpp_extension
    try:
        built = any(Path(cpp_extension._get_build_directory(name, False)).glob("*.so"))
    except Exception:  # a private helper of torch's: only decides whether to say more
        built = True
    if not built:
        print(f"{what}: compiling {source.name} (once per machine, about a minute)",
              file=sys.stderr, flush=True)
    try:
        return cpp_extension.load(name, [str(source)],
                                  extra_cflags=["-O3", "-fopenmp-simd", *flags], verbose=False)
    except (RuntimeError, OSError, ImportError) as error:  # compiler or ninja missing
        raise FusedUnavailable(
            f"{what}: building {source.name} failed; it needs a C++ compiler and ninja "
            f"(pip install ninja). Leave fused off to use the eager code. ({error})"
        ) from error


def load() -> ModuleType:
    """The compiled kernel, built at the first call."""
    global _module
    if _module is None:
        _module = build("deq_core_anderson_step", SOURCE, "fused Anderson")
    return _module


def check_state(x: Tensor, m: int) -> None:
    """What the kernel runs on, as a ``ValueError`` that says so."""
    if x.device.type != "cpu" or x.dtype != torch.float32:
        raise ValueError(f"fused Anderson runs on CPU float32 states, got {x.dtype} on "
                         f"{x.device}; leave fused off there")
    if m > MAX_M:
        raise ValueError(f"fused Anderson supports m <= {MAX_M}, got m={m}")


def step(x: Tensor, fx: Tensor, F: Tensor, G: Tensor, gram: Tensor, res: Tensor,
         best_fx: Tensor, best_res: Tensor, anchor_slot: Tensor, anchor_res: Tensor,
         was_mixed: Tensor, n: int, lam: float, tiny: float, eps: float,
         absolute_tikhonov: bool = False, safeguard_before: bool = False,
         return_last: bool = False) -> None:
    """One iteration, every tensor but ``fx`` updated in place (see the kernel's comment); the
    three flags pick Anderson's variant (all false: ours)."""
    load().anderson_step(x, fx.contiguous(), F, G, gram, res, best_fx, best_res, anchor_slot,
                         anchor_res, was_mixed, n, lam, tiny, eps, absolute_tikhonov,
                         safeguard_before, return_last)
