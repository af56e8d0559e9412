"""Batches served straight from tensors on the training device (no DataLoader, no workers)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

from .batches import batches_per_device, samples_per_device
from .names import NUM_CLASSES


class DeviceBatchLoader:
    """Batches ``(x, y_onehot)`` from uint8 tensors already on the device; no worker processes.

    Every sample is served once per epoch, the last partial batch included unless
    ``drop_last`` (the papers' training loader drops it: 937 steps of 64 on 60,000 images, so
    every step has the same batch size). Training order is a
    permutation from a generator seeded with ``seed + epoch`` (epoch from ``epoch_fn``, else
    counted per ``iter()``); evaluation order is fixed. Under DDP, rank r takes indices
    r::world_size; training shards are padded to equal length (as DistributedSampler does),
    because ranks with different batch counts would hang in the gradient all-reduce.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, *,
                 train: bool = False, seed: int = 0, rank: int = 0, world_size: int = 1,
                 epoch_fn: Callable[[], int] | None = None, drop_last: bool = False) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.images, self.labels, self.batch_size = images, labels, batch_size
        self.drop_last = drop_last
        self.train, self.seed, self.rank, self.world_size = train, seed, rank, world_size
        self.epoch_fn, self.epoch = epoch_fn, 0

    def _num_local(self) -> int:
        return samples_per_device(len(self.labels), train=self.train, rank=self.rank,
                                  world_size=self.world_size)

    def __len__(self) -> int:
        return batches_per_device(len(self.labels), self.batch_size, train=self.train,
                                  rank=self.rank, world_size=self.world_size,
                                  drop_last=self.drop_last)

    def _indices(self) -> torch.Tensor:
        n = len(self.labels)
        if not self.train:
            return torch.arange(self.rank, n, self.world_size)
        epoch = self.epoch_fn() if self.epoch_fn is not None else self.epoch
        self.epoch += 1
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + epoch))
        if self.world_size > 1:  # wrap around so that every rank gets the same number of samples
            order = order.repeat(self.world_size)[: self._num_local() * self.world_size]
        return order[self.rank:: self.world_size]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.epoch_fn is not None:
            # Drawn at the first batch, not at iter(): Lightning may call iter() before it has
            # restored the epoch from a checkpoint, and a resumed epoch must get its own order.
            return self._batches(None)
        return self._batches(self._indices())  # drawn now: iter() marks the epoch

    def _batches(self, indices: torch.Tensor | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        indices = (self._indices() if indices is None else indices).to(self.images.device)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            idx = indices[start: start + self.batch_size]
            x = self.images[idx].float().div_(255)
            yield x, F.one_hot(self.labels[idx], NUM_CLASSES).float()
