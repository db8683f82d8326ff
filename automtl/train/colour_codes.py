"""ColourCodes: a known-answer multi-task problem where sharing everything must cost accuracy.

Every image is colour noise; the per-pixel class is which channel of the 3x3-averaged image is
largest. Task ``k`` reads that class through its own code, ``(class + shift_k) mod 3``. The
network writes each task's logits with its *last* convolution (the heads are identities), so
no head can undo a code: tasks with different shifts cannot share the layer that writes the
logits, while everything below it computes the same colour evidence for all of them. The right
architecture is known (share all but the last layer, split it between tasks with different codes),
so a search can be scored against it, against sharing everything, and against random choices.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

__all__ = ["ColourCodeNet", "ColourCodes", "colour_class"]


def colour_class(x: Tensor) -> Tensor:
    """Per pixel: the channel of the 3x3-averaged image that is largest (3 classes)."""
    return F.avg_pool2d(x, 3, 1, 1).argmax(-3)


class ColourCodes(Dataset):
    """``n`` random ``3 x size x size`` images with targets ``{task: (colour_class(x) + shift) mod 3}``.

    ``shifts`` maps each task to its code (0, 1 or 2); tasks with equal shifts are identical.
    Images are drawn once from a generator seeded by ``seed``.
    """

    def __init__(self, n: int, shifts: Mapping[str, int], size: int = 8, seed: int = 0) -> None:
        if n < 0 or size < 3:
            raise ValueError(f"ColourCodes needs n >= 0 and size >= 3, got n={n}, size={size}")
        if not shifts or any(not isinstance(k, int) for k in shifts.values()):
            raise ValueError(f"shifts must map task names to integer codes, got {dict(shifts)!r}")
        g = torch.Generator().manual_seed(seed)
        self.x = torch.rand(n, 3, size, size, generator=g)
        base = colour_class(self.x)
        self.y = {t: (base + k) % 3 for t, k in shifts.items()}

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[Tensor, dict[str, Tensor]]:
        return self.x[i], {t: y[i] for t, y in self.y.items()}


class ColourCodeNet(nn.Module):
    """``layers`` 3x3 convolutions, batch norm and ReLU between (``norm``); the last one writes 3 logits per pixel."""

    def __init__(self, width: int = 16, layers: int = 6, norm: bool = True) -> None:
        super().__init__()
        chans = [3] + [width] * (layers - 1) + [3]
        self.convs = nn.ModuleList(nn.Conv2d(chans[i], chans[i + 1], 3, padding=1) for i in range(layers))
        self.norms = nn.ModuleList(nn.BatchNorm2d(width) if norm else nn.Identity() for _ in range(layers - 1))

    def forward(self, x: Tensor) -> Tensor:
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if i < len(self.convs) - 1:
                x = F.relu(self.norms[i](x))
        return x
