"""Tests of deq_modules/data.py on tiny IDX files written here: no network, CPU, seconds."""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path
from types import SimpleNamespace
from urllib.error import URLError

import lightning as L
import numpy as np
import pytest
import torch
import torchvision

from deq_modules.data import (DATASETS, DatasetNotFoundError, DeviceBatchLoader, HopfieldDataModule,
                              make_synthetic, read_idx)

N_TRAIN, N_TEST = 50, 20
LAYOUT = {  # torchvision's folder and file prefix per dataset
    "mnist": ("MNIST/raw", "train", "t10k", ""),
    "fashion-mnist": ("FashionMNIST/raw", "train", "t10k", ""),
    "emnist-mnist": ("EMNIST/raw", "train", "test", "emnist-mnist-"),
}


def known_images(n: int, offset: int) -> torch.Tensor:
    """n upright 28x28 uint8 images, not symmetric; pixel (0, 0) holds the sample's index."""
    pixels = (torch.arange(784) * 3 + 7 * (torch.arange(n)[:, None] + offset)) % 256
    pixels[:, 0] = torch.arange(n)
    return pixels.to(torch.uint8).reshape(n, 28, 28)


def known_labels(n: int) -> torch.Tensor:
    return (torch.arange(n) * 3 + 1) % 10


def write_idx(path: Path, array: torch.Tensor, gz: bool) -> None:
    header = bytes([0, 0, 0x08, array.dim()]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    payload = header + array.to(torch.uint8).contiguous().numpy().tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.open(f"{path}.gz", "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def write_dataset(root: Path, dataset: str, gz: bool = True, flat: bool = False) -> dict[str, tuple]:
    """Write train/test IDX files; EMNIST's are stored transposed, like the real ones."""
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


def collect(loader) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    batches = list(loader)
    sizes = [len(x) for x, _ in batches]
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches]), sizes


def served_indices(x: torch.Tensor) -> list[int]:
    return (x[:, 0] * 255).round().long().tolist()


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "plain"])
@pytest.mark.parametrize("dataset", list(LAYOUT))
def test_reads_torchvision_layout_exactly(tmp_path, dataset, gz):
    expected = write_dataset(tmp_path, dataset, gz=gz)
    dm = HopfieldDataModule(dataset, data_dir=tmp_path, download=False, batch_size=8, eval_batch_size=64)
    assert (dm.input_size, dm.num_classes) == (784, 10)
    dm.prepare_data()
    dm.setup()
    x, y, sizes = collect(dm.test_dataloader())
    images, labels = expected["test"]
    assert sizes == [N_TEST] and x.shape == (N_TEST, 784) and y.shape == (N_TEST, 10)
    assert x.dtype == y.dtype == torch.float32 and x.min() >= 0 and x.max() <= 1
    # Upright images (EMNIST transposed back), row-major flattened, divided by 255.
    torch.testing.assert_close(x, images.reshape(N_TEST, 784).double().div(255).float(), rtol=0, atol=1e-7)
    assert x[3, 28] == pytest.approx(float(images[3, 1, 0]) / 255) and images[3, 1, 0] != images[3, 0, 1]
    assert torch.equal(y.argmax(1), labels) and torch.equal(y.sum(1), torch.ones(N_TEST))
    train_x, _, _ = collect(dm.train_dataloader())
    assert sorted(served_indices(train_x)) == list(range(N_TRAIN))


def test_read_idx_rejects_bad_files(tmp_path):
    labels = torch.arange(7, dtype=torch.uint8)
    write_idx(tmp_path / "ok", labels, gz=False)
    assert torch.equal(read_idx(tmp_path / "ok"), labels)
    (tmp_path / "magic").write_bytes(b"\x00\x00\x0d\x01" + (7).to_bytes(4, "big") + bytes(28))
    (tmp_path / "short").write_bytes((tmp_path / "ok").read_bytes()[:-1])
    for name in ("magic", "short"):
        with pytest.raises(ValueError, match=name):
            read_idx(tmp_path / name)


