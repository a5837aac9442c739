"""Reference datamodules: datasets held as in-memory tensors, batched without per-sample work."""

from lightning_lottery.data.augment import random_crop, random_crop_flip, random_horizontal_flip, translate
from lightning_lottery.data.cifar10 import CIFAR10DataModule, read_cifar_batch
from lightning_lottery.data.digits import DigitsDataModule
from lightning_lottery.data.errors import DataNotFoundError
from lightning_lottery.data.fashion_mnist import FashionMNISTDataModule
from lightning_lottery.data.idx import read_idx
from lightning_lottery.data.idx_images import IDXImageDataModule
from lightning_lottery.data.mnist import MNISTDataModule
from lightning_lottery.data.synthetic import SyntheticImageDataModule
from lightning_lottery.data.tensor_datamodule import TensorDataModule
from lightning_lottery.data.tensor_loader import TensorLoader

__all__ = [
    "CIFAR10DataModule",
    "DataNotFoundError",
    "DigitsDataModule",
    "FashionMNISTDataModule",
    "IDXImageDataModule",
    "MNISTDataModule",
    "SyntheticImageDataModule",
    "TensorDataModule",
    "TensorLoader",
    "random_crop",
    "random_crop_flip",
    "random_horizontal_flip",
    "read_cifar_batch",
    "read_idx",
    "translate",
]
