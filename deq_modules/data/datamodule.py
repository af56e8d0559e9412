"""The LightningDataModule of the Hopfield DEQs: EMNIST-MNIST (the paper's data), MNIST,
Fashion-MNIST, CIFAR-10 and a generated ``synthetic`` set.

Images are flattened and scaled to [0, 1]; targets are one-hot (the models are trained with MSE
against one-hot targets, Appendix F). As in the paper, each whole dataset lives on the training
device; it is kept there as uint8 (4x smaller than float32) and each batch is converted on the fly.
Finding, downloading, checking and reading the files is :mod:`deq_modules.data.files`.
"""

from __future__ import annotations

import os
from typing import Any

import lightning as L
import torch

from .files import Splits, fetch_dataset, load_dataset, on_disk, resolve_data_dir
from .loader import DeviceBatchLoader
from .names import NUM_CLASSES, check_dataset_name
from .synthetic import make_synthetic, synthetic_options


class HopfieldDataModule(L.LightningDataModule):
    """Flattened [0, 1] images and one-hot targets for the Hopfield DEQs, held on the device.

    Args:
        dataset: one of ``DATASETS``; ``emnist-mnist`` is the paper's data.
        data_dir: where the files are; else ``$HOPFIELD_DATA_DIR``; else ``./data``. IDX files
            are found in torchvision's layout (``MNIST/raw``, ``FashionMNIST/raw``, ``EMNIST/raw``)
            or flat in ``data_dir`` (e.g. Debian's /usr/share/datasets/fashion-mnist), plain or
            ``.gz``; CIFAR-10 in ``data_dir/cifar-10-batches-py``.
        batch_size / eval_batch_size: training / evaluation batch (the latter defaults to the former).
        drop_last: the training loader leaves out the last incomplete batch, as the papers'
            did (937 steps of 64 on 60,000 images); evaluation always scores every image.
        download: fetch missing files with torchvision in ``prepare_data()``.
        val_size: 0 (the paper's setting) trains on the full train set and the val loader serves
            the TEST set: the paper reports test numbers only and selects no model on them.
            k > 0 holds out k train samples (chosen with ``seed``) as a real validation set.
        seed: seeds the training shuffle (``seed + epoch``) and the held-out split.
        synthetic_kwargs: for ``synthetic``: n_train, n_test, input_size, noise, seed.

    A file that is there but unreadable raises :class:`DatasetCorruptError` in ``setup()``;
    :func:`check_dataset` finds that out before any run, without building a module.
    """

    def __init__(self, dataset: str = "emnist-mnist", data_dir: str | os.PathLike | None = None,
                 batch_size: int = 64, eval_batch_size: int | None = None, download: bool = True,
                 val_size: int = 0, seed: int = 0, synthetic_kwargs: dict[str, Any] | None = None,
                 drop_last: bool = True) -> None:
        super().__init__()
        check_dataset_name(dataset)
        self.synthetic = synthetic_options(synthetic_kwargs)
        if val_size < 0:
            raise ValueError(f"val_size must be >= 0, got {val_size}")
        self.save_hyperparameters()
        self.dataset = dataset
        self.data_dir = resolve_data_dir(data_dir)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        # Known before setup(): the model is built from them first.
        self.input_size = {"cifar10": 3072, "synthetic": self.synthetic["input_size"]}.get(dataset, 784)
        self.num_classes = NUM_CLASSES
        self.device = torch.device("cpu")
        self.splits: Splits = {}

    # ---- Lightning hooks ------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Download missing files through torchvision (Lightning runs this on one process)."""
        if self.dataset != "synthetic":
            fetch_dataset(self.dataset, self.data_dir, self.hparams.download)

    def setup(self, stage: str | None = None) -> None:
        """Load train/test once, place them on the trainer's device, split off validation."""
        if self.trainer is not None:
            self.device = self.trainer.strategy.root_device
        if not self.splits:
            self.splits = self._load()
            k = self.hparams.val_size
            if k > 0:
                images, labels = self.splits["train"]
                if k >= len(labels):
                    raise ValueError(f"val_size={k} leaves no training data (train has {len(labels)})")
                order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(self.hparams.seed))
                self.splits["val"] = (images[order[:k]], labels[order[:k]])
                self.splits["train"] = (images[order[k:]], labels[order[k:]])
        self.splits = {s: (x.to(self.device), y.to(self.device)) for s, (x, y) in self.splits.items()}

    def _load(self) -> Splits:
        if self.dataset == "synthetic":
            return make_synthetic(**self.synthetic)
        if not on_disk(self.dataset, self.data_dir) and self.hparams.download and self.trainer is None:
            self.prepare_data()  # plain scripts may call setup() alone; Lightning already did this
        return load_dataset(self.dataset, self.data_dir)

    def _loader(self, split: str, train: bool) -> DeviceBatchLoader:
        if not self.splits:
            raise RuntimeError("call setup() before asking for a dataloader")
        trainer = self.trainer
        # val_size=0: validation serves the test set (the paper's protocol, see the class docstring)
        images, labels = self.splits.get(split, self.splits["test"])
        return DeviceBatchLoader(
            images, labels, self.batch_size if train else self.eval_batch_size, train=train,
            seed=self.hparams.seed, rank=trainer.global_rank if trainer else 0,
            world_size=trainer.world_size if trainer else 1,
            epoch_fn=(lambda: trainer.current_epoch) if trainer and train else None,
            drop_last=train and self.hparams.drop_last)  # evaluation scores every image

    @property
    def validates_on_test_set(self) -> bool:
        """Whether validation serves the test set (``val_size=0``, the paper's protocol)."""
        return self.hparams.val_size == 0

    def train_dataloader(self) -> DeviceBatchLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DeviceBatchLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DeviceBatchLoader:
        return self._loader("test", train=False)

    def describe(self) -> str:
        """One line for logs: dataset, sizes, batch sizes, device."""
        if self.splits:
            sizes = ", ".join(f"{s}={len(y)}" for s, (_, y) in self.splits.items())
            if "val" not in self.splits:
                sizes += ", val=test set"
        else:
            sizes = "not loaded"
        where = "" if self.dataset == "synthetic" else f", dir={self.data_dir}"
        return (f"HopfieldDataModule(dataset={self.dataset}, {sizes}, input_size={self.input_size}, "
                f"classes={self.num_classes}, batch={self.batch_size}/{self.eval_batch_size}, "
                f"device={self.device}{where})")

    __repr__ = __str__ = describe  # Lightning's own __str__ iterates the loaders
