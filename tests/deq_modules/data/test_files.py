"""Tests of deq_modules/data/files.py: missing, damaged and good datasets on disk; no network."""

from __future__ import annotations

import gzip
import pickle
import random
import re
from urllib.error import URLError

import pytest
import torchvision

from deq_modules.data.datamodule import HopfieldDataModule
from deq_modules.data.files import DatasetCorruptError, DatasetNotFoundError, check_dataset

IDX_DATASETS = ["mnist", "fashion-mnist", "emnist-mnist"]


def assert_says_what_to_do(err: Exception, dataset: str, path) -> None:
    message = str(err)
    assert repr(dataset) in message and str(path) in message, message
    assert "delete it" in message and "--data-dir" in message, message


# ---- missing files -----------------------------------------------------------------------------
@pytest.mark.parametrize("dataset", IDX_DATASETS + ["cifar10"])
def test_missing_files_give_one_clear_error(tmp_path, dataset):
    dm = HopfieldDataModule(dataset, data_dir=tmp_path, download=False)
    expected_file = "data_batch_1" if dataset == "cifar10" else "labels-idx1-ubyte"
    calls = (dm.prepare_data, dm.setup, lambda: check_dataset(dataset, tmp_path, download=False))
    for call in calls:
        with pytest.raises(DatasetNotFoundError) as info:
            call()
        message = str(info.value)
        assert isinstance(info.value, FileNotFoundError) and not isinstance(info.value, DatasetCorruptError)
        assert repr(dataset) in message and str(tmp_path) in message and expected_file in message
        assert "HOPFIELD_DATA_DIR" in message and "download" in message


def test_one_missing_file_is_named(tmp_path, tiny):
    tiny.write_dataset(tmp_path, "mnist", flat=True)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetNotFoundError, match=re.escape(str(tmp_path)) + ".*t10k-labels-idx1-ubyte"):
        check_dataset("mnist", tmp_path, download=False)


@pytest.mark.parametrize("dataset,cls", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST"),
                                         ("emnist-mnist", "EMNIST"), ("cifar10", "CIFAR10")])
def test_failed_download_is_wrapped(tmp_path, monkeypatch, dataset, cls):
    def offline(self):
        raise URLError("no network here")

    monkeypatch.setattr(getattr(torchvision.datasets, cls), "download", offline)
    for call in (HopfieldDataModule(dataset, data_dir=tmp_path, download=True).prepare_data,
                 lambda: check_dataset(dataset, tmp_path)):
        with pytest.raises(DatasetNotFoundError, match="no network here") as info:
            call()
        assert isinstance(info.value.__cause__, URLError) and str(tmp_path) in str(info.value)


