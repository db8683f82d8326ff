"""A built-in domain-shift benchmark: printed digits (source) to handwritten digits (target), offline.

* **Source** (:class:`FontDigits`): digits 0-9 rendered with the DejaVu fonts bundled with matplotlib
  (sans, serif, mono; regular, bold, oblique) through PIL, with augmentation (size, rotation,
  shear, shift, stroke width), on a 32x32 bitmap reduced to 8x8 by counting the inked pixels of
  each 4x4 block, which is how scikit-learn's digits were made. Labelled.
* **Target** (:class:`HandDigits`): scikit-learn's real 8x8 handwritten digits (``load_digits``,
  bundled, no download). A fixed half (``part="adapt"``) is the unlabelled target set of training;
  the other half (``part="test"``) is only for the final evaluation. Training code must never read
  the labels of the ``adapt`` part: they are there so the same item form serves every loader.

Items are ``(x, {"digit": y})`` with ``x`` float32 ``(1, 8, 8)`` in [0, 1] (pixel counts / 16); ``size``
upsamples both domains bilinearly and ``channels=3`` repeats the grey image, for backbones that
want larger or colour input.
:func:`domain_shift_digits` returns ``(source, target, test)`` as the SlimDA strategy takes them.
"""

from __future__ import annotations

import os
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

__all__ = ["FONTS", "SHAPES", "FontDigits", "HandDigits", "ShapeScenes", "domain_shift_digits", "domain_shift_shapes",
           "render_shapes"]

TASK = "digit"
FONTS = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf",
    "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf",
)


def _font_dir() -> str:
    import matplotlib

    return os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "fonts", "ttf")


