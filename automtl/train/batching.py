"""Serving datasets to a loop: :class:`MultiDomain` (one dataset per task), :func:`collate` /
:func:`make_collate` (both item forms, missing labels padded with the task's ignore value) and
:func:`split_dataset` (the search's disjoint weights / policy / validation split)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset

from .items import _check_int, _item_index


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
