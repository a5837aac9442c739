"""CIFAR-10 (Krizhevsky 2009) as in-memory tensors, with batch augmentation on the model's device."""

from __future__ import annotations

import importlib
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lightning_lottery import _compat
from lightning_lottery.data.augment import random_crop_flip
from lightning_lottery.data.errors import DataNotFoundError
from lightning_lottery.data.idx_images import CACHE_DIR
from lightning_lottery.data.tensor_datamodule import Splits, TensorDataModule
from lightning_lottery.data.tensor_loader import _epoch_seed

__all__ = ["CIFAR10DataModule", "read_cifar_batch"]

#: The folder that ``torchvision.datasets.CIFAR10`` extracts (python pickle version of the data set).
FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
#: Per-channel mean and std of the 50,000 training images scaled to [0, 1].
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)

#: The only globals a CIFAR batch file may reference (numpy arrays, as pickled by Python 2 or 3).
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only: a batch file cannot run arbitrary code."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch file")
        if module.startswith("numpy.core."):  # numpy >= 2 moved it; the old name warns
            try:
                return getattr(importlib.import_module("numpy._core." + module[len("numpy.core.") :]), name)
            except ImportError:
                pass
        return super().find_class(module, name)


def read_cifar_batch(path: str | Path) -> tuple[Tensor, Tensor]:
    """Read one batch file of the CIFAR-10 python version: uint8 images ``[N, 3, 32, 32]`` and int64 labels ``[N]``.

    The file is a pickled dict with ``b"data"`` (uint8, N×3072: the red, green, blue 32×32 planes of each image)
    and ``b"labels"`` (N ints). Raises ``ValueError`` naming the file when it is not such a dict.

    Example:
        >>> import os, pickle, tempfile, numpy as np
        >>> with tempfile.TemporaryDirectory() as d:
        ...     path = os.path.join(d, "data_batch_1")
        ...     with open(path, "wb") as f:
        ...         pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [3, 7]}, f)
        ...     x, y = read_cifar_batch(path)
        >>> x.shape, x.dtype, y.tolist()
        (torch.Size([2, 3, 32, 32]), torch.uint8, [3, 7])
    """
    try:
        with open(path, "rb") as f:
            batch = _ArrayUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as err:
        raise ValueError(f"{path}: not a CIFAR-10 batch file ({type(err).__name__}: {err})") from err
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise ValueError(f"{path}: expected a dict with b'data' and b'labels', got {keys}")
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[b"labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(f"{path}: expected uint8 data of shape [N, 3072], got {data.dtype} {list(data.shape)}")
    if labels.shape != (len(data),):
        raise ValueError(f"{path}: expected {len(data)} labels, got shape {list(labels.shape)}")
    images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
    return images, torch.from_numpy(labels.astype(np.int64))


class CIFAR10DataModule(TensorDataModule):
    """CIFAR-10 (50,000 train / 10,000 test, 32×32 RGB, 10 classes) as normalised ``[N, 3, 32, 32]`` float tensors.

    Reads the python version's batch files (``data_batch_1`` … ``data_batch_5``, ``test_batch``) from
    ``<data_dir>/cifar-10-batches-py/`` (torchvision's layout) or from ``data_dir`` itself; default
    ``data_dir``: ``~/.cache/lightning-lottery``. Missing files raise :class:`DataNotFoundError` unless
    ``download`` is true, in which case ``torchvision.datasets.CIFAR10`` downloads and extracts them (the files
    are read here, not through torchvision). Images are normalised per channel with the training mean/std;
    ``val_size`` training images are held out for validation with a permutation seeded by ``seed``.

    With ``augment`` (default), training batches get the standard CIFAR augmentation (random crop with 4 pixels
    of zero padding, random horizontal flip) in ``on_after_batch_transfer``, i.e. whole batches on the model's
    device, only while the trainer is training. The randomness of a batch is a function of ``(seed, epoch,
    batch index)``, so a rerun, a resumed fit and a rewound level see the same augmentations.

    Args:
        data_dir: directory with ``cifar-10-batches-py/`` (default ``~/.cache/lightning-lottery``).
        batch_size: training batch size.
        eval_batch_size: validation and test batch size.
        val_size: training images held out for validation.
        seed: seed of the validation split, the training shuffle and the augmentation.
        download: download missing files with torchvision (needs network).
        augment: random crops (4-pixel zero padding) and horizontal flips of training batches.

    Example:
        >>> dm = CIFAR10DataModule(data_dir="/nonexistent")
        >>> dm.input_shape, dm.augment
        ((3, 32, 32), True)
        >>> try:
        ...     dm.setup("fit")
        ... except FileNotFoundError as err:
        ...     print(str(err).split(" (")[0])
        CIFAR-10 not found in /nonexistent
    """

    num_classes: int = 10

    def __init__(
        self,
        data_dir: str | None = None,
        batch_size: int = 128,
        eval_batch_size: int = 1000,
        val_size: int = 5000,
        seed: int = 0,
        download: bool = False,
        augment: bool = True,
    ) -> None:
        super().__init__(batch_size=batch_size, eval_batch_size=eval_batch_size, val_size=val_size, seed=seed)
        self.save_hyperparameters()
        if not 0 <= val_size < 50_000:
            raise ValueError(f"val_size must be in [0, 50000), got {val_size}")
        self.data_dir = data_dir
        self.download = download
        self.augment = augment

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input: ``(3, 32, 32)``."""
        return (3, 32, 32)

    # ------------------------------------------------------------------------------------------ files
    def _root(self) -> Path:
        return Path(self.data_dir or CACHE_DIR).expanduser()

    @staticmethod
    def _locate(directory: Path) -> dict[str, Path] | None:
        for folder in (directory / FOLDER, directory):
            paths = {name: folder / name for name in (*TRAIN_FILES, TEST_FILE)}
            if all(p.is_file() for p in paths.values()):
                return paths
        return None

    def _files(self, allow_download: bool) -> dict[str, Path]:
        root = self._root()
        found = self._locate(root)
        if found is not None:
            return found
        failure = ""
        if allow_download and self.download:
            try:
                import torchvision.datasets

                torchvision.datasets.CIFAR10(root=str(root), train=True, download=True)
            except Exception as err:  # noqa: BLE001 - any failure becomes the one helpful error
                failure = f" Download to {root} failed: {type(err).__name__}: {err}."
            else:
                found = self._locate(root)
                if found is not None:
                    return found
                failure = f" Download to {root} finished but the batch files are not there."
        raise DataNotFoundError(
            f"CIFAR-10 not found in {root} (looked for data_batch_1..5 and test_batch in {root / FOLDER} and "
            f"{root}).{failure} To get it: point to a copy of the python version (cifar-10-python.tar.gz, "
            "extracted) with `--data.data_dir PATH`, or pass `--data.download true` when online."
        )

    def prepare_data(self) -> None:
        """Download the files if they are missing and ``download`` is true (runs on one process)."""
        if self.download:
            self._files(allow_download=True)

    # ------------------------------------------------------------------------------------------ tensors
    @staticmethod
    def _normalise(images: Tensor) -> Tensor:
        mean = torch.tensor(MEAN).view(1, 3, 1, 1)
        std = torch.tensor(STD).view(1, 3, 1, 1)
        return images.to(torch.float32).div_(255.0).sub_(mean).div_(std)

    def _build_splits(self) -> Splits:
        """Read, normalise and split the data."""
        files = self._files(allow_download=True)
        parts = [read_cifar_batch(files[name]) for name in TRAIN_FILES]
        x_train = torch.cat([x for x, _ in parts])
        y_train = torch.cat([y for _, y in parts])
        x_test, y_test = read_cifar_batch(files[TEST_FILE])
        return self._hold_out_val((x_train, y_train), (x_test, y_test), self._normalise)

    # ------------------------------------------------------------------------------------- augmentation
    def _batch_generator(self, device: torch.device) -> torch.Generator:
        """A generator seeded from ``(seed, epoch, index of the batch in the epoch)``."""
        trainer = self.trainer
        assert trainer is not None
        index = _compat.batch_in_epoch(trainer)
        key = _epoch_seed(self.seed, trainer.current_epoch * 2**32 + index)
        return torch.Generator(device=device).manual_seed(key)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Augment training batches on their device (random 4-pixel-padded crops and horizontal flips)."""
        trainer = self.trainer
        if not self.augment or trainer is None or not trainer.training:
            return batch
        x, *rest = batch
        return (random_crop_flip(x, padding=4, generator=self._batch_generator(x.device)), *rest)
