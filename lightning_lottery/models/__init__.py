"""Reference networks from the lottery ticket papers."""

from lightning_lottery.models.classifier import ImageClassifier
from lightning_lottery.models.lenet import LeNet300100

__all__ = ["ImageClassifier", "LeNet300100"]