def test_batches_serve_every_sample_once_and_shuffle_by_epoch(tmp_path):
    write_dataset(tmp_path, "mnist")
    dm = HopfieldDataModule("mnist", data_dir=tmp_path, batch_size=16, eval_batch_size=64, seed=3)
    dm.setup()
    train = dm.train_dataloader()
    assert len(train) == 4 and len(dm.test_dataloader()) == 1 and len(dm.val_dataloader()) == 1
    orders = []
    for _ in range(2):
        x, y, sizes = collect(train)
        assert sizes == [16, 16, 16, 2]
        orders.append(served_indices(x))
        assert sorted(orders[-1]) == list(range(N_TRAIN))
        assert torch.equal(y.argmax(1), known_labels(N_TRAIN)[orders[-1]])  # pairs stay together
    assert orders[0] != orders[1]
    again = HopfieldDataModule("mnist", data_dir=tmp_path, batch_size=16, seed=3)
    again.setup()
    assert served_indices(collect(again.train_dataloader())[0]) == orders[0]
    other = HopfieldDataModule("mnist", data_dir=tmp_path, batch_size=16, seed=4)
    other.setup()
    assert served_indices(collect(other.train_dataloader())[0]) != orders[0]
    test_x, _, _ = collect(dm.test_dataloader())
    assert served_indices(test_x) == list(range(N_TEST)) == served_indices(collect(dm.test_dataloader())[0])


def test_distributed_shards():
    images, labels = torch.arange(11, dtype=torch.uint8)[:, None], torch.arange(11) % 10
    evals = [served_indices(collect(DeviceBatchLoader(images, labels, 2, rank=r, world_size=3))[0])
             for r in range(3)]
    assert sorted(sum(evals, [])) == list(range(11))  # evaluation: each sample exactly once
    trains = [DeviceBatchLoader(images, labels, 2, train=True, seed=1, rank=r, world_size=3) for r in range(3)]
    served = [served_indices(collect(t)[0]) for t in trains]
    assert [len(s) for s in served] == [4, 4, 4] and [len(t) for t in trains] == [2, 2, 2]
    assert set(sum(served, [])) == set(range(11))  # padded to equal length, nothing left out


def fake_trainer(device: str, rank: int = 0, world_size: int = 1, epoch: int = 0) -> SimpleNamespace:
    """The attributes of a Trainer that the data module reads."""
    return SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device(device)),
                           global_rank=rank, world_size=world_size, current_epoch=epoch)


def test_follows_trainer_device_ranks_and_epoch(tmp_path):
    dm = HopfieldDataModule("synthetic", synthetic_kwargs=dict(n_train=30, n_test=7))
    dm.trainer = fake_trainer("meta")  # a device other than the CPU, without needing a GPU
    dm.setup()
    assert all(t.device.type == "meta" and t.dtype in (torch.uint8, torch.long)
               for pair in dm.splits.values() for t in pair)
    x, y = next(iter(dm.train_dataloader()))
    assert x.device.type == y.device.type == "meta" and x.dtype == torch.float32
    write_dataset(tmp_path, "mnist")
    shards = []
    for rank in range(2):
        dm = HopfieldDataModule("mnist", data_dir=tmp_path, batch_size=16, seed=2)
        dm.trainer = fake_trainer("cpu", rank=rank, world_size=2, epoch=5)
        dm.setup()
        shards.append(served_indices(collect(dm.test_dataloader())[0]))
        order = torch.randperm(N_TRAIN, generator=torch.Generator().manual_seed(2 + 5))
        assert served_indices(collect(dm.train_dataloader())[0]) == order[rank::2].tolist()
    assert sorted(shards[0] + shards[1]) == list(range(N_TEST)) and len(shards[0]) == N_TEST // 2


def test_val_size_holds_out_train_samples(tmp_path):
    write_dataset(tmp_path, "mnist")
    dm = HopfieldDataModule("mnist", data_dir=tmp_path, val_size=10, seed=5)
    dm.setup()
    train = served_indices(collect(dm.train_dataloader())[0])
    val = served_indices(collect(dm.val_dataloader())[0])
    assert len(val) == 10 and len(train) == 40 and sorted(train + val) == list(range(N_TRAIN))
    again = HopfieldDataModule("mnist", data_dir=tmp_path, val_size=10, seed=5)
    again.setup()
    assert served_indices(collect(again.val_dataloader())[0]) == val
    assert "val=10" in dm.describe() and "train=40" in dm.describe()


