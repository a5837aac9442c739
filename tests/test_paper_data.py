"""Tests of the paper's datasets (MNIST, CIFAR-10 from tiny fake files), batch augmentation and synthetic data."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn

from lightning_lottery.data import (
    CIFAR10DataModule,
    DataNotFoundError,
    FashionMNISTDataModule,
    IDXImageDataModule,
    MNISTDataModule,
    SyntheticImageDataModule,
    TensorLoader,
    read_cifar_batch,
)
from lightning_lottery.data.augment import (
    horizontal_flip,
    random_crop,
    random_crop_flip,
    random_horizontal_flip,
    translate,
)
from lightning_lottery.data.cifar10 import MEAN as CIFAR_MEAN
from lightning_lottery.data.cifar10 import STD as CIFAR_STD


# ---------------------------------------------------------------------------------------------- MNIST
def _idx(values: bytes, dims: tuple[int, ...]) -> bytes:
    return bytes([0, 0, 0x08, len(dims)]) + struct.pack(f">{len(dims)}i", *dims) + values


def _write_fake_mnist(folder: Path, n_train: int = 30, n_test: int = 6) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        pixels = bytes((i * 7) % 256 for i in range(n * 784))
        (folder / f"{prefix}-images-idx3-ubyte").write_bytes(_idx(pixels, (n, 28, 28)))
        (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(_idx(bytes(i % 10 for i in range(n)), (n,)))


def test_mnist_reads_torchvision_layout(tmp_path: Path) -> None:
    _write_fake_mnist(tmp_path / "MNIST" / "raw")
    dm = MNISTDataModule(data_dir=str(tmp_path), val_size=10, batch_size=8)
    dm.setup("fit")
    assert dm._splits is not None
    (xt, yt), (xv, yv), (xs, ys) = dm._splits["train"], dm._splits["val"], dm._splits["test"]
    assert xt.shape == (20, 1, 28, 28) and xv.shape == (10, 1, 28, 28) and xs.shape == (6, 1, 28, 28)
    assert yt.dtype == torch.int64 and ys.tolist() == [0, 1, 2, 3, 4, 5]
    # MNIST's own normalisation, not Fashion-MNIST's
    assert torch.isclose(xs.min(), torch.tensor(-0.1307 / 0.3081), atol=1e-5)
    assert len(dm.train_dataloader()) == 3 and len(dm.val_dataloader()) == 1 and len(dm.test_dataloader()) == 1
    flat = MNISTDataModule(data_dir=str(tmp_path), val_size=0, flatten=True)
    flat.setup()
    assert flat._splits is not None and flat._splits["train"][0].shape == (30, 784)
    assert flat.val_dataloader() == [] and flat.input_shape == (784,)


def test_mnist_and_fashion_mnist_share_one_implementation(tmp_path: Path) -> None:
    assert issubclass(MNISTDataModule, IDXImageDataModule) and issubclass(FashionMNISTDataModule, IDXImageDataModule)
    assert "setup" not in vars(MNISTDataModule) and "setup" not in vars(FashionMNISTDataModule)
    _write_fake_mnist(tmp_path)  # the flat layout serves both
    mnist, fmnist = MNISTDataModule(data_dir=str(tmp_path), val_size=5), FashionMNISTDataModule(
        data_dir=str(tmp_path), val_size=5
    )
    mnist.setup()
    fmnist.setup()
    assert mnist._splits is not None and fmnist._splits is not None
    assert torch.equal(mnist._splits["val"][1], fmnist._splits["val"][1])  # same seed, same split
    assert not torch.allclose(mnist._splits["val"][0], fmnist._splits["val"][0])  # different mean/std


def test_mnist_missing_data_message(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DataNotFoundError) as err:
        MNISTDataModule(data_dir=str(missing)).setup("fit")
    message = str(err.value)
    assert message.startswith("MNIST not found in " + str(missing))
    assert "MNIST/raw/" in message and "--data.data_dir PATH" in message and "--data.download true" in message
    assert "apt-get" not in message  # that hint is Fashion-MNIST's


def test_mnist_download_goes_through_torchvision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets

    calls: list[tuple[str, bool]] = []

    class FakeMNIST:  # writes what torchvision writes, without the network
        def __init__(self, root: str, train: bool = True, download: bool = False) -> None:
            calls.append((root, train))
            _write_fake_mnist(Path(root) / "MNIST" / "raw", n_train=12, n_test=3)

    monkeypatch.setattr(torchvision.datasets, "MNIST", FakeMNIST)
    dm = MNISTDataModule(data_dir=str(tmp_path), val_size=2)
    with pytest.raises(DataNotFoundError):  # download=False: never touches torchvision
        dm.setup()
    assert calls == []
    dm = MNISTDataModule(data_dir=str(tmp_path), val_size=2, download=True)
    dm.prepare_data()
    dm.setup("fit")
    assert calls and calls[0][0] == str(tmp_path)
    assert dm._splits is not None and dm._splits["train"][0].shape == (10, 1, 28, 28)


def test_idx_val_size_larger_than_the_files(tmp_path: Path) -> None:
    _write_fake_mnist(tmp_path, n_train=5)
    with pytest.raises(ValueError, match="val_size"):
        MNISTDataModule(data_dir=str(tmp_path), val_size=5).setup()


# ------------------------------------------------------------------------------------------ CIFAR-10
def _write_cifar_batch(path: Path, n: int, offset: int, protocol: int = 2) -> None:
    data = ((np.arange(n * 3072, dtype=np.int64) + offset) % 256).astype(np.uint8).reshape(n, 3072)
    batch = {b"batch_label": b"fake", b"data": data, b"labels": [(offset + i) % 10 for i in range(n)]}
    path.write_bytes(pickle.dumps(batch, protocol=protocol))


def _write_fake_cifar(root: Path, n: int = 4, n_test: int = 5) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(1, 6):
        _write_cifar_batch(folder / f"data_batch_{i}", n, offset=i, protocol=2 if i % 2 else 5)
    _write_cifar_batch(folder / "test_batch", n_test, offset=0)
    return folder


def test_read_cifar_batch_layout(tmp_path: Path) -> None:
    path = tmp_path / "data_batch_1"
    _write_cifar_batch(path, 2, offset=0)
    x, y = read_cifar_batch(path)
    assert x.shape == (2, 3, 32, 32) and x.dtype == torch.uint8 and y.dtype == torch.int64
    # row-major: 1024 red values, then green, then blue, per image
    assert x[0, 0, 0, 1].item() == 1 and x[0, 1, 0, 0].item() == 1024 % 256 and x[1, 0, 0, 0].item() == 3072 % 256
    assert y.tolist() == [0, 1]


def test_read_cifar_batch_rejects_bad_files(tmp_path: Path) -> None:
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(ValueError, match="3072"):
        read_cifar_batch(path)
    path.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}))
    with pytest.raises(ValueError, match="labels"):
        read_cifar_batch(path)
    path.write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(ValueError, match="dict"):
        read_cifar_batch(path)
    path.write_bytes(pickle.dumps({b"data": Path("x")}))  # a global outside numpy: refused, not imported
    with pytest.raises(ValueError, match="not allowed") as err:
        read_cifar_batch(path)
    assert str(path) in str(err.value)


def test_cifar10_reads_fake_batches(tmp_path: Path) -> None:
    _write_fake_cifar(tmp_path)
    dm = CIFAR10DataModule(data_dir=str(tmp_path), val_size=6, batch_size=5, eval_batch_size=4)
    dm.setup("fit")
    assert dm._splits is not None
    (xt, yt), (xv, yv), (xs, ys) = dm._splits["train"], dm._splits["val"], dm._splits["test"]
    assert xt.shape == (14, 3, 32, 32) and xv.shape == (6, 3, 32, 32) and xs.shape == (5, 3, 32, 32)
    assert xt.dtype == torch.float32 and yt.dtype == torch.int64
    assert sorted(torch.cat([yt, yv]).tolist()) == sorted((i + j) % 10 for i in range(1, 6) for j in range(4))
    # per-channel normalisation of the test batch, pixel (0, 0) of image 0 is (0, 1024, 2048) mod 256 = 0
    for c in range(3):
        assert xs[0, c, 0, 0].item() == pytest.approx(-CIFAR_MEAN[c] / CIFAR_STD[c], abs=1e-5)
    assert xs[0, 0, 0, 5].item() == pytest.approx((5 / 255 - CIFAR_MEAN[0]) / CIFAR_STD[0], abs=1e-5)
    assert len(dm.train_dataloader()) == 3 and len(dm.val_dataloader()) == 2 and len(dm.test_dataloader()) == 2
    before = dm._splits
    dm.setup("test")
    assert dm._splits is before
    # the batch files directly in data_dir work too
    flat = CIFAR10DataModule(data_dir=str(tmp_path / "cifar-10-batches-py"), val_size=0)
    flat.setup()
    assert flat._splits is not None and flat._splits["train"][0].shape == (20, 3, 32, 32)


def test_cifar10_missing_data_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets

    class Offline:
        def __init__(self, *args: object, **kwargs: object) -> None:
            raise RuntimeError("no network")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", Offline)
    with pytest.raises(DataNotFoundError) as err:
        CIFAR10DataModule(data_dir=str(tmp_path)).setup("fit")
    message = str(err.value)
    assert message.startswith(f"CIFAR-10 not found in {tmp_path} ")
    assert "--data.data_dir PATH" in message and "--data.download true" in message
    assert "failed" not in message  # download=False never tries
    with pytest.raises(DataNotFoundError, match="no network"):
        CIFAR10DataModule(data_dir=str(tmp_path), download=True).prepare_data()


def test_cifar10_download_reads_what_torchvision_wrote(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets

    class FakeCIFAR10:
        def __init__(self, root: str, train: bool = True, download: bool = False) -> None:
            _write_fake_cifar(Path(root), n=2, n_test=2)

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    dm = CIFAR10DataModule(data_dir=str(tmp_path), download=True, val_size=1)
    dm.prepare_data()
    dm.setup()
    assert dm._splits is not None and dm._splits["train"][0].shape == (9, 3, 32, 32)


# --------------------------------------------------------------------------------------- augmentation
def _shifted(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Reference: one image [C, H, W] shifted with zero fill, by explicit slicing."""
    out = torch.zeros_like(x)
    h, w = x.shape[-2:]
    out[:, max(0, -dy) : min(h, h - dy), max(0, -dx) : min(w, w - dx)] = x[
        :, max(0, dy) : min(h, h + dy), max(0, dx) : min(w, w + dx)
    ]
    return out


