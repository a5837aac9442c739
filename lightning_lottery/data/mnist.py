"""MNIST (LeCun et al. 1998) as in-memory tensors, read from IDX files."""

from __future__ import annotations

from typing import ClassVar

from lightning_lottery.data.idx_images import CACHE_DIR, IDXImageDataModule

__all__ = ["MNISTDataModule"]


class MNISTDataModule(IDXImageDataModule):
    """MNIST (60,000 train / 10,000 test, 28×28, 10 classes) as normalised float tensors.

    The same interface and behaviour as :class:`~lightning_lottery.data.FashionMNISTDataModule` (see
    :class:`IDXImageDataModule`), normalised with the training mean/std (0.1307, 0.3081). Files are looked for
    in ``data_dir`` (default ``~/.cache/lightning-lottery``), directly or in torchvision's layout
    ``<data_dir>/MNIST/raw/``; ``download=True`` fetches missing files with ``torchvision.datasets.MNIST``,
    otherwise a missing file raises ``DataNotFoundError``.

    Example:
        >>> dm = MNISTDataModule(data_dir="/nonexistent", flatten=True)
        >>> dm.input_shape, dm.val_size
        ((784,), 5000)
        >>> try:
        ...     dm.setup("fit")
        ... except FileNotFoundError as err:
        ...     print(str(err).split(" (")[0])
        MNIST not found in /nonexistent
    """

    dataset_name: ClassVar[str] = "MNIST"
    torchvision_name: ClassVar[str] = "MNIST"
    mean: ClassVar[float] = 0.1307
    std: ClassVar[float] = 0.3081
    default_dirs: ClassVar[tuple[str, ...]] = (CACHE_DIR,)
