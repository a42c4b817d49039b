"""The teacher classifiers of KegNet (Yoo et al., NeurIPS 2019): LeNet5, ResNet-14 and a tabular MLP; and
LeNet-5-half, the student of the DAFL and DFAD papers.

State-dict keys follow the authors' release, so their ``{'model_state': ...}`` teacher files load unchanged.
Every classifier takes ``input_shape`` (without the batch dimension) and ``num_classes`` and keeps both as
attributes, which the later stages use to check that a generator fits its teacher. Each also splits its
``forward`` in two, as timm's models do: ``forward_features(x)``, the features its classifier head reads, and
``forward_head(features)``, the logits; DAFL's activation loss (:mod:`kegnet_pl.modules.dafl`) reads the first.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kegnet_pl.errors import ConfigError
from kegnet_pl.nets.registry import register_classifier


def _image_shape(name: str, input_shape: Sequence[int], size: int = 32) -> tuple[int, int, int]:
    shape = tuple(input_shape)
    if len(shape) != 3 or shape[1:] != (size, size):
        raise ConfigError(f"{name} takes images of shape (channels, {size}, {size}), got input_shape={shape}")
    return shape  # type: ignore[return-value]


@register_classifier("lenet5")
class LeNet5(nn.Module):
    """LeNet5 as in KegNet: 61,706 parameters for 1x32x32 inputs and 10 classes."""

    #: channels of conv1, conv2, conv3 and units of fc1
    widths: tuple[int, int, int, int] = (6, 16, 120, 84)

    def __init__(self, input_shape: Sequence[int] = (1, 32, 32), num_classes: int = 10) -> None:
        super().__init__()
        self.input_shape = _image_shape(type(self).__name__, input_shape)
        self.num_classes = num_classes
        c1, c2, c3, hidden = self.widths
        self.conv1 = nn.Conv2d(self.input_shape[0], c1, kernel_size=5)
        self.conv2 = nn.Conv2d(c1, c2, kernel_size=5)
        self.conv3 = nn.Conv2d(c2, c3, kernel_size=5)
        self.fc1 = nn.Linear(c3, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The flattened output of conv3 (after its ReLU): what DAFL's code takes as LeNet5's features."""
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return F.relu(self.conv3(x)).flatten(1)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """The logits of :meth:`forward_features`' output (fc1, ReLU, fc2)."""
        return self.fc2(F.relu(self.fc1(features)))


@register_classifier("lenet5-half")
class LeNet5Half(LeNet5):
    """LeNet-5-half, the student of DAFL (Chen et al., ICCV 2019) and DFAD (Fang et al., 2019): LeNet5 with half
    the channels and units (conv 1->3, 3->8, 8->60, fc 60->42->10), 15,738 parameters for 1x32x32 inputs and 10
    classes, 3.92x fewer than LeNet5. Trained from scratch (``StudentModule(student="lenet5-half")``)."""

    widths = (3, 8, 60, 42)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a zero-padded identity shortcut (option A of He et al., 2016)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1)
        self.bn2 = nn.BatchNorm2d(planes)
        self.stride = stride
        self.extra_planes = planes - in_planes

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.extra_planes:
            half = self.extra_planes // 2
            x = F.pad(x, (0, 0, 0, 0, half, self.extra_planes - half))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


@register_classifier("resnet14")
class ResNet14(nn.Module):
    """ResNet-14 for 32x32 images: 172,970 parameters for 3 channels and 10 classes."""

    def __init__(self, input_shape: Sequence[int] = (3, 32, 32), num_classes: int = 10, blocks: int = 2) -> None:
        super().__init__()
        self.input_shape = _image_shape("ResNet14", input_shape)
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(self.input_shape[0], 16, kernel_size=3, stride=1, padding=1)
        self.norm1 = nn.BatchNorm2d(16)
        self.layers1 = self._stage(16, 16, blocks, stride=1)
        self.layers2 = self._stage(16, 32, blocks, stride=2)
        self.layers3 = self._stage(32, 64, blocks, stride=2)
        self.linear = nn.Linear(64, num_classes)

    @staticmethod
    def _stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_planes, planes, stride)]
        layers += [BasicBlock(planes, planes, 1) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The average-pooled output of the last stage, the input of the linear classifier."""
        x = F.relu(self.norm1(self.conv1(x)))
        x = self.layers3(self.layers2(self.layers1(x)))
        return F.adaptive_avg_pool2d(x, 1).flatten(1)  # the 8x8 average pool of a 32x32 input

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """The logits of :meth:`forward_features`' output."""
        return self.linear(features)


@register_classifier("mlp")
class MLP(nn.Module):
    """The tabular teacher: ``n_layers`` hidden layers of ``units`` ELU units with dropout."""

    def __init__(
        self,
        input_shape: Sequence[int] = (64,),
        num_classes: int = 10,
        units: int = 100,
        n_layers: int = 10,
        dropout: float = 0.15,
    ) -> None:
        super().__init__()
        shape = tuple(input_shape)
        if len(shape) != 1:
            raise ConfigError(f"MLP takes flat feature vectors, input_shape=(features,), got {shape}")
        self.input_shape = shape
        self.num_classes = num_classes
        layers: list[nn.Module] = []
        width = shape[0]
        for _ in range(n_layers):
            layers += [nn.Linear(width, units), nn.ELU(), nn.Dropout(dropout)]
            width = units
        layers.append(nn.Linear(width, num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last hidden layer's output (after its ELU and dropout), the input of the output layer."""
        return self.layers[:-1](x.flatten(1))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """The logits of :meth:`forward_features`' output."""
        return self.layers[-1](features)