def test_translate_matches_slicing() -> None:
    x = torch.randn(5, 2, 6, 7)
    dy, dx = torch.tensor([0, 1, -2, 3, -1]), torch.tensor([0, -3, 2, 1, 0])
    out = translate(x, dy, dx)
    for n in range(5):
        assert torch.equal(out[n], _shifted(x[n], int(dy[n]), int(dx[n])))
    assert torch.equal(translate(x, dy, dx, max_shift=3), out)
    assert torch.equal(translate(x, torch.zeros(5, dtype=torch.long), torch.zeros(5, dtype=torch.long)), x)
    with pytest.raises(ValueError, match="offset"):
        translate(x, dy[:2], dx)
    with pytest.raises(ValueError, match="N, C, H, W"):
        translate(x[0], dy, dx)


def test_flip() -> None:
    x = torch.randn(4, 3, 5, 5)
    flip = torch.tensor([True, False, True, False])
    out = horizontal_flip(x, flip)
    assert torch.equal(out[0], x[0].flip(-1)) and torch.equal(out[1], x[1])
    assert torch.equal(random_horizontal_flip(x, p=0.0), x)


def _candidates(image: torch.Tensor, padding: int, flips: bool) -> list[torch.Tensor]:
    shifts = range(-padding, padding + 1)
    out = [_shifted(image, dy, dx) for dy in shifts for dx in shifts]
    return out + [c.flip(-1) for c in out] if flips else out