# ---- damaged files -----------------------------------------------------------------------------
def damage(path, kind: str) -> None:
    """Damage a written ``.gz`` IDX file in place."""
    compressed = path.read_bytes()
    plain = gzip.decompress(compressed)
    path.write_bytes({
        "random-bytes": random.Random(0).randbytes(len(compressed)),
        "truncated-gzip": compressed[: len(compressed) // 2],
        "truncated-idx": gzip.compress(plain[:-10]),
        "wrong-magic": gzip.compress(b"\x00\x00\x0b" + plain[3:]),
    }[kind])


@pytest.mark.parametrize("kind", ["random-bytes", "truncated-gzip", "truncated-idx", "wrong-magic"])
@pytest.mark.parametrize("file", ["train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"])
def test_damaged_idx_file_is_one_clear_error_naming_it(tmp_path, tiny, kind, file):
    tiny.write_dataset(tmp_path, "fashion-mnist")
    path = tmp_path / "FashionMNIST/raw" / file
    damage(path, kind)
    dm = HopfieldDataModule("fashion-mnist", data_dir=tmp_path, download=True)
    dm.prepare_data()  # the file is there: nothing to download, nothing read
    for call in (dm.setup, lambda: check_dataset("fashion-mnist", tmp_path)):
        with pytest.raises(DatasetCorruptError) as info:
            call()
        assert isinstance(info.value, DatasetNotFoundError)  # caught where a missing dataset is
        assert_says_what_to_do(info.value, "fashion-mnist", path)


def test_labels_that_do_not_fit_the_images_are_named(tmp_path, tiny):
    tiny.write_dataset(tmp_path, "mnist", gz=False)
    raw = tmp_path / "MNIST/raw"
    tiny.write_idx(raw / "t10k-labels-idx1-ubyte", tiny.known_labels(tiny.N_TEST - 1), gz=False)
    with pytest.raises(DatasetCorruptError,  # the file, its labels' length, the images'
                       match=re.escape(str(raw / "t10k-labels-idx1-ubyte"))
                       + rf".*\b{tiny.N_TEST - 1}\b.*\b{tiny.N_TEST}\b"):
        check_dataset("mnist", tmp_path)
    tiny.write_idx(raw / "t10k-labels-idx1-ubyte", tiny.known_labels(tiny.N_TEST) + 10, gz=False)
    with pytest.raises(DatasetCorruptError, match=r"t10k-labels-idx1-ubyte.*\b19\b.*\b9\b"):
        HopfieldDataModule("mnist", data_dir=tmp_path).setup()
    tiny.write_dataset(tmp_path, "mnist", gz=False)
    tiny.write_idx(raw / "train-images-idx3-ubyte", tiny.known_images(tiny.N_TRAIN, 0)[:, :27], gz=False)
    with pytest.raises(DatasetCorruptError, match=r"train-images-idx3-ubyte.*\[50, 27, 28\]"):
        check_dataset("mnist", tmp_path)


@pytest.mark.parametrize("file", ["data_batch_3", "test_batch", "batches.meta"])
@pytest.mark.parametrize("kind", ["random-bytes", "truncated", "wrong-content"])
def test_damaged_cifar_file_is_one_clear_error_naming_it(tmp_path, tiny, monkeypatch, file, kind):
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args: True)  # fake batches
    tiny.write_cifar(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / file
    data = path.read_bytes()
    path.write_bytes({"random-bytes": random.Random(0).randbytes(len(data)), "truncated": data[: len(data) // 2],
                      "wrong-content": pickle.dumps([1, 2])}[kind])
    for call in (HopfieldDataModule("cifar10", data_dir=tmp_path).setup, lambda: check_dataset("cifar10", tmp_path)):
        with pytest.raises(DatasetCorruptError) as info:
            call()
        assert_says_what_to_do(info.value, "cifar10", path)


# ---- good files --------------------------------------------------------------------------------
@pytest.mark.parametrize("flat", [False, True], ids=["torchvision", "flat"])
@pytest.mark.parametrize("gz", [True, False], ids=["gz", "plain"])
@pytest.mark.parametrize("dataset", IDX_DATASETS)
def test_good_idx_dataset_passes_with_its_sizes(tmp_path, tiny, dataset, gz, flat):
    tiny.write_dataset(tmp_path, dataset, gz=gz, flat=flat)
    where = tmp_path if flat else tmp_path / tiny.LAYOUT[dataset][0]
    assert check_dataset(dataset, tmp_path, download=False) == f"{dataset}: 50 train / 20 test images in {where}"


def test_good_cifar10_passes_with_its_sizes(tmp_path, tiny):
    tiny.write_cifar(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    expected = f"cifar10: {5 * tiny.CIFAR_N} train / {tiny.CIFAR_N} test images in {folder}"
    assert check_dataset("cifar10", tmp_path) == expected
    assert check_dataset("cifar10", folder) == expected  # data_dir may be the folder itself


def test_data_dir_defaults_to_the_environment_variable(tmp_path, tiny, monkeypatch):
    tiny.write_dataset(tmp_path, "emnist-mnist")
    monkeypatch.setenv("HOPFIELD_DATA_DIR", str(tmp_path))
    assert check_dataset("emnist-mnist", download=False).startswith("emnist-mnist: 50 train / 20 test")


def test_synthetic_and_unknown_names():
    assert check_dataset("synthetic").startswith("synthetic:")
    with pytest.raises(ValueError, match=r"'emnist'.*\bemnist-mnist\b"):
        check_dataset("emnist")


def test_real_fashion_mnist_passes(real_fashion_mnist):
    assert check_dataset("fashion-mnist", real_fashion_mnist, download=False) == (
        f"fashion-mnist: 60000 train / 10000 test images in {real_fashion_mnist}")
