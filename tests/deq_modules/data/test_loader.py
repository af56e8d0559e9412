"""Tests of deq_modules/data/loader.py: what each rank serves, epoch by epoch."""

from __future__ import annotations

import pytest
import torch

from deq_modules.data.loader import DeviceBatchLoader


def test_serves_every_sample_once_with_one_hot_targets(tiny):
    images, labels = torch.arange(11, dtype=torch.uint8)[:, None], torch.arange(11) % 10
    loader = DeviceBatchLoader(images, labels, 4)
    x, y, sizes = tiny.collect(loader)
    assert sizes == [4, 4, 3] and len(loader) == 3
    assert tiny.served_indices(x) == list(range(11))  # evaluation order is fixed
    assert x.dtype == y.dtype == torch.float32 and torch.equal(y, torch.eye(10)[labels])


def test_training_order_is_a_permutation_seeded_by_epoch(tiny):
    images, labels = torch.arange(11, dtype=torch.uint8)[:, None], torch.arange(11) % 10
    loader = DeviceBatchLoader(images, labels, 4, train=True, seed=3)
    orders = [tiny.served_indices(tiny.collect(loader)[0]) for _ in range(2)]
    for epoch, order in enumerate(orders):
        assert order == torch.randperm(11, generator=torch.Generator().manual_seed(3 + epoch)).tolist()
    pinned = DeviceBatchLoader(images, labels, 4, train=True, seed=3, epoch_fn=lambda: 1)
    assert tiny.served_indices(tiny.collect(pinned)[0]) == orders[1]


def test_distributed_shards(tiny):
    images, labels = torch.arange(11, dtype=torch.uint8)[:, None], torch.arange(11) % 10
    evals = [tiny.served_indices(tiny.collect(DeviceBatchLoader(images, labels, 2, rank=r, world_size=3))[0])
             for r in range(3)]
    assert sorted(sum(evals, [])) == list(range(11))  # evaluation: each sample exactly once
    trains = [DeviceBatchLoader(images, labels, 2, train=True, seed=1, rank=r, world_size=3) for r in range(3)]
    served = [tiny.served_indices(tiny.collect(t)[0]) for t in trains]
    assert [len(s) for s in served] == [4, 4, 4] and [len(t) for t in trains] == [2, 2, 2]
    assert set(sum(served, [])) == set(range(11))  # padded to equal length, nothing left out


def test_batch_size_must_be_positive():
    with pytest.raises(ValueError, match=r"batch_size\b.*\b0\b"):
        DeviceBatchLoader(torch.zeros(3, 1, dtype=torch.uint8), torch.zeros(3, dtype=torch.long), 0)
