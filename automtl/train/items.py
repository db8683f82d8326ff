"""Argument and item-index checks shared by the built-in datasets (one clear error per bad value)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from torch import Tensor


def _check_int(field: str, value: Any, low: int) -> int:
    """``value`` as an int, or a ``ValueError`` naming ``field`` unless it is an int >= ``low``."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
        raise ValueError(f"{field} must be an int >= {low}, got {value!r}")
    return int(value)


def _item_index(index: Any, n: int, owner: str) -> int:
    """``index`` (negative from the end, as Python's) as a position in ``0 .. n - 1`` of ``owner``'s items."""
    if isinstance(index, Tensor):
        index = index.item()
    if isinstance(index, bool) or not isinstance(index, int | np.integer):
        raise TypeError(f"{owner} indices must be integers, got {type(index).__name__}")
    i = int(index)
    if i < -n or i >= n:
        raise IndexError(f"{owner} index {i} out of range for {n} items")
    return i % n


def _choose_tasks(tasks: Sequence[str] | None, default: Sequence[str], available: Sequence[str]) -> tuple[str, ...]:
    """``tasks`` (``default`` when None) as a tuple, or a ``ValueError`` when it is empty or names one not available."""
    chosen = tuple(default if tasks is None else tasks)
    unknown = [t for t in chosen if t not in available]
    if unknown or not chosen:
        raise ValueError(f"unknown or no tasks {unknown or list(chosen)}; available: {list(available)}")
    return chosen
