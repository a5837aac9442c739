"""Tests of the in-memory data pipeline: TensorLoader, IDX reading, Fashion-MNIST and digits."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn

from lightning_lottery.data import (
    DataNotFoundError,
    DigitsDataModule,
    FashionMNISTDataModule,
    TensorLoader,
    read_idx,
)
from lightning_lottery.data.fashion_mnist import DEBIAN_DIR

HAVE_FMNIST = all(
    (Path(DEBIAN_DIR) / f"{name}-ubyte.gz").is_file()
    for name in ("train-images-idx3", "train-labels-idx1", "t10k-images-idx3", "t10k-labels-idx1")
)
needs_fmnist = pytest.mark.skipif(not HAVE_FMNIST, reason="apt-get install dataset-fashion-mnist")


# ----------------------------------------------------------------------------------------- TensorLoader
def _labels(loader: TensorLoader) -> list[list[int]]:
    return [batch[-1].tolist() for batch in loader]


def test_tensor_loader_lengths_and_batches() -> None:
    x, y = torch.randn(10, 3), torch.arange(10)
    loader = TensorLoader(x, y, batch_size=4)
    assert len(loader) == 3
    batches = list(loader)
    assert [b[0].shape[0] for b in batches] == [4, 4, 2]
    assert all(isinstance(b, tuple) and len(b) == 2 for b in batches)
    assert torch.equal(torch.cat([b[0] for b in batches]), x)
    dropped = TensorLoader(x, y, batch_size=4, drop_last=True)
    assert len(dropped) == 2 and [len(b[1]) for b in dropped] == [4, 4]
    assert len(TensorLoader(x, batch_size=5, drop_last=True)) == 2
    assert len(TensorLoader(x, batch_size=32)) == 1


def test_tensor_loader_batches_are_copies() -> None:
    x = torch.zeros(6, 2)
    for (batch,) in TensorLoader(x, batch_size=3):
        batch += 1
    assert torch.count_nonzero(x) == 0


def test_tensor_loader_validates_inputs() -> None:
    with pytest.raises(ValueError, match="first dimension"):
        TensorLoader(torch.zeros(3), torch.zeros(4), batch_size=2)
    with pytest.raises(ValueError, match="batch_size"):
        TensorLoader(torch.zeros(3), batch_size=0)
    with pytest.raises(ValueError):
        TensorLoader(batch_size=2)


def test_tensor_loader_shuffle_is_seeded_per_epoch() -> None:
    y = torch.arange(50)
    a = TensorLoader(y, batch_size=7, shuffle=True, seed=3)
    epochs = [_labels(a) for _ in range(3)]
    assert a.epoch == 3
    # each epoch is a permutation of all samples, and epochs differ from each other
    for e in epochs:
        assert sorted(sum(e, [])) == list(range(50))
    assert epochs[0] != epochs[1] != epochs[2]
    # a fresh loader with the same seed replays the same sequence of epochs
    b = TensorLoader(y, batch_size=7, shuffle=True, seed=3)
    assert [_labels(b) for _ in range(3)] == epochs
    # set_epoch jumps to an epoch; another seed gives another order
    b.set_epoch(1)
    assert _labels(b) == epochs[1] and b.epoch == 2
    assert _labels(TensorLoader(y, batch_size=7, shuffle=True, seed=4)) != epochs[0]
    # no shuffle: file order every time
    plain = TensorLoader(y, batch_size=7)
    assert sum(_labels(plain), []) == list(range(50)) == sum(_labels(plain), [])


def test_tensor_loader_shuffle_keeps_rows_aligned() -> None:
    x = torch.arange(20.0).unsqueeze(1) * 10
    y = torch.arange(20)
    for xb, yb in TensorLoader(x, y, batch_size=6, shuffle=True, seed=1):
        assert torch.equal(xb[:, 0], yb.float() * 10)


class _Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 2)
        self.seen: list[int] = []
        self.val_batches = 0

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        x, y = batch
        self.seen.extend(y.tolist())
        return nn.functional.cross_entropy(self.layer(x), y % 2)

    def validation_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> None:
        self.val_batches += 1

    def test_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> None:
        self.log("n", float(len(batch[0])))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_tensor_loader_in_trainer_fit() -> None:
    x, y = torch.randn(40, 4), torch.arange(40)
    model = _Tiny()
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    train = TensorLoader(x, y, batch_size=8, shuffle=True, seed=5)
    trainer.fit(model, train_dataloaders=train, val_dataloaders=TensorLoader(x, y, batch_size=16))
    assert trainer.global_step == 10 and trainer.num_training_batches == 5
    assert train.epoch == 2  # one pass per epoch
    assert sorted(model.seen[:40]) == list(range(40)) and model.seen[:40] != model.seen[40:]
    replay = TensorLoader(x, y, batch_size=8, shuffle=True, seed=5)
    assert sum(_labels(replay), []) + sum(_labels(replay), []) == model.seen
    assert model.val_batches == 2 + 2 * 3  # sanity check (2 batches) + 3 per epoch
    trainer.test(model, dataloaders=TensorLoader(x, y, batch_size=16), verbose=False)


# ----------------------------------------------------------------------------------------------- IDX
def _idx_bytes(values: list[int], dims: tuple[int, ...], code: int = 0x08, fmt: str = "B") -> bytes:
    header = bytes([0, 0, code, len(dims)]) + struct.pack(f">{len(dims)}i", *dims)
    return header + struct.pack(f">{len(values)}{fmt}", *values)


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_uint8(tmp_path: Path, compress: bool) -> None:
    raw = _idx_bytes(list(range(24)), (2, 3, 4))
    path = tmp_path / ("images-idx3-ubyte.gz" if compress else "images-idx3-ubyte")
    path.write_bytes(gzip.compress(raw) if compress else raw)
    out = read_idx(path)
    assert out.dtype == torch.uint8 and out.shape == (2, 3, 4)
    assert torch.equal(out.flatten(), torch.arange(24, dtype=torch.uint8))
    out += 1  # writable, owns its memory


def test_read_idx_big_endian_types(tmp_path: Path) -> None:
    path = tmp_path / "ints-idx1"
    path.write_bytes(_idx_bytes([1, -2, 70000], (3,), code=0x0C, fmt="i"))
    assert read_idx(path).tolist() == [1, -2, 70000]
    path.write_bytes(_idx_bytes([], (0,), code=0x0D, fmt="f"))
    assert read_idx(path).dtype == torch.float32


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"", "bad magic"),
        (b"\x01\x00\x08\x01\x00\x00\x00\x01\x05", "bad magic"),
        (b"\x00\x00\x07\x01\x00\x00\x00\x01\x05", "type code"),
        (b"\x00\x00\x08\x03\x00\x00\x00\x01", "truncated IDX header"),
        (_idx_bytes(list(range(12)), (2, 3, 4))[:-5], "truncated"),
        (_idx_bytes(list(range(6)), (2, 3)) + b"\x00", "trailing"),
    ],
)
def test_read_idx_rejects_corrupt_files(tmp_path: Path, content: bytes, match: str) -> None:
    path = tmp_path / "bad-idx"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=match) as err:
        read_idx(path)
    assert str(path) in str(err.value)


def test_read_idx_rejects_truncated_gzip(tmp_path: Path) -> None:
    path = tmp_path / "bad-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(_idx_bytes(list(range(200)), (200,)))[:-12])
    with pytest.raises(ValueError, match="gzip") as err:
        read_idx(path)
    assert str(path) in str(err.value)
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "missing")


# -------------------------------------------------------------------------------------- Fashion-MNIST
@pytest.fixture(scope="module")
def fmnist() -> FashionMNISTDataModule:
    dm = FashionMNISTDataModule()
    dm.setup("fit")
    return dm


@needs_fmnist
def test_fashion_mnist_splits_and_stats(fmnist: FashionMNISTDataModule) -> None:
    splits = fmnist._splits
    assert splits is not None
    (xt, yt), (xv, yv), (xs, ys) = splits["train"], splits["val"], splits["test"]
    assert xt.shape == (55000, 1, 28, 28) and xv.shape == (5000, 1, 28, 28) and xs.shape == (10000, 1, 28, 28)
    assert yt.shape == (55000,) and yv.shape == (5000,) and ys.shape == (10000,)
    assert xt.dtype == torch.float32 and yt.dtype == torch.int64
    everything = torch.cat([xt, xv])
    assert abs(everything.mean().item()) < 1e-3 and abs(everything.std().item() - 1) < 1e-3
    assert set(yv.unique().tolist()) == set(range(10))
    assert torch.isclose(everything.min(), torch.tensor(-0.2860 / 0.3530), atol=1e-5)


@needs_fmnist
def test_fashion_mnist_loaders(fmnist: FashionMNISTDataModule) -> None:
    train = fmnist.train_dataloader()
    assert len(train) == 917 and train.shuffle and not train.drop_last
    x, y = next(iter(train))
    assert x.shape == (60, 1, 28, 28) and y.shape == (60,)
    val, test = fmnist.val_dataloader(), fmnist.test_dataloader()
    assert isinstance(val, TensorLoader) and len(val) == 5 and not val.shuffle
    assert len(test) == 10 and next(iter(test))[0].shape == (1000, 1, 28, 28)


@needs_fmnist
def test_fashion_mnist_is_cached_and_deterministic(fmnist: FashionMNISTDataModule) -> None:
    before = fmnist._splits
    fmnist.setup("fit")
    fmnist.setup("test")
    assert fmnist._splits is before  # nothing reloaded
    other = FashionMNISTDataModule(flatten=True, val_size=1000)
    other.setup("fit")
    assert other._splits is not None and before is not None
    assert other._splits["train"][0].shape == (59000, 784)
    # the same seed draws the same permutation: the first 1000 validation images coincide
    assert torch.equal(other._splits["val"][1], before["val"][1][:1000])
    assert torch.equal(other._splits["val"][0], before["val"][0][:1000].flatten(1))


def _write_fake_fmnist(folder: Path, n_train: int, n_test: int, gz: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = _idx_bytes([i % 256 for i in range(n * 784)], (n, 28, 28))
        labels = _idx_bytes([i % 10 for i in range(n)], (n,))
        for name, raw in ((f"{prefix}-images-idx3-ubyte", images), (f"{prefix}-labels-idx1-ubyte", labels)):
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(raw, compresslevel=1))
            else:
                (folder / name).write_bytes(raw)


@pytest.mark.parametrize("layout", ["flat", "torchvision-raw"])
def test_fashion_mnist_reads_other_layouts(tmp_path: Path, layout: str) -> None:
    folder = tmp_path if layout == "flat" else tmp_path / "FashionMNIST" / "raw"
    _write_fake_fmnist(folder, n_train=30, n_test=7, gz=layout == "flat")
    dm = FashionMNISTDataModule(data_dir=str(tmp_path), val_size=10, batch_size=8, flatten=True)
    dm.setup()
    assert dm._splits is not None
    assert dm._splits["train"][0].shape == (20, 784) and dm._splits["test"][1].shape == (7,)
    assert len(dm.train_dataloader()) == 3 and len(dm.val_dataloader()) == 1


def test_fashion_mnist_missing_data_raises(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    dm = FashionMNISTDataModule(data_dir=str(missing))
    with pytest.raises(DataNotFoundError) as err:
        dm.setup("fit")
    message = str(err.value)
    assert str(missing) in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "--data.data_dir" in message and "--data.download true" in message
    assert isinstance(err.value, FileNotFoundError)


def test_fashion_mnist_failed_download_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets

    class Offline:
        def __init__(self, *args: object, **kwargs: object) -> None:
            raise RuntimeError("no network")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", Offline)
    dm = FashionMNISTDataModule(data_dir=str(tmp_path), download=True)
    with pytest.raises(DataNotFoundError, match="no network") as err:
        dm.prepare_data()
    assert str(tmp_path) in str(err.value) and "apt-get install dataset-fashion-mnist" in str(err.value)


def test_fashion_mnist_download_reads_what_torchvision_wrote(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torchvision.datasets

    calls: list[str] = []

    class FakeDownload:  # writes what torchvision writes, without the network
        def __init__(self, root: str, train: bool = True, download: bool = False) -> None:
            calls.append(root)
            _write_fake_fmnist(Path(root) / "FashionMNIST" / "raw", n_train=12, n_test=3, gz=False)

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", FakeDownload)
    dm = FashionMNISTDataModule(data_dir=str(tmp_path), download=True, val_size=2)
    dm.setup("fit")
    assert calls and calls[0] == str(tmp_path)
    assert dm._splits is not None and dm._splits["train"][0].shape == (10, 1, 28, 28)


def test_fashion_mnist_rejects_bad_val_size() -> None:
    with pytest.raises(ValueError, match="val_size"):
        FashionMNISTDataModule(val_size=60000)


# --------------------------------------------------------------------------------------------- digits
def test_digits_shapes_and_determinism() -> None:
    dm = DigitsDataModule()
    dm.setup("fit")
    assert dm._splits is not None
    (xt, yt), (xv, yv), (xs, ys) = dm._splits["train"], dm._splits["val"], dm._splits["test"]
    assert xt.shape == (1197, 64) and xv.shape == (300, 64) and xs.shape == (300, 64)
    assert abs(xt.mean().item()) < 1e-5 and abs(xt.std().item() - 1) < 1e-4
    assert yt.dtype == torch.int64 and set(yt.unique().tolist()) == set(range(10))
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (32, 64) and y.shape == (32,)
    assert len(dm.val_dataloader()) == 1 and len(dm.test_dataloader()) == 1
    again = DigitsDataModule()
    again.setup()
    assert again._splits is not None and torch.equal(again._splits["val"][0], xv)
    before = dm._splits
    dm.setup("test")
    assert dm._splits is before
    images = DigitsDataModule(flatten=False, seed=1)
    images.setup()
    assert images._splits is not None and images._splits["train"][0].shape == (1197, 1, 8, 8)
    assert not torch.equal(images._splits["val"][1], yv)


def test_tensor_loader_bare_iter_does_not_consume_an_epoch() -> None:
    loader = TensorLoader(torch.arange(9), batch_size=4, shuffle=True)
    iter(loader)
    assert loader.epoch == 0
    first = _labels(loader)
    assert loader.epoch == 1
    assert _labels(TensorLoader(torch.arange(9), batch_size=4, shuffle=True)) == first


def test_tensor_loader_shards_for_data_parallel_processes() -> None:
    from lightning_lottery.data import TensorLoader

    x, y = torch.arange(23.0).unsqueeze(1), torch.arange(23)
    # training: every process draws the same permutation and gets an equal, disjoint shard
    train = [TensorLoader(x, y, batch_size=4, shuffle=True, seed=5, num_replicas=3, rank=r, even_shards=True)
             for r in range(3)]
    seen = [torch.cat([b[1] for b in loader]) for loader in train]
    assert [len(s) for s in seen] == [7, 7, 7] and {len(loader) for loader in train} == {2}
    assert len(set(torch.cat(seen).tolist())) == 21
    # evaluation: every sample exactly once across the processes
    evaluation = [torch.cat([b[1] for b in TensorLoader(x, y, batch_size=4, num_replicas=3, rank=r)]) for r in range(3)]
    assert sorted(torch.cat(evaluation).tolist()) == list(range(23))
    with pytest.raises(ValueError, match="rank must be in"):
        TensorLoader(x, y, batch_size=4, num_replicas=2, rank=2)
