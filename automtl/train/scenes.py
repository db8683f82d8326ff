"""The :class:`SyntheticScenes` dataset: procedural RGB scenes of shapes at different depths over a
textured background, with per-pixel segmentation, depth, surface normals and edges that agree with
each other (normals come from the depth map, edges from the segmentation)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .items import _check_int, _choose_tasks, _item_index

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
        self.tasks = _choose_tasks(tasks, self.TASKS, self.TASKS + self.EXTRA_TASKS)
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
