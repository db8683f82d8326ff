"""A built-in multi-domain suite: five image classification domains with their own statistics.

Each domain has its own images, native size and classes; :func:`domain_suite` resizes all of them
to the model's input once, when it builds the datasets (bilinear, three channels, centred at 0),
and serves them together as :class:`~automtl.train.data.MultiDomain` batches ``{domain: (x, y)}``.
Nothing is downloaded:

========== ========= ======= ==========================================================================
domain     classes   native  images
========== ========= ======= ==========================================================================
digits     10        8x8     scikit-learn's bundled handwritten digits (real)
textures   6         24x24   patches of scikit-image's bundled photographs, the class is the source
                             photograph (real; brick, grass, gravel, camera, coins, moon)
shapes     5         20x20   a disc, square, triangle, cross or ring, random size, place and colour
scenes     3         24x24   :class:`~automtl.train.data.SyntheticScenes`; the class is the shape kind
                             covering most of the image
glyphs     8         16x16   the letters A-H rendered in Pillow's bundled font, jittered and noisy
========== ========= ======= ==========================================================================

Train and validation images never overlap: digits are split by sample, texture patches come from
the upper three quarters (train) or the lowest quarter (validation) of each photograph, generated
domains use different seeds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from .data import MultiDomain, SyntheticScenes
from .tasks import Classification

__all__ = ["DOMAINS", "DomainSuite", "ImageDomain", "domain_suite", "make_domain"]


class ImageDomain(Dataset):
    """One domain's images ``(n, 3, s, s)`` (float, about zero-centred) and labels ``(n,)``."""

    def __init__(self, name: str, images: Tensor, labels: Tensor, num_classes: int) -> None:
        if images.dim() != 4 or images.shape[0] != labels.shape[0]:
            raise ValueError(f"domain {name!r}: images must be (n, C, H, W) with one label each")
        self.name, self.images, self.labels, self.num_classes = name, images, labels.long(), num_classes

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.images[index], self.labels[index]

    def resized(self, size: int) -> ImageDomain:
        """The same domain at ``size`` x ``size`` (bilinear), three channels, centred at 0."""
        x = self.images
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-1] != size or x.shape[-2] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        return ImageDomain(self.name, (x - 0.5).contiguous(), self.labels, self.num_classes)


# --- the domains (images in [0, 1], native size) ------------------------------------------------
def _digits(n: int, split: str, seed: int) -> tuple[Tensor, Tensor, int]:
    from sklearn.datasets import load_digits

    d = load_digits()
    order = np.random.default_rng(1234).permutation(len(d.target))
    cut = int(0.75 * len(order))
    idx = order[:cut] if split == "train" else order[cut:]
    idx = np.random.default_rng(seed).choice(idx, size=n, replace=n > len(idx))
    x = torch.from_numpy(d.images[idx].astype(np.float32) / 16.0).unsqueeze(1)
    return x, torch.from_numpy(d.target[idx].astype(np.int64)), 10


TEXTURE_SOURCES = ("brick", "grass", "gravel", "camera", "coins", "moon")


def _textures(n: int, split: str, seed: int, size: int = 24) -> tuple[Tensor, Tensor, int]:
    try:
        from skimage import data as skdata
    except ImportError as exc:
        raise ImportError("the textures domain needs scikit-image's bundled photographs: pip install scikit-image "
                          "(or install automtl with the 'data' extra)") from exc
    rng = np.random.default_rng(seed)
    photos = []
    for name in TEXTURE_SOURCES:
        img = getattr(skdata, name)().astype(np.float32)
        img = img / 255.0 if img.max() > 1 else img
        rows = int(0.75 * img.shape[0])
        photos.append(img[:rows] if split == "train" else img[rows:])
    labels = rng.integers(0, len(photos), size=n)
    out = np.empty((n, 1, size, size), np.float32)
    for i, c in enumerate(labels):
        img = photos[c]
        scale = rng.uniform(1.0, 2.0)  # patches of size*scale pixels, resampled to size
        span = min(int(size * scale), img.shape[0], img.shape[1])
        r, q = rng.integers(0, img.shape[0] - span + 1), rng.integers(0, img.shape[1] - span + 1)
        patch = torch.from_numpy(np.ascontiguousarray(img[r:r + span, q:q + span]))[None, None]
        patch = F.interpolate(patch, size=(size, size), mode="bilinear", align_corners=False)[0, 0].numpy()
        gain, bias = rng.uniform(0.7, 1.3), rng.uniform(-0.1, 0.1)  # contrast and brightness jitter
        out[i, 0] = np.clip((patch - patch.mean()) * gain + patch.mean() + bias, 0, 1)
    return torch.from_numpy(out), torch.from_numpy(labels.astype(np.int64)), len(photos)


def _shape_mask(kind: int, yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, r: float) -> np.ndarray:
    dy, dx = yy - cy, xx - cx
    if kind == 0:  # disc
        return dy ** 2 + dx ** 2 <= r ** 2
    if kind == 1:  # square
        return (np.abs(dy) <= r * 0.8) & (np.abs(dx) <= r * 0.8)
    if kind == 2:  # triangle, apex up
        return (dy <= r * 0.8) & (dy >= -r) & (np.abs(dx) <= (dy + r) * 0.55)
    if kind == 3:  # cross
        return ((np.abs(dy) <= r * 0.3) & (np.abs(dx) <= r)) | ((np.abs(dx) <= r * 0.3) & (np.abs(dy) <= r))
    d2 = dy ** 2 + dx ** 2  # ring
    return (d2 <= r ** 2) & (d2 >= (0.55 * r) ** 2)


