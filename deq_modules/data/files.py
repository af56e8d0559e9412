"""A dataset's files on disk: finding them, downloading them, checking them and reading them.

IDX datasets (MNIST, Fashion-MNIST, EMNIST-MNIST) are found in torchvision's layout under
``data_dir`` (``MNIST/raw``, ``FashionMNIST/raw``, ``EMNIST/raw``), flat in ``data_dir`` (e.g.
Debian's /usr/share/datasets/fashion-mnist) or in ``data_dir/gzip``, each file plain or ``.gz``.
CIFAR-10 is found in ``data_dir/cifar-10-batches-py`` (``data_dir`` may be that folder itself).
A missing dataset is a :class:`DatasetNotFoundError`; a file that is there but cannot be read is
a :class:`DatasetCorruptError` naming the dataset, the file and the fix. No Lightning here.
"""

from __future__ import annotations

import os
import pickle
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from .names import NUM_CLASSES, check_dataset_name
from .idx import IdxError, idx_dims, read_idx

Splits = dict[str, tuple[torch.Tensor, torch.Tensor]]  # {"train"/"test": (uint8 images (N, D), labels (N,))}

_DOWNLOAD_TIMEOUT_S = 30.0  # per socket operation; a machine without network fails fast
# IDX files per dataset: (torchvision's folder under data_dir, {split: (images, labels)}).
_IDX_FILES = {
    "mnist": ("MNIST/raw", {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                            "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}),
    "emnist-mnist": ("EMNIST/raw", {s: (f"emnist-mnist-{s}-images-idx3-ubyte",
                                        f"emnist-mnist-{s}-labels-idx1-ubyte") for s in ("train", "test")}),
}
_IDX_FILES["fashion-mnist"] = ("FashionMNIST/raw", _IDX_FILES["mnist"][1])
_IMAGE_DIMS = (28, 28)
_CIFAR_FOLDER = "cifar-10-batches-py"
_CIFAR_SPLITS = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
_CIFAR_META = "batches.meta"
_CIFAR_FILES = _CIFAR_SPLITS["train"] + _CIFAR_SPLITS["test"] + (_CIFAR_META,)
_TORCHVISION_CLASS = {"mnist": ("MNIST", {}), "fashion-mnist": ("FashionMNIST", {}),
                      "emnist-mnist": ("EMNIST", {"split": "mnist"}), "cifar10": ("CIFAR10", {})}


class DatasetNotFoundError(FileNotFoundError):
    """The dataset's files are not on disk (and could not be downloaded)."""


class DatasetCorruptError(DatasetNotFoundError):
    """A dataset file is on disk but cannot be read (damaged, truncated, or not the format).

    A kind of :class:`DatasetNotFoundError` (no usable copy was found), so code that handles a
    missing dataset handles this too. The message names the dataset, the file and the fix.
    """


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """``data_dir``, else ``$HOPFIELD_DATA_DIR``, else ``./data``, as an absolute path."""
    return Path(data_dir or os.environ.get("HOPFIELD_DATA_DIR") or "./data").expanduser().absolute()


# ---- finding ---------------------------------------------------------------------------------
def _names(dataset: str) -> tuple[str, ...]:
    if dataset == "cifar10":
        return _CIFAR_FILES
    return tuple(n for pair in _IDX_FILES[dataset][1].values() for n in pair)


def _folders(dataset: str, data_dir: Path) -> tuple[Path, ...]:
    """Where the files may be, in the order searched."""
    if dataset == "cifar10":
        return (data_dir / _CIFAR_FOLDER, data_dir.parent / _CIFAR_FOLDER)
    return (data_dir / _IDX_FILES[dataset][0], data_dir, data_dir / "gzip")


def _find(dataset: str, folder: Path, name: str) -> Path | None:
    """The file ``name`` in ``folder`` (IDX files plain or ``.gz``), or None."""
    suffixes = ("",) if dataset == "cifar10" else ("", ".gz")
    return next((folder / f"{name}{s}" for s in suffixes if (folder / f"{name}{s}").is_file()), None)


def _complete_folder(dataset: str, data_dir: Path) -> Path | None:
    """The first folder holding every file of ``dataset``, or None."""
    return next((d for d in _folders(dataset, data_dir)
                 if all(_find(dataset, d, n) is not None for n in _names(dataset))), None)


def idx_files(dataset: str, data_dir: Path) -> dict[str, tuple[Path, Path]] | None:
    """Paths of the (images, labels) IDX files per split, or None if some are missing."""
    folder = _complete_folder(dataset, data_dir)
    if folder is None:
        return None
    return {split: (_find(dataset, folder, images), _find(dataset, folder, labels))
            for split, (images, labels) in _IDX_FILES[dataset][1].items()}


def cifar_folder(data_dir: Path) -> Path | None:
    """The ``cifar-10-batches-py`` folder holding every CIFAR-10 file, or None."""
    return _complete_folder("cifar10", data_dir)


def on_disk(dataset: str, data_dir: Path) -> bool:
    """Whether every file of ``dataset`` is found under ``data_dir`` (``synthetic``: always)."""
    return dataset == "synthetic" or _complete_folder(dataset, data_dir) is not None


def not_found(dataset: str, data_dir: Path, cause: str = "") -> DatasetNotFoundError:
    """The error for a dataset whose files are not (all) under ``data_dir``: what is expected where."""
    names, folders = _names(dataset), _folders(dataset, data_dir)
    if dataset == "cifar10":
        where = f"in {folders[0]}"
    else:
        where = f"in {folders[0]} or directly in {data_dir} (plain or .gz)"
    partial = ""
    for folder in folders:  # a folder with some of the files: say which ones it lacks
        missing = [n for n in names if _find(dataset, folder, n) is None]
        if 0 < len(missing) < len(names):
            partial = f" {folder} lacks {', '.join(missing)}."
            break
    return DatasetNotFoundError(
        f"dataset {dataset!r} not found under {data_dir}. Expected {where}: "
        f"{', '.join(names)}.{partial}{(' ' + cause) if cause else ''} To fix: pass data_dir=..., "
        f"set HOPFIELD_DATA_DIR, or allow download=True on a machine with internet access.")


def corrupt(dataset: str, path: Path, problem: str) -> DatasetCorruptError:
    """The error for a file of ``dataset`` that is there but unusable, and what to do about it."""
    return DatasetCorruptError(
        f"dataset {dataset!r}: cannot use {path}: {problem}. The file is damaged, incomplete (e.g. "
        f"an interrupted download or copy) or not the expected one. To fix: delete it, so that the next run with "
        f"download=True downloads it again, or point data_dir (--data-dir, HOPFIELD_DATA_DIR) at "
        f"an intact copy.")


# ---- downloading -----------------------------------------------------------------------------
def fetch_dataset(dataset: str, data_dir: Path, download: bool) -> None:
    """Make sure every file is on disk, downloading missing ones with torchvision if allowed."""
    if on_disk(dataset, data_dir):
        return
    if not download:
        raise not_found(dataset, data_dir, "Download is disabled (download=False).")
    import torchvision  # only when downloading: keeps importing this module light

    name, kwargs = _TORCHVISION_CLASS[dataset]
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(_DOWNLOAD_TIMEOUT_S)  # torchvision's urlopen sets no timeout
    try:
        for train in (True, False):
            getattr(torchvision.datasets, name)(root=str(data_dir), train=train, download=True, **kwargs)
    except (OSError, RuntimeError) as err:  # URLError is an OSError
        raise not_found(dataset, data_dir, f"Download failed ({type(err).__name__}: {err}).") from err
    finally:
        socket.setdefaulttimeout(previous)
    if not on_disk(dataset, data_dir):
        raise not_found(dataset, data_dir, "Download finished but the files are still missing.")


# ---- checking and reading --------------------------------------------------------------------
@contextmanager
def _reading(dataset: str, path: Path) -> Iterator[None]:
    try:
        yield
    except IdxError as err:
        raise corrupt(dataset, path, err.problem) from err
    except OSError as err:  # e.g. a folder or an unreadable file where the file should be
        raise corrupt(dataset, path, f"{type(err).__name__}: {err}") from err


def _labels_for(dataset: str, label_path: Path, image_path: Path, image_dims: tuple[int, ...]) -> torch.Tensor:
    """The labels in ``label_path`` of the images in ``image_path`` (dims ``image_dims``), once
    both are checked: 28x28 images, one label in 0..9 per image."""
    if image_dims[1:] != _IMAGE_DIMS:
        raise corrupt(dataset, image_path, f"holds an array of shape {list(image_dims)}, expected "
                                           f"[N, {_IMAGE_DIMS[0]}, {_IMAGE_DIMS[1]}] images")
    with _reading(dataset, label_path):
        labels = read_idx(label_path).long()
    if labels.dim() != 1 or len(labels) != image_dims[0]:
        raise corrupt(dataset, label_path, f"holds labels of shape {list(labels.shape)} for the "
                                           f"{image_dims[0]} images of {image_path.name}")
    if len(labels) and int(labels.max()) >= NUM_CLASSES:
        raise corrupt(dataset, label_path, f"holds label {int(labels.max())}, outside 0..{NUM_CLASSES - 1}")
    return labels


def _cifar_batch(path: Path) -> dict[str, Any]:
    """One unpickled CIFAR-10 file, checked for the keys and shapes that torchvision reads."""
    try:
        with open(path, "rb") as f:
            entry = pickle.load(f, encoding="latin1")
    except Exception as err:  # unpickling foreign bytes can raise almost any exception type
        raise corrupt("cifar10", path, f"not a readable pickle ({type(err).__name__}: {err})") from err
    if path.name == _CIFAR_META:
        if not isinstance(entry, dict) or "label_names" not in entry:
            raise corrupt("cifar10", path, "expected a dict with 'label_names'")
        return entry
    entry = entry if isinstance(entry, dict) else {}
    shape, labels = getattr(entry.get("data"), "shape", None), entry.get("labels")
    if (shape is None or len(shape) != 2 or shape[1] != 3 * 32 * 32
            or not hasattr(labels, "__len__") or len(labels) != shape[0]):
        raise corrupt("cifar10", path, "expected a dict with 'data' of shape (N, 3072) and N 'labels'")
    return entry


def _check_cifar(folder: Path) -> dict[str, int]:
    """Images per split after reading every CIFAR-10 file."""
    counts = {split: sum(len(_cifar_batch(folder / n)["labels"]) for n in names)
              for split, names in _CIFAR_SPLITS.items()}
    _cifar_batch(folder / _CIFAR_META)
    return counts


def check_dataset(name: str, data_dir: str | os.PathLike | None = None, download: bool = True) -> str:
    """Find (or download) a dataset and read every file it needs: one check before a sweep.

    IDX files are read whole (magic, dims, payload length; ``.gz`` decompressed, about a second
    for MNIST) and their labels checked against their images; every CIFAR-10 file is unpickled
    and its shapes checked. Returns one line, e.g.
    ``"fashion-mnist: 60000 train / 10000 test images in /usr/share/datasets/fashion-mnist"``.

    Raises ``ValueError`` for an unknown name, :class:`DatasetNotFoundError` for missing files
    (download disabled or failed) and :class:`DatasetCorruptError` for a file that is there but
    unreadable (the message names the file and says what to do).
    """
    check_dataset_name(name)
    if name == "synthetic":
        return "synthetic: generated in memory, no files"
    data_dir = resolve_data_dir(data_dir)
    fetch_dataset(name, data_dir, download)
    if name == "cifar10":
        where = cifar_folder(data_dir)
        counts = _check_cifar(where)
    else:
        files = idx_files(name, data_dir)
        counts = {}
        for split, (image_path, label_path) in files.items():
            with _reading(name, image_path):
                dims = idx_dims(image_path)
            counts[split] = len(_labels_for(name, label_path, image_path, dims))
        where = files["train"][0].parent
    return f"{name}: {counts['train']} train / {counts['test']} test images in {where}"


def load_dataset(name: str, data_dir: Path) -> Splits:
    """Train and test as uint8 images (N, D), upright and row-major (CIFAR-10: HWC), and labels."""
    if not on_disk(name, data_dir):
        raise not_found(name, data_dir)
    if name == "cifar10":
        return _load_cifar(cifar_folder(data_dir))
    out = {}
    for split, (image_path, label_path) in idx_files(name, data_dir).items():
        with _reading(name, image_path):
            images = read_idx(image_path)
        labels = _labels_for(name, label_path, image_path, tuple(images.shape))
        if name == "emnist-mnist":
            images = images.transpose(1, 2)  # EMNIST is stored transposed; make digits upright
        out[split] = (images.reshape(len(images), -1).contiguous(), labels)
    return out


def _load_cifar(folder: Path) -> Splits:
    from torchvision.datasets import CIFAR10

    out = {}
    for split in ("train", "test"):
        try:
            ds = CIFAR10(str(folder.parent), train=split == "train", download=False)
        except Exception as err:  # torchvision's md5 check (RuntimeError) or an unpicklable batch
            _check_cifar(folder)  # names the unreadable file, if one is
            raise corrupt("cifar10", folder, f"torchvision cannot load it ({type(err).__name__}: {err})") from err
        out[split] = (torch.from_numpy(ds.data).reshape(len(ds.data), -1),  # HWC flattened
                      torch.tensor(ds.targets, dtype=torch.long))
    return out
