"""Tests of deq_modules/data/datamodule.py (the LightningDataModule) on tiny files written here: CPU, seconds."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
import torchvision

from deq_modules.data.datamodule import HopfieldDataModule
from deq_modules.data.names import DATASETS


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "plain"])
@pytest.mark.parametrize("dataset", ["mnist", "fashion-mnist", "emnist-mnist"])
def test_reads_torchvision_layout_exactly(tmp_path, tiny, dataset, gz):
    expected = tiny.write_dataset(tmp_path, dataset, gz=gz)
    n_test = tiny.N_TEST
    dm = HopfieldDataModule(dataset, data_dir=tmp_path, download=False, batch_size=8, eval_batch_size=64)
    assert (dm.input_size, dm.num_classes) == (784, 10)
    dm.prepare_data()
    dm.setup()
    x, y, sizes = tiny.collect(dm.test_dataloader())
    images, labels = expected["test"]
    assert sizes == [n_test] and x.shape == (n_test, 784) and y.shape == (n_test, 10)
    assert x.dtype == y.dtype == torch.float32 and x.min() >= 0 and x.max() <= 1
    # Upright images (EMNIST transposed back), row-major flattened, divided by 255.
    torch.testing.assert_close(x, images.reshape(n_test, 784).double().div(255).float(), rtol=0, atol=1e-7)
    assert x[3, 28] == pytest.approx(float(images[3, 1, 0]) / 255) and images[3, 1, 0] != images[3, 0, 1]
    assert torch.equal(y.argmax(1), labels) and torch.equal(y.sum(1), torch.ones(n_test))
    train_x, _, sizes = tiny.collect(dm.train_dataloader())
    served = tiny.served_indices(train_x)  # full batches only, as the papers trained
    assert sizes == [8] * (tiny.N_TRAIN // 8) and len(set(served)) == len(served)
    assert set(served) <= set(range(tiny.N_TRAIN))


def test_batches_serve_every_sample_once_and_shuffle_by_epoch(tmp_path, tiny):
    tiny.write_dataset(tmp_path, "mnist")
    collect, served_indices, n_train = tiny.collect, tiny.served_indices, tiny.N_TRAIN
    dm = HopfieldDataModule("mnist", data_dir=tmp_path, batch_size=16, eval_batch_size=64, seed=3,
                            drop_last=False)
    dm.setup()
    train = dm.train_dataloader()
    assert len(train) == 4 and len(dm.test_dataloader()) == 1 and len(dm.val_dataloader()) == 1
    orders = []
    for _ in range(2):
        x, y, sizes = collect(train)
        assert sizes == [16, 16, 16, 2]
        orders.append(served_indices(x))
        assert sorted(orders[-1]) == list(range(n_train))
        assert torch.equal(y.argmax(1), tiny.known_labels(n_train)[orders[-1]])  # pairs stay together
    assert orders[0] != orders[1]
    again = HopfieldDataModule("mnist", data_dir=tmp_path, batch_size=16, seed=3)  # drop_last
    again.setup()
    x, _, sizes = collect(again.train_dataloader())
    assert sizes == [16, 16, 16] and served_indices(x) == orders[0][:48]  # same order, no tail
    other = HopfieldDataModule("mnist", data_dir=tmp_path, batch_size=16, seed=4)
    other.setup()
    assert served_indices(collect(other.train_dataloader())[0]) != orders[0]
    test_x, _, _ = collect(dm.test_dataloader())
    assert served_indices(test_x) == list(range(tiny.N_TEST)) == served_indices(collect(dm.test_dataloader())[0])


def fake_trainer(device: str, rank: int = 0, world_size: int = 1, epoch: int = 0) -> SimpleNamespace:
    """The attributes of a Trainer that the data module reads."""
    return SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device(device)),
                           global_rank=rank, world_size=world_size, current_epoch=epoch)


def test_follows_trainer_device_ranks_and_epoch(tmp_path, tiny):
    dm = HopfieldDataModule("synthetic", synthetic_kwargs=dict(n_train=30, n_test=7), drop_last=False)
    dm.trainer = fake_trainer("meta")  # a device other than the CPU, without needing a GPU
    dm.setup()
    assert all(t.device.type == "meta" and t.dtype in (torch.uint8, torch.long)
               for pair in dm.splits.values() for t in pair)
    x, y = next(iter(dm.train_dataloader()))
    assert x.device.type == y.device.type == "meta" and x.dtype == torch.float32
    tiny.write_dataset(tmp_path, "mnist")
    shards = []
    for rank in range(2):
        dm = HopfieldDataModule("mnist", data_dir=tmp_path, batch_size=16, seed=2, drop_last=False)
        dm.trainer = fake_trainer("cpu", rank=rank, world_size=2, epoch=5)
        dm.setup()
        shards.append(tiny.served_indices(tiny.collect(dm.test_dataloader())[0]))
        order = torch.randperm(tiny.N_TRAIN, generator=torch.Generator().manual_seed(2 + 5))
        assert tiny.served_indices(tiny.collect(dm.train_dataloader())[0]) == order[rank::2].tolist()
    assert sorted(shards[0] + shards[1]) == list(range(tiny.N_TEST)) and len(shards[0]) == tiny.N_TEST // 2


def test_val_size_holds_out_train_samples(tmp_path, tiny):
    tiny.write_dataset(tmp_path, "mnist")
    dm = HopfieldDataModule("mnist", data_dir=tmp_path, val_size=10, seed=5, drop_last=False)
    dm.setup()
    train = tiny.served_indices(tiny.collect(dm.train_dataloader())[0])
    val = tiny.served_indices(tiny.collect(dm.val_dataloader())[0])
    assert len(val) == 10 and len(train) == 40 and sorted(train + val) == list(range(tiny.N_TRAIN))
    again = HopfieldDataModule("mnist", data_dir=tmp_path, val_size=10, seed=5)
    again.setup()
    assert tiny.served_indices(tiny.collect(again.val_dataloader())[0]) == val
    assert "val=10" in dm.describe() and "train=40" in dm.describe()


def test_flat_directory_layout(tmp_path, tiny):
    expected = tiny.write_dataset(tmp_path, "fashion-mnist", gz=True, flat=True)  # like Debian's package
    dm = HopfieldDataModule("fashion-mnist", data_dir=tmp_path, download=False)
    dm.setup()
    x, y, _ = tiny.collect(dm.test_dataloader())
    assert torch.equal(y.argmax(1), expected["test"][1]) and len(x) == tiny.N_TEST


def test_environment_variable_sets_data_dir(tmp_path, tiny, monkeypatch):
    tiny.write_dataset(tmp_path, "emnist-mnist")
    monkeypatch.setenv("HOPFIELD_DATA_DIR", str(tmp_path))
    dm = HopfieldDataModule("emnist-mnist", download=False, drop_last=False)
    assert dm.data_dir == tmp_path
    dm.setup()
    assert len(tiny.collect(dm.train_dataloader())[0]) == tiny.N_TRAIN
    monkeypatch.delenv("HOPFIELD_DATA_DIR")
    assert HopfieldDataModule("emnist-mnist").data_dir == Path("data").absolute()


def test_cifar10_is_flattened_hwc(tmp_path, tiny, monkeypatch):
    # torchvision checks md5 sums of the real files; these fake batches cannot pass that check.
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args: True)
    chw = tiny.write_cifar(tmp_path)
    dm = HopfieldDataModule("cifar10", data_dir=tmp_path, download=False, drop_last=False)
    assert dm.input_size == 3072
    dm.setup()
    x, y, _ = tiny.collect(dm.test_dataloader())
    hwc = torch.from_numpy(np.ascontiguousarray(chw["test_batch"].transpose(0, 2, 3, 1)).reshape(4, -1))
    torch.testing.assert_close(x, hwc.double().div(255).float(), rtol=0, atol=1e-7)
    assert y.argmax(1).tolist() == [1, 2, 3, 4] and len(tiny.collect(dm.train_dataloader())[0]) == 20


def test_invalid_arguments():
    with pytest.raises(ValueError) as info:
        HopfieldDataModule("emnist")
    assert "'emnist'" in str(info.value) and all(name in str(info.value) for name in DATASETS)
    with pytest.raises(ValueError, match="n_trian"):
        HopfieldDataModule("synthetic", synthetic_kwargs={"n_trian": 5})
    with pytest.raises(ValueError, match=r"val_size\b.*-1\b"):
        HopfieldDataModule("synthetic", val_size=-1)


def test_synthetic_serves_its_own_sizes(tiny):
    dm = HopfieldDataModule("synthetic", batch_size=500)
    assert (dm.input_size, dm.num_classes) == (784, 10)
    dm.setup()
    x, y, sizes = tiny.collect(dm.train_dataloader())
    assert x.shape == (2000, 784) and sizes == [500] * 4 and 0 <= x.min() and x.max() <= 1
    small = HopfieldDataModule("synthetic", synthetic_kwargs=dict(n_train=30, n_test=7, input_size=20))
    small.setup()
    assert small.input_size == 20 and tiny.collect(small.test_dataloader())[0].shape == (7, 20)


def test_real_fashion_mnist(real_fashion_mnist):
    dm = HopfieldDataModule("fashion-mnist", data_dir=real_fashion_mnist, download=False)
    dm.setup()
    (train_x, train_y), (test_x, test_y) = dm.splits["train"], dm.splits["test"]
    assert train_x.shape == (60000, 784) and test_x.shape == (10000, 784)
    assert train_y.bincount().tolist() == [6000] * 10 and test_y.bincount().tolist() == [1000] * 10
    assert len(dm.test_dataloader()) == 157  # 156 full batches of 64 and the last 16 images


class CountingLinear(L.LightningModule):
    """A linear classifier that records what each loop sees (sample indices from pixel 0)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(784, 10)
        self.seen = {"train": [], "val": 0, "test": 0}

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.seen["train"].append((self.current_epoch, (x[:, 0] * 255).round().long().tolist()))
        return 0.5 * ((self.linear(x) - y) ** 2).sum() / len(x)

    def validation_step(self, batch, batch_idx):
        self.seen["val"] += len(batch[0])

    def test_step(self, batch, batch_idx):
        self.seen["test"] += len(batch[0])
        self.log("test/acc", (self.linear(batch[0]).argmax(1) == batch[1].argmax(1)).float().mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_fit_and_test(tmp_path, tiny):
    tiny.write_dataset(tmp_path, "mnist")
    dm = HopfieldDataModule("mnist", data_dir=tmp_path, batch_size=16, seed=7)
    model = CountingLinear()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=2, limit_train_batches=2,
                        num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path)
    trainer.fit(model, datamodule=dm)
    assert [epoch for epoch, _ in model.seen["train"]] == [0, 0, 1, 1]
    for epoch in (0, 1):  # the shuffle follows the trainer's epoch: seed + epoch
        order = torch.randperm(tiny.N_TRAIN, generator=torch.Generator().manual_seed(7 + epoch))
        first = next(idx for e, idx in model.seen["train"] if e == epoch)
        assert first == order[:16].tolist()
    assert model.seen["val"] == 2 * tiny.N_TEST  # val_size=0: validation runs over the whole test set
    trainer.test(model, datamodule=dm)
    assert model.seen["test"] == tiny.N_TEST


