"""The files a run leaves for the figures: ``trajectories.npz`` and ``energy.npz``.

Format, reading and pooling over seeds, for the writer (the run layer) and the readers
(``paper_figures``, which also draws them: :mod:`paper_figures.heatmap`) alike; numpy only
(no torch, no Lightning).
The arrays come from ``custom_callbacks.ResidualTrajectories.result`` and
``custom_callbacks.EnergyTracker.result``.

``trajectories.npz`` (format version 2) holds:

===================  ===============  ===========================================================
key                  shape, dtype     meaning
===================  ===============  ===========================================================
``counts``           (n_rows, n_bins) samples whose ``r_{n+1}`` (the relative change between
                     int64            the map's outputs ``n + 2`` and ``n + 1``: position ``n``
                                      of the papers' count) fell in bin ``b`` (below the range:
                                      lowest bin, exact zeros included; above it or NaN: highest)
``log10_edges``      (n_bins + 1,)    bin edges in log10 of the relative change
``tolerances``       (T,)             the tolerance grid (1e-8 .. 1e-2 in half decades by default)
``sum_iters``        (T,) int64       sum over samples of the iterations to converge at each
``mean_iters``       (T,) float64     ``sum_iters / n_samples``: the cyan curve
``not_converged``    (T,) int64       samples that did not reach each tolerance
``iters_at_tol``     (n_samples,)     per-sample iterations to converge at ``tol``
``tol``, ``stage``   scalars          the Table 2 criterion (1e-4) and ``"test"``
``n_samples``        scalar           samples seen
``max_iter``         scalar           rows of the longest solve (``T - 1`` for ``T`` iterations;
                                      shorter solves stop early when the solver has a ``tol``,
                                      their rows are absent)
``format_version``   scalar           2 (1: this project's first rule, ``runner.recount``)
===================  ===============  ===========================================================

Iterations are counted as in :func:`custom_callbacks.iterations_to_converge`.

``energy.npz`` (format version 1) holds ``mean_energy`` (n_iter,) float64 (the mean over the
samples whose solve reached that iteration), ``sum_energy`` (n_iter,), ``n_samples`` (n_iter,)
int64, ``stage`` and ``format_version``. Entry ``n`` is the energy after ``n + 1`` iterations.
"""
from __future__ import annotations

import os
from typing import Any, Iterable

import numpy as np

from .store import atomic_write_with

FORMAT_VERSION = 1  # energy.npz
TRAJECTORY_FORMAT = 2  # trajectories.npz (custom_callbacks.trajectories.FORMAT_VERSION)
TRAJECTORY_KEYS = ("counts", "log10_edges", "tolerances", "mean_iters", "n_samples")
ENERGY_KEYS = ("mean_energy", "n_samples")


class BadResultFile(ValueError):
    """A results file that is missing keys, truncated or not an ``.npz`` at all."""


def save_npz(path: os.PathLike | str, data: dict[str, Any]) -> None:
    """``np.savez`` of ``data`` to ``path``, atomically (never a half-written file)."""
    atomic_write_with(path, lambda f: np.savez(f, **data))


def load_npz(path: os.PathLike | str, required: Iterable[str] = ()) -> dict[str, Any]:
    """An ``.npz`` as a dict (0-d arrays as Python scalars); :class:`BadResultFile` names the
    file when it is unreadable or lacks a ``required`` key."""
    try:
        with np.load(path, allow_pickle=False) as data:
            out = {k: (data[k].item() if data[k].ndim == 0 else data[k]) for k in data.files}
    except FileNotFoundError:
        raise
    except Exception as err:  # zipfile.BadZipFile, EOFError, ValueError, OSError, ...
        raise BadResultFile(f"{path}: unreadable ({type(err).__name__}: {err})") from None
    missing = sorted(set(required) - set(out))
    if missing:
        raise BadResultFile(f"{path}: missing {missing}")
    return out


def load_trajectories(path: os.PathLike | str) -> dict[str, Any]:
    """Read a ``trajectories.npz`` (scalars as Python numbers)."""
    return load_npz(path, TRAJECTORY_KEYS)


def merge_trajectories(datasets: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Pool runs (e.g. seeds): counts and sums add (shorter runs padded), means are re-derived,
    so ``mean_iters`` is the ``n_samples``-weighted mean of the inputs' ``mean_iters``."""
    datasets = list(datasets)
    if not datasets:
        raise ValueError("merge_trajectories needs at least one dataset")
    first = datasets[0]
    for d in datasets[1:]:
        for key in ("log10_edges", "tolerances"):
            if d[key].shape != first[key].shape or not np.allclose(d[key], first[key]):
                raise ValueError(f"cannot merge trajectories with different {key}")
        if d["tol"] != first["tol"]:
            raise ValueError(f"cannot merge trajectories with tol {first['tol']} and {d['tol']}")
    rows = max(d["counts"].shape[0] for d in datasets)
    counts = np.zeros((rows, first["counts"].shape[1]), dtype=np.int64)
    for d in datasets:
        counts[: d["counts"].shape[0]] += d["counts"]
    n_samples = sum(int(d["n_samples"]) for d in datasets)
    sum_iters = sum(np.asarray(d["sum_iters"], dtype=np.int64) for d in datasets)
    stages = {d["stage"] for d in datasets}
    return dict(
        counts=counts, log10_edges=first["log10_edges"], tolerances=first["tolerances"],
        sum_iters=sum_iters, mean_iters=sum_iters / max(n_samples, 1),
        not_converged=sum(np.asarray(d["not_converged"], dtype=np.int64) for d in datasets),
        iters_at_tol=np.concatenate([d["iters_at_tol"] for d in datasets]),
        tol=first["tol"], stage=stages.pop() if len(stages) == 1 else "mixed",
        n_samples=n_samples, max_iter=max(int(d["max_iter"]) for d in datasets),
        format_version=TRAJECTORY_FORMAT,
    )


def load_energy(path: os.PathLike | str) -> dict[str, Any]:
    """Read an ``energy.npz`` (scalars as Python values)."""
    return load_npz(path, ENERGY_KEYS)


def merge_energy(datasets: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Pool runs (e.g. seeds): per iteration, the ``n_samples``-weighted mean of the inputs'
    ``mean_energy`` (shorter runs add nothing to the later iterations); ``n_samples`` adds."""
    datasets = list(datasets)
    if not datasets:
        raise ValueError("merge_energy needs at least one dataset")
    rows = max(np.asarray(d["mean_energy"]).size for d in datasets)
    sum_energy = np.zeros(rows, dtype=np.float64)
    n_samples = np.zeros(rows, dtype=np.int64)
    for d in datasets:
        n = np.asarray(d["n_samples"], dtype=np.int64)
        sum_energy[: n.size] += np.asarray(d["mean_energy"], dtype=np.float64) * n
        n_samples[: n.size] += n
    stages = {d.get("stage") for d in datasets}
    return dict(mean_energy=sum_energy / np.maximum(n_samples, 1), sum_energy=sum_energy,
                n_samples=n_samples, stage=stages.pop() if len(stages) == 1 else "mixed",
                format_version=FORMAT_VERSION)