@lru_cache(maxsize=256)
def _font(name: str, size: int):  # noqa: ANN202 - a PIL font object
    from PIL import ImageFont

    path = os.path.join(_font_dir(), name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: the font is missing from matplotlib's bundled fonts; reinstall matplotlib")
    return ImageFont.truetype(path, size)


def render_digit(digit: int, rng: np.random.Generator) -> np.ndarray:
    """One augmented printed digit as an 8x8 float32 array in [0, 1] (inked pixels per 4x4 block / 16)."""
    from PIL import Image, ImageDraw

    font = _font(FONTS[int(rng.integers(len(FONTS)))], int(rng.integers(20, 31)))
    canvas = Image.new("L", (48, 48), 0)
    draw = ImageDraw.Draw(canvas)
    stroke = int(rng.integers(0, 3))
    draw.text((24, 24), str(digit), fill=255, font=font, anchor="mm", stroke_width=stroke, stroke_fill=255)
    shear = float(rng.uniform(-0.25, 0.25))
    canvas = canvas.transform((48, 48), Image.Transform.AFFINE, (1, shear, -shear * 24, 0, 1, 0),
                              resample=Image.Resampling.BILINEAR)
    canvas = canvas.rotate(float(rng.uniform(-12, 12)), resample=Image.Resampling.BILINEAR)
    ink = np.asarray(canvas) > 100
    rows, cols = np.nonzero(ink)
    if len(rows) == 0:  # cannot happen with these fonts; keep an empty image rather than fail
        return np.zeros((8, 8), np.float32)
    box = ink[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    # fit the digit's box into 32x32 (keeping its aspect ratio) with a random margin and shift, as the
    # handwritten digits fill their 32x32 frame
    h, w = box.shape
    side = int(rng.integers(24, 33))
    scale = side / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    small = np.asarray(Image.fromarray(box.astype(np.uint8) * 255).resize((nw, nh), Image.Resampling.BILINEAR)) > 127
    frame = np.zeros((32, 32), bool)
    top = int(np.clip((32 - nh) // 2 + rng.integers(-2, 3), 0, 32 - nh))
    left = int(np.clip((32 - nw) // 2 + rng.integers(-2, 3), 0, 32 - nw))
    frame[top : top + nh, left : left + nw] = small
    return frame.reshape(8, 4, 8, 4).sum((1, 3)).astype(np.float32) / 16.0


def _shape(x: torch.Tensor, size: int, channels: int) -> torch.Tensor:
    """``(n, 1, 8, 8)`` images at ``size`` x ``size`` (bilinear) with ``channels`` copies of the grey plane."""
    if not isinstance(size, int) or isinstance(size, bool) or size < 8:
        raise ValueError(f"size must be an int >= 8, got {size!r}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    if size != 8:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    return x.repeat(1, channels, 1, 1) if channels == 3 else x


class FontDigits(Dataset):
    """``n`` printed digits (labels balanced, order shuffled by ``seed``), rendered once on construction."""

    NUM_CLASSES = 10

    def __init__(self, n: int = 2000, seed: int = 0, size: int = 8, channels: int = 1) -> None:
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"FontDigits: n must be an int >= 1, got {n!r}")
        rng = np.random.default_rng(seed)
        labels = rng.permutation(np.arange(n) % 10)
        images = np.stack([render_digit(int(d), rng) for d in labels])
        self.x = _shape(torch.from_numpy(images)[:, None], size, channels)
        self.y = torch.from_numpy(labels.astype(np.int64))

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.x[i], {TASK: self.y[i]}


class HandDigits(Dataset):
    """scikit-learn's 1797 handwritten 8x8 digits, one fixed half: ``part`` ``"adapt"`` or ``"test"``."""

    NUM_CLASSES = 10

    def __init__(self, part: str = "adapt", size: int = 8, channels: int = 1) -> None:
        if part not in ("adapt", "test", "all"):
            raise ValueError(f"HandDigits: part must be 'adapt', 'test' or 'all', got {part!r}")
        from sklearn.datasets import load_digits

        digits = load_digits()
        order = np.random.default_rng(12345).permutation(len(digits.target))  # fixed, whatever the run's seed
        half = len(order) // 2
        pick = {"adapt": order[:half], "test": order[half:], "all": order}[part]
        self.x = _shape(torch.from_numpy((digits.images[pick] / 16.0).astype(np.float32))[:, None], size, channels)
        self.y = torch.from_numpy(digits.target[pick].astype(np.int64))

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.x[i], {TASK: self.y[i]}


def domain_shift_digits(n_source: int = 2000, seed: int = 0, size: int = 8,
                        channels: int = 1) -> tuple[FontDigits, HandDigits, HandDigits]:
    """``(source, target, test)``: printed digits (labelled), handwritten digits to adapt to (labels
    unused), and the held-out handwritten digits for the final evaluation."""
    return (FontDigits(n_source, seed, size, channels), HandDigits("adapt", size, channels),
            HandDigits("test", size, channels))


# --- a second pair: plain grey shapes (source) -> coloured shapes on striped backgrounds (target) ----------
SHAPES = ("disc", "square", "triangle", "cross", "ring", "bar")
SHAPE_TASK = "shape"


def _shape_masks(labels: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    """``(n, size, size)`` soft masks of the shapes ``labels`` index in :data:`SHAPES`, each randomly scaled,
    rotated and shifted."""
    n = len(labels)
    axis = torch.linspace(-1, 1, size)
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")
    angle = torch.rand(n, generator=gen) * 2 * torch.pi
    scale = 0.45 + 0.3 * torch.rand(n, generator=gen)
    shift = (torch.rand(n, 2, generator=gen) - 0.5) * 0.5
    c, s = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
    x0, y0 = xx[None] - shift[:, 0, None, None], yy[None] - shift[:, 1, None, None]
    u = (c * x0 + s * y0) / scale[:, None, None]
    v = (-s * x0 + c * y0) / scale[:, None, None]
    r = torch.sqrt(u**2 + v**2)
    sharp = size / 2.0  # a soft edge about one pixel wide
    inside = torch.stack([
        1 - r,                                                   # disc
        1 - torch.maximum(u.abs(), v.abs()) / 0.8,               # square
        torch.minimum(v + 0.5, torch.minimum(0.9 - v - 1.6 * u, 0.9 - v + 1.6 * u)) / 0.7,  # triangle
        torch.minimum(torch.maximum(0.3 - u.abs(), 0.3 - v.abs()), 1 - torch.maximum(u.abs(), v.abs())),  # cross
        0.25 - (r - 0.7).abs(),                                  # ring
        1 - torch.maximum(u.abs() / 0.9, v.abs() / 0.3),        # bar
    ])  # (shapes, n, size, size): > 0 inside
    pick = inside[labels, torch.arange(n)]
    return torch.sigmoid(sharp * pick)


def render_shapes(n: int, seed: int, domain: str, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` shape images ``(n, 3, size, size)`` in [0, 1] and their labels (balanced, shuffled by ``seed``).

    ``source``: a light grey shape on a dark grey background with a little noise. ``target``: the shape in a
    random light colour on a random dark colour with sinusoidal stripes of random frequency and orientation,
    more noise: a colour and texture shift (the shape stays lighter than its background)."""
    if domain not in ("source", "target"):
        raise ValueError(f"render_shapes: domain must be 'source' or 'target', got {domain!r}")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"render_shapes: n must be an int >= 1, got {n!r}")
    gen = torch.Generator().manual_seed(seed * 2 + (domain == "target"))
    labels = torch.arange(n) % len(SHAPES)
    labels = labels[torch.randperm(n, generator=gen)]
    mask = _shape_masks(labels, size, gen)[:, None]
    if domain == "source":
        fg = (0.75 + 0.2 * torch.rand(n, 1, 1, 1, generator=gen)).expand(n, 3, 1, 1)
        bg = (0.1 + 0.15 * torch.rand(n, 1, 1, 1, generator=gen)).expand(n, 3, 1, 1)
        noise = 0.03
    else:  # light colours on dark colours (the source's contrast polarity), striped
        fg = 0.5 + 0.5 * torch.rand(n, 3, 1, 1, generator=gen)
        bg = 0.4 * torch.rand(n, 3, 1, 1, generator=gen)
        axis = torch.linspace(-1, 1, size)
        yy, xx = torch.meshgrid(axis, axis, indexing="ij")
        theta = torch.rand(n, 1, 1, generator=gen) * torch.pi
        freq = 2 + 4 * torch.rand(n, 1, 1, generator=gen)
        stripes = 0.5 + 0.5 * torch.sin(freq * torch.pi * (torch.cos(theta) * xx + torch.sin(theta) * yy))
        bg = bg * (0.6 + 0.4 * stripes[:, None])
        noise = 0.08
    x = mask * fg + (1 - mask) * bg + noise * torch.randn(n, 3, size, size, generator=gen)
    return x.clamp(0, 1), labels


class ShapeScenes(Dataset):
    """Generated shape images of one domain (``source`` or ``target``), items ``(x, {"shape": y})``."""

    NUM_CLASSES = len(SHAPES)

    def __init__(self, n: int = 2000, seed: int = 0, domain: str = "source", size: int = 16) -> None:
        self.x, self.y = render_shapes(n, seed, domain, size)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.x[i], {SHAPE_TASK: self.y[i]}


def domain_shift_shapes(n_source: int = 3000, seed: int = 0, n_target: int = 2000, n_test: int = 4000,
                        size: int = 16) -> tuple[ShapeScenes, ShapeScenes, ShapeScenes]:
    """``(source, target, test)``: grey shapes (labelled), coloured striped shapes to adapt to (labels unused)
    and held-out target shapes for the final evaluation (a large set: accuracy measured to about 1 point)."""
    return (ShapeScenes(n_source, seed, "source", size), ShapeScenes(n_target, 10_000 + seed, "target", size),
            ShapeScenes(n_test, 20_000 + seed, "target", size))
