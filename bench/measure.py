"""Measuring tools of the speed benchmark: step timing, peak memory, matmul peak, device name."""
from __future__ import annotations

import gc
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .flops import Shape, matmul_flops

Step = Callable[[], None]


def synchronize(device: torch.device) -> None:
    """Wait for queued device work (a no-op on the CPU), so wall-clock times are complete."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def quantile(samples: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile of ``samples`` (``0 <= q <= 1``)."""
    s = sorted(samples)
    pos = q * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


@dataclass
class Timing:
    """Wall-clock times of repeated calls, in seconds (``samples`` in call order)."""

    samples: list[float]

    @property
    def median(self) -> float:
        return quantile(self.samples, 0.5)

    @property
    def q25(self) -> float:
        return quantile(self.samples, 0.25)

    @property
    def q75(self) -> float:
        return quantile(self.samples, 0.75)


def time_calls(step: Step, device: torch.device, warmup: int, reps: int,
               after_each: Callable[[], None] | None = None) -> Timing:
    """Time ``reps`` calls of ``step`` after ``warmup`` untimed ones, each call on its own.

    ``after_each`` runs after each timed call, outside the timed region (to read statistics).
    """
    for _ in range(warmup):
        step()
    samples = []
    for _ in range(reps):
        synchronize(device)
        start = time.perf_counter()
        step()
        synchronize(device)
        samples.append(time.perf_counter() - start)
        if after_each is not None:
            after_each()
    return Timing(samples)


def saved_activation_bytes(step: Step, params: Sequence[nn.Parameter]) -> int:
    """Bytes of the tensors autograd saves for backward during ``step`` (deterministic).

    Counted once per storage (a tensor saved by several nodes, or views of one buffer, count
    once), leaving out the parameters' own storage: what remains is the activation memory the
    graph holds, the quantity that would grow if the forward solve kept its graph.
    """
    param_storages = {p.untyped_storage().data_ptr() for p in params}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in param_storages:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return sum(seen.values())


def cuda_peak_bytes(step: Step, device: torch.device) -> int:
    """``torch.cuda.max_memory_allocated`` over one call of ``step`` (parameters, optimizer
    state and inputs included: they are the same at any number of forward iterations)."""
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    synchronize(device)
    return torch.cuda.max_memory_allocated(device)


def peak_memory(step: Step, device: torch.device, params: Sequence[nn.Parameter]) -> int:
    """The peak memory of one training step: CUDA allocator peak, or saved bytes on the CPU.

    On CUDA one untimed call first brings the optimizer state and library workspaces in, so
    two modules built alike compare equal whatever their first call allocated; the caller
    must hold no other module (the allocator counts every live tensor).
    """
    if device.type == "cuda":
        gc.collect()  # modules measured before (reference cycles) must not count here
        step()
        return cuda_peak_bytes(step, device)
    return saved_activation_bytes(step, params)


def matmul_gflops(shape: Shape, device: torch.device, min_seconds: float = 0.05,
                  trials: int = 3) -> float:
    """Best float32 throughput (GFLOP/s) of one product shape ``(batch, m, n, transposed)``.

    The product is repeated until a trial lasts ``min_seconds``; the best of ``trials`` trials
    is the shape's peak (same device, same process, same thread count as the steps timed).
    """
    b, m, n, transposed = shape
    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.rand(b, m, generator=gen).to(device)
    w = torch.rand(n, m, generator=gen).to(device).T if transposed else \
        torch.rand(m, n, generator=gen).to(device)

    def run(loops: int) -> float:
        synchronize(device)
        start = time.perf_counter()
        for _ in range(loops):
            a @ w
        synchronize(device)
        return time.perf_counter() - start

    loops = 1
    run(loops)  # warm-up (library initialisation, caches)
    while (elapsed := run(loops)) < min_seconds and loops < 1 << 24:
        loops *= 2
    best = min([elapsed] + [run(loops) for _ in range(trials - 1)])
    return matmul_flops(b, m, n) * loops / best / 1e9


def device_name(device: torch.device) -> str:
    """The CUDA device's name, or the CPU model from ``/proc/cpuinfo``."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def header_line(device: torch.device) -> str:
    """One line naming the device, the torch version and the thread count."""
    omp = os.environ.get("OMP_NUM_THREADS", "unset")
    return (f"device: {device.type} ({device_name(device)}) | torch {torch.__version__} | "
            f"threads {torch.get_num_threads()} (OMP_NUM_THREADS={omp}) | float32")
