"""Tiny datasets written in the real files' formats (torchvision's layout), shared by the data tests.

The test modules cannot import each other (import-mode=importlib), so the ``tiny`` fixture hands
out these helpers.
"""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

N_TRAIN, N_TEST = 50, 20
LAYOUT = {  # torchvision's folder and file prefix per dataset
    "mnist": ("MNIST/raw", "train", "t10k", ""),
    "fashion-mnist": ("FashionMNIST/raw", "train", "t10k", ""),
    "emnist-mnist": ("EMNIST/raw", "train", "test", "emnist-mnist-"),
}
CIFAR_N = 4  # images per CIFAR-10 batch file
FMNIST_DIR = Path(os.environ.get("HOPFIELD_FMNIST_DIR", "/usr/share/datasets/fashion-mnist"))


def known_images(n: int, offset: int) -> torch.Tensor:
    """n upright 28x28 uint8 images, not symmetric; pixel (0, 0) holds the sample's index."""
    pixels = (torch.arange(784) * 3 + 7 * (torch.arange(n)[:, None] + offset)) % 256
    pixels[:, 0] = torch.arange(n)
    return pixels.to(torch.uint8).reshape(n, 28, 28)


def known_labels(n: int) -> torch.Tensor:
    return (torch.arange(n) * 3 + 1) % 10


def idx_bytes(array: torch.Tensor) -> bytes:
    """An IDX file of unsigned bytes holding ``array``."""
    header = bytes([0, 0, 0x08, array.dim()]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.to(torch.uint8).contiguous().numpy().tobytes()


def write_idx(path: Path, array: torch.Tensor, gz: bool) -> Path:
    """Write ``array`` as IDX to ``path`` (``path.gz`` if ``gz``); the file written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = Path(f"{path}.gz")
        with gzip.open(path, "wb") as f:
            f.write(idx_bytes(array))
    else:
        path.write_bytes(idx_bytes(array))
    return path


def write_dataset(root: Path, dataset: str, gz: bool = True, flat: bool = False) -> dict[str, tuple]:
    """Write train/test IDX files; EMNIST's are stored transposed, like the real ones.

    Returns {split: (upright images, labels)}.
    """
    folder, train_name, test_name, prefix = LAYOUT[dataset]
    directory = root if flat else root / folder
    expected = {}
    for split, name, n, offset in (("train", train_name, N_TRAIN, 0), ("test", test_name, N_TEST, 100)):
        images, labels = known_images(n, offset), known_labels(n)
        stored = images.transpose(1, 2) if dataset == "emnist-mnist" else images
        write_idx(directory / f"{prefix}{name}-images-idx3-ubyte", stored, gz)
        write_idx(directory / f"{prefix}{name}-labels-idx1-ubyte", labels, gz)
        expected[split] = (images, labels)
    return expected


def write_cifar(root: Path) -> dict[str, np.ndarray]:
    """Fake CIFAR-10 batches (CIFAR_N images each) in ``root/cifar-10-batches-py``; {file: CHW images}."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    chw = {name: rng.integers(0, 256, (CIFAR_N, 3, 32, 32), dtype=np.uint8)
           for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]}
    for name, data in chw.items():
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data.reshape(CIFAR_N, -1), "labels": [1, 2, 3, 4]}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [str(i) for i in range(10)]}, f)
    return chw


def collect(loader) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """All batches of ``loader`` concatenated, and the batch sizes."""
    batches = list(loader)
    sizes = [len(x) for x, _ in batches]
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches]), sizes


def served_indices(x: torch.Tensor) -> list[int]:
    """The sample indices held in pixel 0 of served [0, 1] images."""
    return (x[:, 0] * 255).round().long().tolist()


@pytest.fixture
def tiny() -> SimpleNamespace:
    """The helpers and sizes above."""
    return SimpleNamespace(
        N_TRAIN=N_TRAIN, N_TEST=N_TEST, LAYOUT=LAYOUT, CIFAR_N=CIFAR_N,
        known_images=known_images, known_labels=known_labels, idx_bytes=idx_bytes, write_idx=write_idx,
        write_dataset=write_dataset, write_cifar=write_cifar, collect=collect, served_indices=served_indices)


@pytest.fixture
def real_fashion_mnist() -> Path:
    """The folder of the real Fashion-MNIST files (Debian's dataset-fashion-mnist); skip if absent."""
    if not any((FMNIST_DIR / f).exists() for f in ("train-images-idx3-ubyte.gz", "train-images-idx3-ubyte",
                                                   "FashionMNIST/raw/train-images-idx3-ubyte")):
        pytest.skip(f"real Fashion-MNIST not in {FMNIST_DIR}")
    return FMNIST_DIR
