"""The :class:`Task` base class, its input errors, finite-loss check and metric accumulator.

The contract (masking of missing labels, exactly-accumulable metric states, upsampling of smaller
dense predictions) is described in :mod:`automtl.train.tasks`, which also holds the registry.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .heads import dense_head

MetricState = dict[str, Tensor]


class TaskInputError(ValueError):
    """A prediction or target a task cannot use; the message names the task and the field."""

    def __init__(self, task: str, field: str, message: str) -> None:
        self.task = task
        self.field = field
        super().__init__(f"task '{task}': {field}: {message}")


def check_finite(task_name: str, loss: Tensor, step: int | None = None) -> Tensor:
    """Return ``loss`` unchanged, or raise ``FloatingPointError`` naming the task and step if it is NaN/inf.

    Reading the value synchronises with the device; call it once per step, not per layer.
    """
    detached = loss.detach()
    if not bool(torch.isfinite(detached).all()):
        value = float(detached) if detached.numel() == 1 else "not finite"
        at = f" at step {step}" if step is not None else ""
        raise FloatingPointError(f"task '{task_name}': loss is {value}{at}")
    return loss


class Task:
    """One task of a multi-task model: name, optional head, loss, metrics and masking policy.

    Subclasses set ``kind``, ``higher_is_better`` (one entry per metric), ``primary_metric`` and
    implement ``_prepare`` (validate and mask), ``_loss`` and ``_update``/``_compute``.
    """

    kind: ClassVar[str] = "task"
    higher_is_better: ClassVar[dict[str, bool]] = {}
    primary_metric: ClassVar[str] = ""

    def __init__(self, name: str, head: nn.Module | None = None, weight: float = 1.0) -> None:
        if not isinstance(name, str) or not name or "." in name:
            raise ValueError(f"task name must be a non-empty string without '.', got {name!r}")
        if head is not None and not isinstance(head, nn.Module):
            raise TaskInputError(name, "head", f"expected an nn.Module or None, got {type(head).__name__}")
        if (
            isinstance(weight, bool)
            or not isinstance(weight, int | float)
            or not math.isfinite(weight)
            or weight < 0
        ):
            raise TaskInputError(name, "weight", f"expected a finite number >= 0, got {weight!r}")
        self.name = name
        self.head = head
        self.weight = float(weight)

    # to be provided by subclasses ----------------------------------------------------------
    @property
    def out_channels(self) -> int:
        """Channels the head must produce."""
        raise NotImplementedError

    @property
    def missing_value(self) -> float | int:
        """The target value meaning 'no label here' (used e.g. to pad batches with missing labels)."""
        raise NotImplementedError

    def make_head(self, in_channels: int, scale_factor: float = 1) -> nn.Module:
        """A default head for features with ``in_channels`` channels at stride ``scale_factor``."""
        return dense_head(in_channels, self.out_channels, scale_factor)

    def _prepare(self, pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Validate, resize and flatten to (pred, target, valid-mask) on the same elements."""
        raise NotImplementedError

    def _loss(self, pred: Tensor, target: Tensor, valid: Tensor) -> Tensor:
        raise NotImplementedError

    def _new_state(self) -> MetricState:
        raise NotImplementedError

    def _update(self, state: MetricState, pred: Tensor, target: Tensor, valid: Tensor) -> None:
        raise NotImplementedError

    def _compute(self, state: MetricState) -> dict[str, float]:
        raise NotImplementedError

    # public interface ----------------------------------------------------------------------
    def loss(self, pred: Tensor, target: Tensor | None) -> Tensor | None:
        """The scalar loss over labelled elements, or ``None`` when the batch has no labelled element."""
        if target is None:
            return None
        p, t, valid = self._prepare(pred, target)
        if not bool(valid.any()):
            return None
        return self._loss(p, t, valid)

    def metric_state(self) -> MetricState:
        """An empty, additive metric state (float64/int64 sums on the CPU)."""
        return self._new_state()

    @torch.no_grad()
    def update(self, state: MetricState, pred: Tensor, target: Tensor | None) -> MetricState:
        """Add one batch to ``state`` in place (a ``None`` target adds nothing) and return it."""
        if target is None:
            return state
        p, t, valid = self._prepare(pred.detach(), target)
        self._update(state, p, t, valid)
        return state

    def compute(self, state: MetricState) -> dict[str, float]:
        """Metrics from an accumulated state; NaN for a metric that saw no labelled element."""
        return self._compute(state)

    @staticmethod
    def merge(a: MetricState, b: MetricState) -> MetricState:
        """Sum two states (e.g. from two workers) into a new one."""
        return {k: a[k] + b[k] for k in a}

    def metrics(self, pred: Tensor, target: Tensor | None) -> dict[str, float]:
        """Metrics of a single batch."""
        return self.compute(self.update(self.metric_state(), pred, target))

    def accumulator(self) -> MetricAccumulator:
        """A stateful accumulator for this task's metrics."""
        return MetricAccumulator(self)

    def check_finite(self, loss: Tensor, step: int | None = None) -> Tensor:
        """:func:`check_finite` with this task's name."""
        return check_finite(self.name, loss, step)

    def __repr__(self) -> str:
        head = type(self.head).__name__ if self.head is not None else None
        return f"{type(self).__name__}(name={self.name!r}, head={head}, weight={self.weight})"

    # shared validation helpers -------------------------------------------------------------
    def _error(self, field: str, message: str) -> TaskInputError:
        return TaskInputError(self.name, field, message)

    def _check_tensor(self, field: str, value: Any) -> Tensor:
        if not isinstance(value, Tensor):
            raise self._error(field, f"expected a torch.Tensor, got {type(value).__name__}")
        return value

    def _check_float_pred(self, pred: Any, ndim: int, channels: int | None, layout: str) -> Tensor:
        pred = self._check_tensor("pred", pred)
        if not pred.is_floating_point():
            raise self._error("pred", f"dtype {pred.dtype}, expected a floating-point tensor")
        if pred.dim() != ndim:
            raise self._error("pred", f"shape {tuple(pred.shape)}, expected {layout}")
        if channels is not None and pred.shape[1] != channels:
            raise self._error(
                "pred", f"shape {tuple(pred.shape)} has {pred.shape[1]} channels, expected {channels}"
            )
        return pred

    def _check_batch(self, pred: Tensor, target: Tensor) -> None:
        if pred.shape[0] != target.shape[0]:
            raise self._error(
                "target", f"batch size {target.shape[0]} does not match pred batch size {pred.shape[0]}"
            )

    def _dense_target(self, target: Any, channels: int, name: str) -> Tensor:
        """Accept (N, C, H, W) or, for one channel, (N, H, W) targets; return (N, C, H, W)."""
        target = self._check_tensor("target", target)
        if channels == 1 and target.dim() == 3:
            target = target.unsqueeze(1)
        if target.dim() != 4 or target.shape[1] != channels:
            expect = "(N, H, W) or (N, 1, H, W)" if channels == 1 else f"(N, {channels}, H, W)"
            raise self._error("target", f"shape {tuple(target.shape)}, expected {expect} {name}")
        return target

    def _match_spatial(self, pred: Tensor, size: tuple[int, int]) -> Tensor:
        """Upsample a smaller (N, C, h, w) prediction bilinearly to the target's (H, W)."""
        h, w = pred.shape[-2:]
        if (h, w) == tuple(size):
            return pred
        if h > size[0] or w > size[1]:
            raise self._error(
                "pred",
                f"spatial size {(h, w)} is larger than the target's {tuple(size)}; "
                "predictions are upsampled to the target, never the other way round",
            )
        return F.interpolate(pred, size=tuple(size), mode="bilinear", align_corners=False)


class MetricAccumulator:
    """Accumulates a task's metrics over batches: ``update(pred, target)``, ``compute()``, ``reset()``."""

    def __init__(self, task: Task) -> None:
        self.task = task
        self.state = task.metric_state()

    def update(self, pred: Tensor, target: Tensor | None) -> None:
        """Add one batch."""
        self.task.update(self.state, pred, target)

    def compute(self) -> dict[str, float]:
        """Metrics over every batch since the last reset."""
        return self.task.compute(self.state)

    def reset(self) -> None:
        """Forget all batches."""
        self.state = self.task.metric_state()


def _ratio(num: Tensor, den: Tensor) -> float:
    d = float(den)
    return float(num) / d if d > 0 else float("nan")


def _masked_mean(values: Tensor, valid: Tensor) -> Tensor:
    """Mean of ``values`` over ``valid`` (same shape), differentiable and without NaN from masked entries."""
    return torch.where(valid, values, torch.zeros_like(values)).sum() / valid.sum().to(values.dtype)
