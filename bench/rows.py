"""Measuring one Table 2 row: build its module, time its training step, count, compare.

A training step is what the sweep does per batch: the module's ``training_step`` (forward
solve without a graph, recurrent backprop's unrolled steps, loss, metrics), backward and the
Madam step, on one batch of ``exp.batch_size`` images. The images come from the
project's synthetic generator (MNIST-shaped, learnable), so that a solver that stops early
sees inputs with some structure; the weights are freshly initialised, as at the start of a run.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from statistics import fmean
from typing import Any

import torch
from torch import Tensor

from deq_modules.data.synthetic import make_synthetic
from deq_modules.experiments import PAPER, SEEDS, Experiment, Mode
from deq_modules.lit import LitHopfieldDEQ, lit_module_for
from deq_modules.optim import Madam

from .flops import Shape, dominant_shapes, mix_peak, product_mix, step_flops
from .measure import Step, matmul_gflops, peak_memory, time_calls
from .peer import torchdeq_available, torchdeq_step

TRAIN_IMAGES = 60000  # EMNIST "mnist" training split: the sweep's epoch
TEST_IMAGES = 10000  # its test split: every validation pass and the final test
MEM_FACTOR = 10  # memory is measured again at this many times the forward iterations
TINY_SHRINK = 16  # --tiny divides every layer size but the output by this
_NO_TRAINER_WARNING = r".*`self.log\(\)` but the `self.trainer` reference is not registered"


@dataclass
class Settings:
    """How to measure: device, repetitions, and the options of the command line."""

    device: torch.device
    warmup: int
    reps: int
    tiny: bool
    peer: bool
    peak_seconds: float
    compile_f: bool = False  # time the step with the map under torch.compile
    fused_anderson: bool = False  # time the step with Anderson's bookkeeping as the C++ kernel


def row_layers(exp: Experiment, tiny: bool) -> list[int]:
    """The row's layer sizes; with ``tiny``, every size but the output divided by 16 (>= 2)."""
    if not tiny:
        return list(exp.layers)
    return [max(2, n // TINY_SHRINK) for n in exp.layers[:-1]] + [exp.layers[-1]]


def build_module(exp: Experiment, layers: Sequence[int], forward_iter: int,
                 mode: Mode = PAPER, compile_f: bool = False,
                 fused_anderson: bool = False) -> LitHopfieldDEQ:
    """The row's LightningModule in ``mode`` (``lit_module_for``'s settings), at the given
    layer sizes and forward iterations."""
    hp = dict(lit_module_for(replace(exp, forward_iter=forward_iter), mode=mode,
                             compile_f=compile_f, fused_anderson=fused_anderson).hparams)
    hp["layers"] = list(layers)
    return LitHopfieldDEQ(**hp).train()


def make_batch(input_size: int, batch: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """One batch of synthetic images in [0, 1] and one-hot targets."""
    images, labels = make_synthetic(n_train=batch, n_test=1, input_size=input_size)["train"]
    x = images.float().div(255.0).to(device)
    y = torch.nn.functional.one_hot(labels, 10).float().to(device)
    return x, y


def training_step(module: LitHopfieldDEQ, x: Tensor, y: Tensor) -> Step:
    """One sweep training step: ``module.training_step`` (solve, loss, metrics, autocast when
    the module asks for it), backward, Madam step. Without a Trainer, ``self.log`` only warns,
    and that warning is silenced here."""
    hp = module.hparams
    opt = Madam(module.parameters(), lr=hp.lr, p_scale=hp.p_scale, g_bound=hp.g_bound)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_NO_TRAINER_WARNING)
            loss = module.training_step((x, y), 0)
        loss.backward()
        opt.step()

    return step


def sample_iterations(module: LitHopfieldDEQ, x: Tensor) -> list[int] | None:
    """Iterations each sample got in a training-mode solve of ``x``, when the solve compacts
    the batch (a sample leaves once its residual is below ``tol``); ``None`` without
    compaction, where every sample gets the solver's ``n_iter``."""
    kwargs = module.deq.active_forward_kwargs
    if not kwargs.get("compact"):
        return None
    solves = []
    with module.deq.observe(on_solve=solves.append), torch.no_grad():
        module.deq(x)
    return trace_iterations(solves[-1].trace, kwargs["tol"])


def trace_iterations(trace: Tensor, tol: float | None) -> list[int]:
    """Forward iterations each sample of a solve got, from its residual ``trace``
    (n_iter, B): the solve's count without a tolerance; with one, the first iteration below it
    (a sample that left the batch keeps its last residual in the trace; one that never got
    below it ran the whole solve)."""
    if tol is None:
        return [trace.shape[0]] * trace.shape[1]
    below = trace < tol
    return torch.where(below.any(0), below.int().argmax(0) + 1, trace.shape[0]).tolist()


def sweep_steps(exp: Experiment) -> int:
    """Training steps of the row in the whole sweep: batches per epoch x epochs x seeds."""
    return math.ceil(TRAIN_IMAGES / exp.batch_size) * exp.epochs * len(SEEDS)


def sweep_eval_batches(exp: Experiment) -> tuple[int, int]:
    """Evaluation batches of the row in the whole sweep, ``(validation, test)``: a validation
    pass over the test split after every epoch but the last (the test follows it), and the
    test, per seed."""
    per_pass = math.ceil(TEST_IMAGES / exp.batch_size) * len(SEEDS)
    return per_pass * (exp.epochs - 1), per_pass


def count_flops(module: LitHopfieldDEQ, exp: Experiment, layers: Sequence[int],
                iters: Sequence[int], x: Tensor) -> tuple[float, float]:
    """Mean FLOPs of the timed steps and the mean forward iterations per sample.

    With compaction, the per-sample iterations come from one traced solve after the timed
    steps (same weights as the last of them, near enough to the others').
    """
    fkw, bkw = module.deq.active_forward_kwargs, module.deq.backward_kwargs
    width, m = module.deq.f_module.state_size, fkw.get("m", 4)
    per_sample = sample_iterations(module, x)
    if per_sample is not None:
        flops = step_flops(layers, exp.batch_size, max(per_sample), bkw["iter"], exp.structure,
                           fkw["solver"], width, m, sample_iters=per_sample,
                           backward_method=bkw["method"],
                           safeguard=fkw.get("safeguard", "after"))
        return flops, fmean(per_sample)
    flops = fmean(step_flops(layers, exp.batch_size, n, bkw["iter"], exp.structure,
                             fkw["solver"], width, m, backward_method=bkw["method"],
                             safeguard=fkw.get("safeguard", "after"))
                  for n in iters)
    return flops, fmean(iters)


def step_memory(exp: Experiment, layers: Sequence[int], forward_iter: int,
                mode: Mode, x: Tensor, y: Tensor) -> int:
    """Peak memory of one training step of a fresh module at ``forward_iter`` iterations
    (built here, so nothing of it outlives the measurement)."""
    torch.manual_seed(0)
    module = build_module(exp, layers, forward_iter, mode).to(x.device)
    return peak_memory(training_step(module, x, y), x.device, list(module.parameters()))


def time_row(exp: Experiment, layers: Sequence[int], mode: Mode,
             settings: Settings, peaks: dict[Shape, float], x: Tensor, y: Tensor) -> dict[str, Any]:
    """The timing, iteration and FLOP columns of one row (``peaks`` caches shape peaks)."""
    dev = settings.device
    torch.manual_seed(0)
    module = build_module(exp, layers, exp.forward_iter, mode,
                          settings.compile_f, settings.fused_anderson).to(dev)
    step, deq = training_step(module, x, y), module.deq
    iters: list[int] = []
    timing = time_calls(step, dev, settings.warmup, settings.reps,
                        after_each=lambda: iters.append(deq.last_forward_stats.n_iter))
    flops, sample_iters = count_flops(module, exp, layers, iters, x)
    for shape in dominant_shapes(layers, exp.batch_size):
        if shape not in peaks:
            peaks[shape] = matmul_gflops(shape, dev, settings.peak_seconds)
    mix = product_mix(layers, exp.batch_size, sample_iters, deq.backward_kwargs["iter"],
                      deq.backward_kwargs["method"])
    peak, gflops = mix_peak(mix, peaks), flops / timing.median / 1e9
    return dict(
        solver=deq.active_forward_kwargs["solver"],
        precision=module.hparams.get("train_precision") or "float32",
        forward_iter=exp.forward_iter, fwd_iters=fmean(iters), fwd_sample_iters=sample_iters,
        backward_iter=deq.backward_kwargs["iter"],
        ms_median=timing.median * 1e3, ms_q25=timing.q25 * 1e3, ms_q75=timing.q75 * 1e3,
        ms_samples=[t * 1e3 for t in timing.samples],
        gflop_per_step=flops / 1e9, gflops=gflops, peak_gflops=peak, roofline=gflops / peak,
        steps=sweep_steps(exp), sweep_hours=timing.median * sweep_steps(exp) / 3600,
    )


def measure_row(exp: Experiment, mode: Mode, settings: Settings,
                peaks: dict[Shape, float]) -> dict[str, Any]:
    """Every column of one row in one mode (``peaks`` caches each product shape's peak)."""
    dev, layers = settings.device, row_layers(exp, settings.tiny)
    x, y = make_batch(layers[0], exp.batch_size, dev)
    suffix = ("+compile" if settings.compile_f else "") \
        + ("+fused" if settings.fused_anderson and exp.solver == "anderson" else "")
    record = dict(key=exp.key, mode=mode.name + suffix, layers=layers, compiled=settings.compile_f,
                  fused_anderson=settings.fused_anderson and exp.solver == "anderson")
    record.update(time_row(exp, layers, mode, settings, peaks, x, y))
    record["mem_kind"] = "cuda_max_allocated" if dev.type == "cuda" else "saved_for_backward"
    record["mem_bytes"] = step_memory(exp, layers, exp.forward_iter, mode, x, y)
    record["mem_bytes_10x"] = step_memory(exp, layers, MEM_FACTOR * exp.forward_iter, mode, x, y)
    record["torchdeq_ms"] = None
    if not mode.fast and exp.model == "ham" and settings.peer and torchdeq_available():
        torch.manual_seed(0)
        twin = build_module(exp, layers, exp.forward_iter).to(dev)
        peer = time_calls(torchdeq_step(twin, x, y), dev, settings.warmup, settings.reps)
        record["torchdeq_ms"] = peer.median * 1e3
    return record
