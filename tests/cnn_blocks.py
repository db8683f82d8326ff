"""Popular CNN building blocks and networks, written the way common model code writes them (small widths).

The first half of the pattern suite (:mod:`cnn_patterns` holds the rest and the list): ResNet-D,
ResNeXt, SE-ResNet, EfficientNet / MobileNetV3, RegNetY, DenseNet, DLA, GhostNet, ConvNeXt, CSPNet
and Res2Net.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn(cin: int, cout: int, k: int = 3, s: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, nn.ReLU(inplace=True)) if act else nn.Sequential(*layers)


class SqueezeExcite(nn.Module):
    def __init__(self, c: int, rd: int, act: type[nn.Module] = nn.ReLU, gate: type[nn.Module] = nn.Sigmoid) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2, self.gate = nn.Conv2d(c, rd, 1), act(), nn.Conv2d(rd, c, 1), gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * self.gate(self.fc2(self.act(self.fc1(s))))


class Bottleneck(nn.Module):
    """ResNet-D / ResNeXt / SE-ResNet bottleneck: ``self.relu`` is called three times."""

    def __init__(self, cin: int, width: int, cout: int, stride: int = 1, groups: int = 1, se: bool = False) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.se = SqueezeExcite(cout, cout // 4) if se else None
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:  # ResNet-D: average pool, then a 1x1 projection
            pool = nn.AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False) if stride > 1 else nn.Identity()
            self.downsample = nn.Sequential(pool, nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        x = self.bn3(self.conv3(x))
        if self.se is not None:
            x = self.se(x)
        if self.downsample is not None:
            shortcut = self.downsample(shortcut)
        x += shortcut
        return self.relu(x)


class ResNet(nn.Module):
    def __init__(self, groups: int = 1, se: bool = False) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, 8, s=2), conv_bn(8, 8), conv_bn(8, 16), nn.MaxPool2d(3, 2, 1))
        self.layer1 = Bottleneck(16, 8 * groups, 32, 1, groups, se)
        self.layer2 = nn.Sequential(Bottleneck(32, 8 * groups, 48, 2, groups, se),
                                    Bottleneck(48, 8 * groups, 48, 1, groups, se))
        self.fc = nn.Linear(48, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def make_divisible(v: float, divisor: int = 4) -> int:
    return max(divisor, int(v + divisor / 2) // divisor * divisor)


class InvertedResidual(nn.Module):
    """EfficientNet / MobileNetV3 block: expand, depthwise, squeeze-excite, project, residual."""

    def __init__(self, cin: int, cout: int, k: int, s: int, expand: int, act: type[nn.Module],
                 gate: type[nn.Module]) -> None:
        super().__init__()
        mid = cin * expand
        self.use_res = s == 1 and cin == cout
        self.conv_pw, self.bn1, self.act1 = nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), act()
        self.conv_dw = nn.Conv2d(mid, mid, k, s, k // 2, groups=mid, bias=False)
        self.bn2, self.act2 = nn.BatchNorm2d(mid), act()
        self.se = SqueezeExcite(mid, make_divisible(mid / 4), act, gate)
        self.conv_pwl, self.bn3 = nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.bn1(self.conv_pw(x)))
        y = self.se(self.act2(self.bn2(self.conv_dw(y))))
        y = self.bn3(self.conv_pwl(y))
        return y + x if self.use_res else y


class EfficientNet(nn.Module):
    def __init__(self, act: type[nn.Module] = nn.SiLU, gate: type[nn.Module] = nn.Sigmoid) -> None:
        super().__init__()
        self.conv_stem, self.bn1, self.act1 = nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), act()
        self.blocks = nn.Sequential(InvertedResidual(16, 16, 3, 1, 1, act, gate),
                                    InvertedResidual(16, 24, 5, 2, 4, act, gate),
                                    InvertedResidual(24, 24, 3, 1, 4, act, gate))
        self.conv_head, self.act2 = nn.Conv2d(24, 64, 1), act()
        self.classifier = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.act1(self.bn1(self.conv_stem(x))))
        x = self.act2(self.conv_head(F.adaptive_avg_pool2d(x, 1)))
        return self.classifier(x.flatten(1))


class RegNetY(nn.Module):
    """RegNetY: group-width convolutions with squeeze-excitation, a 1x1 shortcut on stride."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 16, s=2)
        self.s1 = Bottleneck(16, 16, 24, 2, groups=2, se=True)
        self.s2 = Bottleneck(24, 24, 24, 1, groups=3, se=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.s2(self.s1(self.stem(x)))


class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.norm1, self.relu1, self.conv1 = nn.BatchNorm2d(cin), nn.ReLU(inplace=True), nn.Conv2d(cin, 16, 1)
        self.norm2, self.relu2 = nn.BatchNorm2d(16), nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(16, growth, 3, 1, 1, bias=False)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = torch.cat(features, 1)
        return self.conv2(self.relu2(self.norm2(self.conv1(self.relu1(self.norm1(x))))))


class DenseNet(nn.Module):
    def __init__(self, layers: int = 3, growth: int = 6) -> None:
        super().__init__()
        self.stem = conv_bn(3, 12, s=2)
        self.layers = nn.ModuleList(DenseLayer(12 + i * growth, growth) for i in range(layers))
        c = 12 + layers * growth
        self.transition = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c // 2, 1), nn.AvgPool2d(2, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [self.stem(x)]
        for layer in self.layers:
            features.append(layer(features))
        return self.transition(torch.cat(features, 1))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        residual = x if residual is None else residual
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += residual
        return self.relu(out)


class DLARoot(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv, self.bn, self.relu = nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True)

    def forward(self, *children: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(torch.cat(children, 1)))
        x += children[0]
        return self.relu(x)


class DLA(nn.Module):
    """DLA tree: two blocks aggregated by a root over their concatenation, a pooled projection shortcut."""

    def __init__(self) -> None:
        super().__init__()
        self.base = conv_bn(3, 8)
        self.downsample, self.project = nn.MaxPool2d(2, 2), nn.Sequential(nn.Conv2d(8, 16, 1, bias=False),
                                                                          nn.BatchNorm2d(16))
        self.tree1, self.tree2 = BasicBlock(8, 16, 2), BasicBlock(16, 16)
        self.root = DLARoot(32 + 8, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.base(x)
        bottom = self.downsample(x)
        x1 = self.tree1(x, self.project(bottom))
        x2 = self.tree2(x1)
        return self.root(x2, x1, bottom)


class GhostModule(nn.Module):
    def __init__(self, cin: int, cout: int, relu: bool = True) -> None:
        super().__init__()
        self.out_chs = cout
        init = math.ceil(cout / 2)
        self.primary_conv = nn.Sequential(nn.Conv2d(cin, init, 1, bias=False), nn.BatchNorm2d(init),
                                          nn.ReLU(inplace=True) if relu else nn.Identity())
        self.cheap_operation = nn.Sequential(nn.Conv2d(init, init, 3, 1, 1, groups=init, bias=False),
                                             nn.BatchNorm2d(init), nn.ReLU(inplace=True) if relu else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.primary_conv(x)
        x2 = self.cheap_operation(x1)
        out = torch.cat([x1, x2], dim=1)
        return out[:, : self.out_chs, :, :]


def hard_sigmoid(x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    return F.relu6(x + 3.0) / 6.0


class GhostNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 8, s=2)
        self.ghost1, self.ghost2 = GhostModule(8, 21), GhostModule(21, 13, relu=False)
        self.se_reduce, self.se_expand = nn.Conv2d(21, 8, 1), nn.Conv2d(8, 21, 1)
        self.shortcut = nn.Sequential(nn.Conv2d(8, 13, 1, bias=False), nn.BatchNorm2d(13))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = self.ghost1(x)
        s = self.se_expand(F.relu(self.se_reduce(F.adaptive_avg_pool2d(y, 1)), inplace=True))
        y = self.ghost2(y * hard_sigmoid(s))
        return y + self.shortcut(x)


class LayerNorm2d(nn.LayerNorm):
    """Layer norm over the channels of an NCHW tensor (permute, ``F.layer_norm``, permute back)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    def __init__(self, c: int, conv_mlp: bool = False) -> None:
        super().__init__()
        self.conv_mlp = conv_mlp
        self.conv_dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        if conv_mlp:  # 1x1 convolutions on NCHW, layer scale reshaped to (1, C, 1, 1)
            self.norm, self.fc1, self.fc2 = LayerNorm2d(c, eps=1e-6), nn.Conv2d(c, 4 * c, 1), nn.Conv2d(4 * c, c, 1)
        else:  # linear layers on NHWC
            self.norm, self.fc1, self.fc2 = nn.LayerNorm(c, eps=1e-6), nn.Linear(c, 4 * c), nn.Linear(4 * c, c)
        self.act = nn.GELU()
        self.gamma = nn.Parameter(torch.rand(c) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.conv_dw(x)
        if self.conv_mlp:
            x = self.fc2(self.act(self.fc1(self.norm(x))))
            x = x.mul(self.gamma.reshape(1, -1, 1, 1))
        else:
            x = x.permute(0, 2, 3, 1)
            x = self.gamma * self.fc2(self.act(self.fc1(self.norm(x))))
            x = x.permute(0, 3, 1, 2)
        return x + shortcut


class ConvNeXt(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 4, 4), LayerNorm2d(16, eps=1e-6))
        self.stage1 = ConvNeXtBlock(16)
        self.downsample = nn.Sequential(LayerNorm2d(16, eps=1e-6), nn.Conv2d(16, 24, 2, 2))
        self.stage2 = ConvNeXtBlock(24, conv_mlp=True)
        self.norm, self.head = nn.LayerNorm(24), nn.Linear(24, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage2(self.downsample(self.stage1(self.stem(x))))
        return self.head(self.norm(x.mean([-2, -1])))


class CSPStage(nn.Module):
    """Cross-stage partial: split the channels (chunk or split), run blocks on one part, concatenate."""

    def __init__(self, c: int, use_chunk: bool) -> None:
        super().__init__()
        self.use_chunk = use_chunk
        self.conv_down, self.conv_exp = conv_bn(c, c, s=2), conv_bn(c, 2 * c, k=1)
        self.blocks = nn.Sequential(BasicBlock(c, c), BasicBlock(c, c))
        self.conv_transition_b, self.conv_transition = conv_bn(c, c, k=1), conv_bn(2 * c, c, k=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_exp(self.conv_down(x))
        xs, xb = x.chunk(2, dim=1) if self.use_chunk else x.split(x.shape[1] // 2, dim=1)
        xb = self.conv_transition_b(self.blocks(xb))
        return self.conv_transition(torch.cat([xs, xb], dim=1))


class CSPNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.stage1, self.stage2 = conv_bn(3, 8), CSPStage(8, True), CSPStage(8, False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stage2(self.stage1(self.stem(x)))


class Bottle2neck(nn.Module):
    """Res2Net: split into ``scale`` groups, each conv reads its split plus the previous output."""

    def __init__(self, cin: int, cout: int, stride: int = 1, scale: int = 4, width: int = 4) -> None:
        super().__init__()
        self.width, self.nums, self.is_first = width, scale - 1, stride > 1 or cin != cout
        self.conv1, self.bn1 = nn.Conv2d(cin, width * scale, 1, bias=False), nn.BatchNorm2d(width * scale)
        self.convs = nn.ModuleList(nn.Conv2d(width, width, 3, stride, 1, bias=False) for _ in range(self.nums))
        self.bns = nn.ModuleList(nn.BatchNorm2d(width) for _ in range(self.nums))
        self.pool = nn.AvgPool2d(3, stride, 1) if self.is_first else None
        self.conv3, self.bn3 = nn.Conv2d(width * scale, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)) \
            if self.is_first else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        out = self.relu(self.bn1(self.conv1(x)))
        spx = torch.split(out, self.width, 1)
        outs = []
        sp = spx[0]
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns, strict=True)):
            sp = spx[i] if i == 0 or self.is_first else sp + spx[i]
            sp = self.relu(bn(conv(sp)))
            outs.append(sp)
        outs.append(self.pool(spx[-1]) if self.pool is not None else spx[-1])
        out = self.bn3(self.conv3(torch.cat(outs, 1)))
        if self.downsample is not None:
            shortcut = self.downsample(x)
        out += shortcut
        return self.relu(out)


class Res2Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.b1, self.b2 = conv_bn(3, 16), Bottle2neck(16, 24, 2), Bottle2neck(24, 24)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b2(self.b1(self.stem(x)))