def test_a_run_resumed_from_an_epoch_checkpoint_sees_the_same_batches(tmp_path):
    """Lightning may call iter() on the train loader before it restores the epoch from a
    checkpoint; the loader must still serve the resumed epoch in that epoch's own order."""
    import lightning as L

    from deq_modules.experiments import get_experiment
    from deq_modules.lit import lit_module_for

    class Record(L.Callback):
        def __init__(self, stop_after_epoch=None):
            self.batches, self.stop = [], stop_after_epoch

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.batches.append((trainer.current_epoch, batch[0].sum().item()))

        def on_train_epoch_end(self, trainer, pl_module):
            if trainer.current_epoch == self.stop:
                trainer.save_checkpoint(tmp_path / "epoch.ckpt")
                raise KeyboardInterrupt  # Lightning stops the fit, as a kill would

    def fit(record, ckpt=None):
        L.seed_everything(0)
        dm = HopfieldDataModule("synthetic", None, batch_size=64, seed=0,
                                synthetic_kwargs=dict(n_train=320, n_test=64))
        model = lit_module_for(get_experiment("HAM-EO", 3), input_size=dm.input_size)
        trainer = L.Trainer(max_epochs=3, callbacks=[record], logger=False, accelerator="cpu",
                            enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, num_sanity_val_steps=0,
                            limit_val_batches=1)
        try:
            trainer.fit(model, datamodule=dm, ckpt_path=ckpt)
        except SystemExit:  # Lightning turns the KeyboardInterrupt into sys.exit(1)
            pass

    whole, first, rest = Record(), Record(stop_after_epoch=0), Record()
    fit(whole)
    fit(first)
    fit(rest, tmp_path / "epoch.ckpt")
    assert [e for e, _ in first.batches] == [0] * 5
    assert rest.batches == [b for b in whole.batches if b[0] >= 1]
