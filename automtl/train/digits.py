"""The :class:`MultiDigits` dataset: two scikit-learn handwritten digits side by side, with four
image-level classification tasks that share (or do not share) what they need to know."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from .items import _check_int, _choose_tasks, _item_index


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
        chosen = _choose_tasks(tasks, self.TASKS, self.TASKS)
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
