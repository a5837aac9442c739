"""Reference datamodules: datasets held as in-memory tensors, batched without per-sample work."""

from lightning_lottery.data.digits import DigitsDataModule
from lightning_lottery.data.errors import DataNotFoundError
from lightning_lottery.data.fashion_mnist import FashionMNISTDataModule
from lightning_lottery.data.idx import read_idx
from lightning_lottery.data.tensor_loader import TensorLoader

__all__ = ["DataNotFoundError", "DigitsDataModule", "FashionMNISTDataModule", "TensorLoader", "read_idx"]
