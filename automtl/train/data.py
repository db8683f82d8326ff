"""Built-in datasets, generated offline and deterministic by seed, plus batching and split helpers.

* :class:`SyntheticScenes`: procedural RGB scenes of shapes at different depths over a textured
  background, with per-pixel segmentation, depth, surface normals and edges that agree with each
  other (normals come from the depth map, edges from the segmentation).
* :class:`MultiDigits`: two scikit-learn handwritten digits side by side, with four image-level
  classification tasks that share (or do not share) what they need to know.
* :class:`MultiDomain`: one dataset per task, batched together as ``{task: (x_t, y_t)}``.
* :func:`collate` / :func:`make_collate`: batch both item forms, padding missing labels with the
  task's ignore value instead of inventing them.
* :func:`split_dataset`: the disjoint weight / policy / validation split used by the search.

Every item is ``(x, {task: y})`` (or ``{task: (x_t, y_t)}`` for :class:`MultiDomain`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset, Subset

__all__ = [
    "SCENE_WIDTH",
    "SHAPE_KINDS",
    "MultiDigits",
    "MultiDomain",
    "SyntheticScenes",
    "collate",
    "depth_to_normals",
    "make_collate",
    "segmentation_edges",
    "split_dataset",
]


def _check_int(field: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
        raise ValueError(f"{field} must be an int >= {low}, got {value!r}")
    return int(value)


def _item_index(index: Any, n: int, owner: str) -> int:
    if isinstance(index, Tensor):
        index = index.item()
    if isinstance(index, bool) or not isinstance(index, int | np.integer):
        raise TypeError(f"{owner} indices must be integers, got {type(index).__name__}")
    i = int(index)
    if i < -n or i >= n:
        raise IndexError(f"{owner} index {i} out of range for {n} items")
    return i % n


# synthetic scenes ------------------------------------------------------------------------------

SCENE_WIDTH = 8.0
"""Width of the (orthographic) view in scene units; depth values use the same unit."""

SHAPE_KINDS = ("sphere", "pyramid", "wedge", "torus")
"""Shape kinds in class order: class k (k >= 1) is ``SHAPE_KINDS[k - 1]``; class 0 is background."""

# A colour prior per shape class; the jitter and texture make classes overlap in colour, so
# segmenting needs shape and shading cues too.
_CLASS_COLOURS = np.array(
    [[0.85, 0.30, 0.25], [0.25, 0.75, 0.30], [0.30, 0.40, 0.85], [0.85, 0.80, 0.25]], dtype=np.float64
)


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (X, Y) in scene units, each (size, size)."""
    c = (np.arange(size, dtype=np.float64) + 0.5) * (SCENE_WIDTH / size)
    return np.meshgrid(c, c, indexing="xy")


@lru_cache(maxsize=16)
def _upsample_matrix(size: int, cells: int) -> np.ndarray:
    """(size, cells) bilinear interpolation weights, so ``M @ G @ M.T`` upsamples a cells x cells grid."""
    pos = (np.arange(size) + 0.5) * (cells - 1) / size
    lo = np.clip(np.floor(pos).astype(int), 0, cells - 2)
    frac = pos - lo
    m = np.zeros((size, cells))
    m[np.arange(size), lo] = 1.0 - frac
    m[np.arange(size), lo + 1] = frac
    return m


