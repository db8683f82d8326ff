"""Popular CNN building patterns, written the way common model code writes them (small widths).

Each entry of :data:`PATTERNS` builds one small network that exercises a pattern the torch.fx
frontend must type: deep stems and avg-pool downsampling, grouped and depthwise convolutions,
squeeze-excitation gates, concatenation, splits and slices, layer norms over permuted tensors,
layer scale, fused BN-activation modules calling ``F.batch_norm``, modules called more than once,
and dynamic "same" padding computed from the input size. The first networks live in
:mod:`cnn_blocks`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from cnn_blocks import (
    DLA,
    BasicBlock,
    ConvNeXt,
    CSPNet,
    DenseNet,
    EfficientNet,
    GhostNet,
    RegNetY,
    Res2Net,
    ResNet,
    conv_bn,
)
from torch import nn


class HRNet(nn.Module):
    """Two resolutions exchanged by a fuse layer (strided conv down, 1x1 conv + upsample up), ``self.relu`` reused."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 8, s=2)
        self.branch_high, self.transition_low = BasicBlock(8, 8), conv_bn(8, 16, s=2)
        self.branch_low = BasicBlock(16, 16)
        self.up = nn.Sequential(nn.Conv2d(16, 8, 1, bias=False), nn.BatchNorm2d(8), nn.Upsample(scale_factor=2.0))
        self.down = nn.Sequential(nn.Conv2d(8, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16))
        self.relu = nn.ReLU(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        high, low = self.branch_high(x), self.branch_low(self.transition_low(x))
        high, low = self.relu(high + self.up(low)), self.relu(low + self.down(high))
        low_up = F.interpolate(low, size=high.shape[-2:], mode="bilinear", align_corners=False)
        return torch.cat([high, low_up], 1)


class ConvMlp(nn.Module):
    """VGG's convolutional MLP head: pools up to its kernel size first when the map is smaller."""

    def __init__(self, cin: int, cout: int, kernel: int = 3) -> None:
        super().__init__()
        self.input_size = kernel
        self.fc1, self.act1 = nn.Conv2d(cin, cout, kernel), nn.ReLU(True)
        self.drop, self.fc2, self.act2 = nn.Dropout(0.2), nn.Conv2d(cout, cout, 1), nn.ReLU(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] < self.input_size or x.shape[-1] < self.input_size:
            output_size = max(self.input_size, x.shape[-2]), max(self.input_size, x.shape[-1])
            x = F.adaptive_avg_pool2d(x, output_size)
        return self.act2(self.fc2(self.drop(self.act1(self.fc1(x)))))


class VGG(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(conv_bn(3, 8), nn.MaxPool2d(2, 2), conv_bn(8, 16), conv_bn(16, 16),
                                      nn.MaxPool2d(2, 2), conv_bn(16, 16), nn.MaxPool2d(2, 2))
        self.pre_logits = ConvMlp(16, 32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pre_logits(self.features(x))
        x = F.adaptive_avg_pool2d(x, 1)
        return self.fc(x.view(x.size(0), -1))


class BasicConv2d(nn.Module):
    def __init__(self, cin: int, cout: int, **kwargs: object) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(cin, cout, bias=False, **kwargs), nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


class Inception(nn.Module):
    """Inception branches: 1x1, 1x1 -> 3x3, factorised 1x3 / 3x1, and an average-pool branch."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = BasicConv2d(3, 16, kernel_size=3, stride=2)
        self.b1 = BasicConv2d(16, 8, kernel_size=1)
        self.b3_1, self.b3_2 = BasicConv2d(16, 8, kernel_size=1), BasicConv2d(8, 8, kernel_size=3, padding=1)
        self.b3_2a = BasicConv2d(8, 6, kernel_size=(1, 3), padding=(0, 1))
        self.b3_2b = BasicConv2d(8, 6, kernel_size=(3, 1), padding=(1, 0))
        self.bp = BasicConv2d(16, 4, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        b3 = self.b3_2(self.b3_1(x))
        b3 = torch.cat([self.b3_2a(b3), self.b3_2b(b3)], 1)
        bp = self.bp(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([self.b1(x), b3, bp], 1)


class SeparableConv2d(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cin, 3, 1, 1, groups=cin, bias=False)
        self.pointwise = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.conv1(x))


class Xception(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 8, s=2)
        self.rep = nn.Sequential(nn.ReLU(), SeparableConv2d(8, 16), nn.BatchNorm2d(16), nn.ReLU(inplace=True),
                                 SeparableConv2d(16, 16), nn.BatchNorm2d(16), nn.MaxPool2d(3, 2, 1))
        self.skip, self.skipbn = nn.Conv2d(8, 16, 1, 2, bias=False), nn.BatchNorm2d(16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return self.rep(x) + self.skipbn(self.skip(x))


class RepVGGBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.identity = nn.BatchNorm2d(cin) if cin == cout and stride == 1 else None
        self.dense, self.one = conv_bn(cin, cout, 3, stride, act=False), conv_bn(cin, cout, 1, stride, act=False)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = 0 if self.identity is None else self.identity(x)
        return self.act(self.dense(x) + self.one(x) + identity)


class RepVGG(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stages = nn.Sequential(RepVGGBlock(3, 8, 2), RepVGGBlock(8, 8), RepVGGBlock(8, 16, 2), RepVGGBlock(16, 16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(x)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, h, w = x.size()
    x = x.view(b, groups, c // groups, h, w)
    return torch.transpose(x, 1, 2).contiguous().view(b, -1, h, w)


class ShuffleBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        half = c // 2
        self.branch2 = nn.Sequential(conv_bn(half, half, 1), conv_bn(half, half, 3, groups=half, act=False),
                                     conv_bn(half, half, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=1)
        return channel_shuffle(torch.cat((x1, self.branch2(x2)), dim=1), 2)


class ShuffleNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.b1, self.b2 = conv_bn(3, 16, s=2), ShuffleBlock(16), ShuffleBlock(16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b2(self.b1(self.stem(x)))


class BatchNormAct2d(nn.BatchNorm2d):
    """A fused BN + activation module that calls ``F.batch_norm`` on its own parameters and buffers."""

    def __init__(self, c: int, act: type[nn.Module] = nn.ReLU) -> None:
        super().__init__(c)
        self.drop, self.act = nn.Identity(), act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        bn_training = True if self.training else (self.running_mean is None and self.running_var is None)
        x = F.batch_norm(x, self.running_mean if not self.training or self.track_running_stats else None,
                         self.running_var if not self.training or self.track_running_stats else None,
                         self.weight, self.bias, bn_training, factor, self.eps)
        return self.act(self.drop(x))


class FusedBNAct(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, 2, 1, bias=False), BatchNormAct2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, 1, 1, groups=8, bias=False), BatchNormAct2d(8, nn.Hardswish)
        self.conv3, self.bn3 = nn.Conv2d(8, 16, 1, bias=False), BatchNormAct2d(16, nn.Identity)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn3(self.conv3(self.bn2(self.conv2(self.bn1(self.conv1(x))))))


def pad_same(x: torch.Tensor, k: tuple[int, int], s: tuple[int, int], d: tuple[int, int],
             value: float = 0.0) -> torch.Tensor:
    """TensorFlow "SAME" padding computed from the input size (asymmetric when the total is odd)."""
    ih, iw = x.size()[-2:]
    pad_h = max((math.ceil(ih / s[0]) - 1) * s[0] + (k[0] - 1) * d[0] + 1 - ih, 0)
    pad_w = max((math.ceil(iw / s[1]) - 1) * s[1] + (k[1] - 1) * d[1] + 1 - iw, 0)
    if pad_h > 0 or pad_w > 0:
        x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2], value=value)
    return x


class Conv2dSame(nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = pad_same(x, self.kernel_size, self.stride, self.dilation)
        return F.conv2d(x, self.weight, self.bias, self.stride, (0, 0), self.dilation, self.groups)


class MaxPool2dSame(nn.MaxPool2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s = (self.kernel_size,) * 2, (self.stride,) * 2
        x = pad_same(x, k, s, (1, 1), value=-float("inf"))
        return F.max_pool2d(x, self.kernel_size, self.stride, (0, 0), 1, self.ceil_mode)


class TFSame(nn.Module):
    """TF-ported EfficientNet stem: "same" padding from the input size for strided convs and pooling."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_stem, self.bn1 = Conv2dSame(3, 8, 3, 2, bias=False), nn.BatchNorm2d(8)
        self.conv_dw, self.bn2 = Conv2dSame(8, 8, 5, 2, groups=8, bias=False), nn.BatchNorm2d(8)
        self.pool, self.conv_pw = MaxPool2dSame(3, 2), Conv2dSame(8, 12, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.silu(self.bn1(self.conv_stem(x)))
        x = F.silu(self.bn2(self.conv_dw(x)))
        return self.conv_pw(self.pool(x))


class MixedConv2d(nn.ModuleDict):
    """MixNet: split the channels, one depthwise kernel size per split, concatenate."""

    def __init__(self, c: int, kernels: tuple[int, ...] = (3, 5, 7)) -> None:
        splits = [c // len(kernels)] * len(kernels)
        splits[0] += c - sum(splits)
        super().__init__({str(i): nn.Conv2d(s, s, k, 1, k // 2, groups=s, bias=False)
                          for i, (s, k) in enumerate(zip(splits, kernels, strict=True))})
        self.splits = splits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_split = torch.split(x, self.splits, 1)
        return torch.cat([c(x_split[i]) for i, c in enumerate(self.values())], 1)


class MixNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.mix, self.bn = conv_bn(3, 14, s=2), MixedConv2d(14), nn.BatchNorm2d(14)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.mix(self.stem(x))))


class DualPathBlock(nn.Module):
    """DPN: a residual path (first channels) and a densely concatenated path (the rest), by slicing."""

    def __init__(self, cin: int, res: int, inc: int) -> None:
        super().__init__()
        self.res = res
        self.c1x1_w = conv_bn(cin, res + 2 * inc, 1)
        self.c1x1_a, self.c3x3_b = conv_bn(cin, 16, 1), conv_bn(16, 16, 3, groups=4)
        self.c1x1_c = nn.Conv2d(16, res + inc, 1, bias=False)

    def forward(self, x: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x_in = torch.cat(x, dim=1)
        x_s = self.c1x1_w(x_in)
        x_s1, x_s2 = x_s[:, : self.res, :, :], x_s[:, self.res :, :, :]
        out = self.c1x1_c(self.c3x3_b(self.c1x1_a(x_in)))
        return x_s1 + out[:, : self.res, :, :], torch.cat([x_s2, out[:, self.res :, :, :]], dim=1)


class DPN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.block = conv_bn(3, 12, s=2), DualPathBlock(12, 8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        resid, dense = self.block((x[:, :6], x[:, 6:]))
        return torch.cat([resid, dense], 1)


class ReXBlock(nn.Module):
    """ReXNet: the shortcut is added to the first input channels only (slice, add, concatenate)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.in_channels = cin
        self.conv = nn.Sequential(conv_bn(cin, cin * 4, 1), nn.ReLU6(), conv_bn(cin * 4, cin * 4, 3, groups=cin * 4),
                                  conv_bn(cin * 4, cout, 1, act=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return torch.cat([y[:, 0 : self.in_channels] + x, y[:, self.in_channels :]], dim=1)


class ReXNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.block, self.act = conv_bn(3, 8, s=2), ReXBlock(8, 12), nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.block(self.stem(x)))


PATTERNS: dict[str, Callable[[], nn.Module]] = {
    "resnet_d": ResNet,
    "resnext": lambda: ResNet(groups=4),
    "se_resnet": lambda: ResNet(se=True),
    "efficientnet": EfficientNet,
    "mobilenet_v3": lambda: EfficientNet(nn.Hardswish, nn.Hardsigmoid),
    "regnet_y": RegNetY,
    "densenet": DenseNet,
    "dla": DLA,
    "ghostnet": GhostNet,
    "convnext": ConvNeXt,
    "cspnet": CSPNet,
    "res2net": Res2Net,
    "hrnet": HRNet,
    "vgg": VGG,
    "inception": Inception,
    "xception": Xception,
    "repvgg": RepVGG,
    "shufflenet": ShuffleNet,
    "fused_bn_act": FusedBNAct,
    "tf_same_padding": TFSame,
    "mixnet": MixNet,
    "dpn": DPN,
    "rexnet": ReXNet,
}
