"""Data for the loops: endless resumable streams over loaders, and the two batch forms.

A batch is ``(x, {task: y})`` (one input, many labels; a ``None`` label is masked) or
``{task: (x_t, y_t)}`` (multi-domain: one input per task).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..model.supermodel import SuperModel


class Stream:
    """An endless iterator over a loader; ``new_epoch`` is set when a batch starts a new pass.

    It counts the batches consumed in the current pass (``pos``) and keeps the loader's generator
    state from the start of the pass, so :meth:`state` / :meth:`restore` resume the exact order.
    """

    def __init__(self, source: Iterable[Any], name: str) -> None:
        self.source, self.name, self.epoch = source, name, 0
        self.new_epoch = False
        self.pos = 0
        self._start: torch.Tensor | None = None  # generator state when the current pass began
        self._it: Iterator[Any] | None = None

    def _generator(self) -> torch.Generator | None:
        g = getattr(self.source, "generator", None)
        return g if isinstance(g, torch.Generator) else None

    def next(self) -> Any:
        self.new_epoch = False
        for _ in range(2):
            if self._it is None:
                g = self._generator()
                self._start = g.get_state() if g is not None else None
                self._it = iter(self.source)
                self.pos = 0
            try:
                batch = next(self._it)
            except StopIteration:
                self._it = None
                self.epoch += 1
                self.new_epoch = True
            else:
                self.pos += 1
                return batch
        raise ValueError(f"data: the '{self.name}' split yielded no batch")

    def state(self) -> dict[str, Any]:
        """Epoch, position in the pass and generator states (at the pass start and now)."""
        g = self._generator()
        return {"epoch": self.epoch, "pos": self.pos, "active": self._it is not None, "start": self._start,
                "now": g.get_state() if g is not None else None}

    def restore(self, state: Mapping[str, Any]) -> None:
        """Re-open the saved pass and skip the ``pos`` batches it had already consumed."""
        g = self._generator()
        self.epoch, self.new_epoch, self._it, self.pos = int(state["epoch"]), False, None, 0
        if state["active"]:
            if g is not None and state["start"] is not None:
                g.set_state(state["start"])
            self._start = state["start"]
            self._it = iter(self.source)
            for _ in range(int(state["pos"])):
                try:
                    next(self._it)
                except StopIteration:
                    raise ValueError(f"checkpoint: the '{self.name}' split has fewer batches than the saved "
                                     f"position {state['pos']} (was the data changed?)") from None
                self.pos += 1
        if g is not None and state["now"] is not None:
            g.set_state(state["now"])


def _is_item(obj: Any) -> bool:
    """Whether ``obj`` looks like one sample (so its container is a dataset, not three splits)."""
    return isinstance(obj, Mapping) or (isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[1], Mapping))


def _length(source: Any) -> int | None:
    try:
        return len(source)
    except TypeError:
        return None


def outputs(model: nn.Module, x: Any, names: Sequence[str], **kwargs: Any) -> dict[str, torch.Tensor]:
    """``{task: output}`` of a SuperModel or a MultiTaskModel, for one input or one per task."""
    if isinstance(model, SuperModel):
        return model(x, **kwargs)
    if isinstance(x, Mapping):
        outs = model(*[x[t] for t in names])
    else:
        outs = model(x)
    if isinstance(outs, Mapping):
        return dict(outs)
    return dict(zip(names, outs, strict=True))


def split_batch(batch: Any, names: Sequence[str], allow_missing: bool, device: torch.device
                 ) -> tuple[Any, dict[str, torch.Tensor | None]]:
    """``(inputs, {task: target or None})`` of either batch form, on ``device``."""
    if isinstance(batch, Mapping):
        missing = [t for t in names if t not in batch]
        if missing:
            raise ValueError(f"task '{missing[0]}': input: the multi-domain batch has no entry for this task "
                             f"(it has {list(batch)})")
        xs, ys = {}, {}
        for t in names:
            item = batch[t]
            if not isinstance(item, tuple | list) or len(item) != 2:
                raise ValueError(f"task '{t}': batch: expected (x_t, y_t), got {type(item).__name__}")
            xs[t], ys[t] = item[0].to(device), item[1]
        x: Any = xs
    elif isinstance(batch, tuple | list) and len(batch) == 2 and isinstance(batch[1], Mapping):
        x, ys = batch[0].to(device), dict(batch[1])
    else:
        raise ValueError("a batch must be (x, {task: y}) or {task: (x_t, y_t)}, got " + type(batch).__name__)
    targets: dict[str, torch.Tensor | None] = {}
    for t in names:
        y = ys.get(t)
        if y is None and not allow_missing:
            raise ValueError(f"task '{t}': target: the batch has no label for this task and allow_missing=False")
        targets[t] = y.to(device) if isinstance(y, torch.Tensor) else y
    return x, targets


def is_item(obj: Any) -> bool:
    """Whether ``obj`` looks like one sample (so its container is a dataset, not a tuple of splits)."""
    return isinstance(obj, Mapping) or (isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[1], Mapping))


def length(source: Any) -> int | None:
    try:
        return len(source)
    except TypeError:
        return None


class Chain:
    """Iterates several loaders one after the other (one pass of each)."""

    def __init__(self, parts: list[Iterable[Any]]) -> None:
        self.parts = parts

    def __iter__(self) -> Iterator[Any]:
        for part in self.parts:
            yield from part

    def __len__(self) -> int:
        return sum(length(p) or 0 for p in self.parts)
