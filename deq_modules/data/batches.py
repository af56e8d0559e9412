"""How many samples and batches one device gets from a split per epoch.

No imports: the command lines check a batch limit with it before anything is loaded, and
:class:`~deq_modules.data.loader.DeviceBatchLoader` serves exactly these counts.
"""

from __future__ import annotations


def samples_per_device(n: int, *, train: bool, rank: int = 0, world_size: int = 1) -> int:
    """Samples of a split of ``n`` that rank ``rank`` of ``world_size`` serves in an epoch.

    Evaluation takes indices ``rank::world_size``; training pads every rank to the same count
    (as DistributedSampler does), because ranks with different batch counts would hang in
    the gradient all-reduce.
    """
    if train:
        return -(-n // world_size)
    return len(range(rank, n, world_size))


def batches_per_device(n: int, batch_size: int, *, train: bool, rank: int = 0,
                       world_size: int = 1, drop_last: bool = False) -> int:
    """Batches of ``batch_size`` from :func:`samples_per_device`: the last one partial, or
    left out with ``drop_last`` (the papers' training loader)."""
    samples = samples_per_device(n, train=train, rank=rank, world_size=world_size)
    return samples // batch_size if drop_last else -(-samples // batch_size)