def _texture(rng: np.random.Generator, size: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """A (size, size) texture in [0, 1]: smooth value noise blended with stripes of random frequency."""
    cells = int(rng.integers(3, 7))
    m = _upsample_matrix(size, cells)
    noise = m @ rng.random((cells, cells)) @ m.T
    angle = rng.uniform(0, math.pi)
    freq = rng.uniform(0.4, 1.6)  # cycles per scene unit
    stripes = 0.5 + 0.5 * np.sin(
        2 * math.pi * freq * (x * math.cos(angle) + y * math.sin(angle)) + rng.uniform(0, 6.3)
    )
    mix = rng.uniform(0.0, 1.0)
    return mix * noise + (1.0 - mix) * stripes


def _shape(
    kind: str, rng: np.random.Generator, x: np.ndarray, y: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(mask, depth) of one shape over the whole frame; depth is only meaningful inside the mask."""
    cx, cy = rng.uniform(0.1, 0.9, size=2) * SCENE_WIDTH
    r = rng.uniform(0.1, 0.22) * SCENE_WIDTH
    zc = rng.uniform(3.0, 6.0)
    dx, dy = x - cx, y - cy
    if kind == "sphere":  # a disc in the image, the front half of a ball in depth
        rho2 = dx * dx + dy * dy
        mask = rho2 < r * r
        depth = zc - np.sqrt(np.maximum(r * r - rho2, 0.0))
    elif kind == "pyramid":  # a rotated square, a four-sided pyramid pointing at the camera
        a = rng.uniform(0, math.pi / 2)
        half = 0.85 * r
        u = np.maximum(
            np.abs(math.cos(a) * dx + math.sin(a) * dy), np.abs(-math.sin(a) * dx + math.cos(a) * dy)
        )
        mask = u < half
        depth = zc - rng.uniform(0.5, 1.0) * half * (1.0 - u / half)
    elif kind == "wedge":  # a triangle, a tilted plane
        angles = (
            rng.uniform(0, 2 * math.pi) + np.array([0.0, 2.0, 4.0]) * math.pi / 3 + rng.uniform(-0.3, 0.3, 3)
        )
        radii = r * rng.uniform(0.9, 1.25, 3)
        px, py = radii * np.cos(angles), radii * np.sin(angles)
        mask = np.ones_like(x, dtype=bool)
        for k in range(3):  # counter-clockwise vertices: inside is left of every edge
            ax, ay, bx, by = px[k], py[k], px[(k + 1) % 3], py[(k + 1) % 3]
            mask &= (bx - ax) * (dy - ay) - (by - ay) * (dx - ax) > 0
        gx, gy = rng.uniform(-0.6, 0.6, 2)
        depth = zc + gx * dx + gy * dy
    elif kind == "torus":  # a ring, the front half of a torus
        rho = np.sqrt(dx * dx + dy * dy)
        centre, tube = 0.65 * r, 0.32 * r
        off = rho - centre
        mask = np.abs(off) < tube
        depth = zc - np.sqrt(np.maximum(tube * tube - off * off, 0.0))
    else:  # pragma: no cover - kinds come from SHAPE_KINDS
        raise ValueError(f"unknown shape kind {kind!r}")
    return mask, depth


def depth_to_normals(depth: np.ndarray, regions: np.ndarray, spacing: float) -> np.ndarray:
    """Unit normals (3, H, W) of the surface z = depth(x, y), from its finite-difference gradients.

    Convention: camera frame with x right, y down, z away from the camera; a normal is
    ``(dz/dx, dz/dy, -1) / norm``, so it faces the camera (n_z < 0). Differences are central
    where both neighbours lie in the same region (surface) and one-sided otherwise, so normals
    do not see the depth jumps at occlusion boundaries. ``spacing`` is the pixel size in depth units.
    """
    pad_r = np.pad(regions, 1, constant_values=-1)
    pad_d = np.pad(depth, 1, mode="edge")
    grads = []
    for axis in (1, 0):  # x varies along columns, y along rows
        if axis == 1:
            zp, zm = pad_d[1:-1, 2:], pad_d[1:-1, :-2]
            rp, rm = pad_r[1:-1, 2:], pad_r[1:-1, :-2]
        else:
            zp, zm = pad_d[2:, 1:-1], pad_d[:-2, 1:-1]
            rp, rm = pad_r[2:, 1:-1], pad_r[:-2, 1:-1]
        okp, okm = rp == regions, rm == regions
        g = np.where(
            okp & okm,
            (zp - zm) / (2 * spacing),
            np.where(okp, (zp - depth) / spacing, np.where(okm, (depth - zm) / spacing, 0.0)),
        )
        grads.append(g)
    gx, gy = grads
    inv = 1.0 / np.sqrt(gx * gx + gy * gy + 1.0)
    return np.stack([gx * inv, gy * inv, -inv])


def segmentation_edges(seg: np.ndarray) -> np.ndarray:
    """Boolean (H, W) map of pixels with a 4-neighbour of a different label (both sides of a boundary)."""
    edges = np.zeros(seg.shape, dtype=bool)
    dh = seg[:, 1:] != seg[:, :-1]
    dv = seg[1:, :] != seg[:-1, :]
    edges[:, 1:] |= dh
    edges[:, :-1] |= dh
    edges[1:, :] |= dv
    edges[:-1, :] |= dv
    return edges


class SyntheticScenes(Dataset):
    """Procedural scenes of shapes at different depths with dense, mutually consistent targets.

    Each image shows 1..``max_shapes`` shapes (class 1 sphere/disc, 2 pyramid/square, 3
    wedge/triangle, 4 torus/ring; ``num_classes`` - 1 of them are used, class 0 is background)
    over a textured background plane with a depth gradient. The view is orthographic and
    ``SCENE_WIDTH`` units wide. Nearer shapes occlude farther ones (a z-buffer). Shapes are lit by
    a random directional light (Lambertian shading from the normals) and carry a class-biased but
    jittered colour mixed with a random texture, so colour alone does not give the class away.

    Item ``i`` is ``(x, targets)`` rendered lazily from the seed sequence ``(seed, i)``:

    * ``x``: float32 (3, size, size) in [0, 1];
    * ``segmentation``: int64 (size, size), values in [0, num_classes);
    * ``depth``: float32 (1, size, size), > 0, in scene units;
    * ``normals``: float32 (3, size, size), unit vectors from the depth map's gradients
      (see :func:`depth_to_normals`);
    * ``edges``: float32 (1, size, size) in {0, 1}, the segmentation boundaries
      (see :func:`segmentation_edges`).

    ``tasks`` selects which targets are returned (all by default).
    """

    TASKS = ("segmentation", "depth", "normals", "edges")
    #: targets returned only when asked for by name: ``shading``, float32 (1, size, size) in [0.35, 1],
    #: the Lambertian shading the image was lit with
    EXTRA_TASKS = ("shading",)

    def __init__(
        self,
        n: int,
        size: int = 64,
        seed: int = 0,
        num_classes: int = 4,
        max_shapes: int = 4,
        tasks: Sequence[str] | None = None,
        noise: float = 0.02,
    ) -> None:
        self.n = _check_int("n", n, 0)
        self.size = _check_int("size", size, 8)
        self.seed = _check_int("seed", seed, 0)
        self.num_classes = _check_int("num_classes", num_classes, 2)
        if self.num_classes > len(SHAPE_KINDS) + 1:
            raise ValueError(f"num_classes must be at most {len(SHAPE_KINDS) + 1}, got {num_classes}")
        self.max_shapes = _check_int("max_shapes", max_shapes, 1)
        if not (isinstance(noise, int | float) and 0 <= noise < 1):
            raise ValueError(f"noise must be a number in [0, 1), got {noise!r}")
        self.noise = float(noise)
        chosen = tuple(self.TASKS if tasks is None else tasks)
        unknown = [t for t in chosen if t not in self.TASKS + self.EXTRA_TASKS]
        if unknown or not chosen:
            raise ValueError(f"unknown or no tasks {unknown or list(chosen)}; available: "
                             f"{list(self.TASKS + self.EXTRA_TASKS)}")
        self.tasks = chosen
        self.kinds = SHAPE_KINDS[: self.num_classes - 1]

    def __len__(self) -> int:
        return self.n

    def scene(self, index: int) -> dict[str, np.ndarray]:
        """Render item ``index`` as numpy arrays (image, segmentation, depth, normals, edges, instances)."""
        i = _item_index(index, self.n, type(self).__name__)
        rng = np.random.default_rng([self.seed, i])
        size = self.size
        x, y = _grid(size)
        half = SCENE_WIDTH / 2

        # background: a plane behind every shape, textured with a blend of two colours
        depth = (
            rng.uniform(10.0, 12.0)
            + rng.uniform(-0.3, 0.3) * (x - half)
            + rng.uniform(-0.3, 0.3) * (y - half)
        )
        tex = _texture(rng, size, x, y)
        c1, c2 = rng.uniform(0.1, 0.9, (2, 3, 1, 1))
        albedo = c1 + (c2 - c1) * tex  # (3, H, W)
        seg = np.zeros((size, size), dtype=np.int64)
        inst = np.zeros((size, size), dtype=np.int64)

        for k in range(int(rng.integers(1, self.max_shapes + 1))):
            cls = int(rng.integers(1, self.num_classes))
            mask, z = _shape(self.kinds[cls - 1], rng, x, y)
            front = mask & (z < depth)
            colour = np.clip(_CLASS_COLOURS[cls - 1] + rng.normal(0.0, 0.15, 3), 0.0, 1.0)[:, None]
            other = rng.uniform(0.0, 1.0, (3, 1))
            amount = rng.uniform(0.1, 0.5) * _texture(rng, size, x, y)[front]
            depth[front] = z[front]
            seg[front] = cls
            inst[front] = k + 1
            albedo[:, front] = colour + (other - colour) * amount

        normals = depth_to_normals(depth, inst, SCENE_WIDTH / size)
        light = np.array([rng.uniform(-0.8, 0.8), rng.uniform(-0.8, 0.8), -1.0])
        light /= np.linalg.norm(light)
        shade = 0.35 + 0.65 * np.clip(np.tensordot(light, normals, axes=1), 0.0, None)
        image = albedo * shade
        if self.noise:
            image += self.noise * rng.standard_normal(image.shape, dtype=np.float32)
        return {
            "image": np.clip(image, 0.0, 1.0, out=image),
            "segmentation": seg,
            "depth": depth[None],
            "normals": normals,
            "edges": segmentation_edges(seg)[None],
            "instances": inst,
            "shading": shade[None],
        }

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        s = self.scene(index)
        x = torch.from_numpy(s["image"].astype(np.float32))
        targets: dict[str, Tensor] = {}
        for t in self.tasks:
            if t == "segmentation":
                targets[t] = torch.from_numpy(s[t])
            else:
                targets[t] = torch.from_numpy(s[t].astype(np.float32))
        return x, targets


# multi digits ----------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # optional dependency
        raise ImportError(
            "MultiDigits needs scikit-learn for its bundled digit images: "
            "pip install scikit-learn (or install automtl with the 'data' extra: pip install 'automtl[data]')"
        ) from exc
    digits = load_digits()
    return digits.images.astype(np.float32) / 16.0, digits.target.astype(np.int64)


@lru_cache(maxsize=8)
def _digit_pool(split: str, size: int, test_fraction: float) -> tuple[Tensor, Tensor, Tensor]:
    """(images, labels, source ids) of one split, upscaled bilinearly to (1, size, size); a fixed split."""
    images, labels = _load_digits()
    order = np.random.default_rng(12345).permutation(len(labels))
    n_test = int(round(test_fraction * len(labels)))
    chosen = order[:n_test] if split == "test" else order[n_test:]
    chosen = np.sort(chosen)
    pool = torch.from_numpy(images[chosen]).unsqueeze(1)
    pool = F.interpolate(pool, size=(size, size), mode="bilinear", align_corners=False).clamp_(0.0, 1.0)
    return pool.contiguous(), torch.from_numpy(labels[chosen]), torch.from_numpy(chosen)


class MultiDigits(Dataset):
    """Two handwritten digits side by side, with four image-level classification tasks.

    The 8x8 digits of ``sklearn.datasets.load_digits`` (bundled with scikit-learn, no download)
    are upscaled bilinearly to ``size`` x ``size`` and placed left and right: ``x`` is float32
    (channels, size, 2 * size) in [0, 1], the grey image repeated when ``channels`` is 3.
    Targets (int64 scalars):

    * ``left``, ``right``: the class (0-9) of each digit;
    * ``sum_parity``: (left + right) % 2;
    * ``larger``: 0 if the left digit is larger, 1 if the right one is, 2 if they are equal.

    The source digits are split once, independently of ``seed`` (a fixed permutation, a
    ``test_fraction`` share for ``split="test"``), so train and test composites never share a
    source image whatever their seeds. ``seed`` picks the pairs.
    """

    TASKS = ("left", "right", "sum_parity", "larger")
    NUM_CLASSES = {"left": 10, "right": 10, "sum_parity": 2, "larger": 3}

    def __init__(
        self,
        n: int,
        seed: int = 0,
        size: int = 32,
        split: str = "train",
        channels: int = 1,
        tasks: Sequence[str] | None = None,
        test_fraction: float = 0.25,
    ) -> None:
        self.n = _check_int("n", n, 0)
        self.seed = _check_int("seed", seed, 0)
        self.size = _check_int("size", size, 8)
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels!r}")
        if not (isinstance(test_fraction, float) and 0.0 < test_fraction < 1.0):
            raise ValueError(f"test_fraction must be a float in (0, 1), got {test_fraction!r}")
        chosen = tuple(self.TASKS if tasks is None else tasks)
        unknown = [t for t in chosen if t not in self.TASKS]
        if unknown or not chosen:
            raise ValueError(f"unknown or no tasks {unknown or list(chosen)}; available: {list(self.TASKS)}")
        self.split = split
        self.channels = channels
        self.tasks = chosen
        # pool_ids: the index in load_digits() of each pool image
        self.pool, self.pool_labels, self.pool_ids = _digit_pool(split, self.size, test_fraction)
        rng = np.random.default_rng([self.seed, 0 if split == "train" else 1])
        pairs = rng.integers(0, len(self.pool_labels), size=(self.n, 2))
        self.left_index = torch.from_numpy(pairs[:, 0])
        self.right_index = torch.from_numpy(pairs[:, 1])

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        i = _item_index(index, self.n, type(self).__name__)
        li, ri = int(self.left_index[i]), int(self.right_index[i])
        x = torch.cat([self.pool[li], self.pool[ri]], dim=-1)
        if self.channels == 3:
            x = x.expand(3, -1, -1).clone()
        left, right = int(self.pool_labels[li]), int(self.pool_labels[ri])
        values = {
            "left": left,
            "right": right,
            "sum_parity": (left + right) % 2,
            "larger": 0 if left > right else (1 if right > left else 2),
        }
        return x, {t: torch.tensor(values[t], dtype=torch.int64) for t in self.tasks}


# multi-domain batches and collation ------------------------------------------------------------


class MultiDomain(Dataset):
    """One dataset per task, served together: item ``i`` is ``{task: (x_t, y_t)}``.

    Each wrapped dataset returns ``(x, y)`` or ``(x, {key: y})``; in the second form the target
    is ``y[target_keys.get(task, task)]``. With ``length="max"`` (default) shorter datasets are
    cycled (index ``i % len``); with ``"min"`` the length is the shortest dataset's.
    """

    def __init__(
        self,
        datasets: Mapping[str, Dataset],
        target_keys: Mapping[str, str] | None = None,
        length: str = "max",
    ) -> None:
        if not datasets:
            raise ValueError("MultiDomain needs at least one dataset")
        if length not in ("max", "min"):
            raise ValueError(f"length must be 'max' or 'min', got {length!r}")
        self.datasets = dict(datasets)
        self.target_keys = dict(target_keys or {})
        extra = [t for t in self.target_keys if t not in self.datasets]
        if extra:
            raise ValueError(f"target_keys for unknown task(s) {extra}")
        sizes = {t: len(d) for t, d in self.datasets.items()}  # type: ignore[arg-type]
        empty = [t for t, s in sizes.items() if s == 0]
        if empty:
            raise ValueError(f"MultiDomain: the dataset of task(s) {empty} is empty")
        self.sizes = sizes
        self.length = max(sizes.values()) if length == "max" else min(sizes.values())

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, tuple[Tensor, Any]]:
        i = _item_index(index, self.length, type(self).__name__)
        out = {}
        for task, ds in self.datasets.items():
            x, y = ds[i % self.sizes[task]]
            if isinstance(y, Mapping):
                key = self.target_keys.get(task, task)
                if key not in y:
                    raise KeyError(f"MultiDomain: task '{task}': the dataset's targets have no key {key!r}")
                y = y[key]
            out[task] = (x, y)
        return out


def _stack(values: list[Any], what: str) -> Tensor:
    tensors = [v if isinstance(v, Tensor) else torch.as_tensor(v) for v in values]
    try:
        return torch.stack(tensors)
    except RuntimeError as exc:
        shapes = sorted({tuple(t.shape) for t in tensors})
        raise ValueError(f"collate: {what}: items have different shapes {shapes}") from exc


def _stack_targets(task: str, values: list[Any], ignore_values: Mapping[str, float | int]) -> Tensor | None:
    """Stack one task's targets; a batch where no item has a label gives None, a partial one is padded."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    if len(present) < len(values):
        if task not in ignore_values:
            raise ValueError(
                f"collate: task '{task}': some items have no target and no ignore value is known to mask them"
                " (pass ignore_values={task: value} to make_collate)"
            )
        ref = torch.as_tensor(present[0])
        fill = torch.full_like(ref, ignore_values[task])
        values = [fill if v is None else v for v in values]
    return _stack(values, f"task '{task}' target")


def collate(
    batch: Sequence[Any], ignore_values: Mapping[str, float | int] | None = None
) -> tuple[Tensor, dict[str, Tensor | None]] | dict[str, tuple[Tensor, Tensor | None]]:
    """Batch items of either form: ``(x, {task: y})`` or ``{task: (x_t, y_t)}``.

    A target that is ``None`` (or a task key absent) in every item becomes ``None`` (the task has
    no label in this batch); when only some items lack it they are filled with
    ``ignore_values[task]`` (e.g. ``{n: t.missing_value for n, t in tasks.items()}``), which the
    task masks, or a ``ValueError`` names the task if no ignore value is given.
    """
    if not batch:
        raise ValueError("collate: empty batch")
    ignore = ignore_values or {}
    first = batch[0]
    if isinstance(first, Mapping):
        tasks = list(first)
        out: dict[str, tuple[Tensor, Tensor | None]] = {}
        for task in tasks:
            try:
                pairs = [item[task] for item in batch]
            except KeyError as exc:
                raise ValueError(f"collate: task '{task}' is missing from some multi-domain items") from exc
            x = _stack([p[0] for p in pairs], f"task '{task}' input")
            out[task] = (x, _stack_targets(task, [p[1] for p in pairs], ignore))
        return out
    if isinstance(first, tuple | list) and len(first) == 2 and isinstance(first[1], Mapping):
        x = _stack([item[0] for item in batch], "input")
        tasks = list(dict.fromkeys(t for item in batch for t in item[1]))
        targets = {t: _stack_targets(t, [item[1].get(t) for item in batch], ignore) for t in tasks}
        return x, targets
    raise ValueError("collate: items must be (x, {task: y}) or {task: (x, y)}, got " + type(first).__name__)


def make_collate(ignore_values: Mapping[str, float | int] | None = None) -> Callable[[Sequence[Any]], Any]:
    """A ``collate_fn`` for ``DataLoader`` that pads partially missing labels with ``ignore_values``."""
    values = dict(ignore_values or {})

    def collate_fn(batch: Sequence[Any]) -> Any:
        return collate(batch, values)

    return collate_fn


# splits ----------------------------------------------------------------------------------------

_SPLIT_NAMES = ("weights", "policy", "val")


def split_dataset(
    ds: Dataset,
    fractions: Sequence[float] = (0.4, 0.4, 0.2),
    seed: int = 0,
    names: Sequence[str] | None = None,
) -> tuple[Subset, ...]:
    """Split ``ds`` into disjoint random subsets, by default the search's (weights, policy, val) split.

    ``fractions`` are each in (0, 1] and sum to at most 1; when they sum to 1 every item lands
    in exactly one subset. Boundaries are the cumulative fractions rounded half up, so rounding never
    loses or duplicates an item. ``names`` label the splits in error messages (default
    weights/policy/val for three fractions). The permutation is deterministic in ``seed``.
    """
    fr = [float(f) for f in fractions]
    if names is None:
        names = _SPLIT_NAMES if len(fr) == 3 else tuple(f"split {i}" for i in range(len(fr)))
    if len(names) != len(fr):
        raise ValueError(f"split_dataset: {len(names)} names for {len(fr)} fractions")
    if not fr:
        raise ValueError("split_dataset: no fractions given")
    for name, f in zip(names, fr, strict=True):
        if not (math.isfinite(f) and 0.0 < f <= 1.0):
            raise ValueError(f"split_dataset: the '{name}' fraction must be in (0, 1], got {f}")
    total = sum(fr)
    if total > 1.0 + 1e-9:
        raise ValueError(f"split_dataset: fractions {fr} sum to {total:.6g} > 1")
    n = len(ds)  # type: ignore[arg-type]
    bounds = [0]
    acc = 0.0
    for f in fr:
        acc += f
        bounds.append(n if abs(acc - 1.0) <= 1e-9 else min(n, math.floor(acc * n + 0.5)))
    gen = torch.Generator().manual_seed(_check_int("seed", seed, 0))
    perm = torch.randperm(n, generator=gen).tolist()
    out = []
    for k, name in enumerate(names):
        lo, hi = bounds[k], bounds[k + 1]
        if hi <= lo:
            raise ValueError(f"split_dataset: the '{name}' split is empty ({n} items x fraction {fr[k]})")
        out.append(Subset(ds, perm[lo:hi]))
    return tuple(out)