def _shapes(n: int, split: str, seed: int, size: int = 20) -> tuple[Tensor, Tensor, int]:
    rng = np.random.default_rng(seed + (0 if split == "train" else 10_000))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    labels = rng.integers(0, 5, size=n)
    out = np.empty((n, 3, size, size), np.float32)
    for i, k in enumerate(labels):
        r = rng.uniform(0.25, 0.42) * size
        cy, cx = rng.uniform(r * 0.8, size - r * 0.8, size=2)
        mask = _shape_mask(int(k), yy, xx, cy, cx, r)
        bg, fg = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
        while np.abs(fg - bg).sum() < 0.6:
            fg = rng.uniform(0, 1, 3)
        img = np.where(mask[None], fg[:, None, None], bg[:, None, None]) + rng.normal(0, 0.08, (3, size, size))
        out[i] = np.clip(img, 0, 1)
    return torch.from_numpy(out), torch.from_numpy(labels.astype(np.int64)), 5


def _scenes(n: int, split: str, seed: int, size: int = 24) -> tuple[Tensor, Tensor, int]:
    ds = SyntheticScenes(n, size=size, seed=seed * 2 + (0 if split == "train" else 1), num_classes=4,
                         max_shapes=3, tasks=("segmentation",))
    xs, ys = [], []
    for i in range(n):
        x, t = ds[i]
        counts = torch.bincount(t["segmentation"].flatten(), minlength=4)[1:]
        xs.append(x)
        ys.append(int(counts.argmax()))
    return torch.stack(xs), torch.tensor(ys, dtype=torch.long), 3


GLYPHS = "ABCDEFGH"


def _glyphs(n: int, split: str, seed: int, size: int = 16) -> tuple[Tensor, Tensor, int]:
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed + (0 if split == "train" else 20_000))
    fonts = {s: ImageFont.load_default(size=s) for s in (10, 12, 14)}
    labels = rng.integers(0, len(GLYPHS), size=n)
    out = np.empty((n, 1, size, size), np.float32)
    for i, k in enumerate(labels):
        im = Image.new("L", (size, size), 0)
        font = fonts[int(rng.choice(list(fonts)))]
        ImageDraw.Draw(im).text((rng.integers(0, 5), rng.integers(-2, 3)), GLYPHS[k], fill=255, font=font)
        im = im.rotate(float(rng.uniform(-15, 15)), resample=Image.BILINEAR)
        a = np.asarray(im, np.float32) / 255.0
        if rng.random() < 0.5:
            a = 1 - a
        out[i, 0] = np.clip(a * rng.uniform(0.6, 1.0) + rng.normal(0, 0.1, a.shape), 0, 1)
    return torch.from_numpy(out), torch.from_numpy(labels.astype(np.int64)), len(GLYPHS)


DOMAINS: dict[str, Callable[[int, str, int], tuple[Tensor, Tensor, int]]] = {
    "digits": _digits, "textures": _textures, "shapes": _shapes, "scenes": _scenes, "glyphs": _glyphs,
}


def make_domain(name: str, n: int, split: str = "train", seed: int = 0) -> ImageDomain:
    """``n`` images of domain ``name`` at its native size (``split``: "train" or "val")."""
    if name not in DOMAINS:
        raise ValueError(f"unknown domain {name!r}; the suite has {', '.join(DOMAINS)}")
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', not {split!r}")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    x, y, classes = DOMAINS[name](n, split, seed)
    return ImageDomain(name, x, y, classes)


@dataclass
class DomainSuite:
    """The suite's training and validation sets (``{domain: (x, y)}`` items) and one task per domain."""

    train: MultiDomain
    val: MultiDomain
    tasks: dict[str, Classification]
    num_classes: dict[str, int]
    size: int

    def splits(self, fraction: float = 0.75) -> tuple[Dataset, Dataset, Dataset]:
        """(weights, controller, val) for a search: the training set cut at ``fraction``, and val."""
        n = len(self.train)
        cut = int(round(fraction * n))
        idx = torch.randperm(n, generator=torch.Generator().manual_seed(0)).tolist()
        return _Subset(self.train, idx[:cut]), _Subset(self.train, idx[cut:]), self.val

    def domain(self, name: str, split: str = "train") -> Dataset:
        """One domain's ``(x, y)`` dataset."""
        return (self.train if split == "train" else self.val).datasets[name]


class _Subset(Dataset):
    def __init__(self, data: Dataset, index: list[int]) -> None:
        self.data, self.index = data, index

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int):  # noqa: ANN204 - the wrapped dataset's item
        return self.data[self.index[i]]


def domain_suite(size: int = 32, n_train: int = 600, n_val: int = 200, seed: int = 0,
                 domains: Sequence[str] = tuple(DOMAINS)) -> DomainSuite:
    """The multi-domain suite at ``size`` x ``size``: ``n_train`` / ``n_val`` images per domain."""
    if not isinstance(size, int) or size < 8:
        raise ValueError(f"size must be an int >= 8, got {size!r}")
    train, val, classes = {}, {}, {}
    for name in domains:
        train[name] = make_domain(name, n_train, "train", seed).resized(size)
        val[name] = make_domain(name, n_val, "val", seed).resized(size)
        classes[name] = train[name].num_classes
    tasks = {name: Classification(name, classes[name]) for name in domains}
    return DomainSuite(MultiDomain(train), MultiDomain(val), tasks, classes, size)


def suite_splits(size: int = 32, n_train: int = 600, n_val: int = 200, seed: int = 0,
                 tasks: Sequence[str] | None = None) -> list[Dataset]:
    """The suite's ``[weights, controller, val]`` splits (a config's ``data: {factory: ...}``);
    ``tasks`` (the config's task names) picks the domains."""
    names = tuple(tasks) if tasks is not None else tuple(DOMAINS)
    return list(domain_suite(size, n_train, n_val, seed, names).splits())
