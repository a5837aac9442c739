"""Fashion-MNIST as in-memory tensors (Xiao et al. 2017), read from IDX files."""

from __future__ import annotations

from typing import ClassVar

from lightning_lottery.data.idx_images import CACHE_DIR, IDXImageDataModule

__all__ = ["CACHE_DIR", "DEBIAN_DIR", "FashionMNISTDataModule"]

#: Where Debian's ``dataset-fashion-mnist`` package installs the files.
DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
#: Mean and std of the 60,000 training images scaled to [0, 1].
MEAN, STD = 0.2860, 0.3530


class FashionMNISTDataModule(IDXImageDataModule):
    """Fashion-MNIST (60,000 train / 10,000 test, 28×28, 10 classes) as normalised float tensors.

    Images are scaled to [0, 1] and normalised with the training mean/std (0.2860, 0.3530); shape
    ``[N, 1, 28, 28]``, or ``[N, 784]`` with ``flatten``. ``val_size`` training images are held out for
    validation with a permutation seeded by ``seed``. Files are read once and cached on the instance, so
    calling ``setup`` again (a new fit with the same datamodule) costs nothing.

    Files are looked for in ``data_dir`` (default: Debian's ``/usr/share/datasets/fashion-mnist``, then
    ``~/.cache/lightning-lottery``) as ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``, or in the
    torchvision layout ``<data_dir>/FashionMNIST/raw/``. Missing files raise ``DataNotFoundError`` unless
    ``download`` is true, in which case torchvision downloads them. See :class:`IDXImageDataModule`.

    Example:
        >>> dm = FashionMNISTDataModule(batch_size=60, flatten=True)
        >>> dm.setup("fit")
        >>> x, y = next(iter(dm.train_dataloader()))
        >>> x.shape, y.shape
        (torch.Size([60, 784]), torch.Size([60]))
    """

    dataset_name: ClassVar[str] = "Fashion-MNIST"
    torchvision_name: ClassVar[str] = "FashionMNIST"
    mean: ClassVar[float] = MEAN
    std: ClassVar[float] = STD
    default_dirs: ClassVar[tuple[str, ...]] = (DEBIAN_DIR, CACHE_DIR)
    install_hint: ClassVar[str] = (
        f"`apt-get install dataset-fashion-mnist` (Debian/Ubuntu, installs to {DEBIAN_DIR})"
    )
