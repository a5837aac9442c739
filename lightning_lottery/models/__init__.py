"""Reference networks from the lottery ticket papers."""

from lightning_lottery.models.classifier import ImageClassifier, WarmupMultiStep
from lightning_lottery.models.conv import ConvNet
from lightning_lottery.models.lenet import LeNet300100
from lightning_lottery.models.resnet import ResNet20
from lightning_lottery.models.vgg import VGG

__all__ = ["ConvNet", "ImageClassifier", "LeNet300100", "ResNet20", "VGG", "WarmupMultiStep"]
