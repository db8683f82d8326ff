"""Tasks: a head, a loss, exactly-accumulable metrics and a masking policy per task.

A :class:`Task` validates what it is given and raises :class:`TaskInputError` (a ``ValueError``)
naming the task and the offending field (``pred`` or ``target``), so a wrong label dtype or a
shape mismatch fails at the first batch with a message that says where to look.

Missing labels are masked, never invented:

* a target of ``None`` means the batch has no label for this task: :meth:`Task.loss` returns
  ``None`` and :meth:`Task.update` leaves the metric state unchanged;
* per sample or per pixel, a target equal to the task's :attr:`Task.missing_value` (the ignore
  index for labels, a non-positive depth, a zero normal) is excluded from loss and metrics. When
  every element of a batch is masked, the loss is ``None`` too, rather than a NaN mean.

Metrics are accumulated in a state of summed counts (``metric_state()`` / ``update()`` /
``compute()``), so epoch metrics are exact: mIoU comes from a confusion matrix summed over all
batches, not from a mean of per-batch mIoUs.

Dense predictions may be smaller than their targets (a head without its own upsampling): the
logits or values are upsampled bilinearly (``align_corners=False``) to the target's spatial
size before the loss and the metrics. A prediction larger than its target is an error, since
labels are never resampled.

This module is the registry (``TASKS``, :func:`register_task`, :func:`get_task`) and the one
import path for every task name; the code lives in ``task_base.py`` (:class:`Task`, errors,
accumulator), ``label_tasks.py`` (classification, segmentation), ``dense_tasks.py`` (depth,
normals, edges) and ``heads.py`` (default heads).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .dense_tasks import Depth, Edges, Normals
from .heads import classification_head, dense_head
from .label_tasks import Classification, Segmentation
from .task_base import MetricAccumulator, Task, TaskInputError, check_finite
from .task_base import MetricState as MetricState

__all__ = [
    "Classification",
    "Depth",
    "Edges",
    "MetricAccumulator",
    "Normals",
    "Segmentation",
    "Task",
    "TaskInputError",
    "TASKS",
    "check_finite",
    "classification_head",
    "dense_head",
    "get_task",
    "register_task",
]


# registry --------------------------------------------------------------------------------------

TASKS: dict[str, Callable[..., Task]] = {
    "classification": Classification,
    "segmentation": Segmentation,
    "depth": Depth,
    "normals": Normals,
    "edges": Edges,
}


def register_task(kind: str, factory: Callable[..., Task]) -> None:
    """Make ``get_task(kind, ...)`` build tasks with ``factory``."""
    if not isinstance(kind, str) or not kind:
        raise ValueError(f"task kind must be a non-empty string, got {kind!r}")
    TASKS[kind.lower()] = factory


def get_task(kind: str, name: str | None = None, **kwargs: Any) -> Task:
    """Build a task by kind ("classification", "segmentation", "depth", "normals", "edges").

    ``name`` defaults to the kind; other keyword arguments go to the task's constructor.
    """
    factory = TASKS.get(kind.lower()) if isinstance(kind, str) else None
    if factory is None:
        raise ValueError(f"unknown task kind {kind!r}; known kinds: {', '.join(sorted(TASKS))}")
    return factory(name if name is not None else kind.lower(), **kwargs)
