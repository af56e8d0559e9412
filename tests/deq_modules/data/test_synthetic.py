"""Tests of deq_modules/data/synthetic.py: deterministic, balanced, learnable but not trivially."""

from __future__ import annotations

import pytest
import torch

from deq_modules.data.synthetic import SYNTHETIC_DEFAULTS, make_synthetic, synthetic_options


def test_synthetic_is_deterministic_balanced_and_learnable():
    a, b, c = make_synthetic(seed=1), make_synthetic(seed=1), make_synthetic(seed=2)
    assert all(torch.equal(a[s][i], b[s][i]) for s in a for i in range(2))
    assert not torch.equal(a["train"][0], c["train"][0])
    data = make_synthetic()
    (x, y), (xt, yt) = data["train"], data["test"]
    assert x.shape == (2000, 784) and xt.shape == (500, 784) and x.dtype == torch.uint8
    x, xt = x.float() / 255, xt.float() / 255
    counts = y.bincount(minlength=10)
    assert counts.min() >= 150 and counts.max() <= 250
    # Nearest class mean, fit on train: a fast proxy for "a small HAM learns it".
    means = torch.stack([x[y == k].mean(0) for k in range(10)])
    accuracy = (torch.cdist(xt, means).argmin(1) == yt).float().mean()
    assert accuracy >= 0.95
    # Not trivial: single pixels do not tell the classes apart.
    assert (x[y == 0, 5] - x[y == 1, 5].mean()).abs().mean() > 0.1
    small = make_synthetic(n_train=30, n_test=7, input_size=20)
    assert small["train"][0].shape == (30, 20) and small["test"][1].shape == (7,)


def test_options_are_the_defaults_of_make_synthetic_and_refuse_unknown_keys():
    assert synthetic_options() == SYNTHETIC_DEFAULTS
    assert synthetic_options({"n_train": 5}) == {**SYNTHETIC_DEFAULTS, "n_train": 5}
    assert set(SYNTHETIC_DEFAULTS) == {"n_train", "n_test", "input_size", "noise", "seed"}
    with pytest.raises(ValueError, match=r"synthetic_kwargs\b.*'n_trian'.*\bn_train\b"):
        synthetic_options({"n_trian": 5})
