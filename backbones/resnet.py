"""ResNet v1.5 (He et al. 2016) for classification, and a dilated ResNet-34 trunk for dense prediction.

Module names follow the usual ImageNet layout (``conv1``, ``bn1``, ``layer1.0.conv1``,
``layer1.0.downsample.0``, ``fc``) so state dicts from that layout load directly. Each block owns one
activation module per use (``relu1``, ``relu2``, ...) so every traced node maps to a distinct, named module.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from .common import init_weights

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "deeplab_resnet34", "resnet18", "resnet34", "resnet50"]


def conv3x3(in_ch: int, out_ch: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    """3x3 convolution with 'same' padding (padding = dilation), no bias."""
    return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)


def conv1x1(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution, no bias."""
    return nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 conv-bn layers with an identity (or 1x1 projection) shortcut."""

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride, dilation)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes, 1, dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.relu2 = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu2(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carrying the stride, v1.5), 1x1 expand (x4), with a shortcut."""

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes, stride, dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.downsample = downsample
        self.relu3 = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu3(out + identity)


class ResNet(nn.Module):
    """Stem (7x7/2 conv, bn, relu, 3x3/2 max pool), four residual stages and an optional classifier.

    ``strides``/``dilations`` set each stage's stride and the dilation of all its 3x3 convolutions.
    With ``num_classes=None`` there is no pooling or classifier and the output is the last stage's map.
    """

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        layers: Sequence[int],
        num_classes: int | None = 1000,
        strides: Sequence[int] = (1, 2, 2, 2),
        dilations: Sequence[int] = (1, 1, 1, 1),
    ) -> None:
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        widths = (64, 128, 256, 512)
        self.layer1 = self._make_layer(block, widths[0], layers[0], strides[0], dilations[0])
        self.layer2 = self._make_layer(block, widths[1], layers[1], strides[1], dilations[1])
        self.layer3 = self._make_layer(block, widths[2], layers[2], strides[2], dilations[2])
        self.layer4 = self._make_layer(block, widths[3], layers[3], strides[3], dilations[3])
        self.out_channels = widths[3] * block.expansion
        self.has_head = num_classes is not None
        if num_classes is not None:
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.flatten = nn.Flatten(1)
            self.fc = nn.Linear(self.out_channels, num_classes)
        init_weights(self)

    def _make_layer(
        self, block: type[BasicBlock | Bottleneck], planes: int, blocks: int, stride: int, dilation: int
    ) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, dilation, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, 1, dilation) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        if not self.has_head:
            return x
        return self.fc(self.flatten(self.avgpool(x)))


def resnet18(num_classes: int = 1000) -> ResNet:
    """ResNet-18: BasicBlock x (2, 2, 2, 2)."""
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes)


def resnet34(num_classes: int = 1000) -> ResNet:
    """ResNet-34: BasicBlock x (3, 4, 6, 3)."""
    return ResNet(BasicBlock, (3, 4, 6, 3), num_classes)


def resnet50(num_classes: int = 1000) -> ResNet:
    """ResNet-50 (v1.5, stride on the 3x3 conv): Bottleneck x (3, 4, 6, 3)."""
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes)


def deeplab_resnet34() -> ResNet:
    """Dilated ResNet-34 trunk (output stride 8): stages 3 and 4 keep stride 1 and dilate by 2 and 4.

    Every 3x3 convolution of stage 3 (4) has dilation 2 (4). No pooling or classifier: the output is the
    stage-4 map, ``(N, 512, H/8, W/8)``.
    """
    return ResNet(BasicBlock, (3, 4, 6, 3), None, strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4))