def test_random_crop_and_flip_are_exact_shifts() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, 8, 8)
    crops = random_crop(x, padding=2, generator=g)
    both = random_crop_flip(x, padding=2, generator=g)
    seen = set()
    for n in range(len(x)):
        crop_hits = [i for i, c in enumerate(_candidates(x[n], 2, flips=False)) if torch.equal(c, crops[n])]
        assert crop_hits, f"crop {n} is not a zero-filled shift of its input"
        seen.add(crop_hits[0])
        assert any(torch.equal(c, both[n]) for c in _candidates(x[n], 2, flips=True)), n
    assert len(seen) > 10  # offsets vary per image
    flipped = sum(
        not any(torch.equal(c, both[n]) for c in _candidates(x[n], 2, flips=False)) for n in range(len(x))
    )
    assert 10 < flipped < 54  # about half are mirrored


def test_augmentation_is_deterministic_with_the_seed() -> None:
    x = torch.randn(16, 3, 32, 32)
    a = random_crop_flip(x, generator=torch.Generator().manual_seed(3))
    b = random_crop_flip(x, generator=torch.Generator().manual_seed(3))
    c = random_crop_flip(x, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == x.shape and a.dtype == x.dtype


class _Recorder(L.LightningModule):
    """Records the inputs the trainer hands to each step."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(3 * 32 * 32, 10)
        self.train_inputs: list[torch.Tensor] = []
        self.eval_inputs: list[torch.Tensor] = []

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        self.train_inputs.append(batch[0].clone())
        return nn.functional.cross_entropy(self.layer(batch[0].flatten(1)), batch[1])

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self.eval_inputs.append(batch[0].clone())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)


def _fit(dm: CIFAR10DataModule, steps: int = 4) -> _Recorder:
    model = _Recorder()
    trainer = L.Trainer(
        max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=1, val_check_interval=2,
    )  # fmt: skip
    trainer.fit(model, datamodule=dm)
    return model


def test_cifar10_augments_training_batches_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import lightning_lottery.data.cifar10 as cifar10

    keys: list[int] = []

    def recording(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
        keys.append(generator.initial_seed())
        return random_crop_flip(x, padding, generator)

    monkeypatch.setattr(cifar10, "random_crop_flip", recording)
    _write_fake_cifar(tmp_path)
    dm = CIFAR10DataModule(data_dir=str(tmp_path), val_size=6, batch_size=7, eval_batch_size=6, seed=1)
    model = _fit(dm)
    assert len(keys) == 4 and len(set(keys)) == 4  # one generator per training batch, each seeded differently
    assert dm._splits is not None
    train_x, val_x = dm._splits["train"][0], dm._splits["val"][0]
    assert len(model.train_inputs) == 4 and model.eval_inputs
    assert all(torch.equal(v, val_x) for v in model.eval_inputs)  # validation (and sanity check) untouched
    # each training batch is made of exact shifts/flips of training images, and not all are unchanged
    changed = 0
    for batch in model.train_inputs:
        for image in batch:
            if any(torch.equal(image, t) for t in train_x):
                continue
            changed += 1
            assert any(
                any(torch.equal(c, image) for c in _candidates(t, 4, flips=True)) for t in train_x
            ), "an augmented image is not a shift/flip of a training image"
    assert changed > 10
    # the same seed replays the same augmented batches; augment=False hands the raw batches over
    again = _fit(CIFAR10DataModule(data_dir=str(tmp_path), val_size=6, batch_size=7, eval_batch_size=6, seed=1))
    assert all(torch.equal(a, b) for a, b in zip(model.train_inputs, again.train_inputs))
    assert keys[4:] == keys[:4]
    plain = _fit(CIFAR10DataModule(data_dir=str(tmp_path), val_size=6, batch_size=7, augment=False, seed=1))
    assert all(any(torch.equal(i, t) for t in train_x) for b in plain.train_inputs for i in b)
    # after the fit, or without a trainer, the hook hands batches over unchanged
    batch = (train_x[:2], torch.zeros(2, dtype=torch.long))
    assert dm.on_after_batch_transfer(batch, 0) is batch
    assert CIFAR10DataModule().on_after_batch_transfer(batch, 0) is batch


# ------------------------------------------------------------------------------------------ synthetic
def test_synthetic_shapes_splits_and_determinism() -> None:
    dm = SyntheticImageDataModule(shape=[3, 8, 8], num_classes=4, train_size=40, val_size=12, test_size=8,
                                  batch_size=16, eval_batch_size=5)  # fmt: skip
    dm.setup()
    assert dm._splits is not None
    (xt, yt), (xv, yv), (xs, ys) = dm._splits["train"], dm._splits["val"], dm._splits["test"]
    assert xt.shape == (40, 3, 8, 8) and xv.shape == (12, 3, 8, 8) and xs.shape == (8, 3, 8, 8)
    assert yt.dtype == torch.int64 and set(yt.tolist()) <= set(range(4)) and len(set(yt.tolist())) == 4
    assert len(dm.train_dataloader()) == 3 and len(dm.val_dataloader()) == 3 and len(dm.test_dataloader()) == 2
    assert isinstance(dm.train_dataloader(), TensorLoader) and dm.input_shape == (3, 8, 8)
    again = SyntheticImageDataModule(shape=[3, 8, 8], num_classes=4, train_size=40, val_size=12, test_size=8)
    again.setup()
    assert again._splits is not None and torch.equal(again._splits["val"][0], xv)
    flat = SyntheticImageDataModule(shape=[2, 5], train_size=4, val_size=0, test_size=0, flatten=True, seed=1)
    flat.setup()
    assert flat._splits is not None and flat._splits["train"][0].shape == (4, 10) and flat.input_shape == (10,)
    assert flat.val_dataloader() == [] and flat.test_dataloader() == []
    with pytest.raises(ValueError, match="shape"):
        SyntheticImageDataModule(shape=[0, 3])


def test_synthetic_is_learnable() -> None:
    dm = SyntheticImageDataModule(shape=[1, 6, 6], num_classes=3, train_size=300, val_size=0, test_size=90)
    dm.setup()
    assert dm._splits is not None
    (xt, yt), (xs, ys) = dm._splits["train"], dm._splits["test"]
    # nearest class mean, estimated on the training split, classifies the test split
    means = torch.stack([xt[yt == c].mean(0) for c in range(3)])
    pred = torch.cdist(xs.flatten(1), means.flatten(1)).argmin(1)
    assert (pred == ys).float().mean() > 0.9
