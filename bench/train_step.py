"""Time one training batch (forward solve + backward + Madam step) of the 3-layer rows.

    python -m bench.train_step [--rows HAM,HAM-EO-DEQ] [--batches 20] [--device cpu]

Also times the OneMatrix HAM computed the way the published code does it, with the dense
(2000 x 2000, mostly zero) Hopfield matrix, to show what the block computation saves.
Prints milliseconds per batch and the implied seconds per epoch of 60000 / 64 batches.
"""
from __future__ import annotations

import argparse
import time

import torch

from deq_modules.experiments import get_experiment, select
from deq_modules.hopfield.activations import rho
from deq_modules.hopfield.onematrix import OneMatrixFunction
from deq_modules.lit import lit_module_for
from deq_modules.optim import Madam

BATCHES_PER_EPOCH = 60000 / 64


class DenseOneMatrix(OneMatrixFunction):
    """The same HAM map through the dense Hopfield matrix (reference for the timing only)."""

    def forward(self, Ux, z):
        drive = rho(z) @ self.dense_W() + torch.cat(list(self.b))
        return torch.cat([drive[:, : self.sizes[0]] + Ux, drive[:, self.sizes[0]:]], dim=1)


def time_model(model, x, y, batches: int) -> float:
    opt = Madam(model.parameters(), lr=0.01, p_scale=1024, g_bound=3)
    def step():
        opt.zero_grad(set_to_none=True)
        loss = 0.5 * (model(x) - y).square().sum() / x.shape[0]
        loss.backward()
        opt.step()
    step()  # warm-up
    if x.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(batches):
        step()
    if x.is_cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / batches


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", default=None, help="comma-separated rows (default: every 3-layer row)")
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    rows = args.rows.split(",") if args.rows else None
    torch.manual_seed(0)
    x = torch.rand(64, 784, device=args.device)
    y = torch.nn.functional.one_hot(torch.randint(0, 10, (64,)), 10).float().to(args.device)
    print(f"device {args.device}, threads {torch.get_num_threads()}, batch 64")
    for exp in select(rows, [3]):
        model = lit_module_for(exp).to(args.device)
        t = time_model(model, x, y, args.batches)
        print(f"{exp.key:16s} {t * 1e3:8.1f} ms/batch  {t * BATCHES_PER_EPOCH:7.0f} s/epoch")
    if rows is None or "HAM" in rows:
        model = lit_module_for(get_experiment("HAM", 3)).to(args.device)
        dense = DenseOneMatrix(list(model.f.layers), model="ham").to(args.device)
        dense.load_state_dict(model.f.state_dict())
        model.deq.f_module = dense
        t = time_model(model, x, y, args.batches)
        print(f"{'HAM-L3 (dense W)':16s} {t * 1e3:8.1f} ms/batch  {t * BATCHES_PER_EPOCH:7.0f} s/epoch")


if __name__ == "__main__":
    main()