def test_flat_directory_layout(tmp_path):
    expected = write_dataset(tmp_path, "fashion-mnist", gz=True, flat=True)  # like Debian's package
    dm = HopfieldDataModule("fashion-mnist", data_dir=tmp_path, download=False)
    dm.setup()
    x, y, _ = collect(dm.test_dataloader())
    assert torch.equal(y.argmax(1), expected["test"][1]) and len(x) == N_TEST


def test_environment_variable_sets_data_dir(tmp_path, monkeypatch):
    write_dataset(tmp_path, "emnist-mnist")
    monkeypatch.setenv("HOPFIELD_DATA_DIR", str(tmp_path))
    dm = HopfieldDataModule("emnist-mnist", download=False)
    assert dm.data_dir == tmp_path
    dm.setup()
    assert len(collect(dm.train_dataloader())[0]) == N_TRAIN
    monkeypatch.delenv("HOPFIELD_DATA_DIR")
    assert HopfieldDataModule("emnist-mnist").data_dir == Path("data").absolute()


@pytest.mark.parametrize("dataset", ["mnist", "fashion-mnist", "emnist-mnist", "cifar10"])
def test_missing_files_give_one_clear_error(tmp_path, dataset):
    dm = HopfieldDataModule(dataset, data_dir=tmp_path, download=False)
    expected_file = "data_batch_1" if dataset == "cifar10" else "labels-idx1-ubyte"
    for call in (dm.prepare_data, dm.setup):
        with pytest.raises(DatasetNotFoundError) as info:
            call()
        message = str(info.value)
        assert isinstance(info.value, FileNotFoundError)
        assert repr(dataset) in message and str(tmp_path) in message and expected_file in message
        assert "HOPFIELD_DATA_DIR" in message and "download" in message


@pytest.mark.parametrize("dataset,cls", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST"),
                                         ("emnist-mnist", "EMNIST"), ("cifar10", "CIFAR10")])
def test_failed_download_is_wrapped(tmp_path, monkeypatch, dataset, cls):
    def offline(self):
        raise URLError("no network here")

    monkeypatch.setattr(getattr(torchvision.datasets, cls), "download", offline)
    dm = HopfieldDataModule(dataset, data_dir=tmp_path, download=True)
    with pytest.raises(DatasetNotFoundError, match="no network here") as info:
        dm.prepare_data()
    assert isinstance(info.value.__cause__, URLError) and str(tmp_path) in str(info.value)


def test_cifar10_is_flattened_hwc(tmp_path, monkeypatch):
    # torchvision checks md5 sums of the real files; these fake batches cannot pass that check.
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args: True)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    chw = {name: rng.integers(0, 256, (4, 3, 32, 32), dtype=np.uint8)
           for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]}
    for name, data in chw.items():
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data.reshape(4, -1), "labels": [1, 2, 3, 4]}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [str(i) for i in range(10)]}, f)
    dm = HopfieldDataModule("cifar10", data_dir=tmp_path, download=False)
    assert dm.input_size == 3072
    dm.setup()
    x, y, _ = collect(dm.test_dataloader())
    hwc = torch.from_numpy(chw["test_batch"].transpose(0, 2, 3, 1).reshape(4, -1).copy())
    torch.testing.assert_close(x, hwc.double().div(255).float(), rtol=0, atol=1e-7)
    assert y.argmax(1).tolist() == [1, 2, 3, 4] and len(collect(dm.train_dataloader())[0]) == 20


def test_invalid_arguments():
    with pytest.raises(ValueError) as info:
        HopfieldDataModule("emnist")
    assert "'emnist'" in str(info.value) and all(name in str(info.value) for name in DATASETS)
    with pytest.raises(ValueError, match="n_trian"):
        HopfieldDataModule("synthetic", synthetic_kwargs={"n_trian": 5})


