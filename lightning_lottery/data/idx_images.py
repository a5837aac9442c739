"""A datamodule base for 28×28 grey-scale IDX datasets (MNIST, Fashion-MNIST) held as in-memory tensors."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import ClassVar, Optional

import torch
from torch import Tensor

from lightning_lottery.data.classes import check_classes, select_classes
from lightning_lottery.data.errors import DataNotFoundError
from lightning_lottery.data.idx import read_idx
from lightning_lottery.data.tensor_datamodule import Splits, TensorDataModule

__all__ = ["CACHE_DIR", "IDX_FILES", "IDXImageDataModule"]

#: Download root used when ``data_dir`` is not given.
CACHE_DIR = os.path.join("~", ".cache", "lightning-lottery")

#: The four files of an MNIST-style dataset (each may also be gzipped, ``<name>.gz``).
IDX_FILES: dict[str, str] = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


class IDXImageDataModule(TensorDataModule):
    """MNIST-style data (60,000 train / 10,000 test 28×28 uint8 images, 10 classes) as normalised float tensors.

    Subclasses set the class attributes: ``dataset_name`` (for messages), ``torchvision_name`` (the
    ``torchvision.datasets`` class used to download, and its folder ``<root>/<torchvision_name>/raw``),
    ``mean``/``std`` (of the training images scaled to [0, 1]), ``default_dirs`` (searched when ``data_dir`` is
    not given) and ``install_hint`` (an extra way to get the data, for the error message).

    Images are scaled to [0, 1] and normalised with ``mean``/``std``; shape ``[N, 1, 28, 28]``, or ``[N, 784]``
    with ``flatten``. ``val_size`` training images are held out for validation with a permutation seeded by
    ``seed``. Files are read once and cached on the instance, so calling ``setup`` again (a new fit with the same
    datamodule) costs nothing. Files are looked for in each directory as
    ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``, directly or in the torchvision layout
    ``<dir>/<torchvision_name>/raw/``. Missing files raise :class:`DataNotFoundError` unless ``download`` is
    true, in which case torchvision downloads them to ``data_dir`` (default ``~/.cache/lightning-lottery``).

    Args:
        data_dir: directory with the files (default: ``default_dirs``).
        batch_size: training batch size.
        eval_batch_size: validation and test batch size.
        val_size: training images held out for validation.
        seed: seed of the validation split and of the training shuffle.
        download: download missing files with torchvision (needs network).
        flatten: ``[N, 784]`` inputs instead of ``[N, 1, 28, 28]``.
        classes: keep only these classes (before ``val_size`` images are held out), labels remapped to ``0..k-1``
            in the order given, e.g. ``[5, 6, 7, 8, 9]``.

    Example:
        >>> class KMNIST(IDXImageDataModule):  # a new MNIST-style dataset is a few class attributes
        ...     dataset_name, torchvision_name, mean, std = "Kuzushiji-MNIST", "KMNIST", 0.1918, 0.3483
        >>> KMNIST(flatten=True).input_shape, KMNIST().input_shape
        ((784,), (1, 28, 28))
    """

    num_classes: int = 10
    dataset_name: ClassVar[str] = "IDX images"
    torchvision_name: ClassVar[str] = ""
    mean: ClassVar[float] = 0.0
    std: ClassVar[float] = 1.0
    default_dirs: ClassVar[tuple[str, ...]] = (CACHE_DIR,)
    install_hint: ClassVar[str] = ""
    #: The number of training images (60,000 in MNIST and Fashion-MNIST): the upper bound of ``val_size``.
    train_size: ClassVar[int] = 60_000
    image_size: ClassVar[tuple[int, int]] = (28, 28)

    def __init__(
        self,
        data_dir: str | None = None,
        batch_size: int = 60,
        eval_batch_size: int = 1000,
        val_size: int = 5000,
        seed: int = 0,
        download: bool = False,
        flatten: bool = False,
        classes: Optional[list[int]] = None,
    ) -> None:
        super().__init__(batch_size=batch_size, eval_batch_size=eval_batch_size, val_size=val_size, seed=seed)
        self.save_hyperparameters()
        if not 0 <= val_size < self.train_size:
            raise ValueError(f"val_size must be in [0, {self.train_size}), got {val_size}")
        self.data_dir = data_dir
        self.download = download
        self.flatten = flatten
        self.classes = check_classes(classes, self.num_classes)
        if self.classes is not None:
            self.num_classes = len(self.classes)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input: ``(784,)`` when flattened, else ``(1, 28, 28)``."""
        h, w = self.image_size
        return (h * w,) if self.flatten else (1, h, w)

    # ------------------------------------------------------------------------------------------ files
    def _find(self, directory: Path, name: str) -> Path | None:
        """The file ``name`` (or ``name.gz``) in ``directory`` or in its torchvision layout."""
        folders = [directory]
        if self.torchvision_name:
            folders.append(directory / self.torchvision_name / "raw")
        for folder in folders:
            for candidate in (folder / name, folder / f"{name}.gz"):
                if candidate.is_file():
                    return candidate
        return None

    def _locate(self, directory: Path) -> dict[str, Path] | None:
        found = {key: self._find(directory, name) for key, name in IDX_FILES.items()}
        if any(path is None for path in found.values()):
            return None
        return found  # type: ignore[return-value]

    def _search_dirs(self) -> list[Path]:
        if self.data_dir is not None:
            return [Path(self.data_dir).expanduser()]
        return [Path(d).expanduser() for d in self.default_dirs]

    def _download_root(self) -> Path:
        return Path(self.data_dir or CACHE_DIR).expanduser()

    def _torchvision_download(self, root: Path) -> None:
        import torchvision.datasets

        dataset_class = getattr(torchvision.datasets, self.torchvision_name)  # looked up late: patchable
        for train in (True, False):
            dataset_class(root=str(root), train=train, download=True)

    def _files(self, allow_download: bool) -> dict[str, Path]:
        for directory in self._search_dirs():
            found = self._locate(directory)
            if found is not None:
                return found
        failure = ""
        if allow_download and self.download:
            root = self._download_root()
            try:
                self._torchvision_download(root)
            except Exception as err:  # noqa: BLE001 - any failure becomes the one helpful error
                failure = f" Download to {root} failed: {type(err).__name__}: {err}."
            else:
                found = self._locate(root)
                if found is not None:
                    return found
                failure = f" Download to {root} finished but the IDX files are not there."
        searched = ", ".join(str(d) for d in self._search_dirs())
        layout = f", also under {self.torchvision_name}/raw/" if self.torchvision_name else ""
        hint = f"{self.install_hint}, or " if self.install_hint else ""
        raise DataNotFoundError(
            f"{self.dataset_name} not found in {searched} (looked for {{train,t10k}}-{{images-idx3,labels-idx1}}"
            f"-ubyte[.gz]{layout}).{failure} To get it: {hint}point to a copy with `--data.data_dir PATH`, "
            "or pass `--data.download true` when online."
        )

    def prepare_data(self) -> None:
        """Download the files if they are missing and ``download`` is true (runs on one process)."""
        if self.download:
            self._files(allow_download=True)

    # ------------------------------------------------------------------------------------------ tensors
    def _images(self, path: Path) -> Tensor:
        images = read_idx(path)
        if images.dim() != 3 or tuple(images.shape[1:]) != self.image_size or images.dtype != torch.uint8:
            shape = list(images.shape)
            expected = f"[N, {self.image_size[0]}, {self.image_size[1]}]"
            raise ValueError(f"{path}: expected uint8 images of shape {expected}, got {images.dtype} {shape}")
        return images

    def _normalise(self, images: Tensor) -> Tensor:
        x = images.to(torch.float32).div_(255.0).sub_(self.mean).div_(self.std)
        return x.reshape(len(x), math.prod(self.image_size)) if self.flatten else x.unsqueeze(1)

    def _labels(self, path: Path, n: int) -> Tensor:
        labels = read_idx(path)
        if labels.shape != (n,):
            raise ValueError(f"{path}: expected {n} labels, got shape {list(labels.shape)}")
        return labels.to(torch.int64)

    def _build_splits(self) -> Splits:
        """Read, normalise and split the data."""
        files = self._files(allow_download=True)
        x_train = self._images(files["train_images"])
        y_train = self._labels(files["train_labels"], len(x_train))
        x_test = self._images(files["test_images"])
        y_test = self._labels(files["test_labels"], len(x_test))
        # split the uint8 images, then convert: 4x less memory traffic than gathering floats
        train, test = select_classes((x_train, y_train), self.classes), select_classes((x_test, y_test), self.classes)
        return self._hold_out_val(train, test, self._normalise)
