"""torchdeq as the peer: the same Hopfield map solved and differentiated by torchdeq.

torchdeq is a bench-only extra (``pip install -r bench/requirements.txt``), never a runtime
dependency: it is imported lazily and its absence only drops a column. The closest torchdeq
setting to the paper's recipe:

- forward: ``f_solver='fixed_point_iter'`` (Picard rows) or ``'anderson'`` (DEQ rows, window
  ``m=4``; its Tikhonov term is added unscaled to the Gram matrix, so its default ``1e-4`` is
  kept: ours scales ``1e-10`` by the Gram diagonal), ``f_max_iter`` = the row's forward
  iterations, ``f_tol=0`` so that it never stops early (it stops when the largest residual is
  ``< tol``), no solver statistics beyond its own;
- backward: recurrent backprop is torchdeq's phantom gradient with ``grad = backward_iter``
  unrolled steps from the detached fixed point and ``tau`` = our ``1 - damping`` (``core=
  'indexing'``, one state, no IFT).
"""
from __future__ import annotations

import copy
import importlib.util
from collections.abc import Callable

from torch import Tensor

from deq_modules.lit import LitHopfieldDEQ
from deq_modules.optim import Madam


def torchdeq_available() -> bool:
    """Whether torchdeq can be imported (without importing it)."""
    return importlib.util.find_spec("torchdeq") is not None


def torchdeq_step(module: LitHopfieldDEQ, x: Tensor, y: Tensor) -> Callable[[], None]:
    """A training step (solve, backward, Madam) of a copy of ``module``'s map under torchdeq.

    The copy has the same weights as ``module``; its solver and iteration counts are read from
    ``module.deq`` (see the module docstring for the mapping).
    """
    from torchdeq import get_deq  # lazy: a bench-only extra

    f = copy.deepcopy(module.deq.f_module).train()
    fkw, bkw = module.deq.forward_kwargs, module.deq.backward_kwargs
    tau = 1.0 - module.deq.damping_factor
    solver = {"picard": "fixed_point_iter", "anderson": "anderson"}[fkw["solver"]]
    deq = get_deq(core="indexing", f_solver=solver, f_max_iter=fkw["iter"], f_tol=0.0,
                  f_stop_mode="rel", grad=bkw["iter"], tau=tau).train()
    solver_kwargs = dict(tau=tau)
    if solver == "anderson":
        solver_kwargs["m"] = fkw.get("m", 4)
    hp = module.hparams
    opt = Madam(f.parameters(), lr=hp.lr, p_scale=hp.p_scale, g_bound=hp.g_bound)
    z0 = x.new_zeros(x.shape[0], f.state_size)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        Ux = f.preprocess_inputs(x)
        z_out, _ = deq(lambda z: f(Ux, z), z0, solver_kwargs=solver_kwargs)
        loss = 0.5 * (f.readout(z_out[-1]) - y).square().sum() / x.shape[0]
        loss.backward()
        opt.step()

    return step