def test_synthetic_is_deterministic_balanced_and_learnable():
    a, b, c = make_synthetic(seed=1), make_synthetic(seed=1), make_synthetic(seed=2)
    assert all(torch.equal(a[s][i], b[s][i]) for s in a for i in range(2))
    assert not torch.equal(a["train"][0], c["train"][0])
    dm = HopfieldDataModule("synthetic", batch_size=500)
    assert (dm.input_size, dm.num_classes) == (784, 10)
    dm.setup()
    x, y, _ = collect(dm.train_dataloader())
    xt, yt, _ = collect(dm.test_dataloader())
    assert x.shape == (2000, 784) and xt.shape == (500, 784) and 0 <= x.min() and x.max() <= 1
    counts = y.sum(0)
    assert counts.min() >= 150 and counts.max() <= 250
    # Nearest class mean, fit on train: a fast proxy for "a small HAM learns it".
    means = torch.stack([x[y[:, k] == 1].mean(0) for k in range(10)])
    accuracy = (torch.cdist(xt, means).argmin(1) == yt.argmax(1)).float().mean()
    assert accuracy >= 0.95
    # Not trivial: single pixels do not tell the classes apart.
    assert (x[y[:, 0] == 1, 5] - x[y[:, 1] == 1, 5].mean()).abs().mean() > 0.1
    small = HopfieldDataModule("synthetic", synthetic_kwargs=dict(n_train=30, n_test=7, input_size=20))
    small.setup()
    assert small.input_size == 20 and collect(small.test_dataloader())[0].shape == (7, 20)


FMNIST_DIR = os.environ.get("HOPFIELD_FMNIST_DIR", "/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not any(Path(FMNIST_DIR, f).exists() for f in
                            ("train-images-idx3-ubyte.gz", "train-images-idx3-ubyte",
                             "FashionMNIST/raw/train-images-idx3-ubyte")),
                    reason=f"real Fashion-MNIST not in {FMNIST_DIR}")
def test_real_fashion_mnist():
    dm = HopfieldDataModule("fashion-mnist", data_dir=FMNIST_DIR, download=False)
    dm.setup()
    (train_x, train_y), (test_x, test_y) = dm.splits["train"], dm.splits["test"]
    assert train_x.shape == (60000, 784) and test_x.shape == (10000, 784)
    assert train_y.bincount().tolist() == [6000] * 10 and test_y.bincount().tolist() == [1000] * 10
    assert len(dm.test_dataloader()) == 157  # 156 full batches of 64 and the last 16 images


class CountingLinear(L.LightningModule):
    """A linear classifier that records what each loop sees."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(784, 10)
        self.seen = {"train": [], "val": 0, "test": 0}

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.seen["train"].append((self.current_epoch, served_indices(x)))
        return 0.5 * ((self.linear(x) - y) ** 2).sum() / len(x)

    def validation_step(self, batch, batch_idx):
        self.seen["val"] += len(batch[0])

    def test_step(self, batch, batch_idx):
        self.seen["test"] += len(batch[0])
        self.log("test/acc", (self.linear(batch[0]).argmax(1) == batch[1].argmax(1)).float().mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_fit_and_test(tmp_path):
    write_dataset(tmp_path, "mnist")
    dm = HopfieldDataModule("mnist", data_dir=tmp_path, batch_size=16, seed=7)
    model = CountingLinear()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=2, limit_train_batches=2,
                        num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path)
    trainer.fit(model, datamodule=dm)
    assert [epoch for epoch, _ in model.seen["train"]] == [0, 0, 1, 1]
    for epoch in (0, 1):  # the shuffle follows the trainer's epoch: seed + epoch
        order = torch.randperm(N_TRAIN, generator=torch.Generator().manual_seed(7 + epoch))
        first = next(idx for e, idx in model.seen["train"] if e == epoch)
        assert first == order[:16].tolist()
    assert model.seen["val"] == 2 * N_TEST  # val_size=0: validation runs over the whole test set
    trainer.test(model, datamodule=dm)
    assert model.seen["test"] == N_TEST
