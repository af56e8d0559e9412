"""Data for the Hopfield DEQs: one LightningDataModule for EMNIST-MNIST (the paper's data),
MNIST, Fashion-MNIST, CIFAR-10 and a generated ``synthetic`` set.

Images are flattened and scaled to [0, 1]; targets are one-hot (the models are trained with MSE
against one-hot targets, Appendix F). As in the paper, each whole dataset lives on the training
device; it is kept there as uint8 (4x smaller than float32) and each batch is converted on the fly.
"""

from __future__ import annotations

import gzip
import os
import socket
from pathlib import Path
from typing import Any, Callable, Iterator

import lightning as L
import torch
import torch.nn.functional as F

DATASETS = ("emnist-mnist", "mnist", "fashion-mnist", "cifar10", "synthetic")
NUM_CLASSES = 10
_DOWNLOAD_TIMEOUT_S = 30.0  # per socket operation; a machine without network fails fast

# IDX files per dataset: (torchvision's folder under data_dir, {split: (images, labels)}).
_IDX_FILES = {
    "mnist": ("MNIST/raw", {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                            "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}),
    "emnist-mnist": ("EMNIST/raw", {s: (f"emnist-mnist-{s}-images-idx3-ubyte",
                                        f"emnist-mnist-{s}-labels-idx1-ubyte") for s in ("train", "test")}),
}
_IDX_FILES["fashion-mnist"] = ("FashionMNIST/raw", _IDX_FILES["mnist"][1])
_CIFAR_FOLDER = "cifar-10-batches-py"
_CIFAR_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")
_TORCHVISION_CLASS = {"mnist": ("MNIST", {}), "fashion-mnist": ("FashionMNIST", {}),
                      "emnist-mnist": ("EMNIST", {"split": "mnist"}), "cifar10": ("CIFAR10", {})}
_SYNTHETIC_DEFAULTS = dict(n_train=2000, n_test=500, input_size=784, noise=0.5, seed=0)


class DatasetNotFoundError(FileNotFoundError):
    """The dataset's files are not on disk (and could not be downloaded)."""


def read_idx(path: str | os.PathLike) -> torch.Tensor:
    """Read an IDX file of unsigned bytes (plain or ``.gz``) into a uint8 tensor of its dims.

    Format: two zero bytes, a type byte (0x08 = uint8), the number of dims, each dim as a
    big-endian int32, then the row-major payload.
    """
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path}: not an IDX file of unsigned bytes (magic {raw[:4].hex()})")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    offset, count = 4 + 4 * ndim, 1
    for d in dims:
        count *= d
    if len(raw) - offset != count:
        raise ValueError(f"{path}: header says {dims} ({count} bytes), payload has {len(raw) - offset}")
    return torch.frombuffer(bytearray(raw[offset:]), dtype=torch.uint8).reshape(dims)


def make_synthetic(n_train: int = 2000, n_test: int = 500, input_size: int = 784,
                   noise: float = 0.5, seed: int = 0) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """A learnable, MNIST-shaped stand-in: sparse random class prototypes plus Gaussian noise.

    Each prototype inks ~25% of the pixels (like a digit's strokes). The noise makes single
    pixels ambiguous between classes, yet whole images stay near their own prototype, so
    nearest-prototype accuracy is ~100%. Returns {"train"/"test": (uint8 images (N, D), labels (N,))}.
    """
    g = torch.Generator().manual_seed(seed)
    ink = torch.rand(NUM_CLASSES, input_size, generator=g) < 0.25
    prototypes = ink * (0.5 + 0.5 * torch.rand(NUM_CLASSES, input_size, generator=g))

    def sample(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(n) % NUM_CLASSES  # balanced classes, then shuffled
        labels = labels[torch.randperm(n, generator=g)]
        x = prototypes[labels] + noise * torch.randn(n, input_size, generator=g)
        return (x.clamp(0, 1) * 255).round().to(torch.uint8), labels

    return {"train": sample(n_train), "test": sample(n_test)}


class DeviceBatchLoader:
    """Batches ``(x, y_onehot)`` from uint8 tensors already on the device; no worker processes.

    Every sample is served once per epoch, the last partial batch included. Training order is a
    permutation from a generator seeded with ``seed + epoch`` (epoch from ``epoch_fn``, else
    counted per ``iter()``); evaluation order is fixed. Under DDP, rank r takes indices
    r::world_size; training shards are padded to equal length (as DistributedSampler does),
    because ranks with different batch counts would hang in the gradient all-reduce.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, *,
                 train: bool = False, seed: int = 0, rank: int = 0, world_size: int = 1,
                 epoch_fn: Callable[[], int] | None = None) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.images, self.labels, self.batch_size = images, labels, batch_size
        self.train, self.seed, self.rank, self.world_size = train, seed, rank, world_size
        self.epoch_fn, self.epoch = epoch_fn, 0

    def _num_local(self) -> int:
        n = len(self.labels)
        if self.train:
            return -(-n // self.world_size)
        return len(range(self.rank, n, self.world_size))

    def __len__(self) -> int:
        return -(-self._num_local() // self.batch_size)

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
        indices = self._indices().to(self.images.device)  # drawn now: iter() marks the epoch
        return self._batches(indices)

    def _batches(self, indices: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, len(indices), self.batch_size):
            idx = indices[start: start + self.batch_size]
            x = self.images[idx].float().div_(255)
            yield x, F.one_hot(self.labels[idx], NUM_CLASSES).float()


class HopfieldDataModule(L.LightningDataModule):
    """Flattened [0, 1] images and one-hot targets for the Hopfield DEQs, held on the device.

    Args:
        dataset: one of ``DATASETS``; ``emnist-mnist`` is the paper's data.
        data_dir: where the files are; else ``$HOPFIELD_DATA_DIR``; else ``./data``. IDX files
            are found in torchvision's layout (``MNIST/raw``, ``FashionMNIST/raw``, ``EMNIST/raw``)
            or flat in ``data_dir`` (e.g. Debian's /usr/share/datasets/fashion-mnist), plain or
            ``.gz``; CIFAR-10 in ``data_dir/cifar-10-batches-py``.
        batch_size / eval_batch_size: training / evaluation batch (the latter defaults to the former).
        download: fetch missing files with torchvision in ``prepare_data()``.
        val_size: 0 (the paper's setting) trains on the full train set and the val loader serves
            the TEST set: the paper reports test numbers only and selects no model on them.
            k > 0 holds out k train samples (chosen with ``seed``) as a real validation set.
        seed: seeds the training shuffle (``seed + epoch``) and the held-out split.
        synthetic_kwargs: for ``synthetic``: n_train, n_test, input_size, noise, seed.
    """

    def __init__(self, dataset: str = "emnist-mnist", data_dir: str | os.PathLike | None = None,
                 batch_size: int = 64, eval_batch_size: int | None = None, download: bool = True,
                 val_size: int = 0, seed: int = 0, synthetic_kwargs: dict[str, Any] | None = None) -> None:
        super().__init__()
        if dataset not in DATASETS:
            raise ValueError(f"unknown dataset {dataset!r}; valid: {', '.join(DATASETS)}")
        unknown = set(synthetic_kwargs or {}) - set(_SYNTHETIC_DEFAULTS)
        if unknown:
            raise ValueError(f"unknown synthetic_kwargs {sorted(unknown)}; valid: {', '.join(_SYNTHETIC_DEFAULTS)}")
        if val_size < 0:
            raise ValueError(f"val_size must be >= 0, got {val_size}")
        self.save_hyperparameters()
        self.dataset = dataset
        self.data_dir = Path(data_dir or os.environ.get("HOPFIELD_DATA_DIR") or "./data").expanduser().absolute()
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.synthetic = {**_SYNTHETIC_DEFAULTS, **(synthetic_kwargs or {})}
        # Known before setup(): the model is built from them first.
        self.input_size = {"cifar10": 3072, "synthetic": self.synthetic["input_size"]}.get(dataset, 784)
        self.num_classes = NUM_CLASSES
        self.device = torch.device("cpu")
        self.splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    # ---- locating files -------------------------------------------------------------------
    def _cifar_root(self) -> Path | None:
        """The root holding cifar-10-batches-py (data_dir may also be that folder itself)."""
        for root in (self.data_dir, self.data_dir.parent):
            if all((root / _CIFAR_FOLDER / f).is_file() for f in _CIFAR_FILES):
                return root
        return None

    def _idx_files(self) -> dict[str, tuple[Path, Path]] | None:
        """Paths of the (images, labels) IDX files per split, or None if some are missing."""
        folder, names = _IDX_FILES[self.dataset]
        for d in (self.data_dir / folder, self.data_dir, self.data_dir / "gzip"):
            found = {split: tuple(self._variant(d, n) for n in pair) for split, pair in names.items()}
            if all(p is not None for pair in found.values() for p in pair):
                return found  # type: ignore[return-value]
        return None

    def _on_disk(self) -> bool:
        if self.dataset == "synthetic":
            return True
        return (self._cifar_root() if self.dataset == "cifar10" else self._idx_files()) is not None

    @staticmethod
    def _variant(directory: Path, name: str) -> Path | None:
        for candidate in (directory / name, directory / f"{name}.gz"):
            if candidate.is_file():
                return candidate
        return None

    def _not_found(self, cause: str = "") -> DatasetNotFoundError:
        if self.dataset == "cifar10":
            where = f"in {self.data_dir / _CIFAR_FOLDER}"
            files = _CIFAR_FILES
        else:
            folder, names = _IDX_FILES[self.dataset]
            where = f"in {self.data_dir / folder} or directly in {self.data_dir} (plain or .gz)"
            files = tuple(n for pair in names.values() for n in pair)
        return DatasetNotFoundError(
            f"dataset {self.dataset!r} not found under {self.data_dir}. Expected {where}: "
            f"{', '.join(files)}.{(' ' + cause) if cause else ''} To fix: pass data_dir=..., set "
            f"HOPFIELD_DATA_DIR, or allow download=True on a machine with internet access.")

    # ---- Lightning hooks ------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Download missing files through torchvision (Lightning runs this on one process)."""
        if self._on_disk():
            return
        if not self.hparams.download:
            raise self._not_found("Download is disabled (download=False).")
        import torchvision  # only when downloading: keeps importing this module light

        name, kwargs = _TORCHVISION_CLASS[self.dataset]
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(_DOWNLOAD_TIMEOUT_S)  # torchvision's urlopen sets no timeout
        try:
            for train in (True, False):
                getattr(torchvision.datasets, name)(root=str(self.data_dir), train=train, download=True, **kwargs)
        except (OSError, RuntimeError) as err:  # URLError is an OSError
            raise self._not_found(f"Download failed ({type(err).__name__}: {err}).") from err
        finally:
            socket.setdefaulttimeout(previous)
        if not self._on_disk():
            raise self._not_found("Download finished but the files are still missing.")

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

    def _load(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        if self.dataset == "synthetic":
            return make_synthetic(**self.synthetic)
        if not self._on_disk() and self.hparams.download and self.trainer is None:
            self.prepare_data()  # plain scripts may call setup() alone; Lightning already did this
        if not self._on_disk():
            raise self._not_found()
        if self.dataset == "cifar10":
            from torchvision.datasets import CIFAR10

            out = {}
            for split in ("train", "test"):
                ds = CIFAR10(str(self._cifar_root()), train=split == "train", download=False)
                out[split] = (torch.from_numpy(ds.data).reshape(len(ds.data), -1),  # HWC flattened
                              torch.tensor(ds.targets, dtype=torch.long))
            return out
        out = {}
        for split, (image_path, label_path) in self._idx_files().items():
            images, labels = read_idx(image_path), read_idx(label_path).long()
            if self.dataset == "emnist-mnist":
                images = images.transpose(1, 2)  # EMNIST is stored transposed; make digits upright
            if len(images) != len(labels) or int(labels.max()) >= NUM_CLASSES:
                raise ValueError(f"{image_path}, {label_path}: {len(images)} images vs {len(labels)} labels "
                                 f"or labels outside 0..{NUM_CLASSES - 1}")
            out[split] = (images.reshape(len(images), -1).contiguous(), labels)
        return out

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
            epoch_fn=(lambda: trainer.current_epoch) if trainer and train else None)

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
