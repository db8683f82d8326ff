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
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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


# heads -----------------------------------------------------------------------------------------


def classification_head(in_channels: int, num_classes: int) -> nn.Sequential:
    """Global average pool, flatten and a linear layer: (N, C, H, W) features -> (N, classes) logits."""
    _check_positive("in_channels", in_channels)
    _check_positive("num_classes", num_classes)
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(in_channels, num_classes))


def dense_head(
    in_channels: int, out_channels: int, scale_factor: float = 1, hidden_channels: int | None = None
) -> nn.Sequential:
    """A small per-pixel head: 3x3 conv, BN, ReLU, 1x1 conv, then bilinear upsampling by ``scale_factor``.

    ``scale_factor`` is the feature map's stride relative to the input (e.g. 8 or 32), so the
    output has the input's resolution. ``hidden_channels`` defaults to ``min(in_channels, 256)``.
    """
    _check_positive("in_channels", in_channels)
    _check_positive("out_channels", out_channels)
    if not (isinstance(scale_factor, int | float) and scale_factor > 0 and math.isfinite(scale_factor)):
        raise ValueError(f"dense_head: scale_factor must be a positive number, got {scale_factor!r}")
    hidden = min(in_channels, 256) if hidden_channels is None else hidden_channels
    _check_positive("hidden_channels", hidden)
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, hidden, 3, padding=1, bias=False),
        nn.BatchNorm2d(hidden),
        nn.ReLU(inplace=True),
        nn.Conv2d(hidden, out_channels, 1),
    ]
    if scale_factor != 1:
        layers.append(nn.Upsample(scale_factor=scale_factor, mode="bilinear", align_corners=False))
    return nn.Sequential(*layers)


def _check_positive(field: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{field} must be a positive int, got {value!r}")


# base task -------------------------------------------------------------------------------------


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


# label tasks -----------------------------------------------------------------------------------


class _LabelTask(Task):
    """Shared validation for integer class labels with an ignore index."""

    def __init__(
        self, name: str, num_classes: int, head: nn.Module | None, weight: float, ignore_index: int
    ) -> None:
        super().__init__(name, head, weight)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise TaskInputError(name, "num_classes", f"expected an int >= 2, got {num_classes!r}")
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
            raise TaskInputError(name, "ignore_index", f"expected an int, got {ignore_index!r}")
        if 0 <= ignore_index < num_classes:
            raise TaskInputError(
                name, "ignore_index", f"{ignore_index} is a valid class index (num_classes={num_classes})"
            )
        self.num_classes = num_classes
        self.ignore_index = ignore_index

    @property
    def out_channels(self) -> int:
        return self.num_classes

    @property
    def missing_value(self) -> int:
        return self.ignore_index

    def _check_labels(self, target: Tensor) -> Tensor:
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise self._error(
                "target", f"dtype {target.dtype}, expected integer class indices (e.g. torch.long)"
            )
        valid = target != self.ignore_index
        if target.numel() and bool(valid.any()):
            labels = target[valid]
            lo, hi = int(labels.min()), int(labels.max())
            if lo < 0 or hi >= self.num_classes:
                bad = lo if lo < 0 else hi
                raise self._error(
                    "target",
                    f"class index {bad} outside [0, {self.num_classes}) "
                    f"and not the ignore index {self.ignore_index}",
                )
        return valid

    def _new_state(self) -> MetricState:
        return {"confusion": torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)}

    def _update(self, state: MetricState, pred: Tensor, target: Tensor, valid: Tensor) -> None:
        # confusion[true, predicted], counted over labelled elements only
        c = self.num_classes
        guess = pred.argmax(dim=1)
        idx = target[valid].long() * c + guess[valid]
        counts = torch.bincount(idx, minlength=c * c).reshape(c, c)
        state["confusion"] += counts.to(state["confusion"].device)


class Classification(_LabelTask):
    """Image classification: (N, C) logits vs (N,) integer labels; cross-entropy loss; accuracy.

    Samples labelled ``ignore_index`` (default -100, as in ``torch.nn.CrossEntropyLoss``) are masked.
    """

    kind = "classification"
    higher_is_better: ClassVar[dict[str, bool]] = {"accuracy": True}
    primary_metric = "accuracy"

    def __init__(
        self,
        name: str,
        num_classes: int,
        head: nn.Module | None = None,
        weight: float = 1.0,
        ignore_index: int = -100,
    ) -> None:
        super().__init__(name, num_classes, head, weight, ignore_index)

    def make_head(self, in_channels: int, scale_factor: float = 1) -> nn.Module:
        """A :func:`classification_head` (the stride does not matter after global pooling)."""
        return classification_head(in_channels, self.num_classes)

    def _prepare(self, pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        pred = self._check_float_pred(pred, 2, self.num_classes, f"(N, {self.num_classes}) logits")
        target = self._check_tensor("target", target)
        if target.dim() != 1:
            raise self._error("target", f"shape {tuple(target.shape)}, expected (N,) class indices")
        self._check_batch(pred, target)
        valid = self._check_labels(target)
        return pred, target, valid

    def _loss(self, pred: Tensor, target: Tensor, valid: Tensor) -> Tensor:
        return F.cross_entropy(pred, target.long(), ignore_index=self.ignore_index)

    def _compute(self, state: MetricState) -> dict[str, float]:
        conf = state["confusion"]
        return {"accuracy": _ratio(conf.diagonal().sum(), conf.sum())}


class Segmentation(_LabelTask):
    """Semantic segmentation: (N, C, h, w) logits vs (N, H, W) labels; pixel CE; mIoU and pixel accuracy.

    Pixels labelled ``ignore_index`` (default 255) are masked. Logits smaller than the target are
    upsampled bilinearly to (H, W) first. mIoU averages IoU over the classes that occur in the
    labels or the predictions of the accumulated batches (classes with an empty union are skipped).
    """

    kind = "segmentation"
    higher_is_better: ClassVar[dict[str, bool]] = {"miou": True, "pixel_acc": True}
    primary_metric = "miou"

    def __init__(
        self,
        name: str,
        num_classes: int,
        head: nn.Module | None = None,
        weight: float = 1.0,
        ignore_index: int = 255,
    ) -> None:
        super().__init__(name, num_classes, head, weight, ignore_index)

    def _prepare(self, pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        pred = self._check_float_pred(pred, 4, self.num_classes, f"(N, {self.num_classes}, H, W) logits")
        target = self._check_tensor("target", target)
        if target.dim() == 4 and target.shape[1] == 1:
            target = target[:, 0]
        if target.dim() != 3:
            raise self._error("target", f"shape {tuple(target.shape)}, expected (N, H, W) class indices")
        self._check_batch(pred, target)
        valid = self._check_labels(target)
        pred = self._match_spatial(pred, (target.shape[1], target.shape[2]))
        return pred, target, valid

    def _loss(self, pred: Tensor, target: Tensor, valid: Tensor) -> Tensor:
        return F.cross_entropy(pred, target.long(), ignore_index=self.ignore_index)

    def _compute(self, state: MetricState) -> dict[str, float]:
        conf = state["confusion"].double()
        tp = conf.diagonal()
        union = conf.sum(0) + conf.sum(1) - tp
        present = union > 0
        miou = float((tp[present] / union[present]).mean()) if bool(present.any()) else float("nan")
        return {"miou": miou, "pixel_acc": _ratio(tp.sum(), conf.sum())}


# dense regression tasks ------------------------------------------------------------------------


class Depth(Task):
    """Depth (or any one-channel positive regression): L1 over valid pixels; abs error, abs-rel error, RMSE.

    A pixel is valid when its target is finite and > 0, so 0 (or NaN) marks a missing depth.
    """

    kind = "depth"
    higher_is_better: ClassVar[dict[str, bool]] = {"abs_err": False, "abs_rel": False, "rmse": False}
    primary_metric = "abs_err"

    @property
    def out_channels(self) -> int:
        return 1

    @property
    def missing_value(self) -> float:
        return 0.0

    def _prepare(self, pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        pred = self._check_float_pred(pred, 4, 1, "(N, 1, H, W) depth")
        target = self._dense_target(target, 1, "depth")
        if not target.is_floating_point():
            raise self._error("target", f"dtype {target.dtype}, expected a floating-point depth map")
        self._check_batch(pred, target)
        pred = self._match_spatial(pred, (target.shape[2], target.shape[3]))
        valid = torch.isfinite(target) & (target > 0)
        # masked entries become 0 so that NaN/inf labels cannot leak NaN into the gradient
        return pred, torch.where(valid, target, torch.zeros_like(target)), valid

    def _loss(self, pred: Tensor, target: Tensor, valid: Tensor) -> Tensor:
        return _masked_mean((pred - target.to(pred.dtype)).abs(), valid)

    def _new_state(self) -> MetricState:
        return {k: torch.zeros((), dtype=torch.float64) for k in ("abs", "rel", "sq", "count")}

    def _update(self, state: MetricState, pred: Tensor, target: Tensor, valid: Tensor) -> None:
        p, t = pred[valid].double(), target[valid].double()
        err = (p - t).abs()
        dev = state["count"].device
        state["abs"] += err.sum().to(dev)
        state["rel"] += (err / t).sum().to(dev)
        state["sq"] += (err * err).sum().to(dev)
        state["count"] += float(valid.sum())

    def _compute(self, state: MetricState) -> dict[str, float]:
        n = state["count"]
        rmse = _ratio(state["sq"], n)
        return {
            "abs_err": _ratio(state["abs"], n),
            "abs_rel": _ratio(state["rel"], n),
            "rmse": math.sqrt(rmse) if not math.isnan(rmse) else rmse,
        }


class Normals(Task):
    """Surface normals: 1 - cos between L2-normalised prediction and target over valid pixels.

    A pixel is valid when its target vector is finite with norm > 0 (an all-zero normal marks a
    missing label). Metrics: mean angular error in degrees and the percentage of valid pixels
    within 11.25, 22.5 and 30 degrees.
    """

    kind = "normals"
    higher_is_better: ClassVar[dict[str, bool]] = {
        "mean_angle": False,
        "within_11_25": True,
        "within_22_5": True,
        "within_30": True,
    }
    primary_metric = "mean_angle"
    _thresholds: ClassVar[dict[str, float]] = {"within_11_25": 11.25, "within_22_5": 22.5, "within_30": 30.0}

    @property
    def out_channels(self) -> int:
        return 3

    @property
    def missing_value(self) -> float:
        return 0.0

    def _prepare(self, pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        pred = self._check_float_pred(pred, 4, 3, "(N, 3, H, W) normals")
        target = self._dense_target(target, 3, "normals")
        if not target.is_floating_point():
            raise self._error("target", f"dtype {target.dtype}, expected a floating-point normal map")
        self._check_batch(pred, target)
        pred = self._match_spatial(pred, (target.shape[2], target.shape[3]))
        finite = torch.isfinite(target).all(dim=1)
        safe = torch.where(finite.unsqueeze(1), target, torch.zeros_like(target))
        valid = finite & (safe.norm(dim=1) > 1e-6)
        return pred, safe, valid

    def _cos(self, pred: Tensor, target: Tensor) -> Tensor:
        p = F.normalize(pred, dim=1, eps=1e-8)
        t = F.normalize(target.to(pred.dtype), dim=1, eps=1e-8)
        return (p * t).sum(dim=1)

    def _loss(self, pred: Tensor, target: Tensor, valid: Tensor) -> Tensor:
        return _masked_mean(1.0 - self._cos(pred, target), valid)

    def _new_state(self) -> MetricState:
        keys = ("angle", "count", *self._thresholds)
        return {k: torch.zeros((), dtype=torch.float64) for k in keys}

    def _update(self, state: MetricState, pred: Tensor, target: Tensor, valid: Tensor) -> None:
        cos = self._cos(pred.double(), target.double())[valid].clamp(-1.0, 1.0)
        angle = torch.rad2deg(torch.acos(cos))
        dev = state["count"].device
        state["angle"] += angle.sum().to(dev)
        state["count"] += float(valid.sum())
        for key, limit in self._thresholds.items():
            state[key] += float((angle < limit).sum())

    def _compute(self, state: MetricState) -> dict[str, float]:
        n = state["count"]
        out = {"mean_angle": _ratio(state["angle"], n)}
        for key in self._thresholds:
            out[key] = 100.0 * _ratio(state[key], n)
        return out


class Edges(Task):
    """Binary per-pixel maps (edges, boundaries): BCE-with-logits over valid pixels; F-score at 0.5.

    Targets are in [0, 1] (>= 0.5 counts as positive for the metrics); pixels equal to
    ``ignore_index`` (default 255) are masked. ``pos_weight`` scales the positive term of the
    loss: a number, ``"auto"`` (negatives/positives among the batch's valid pixels, as in HED)
    or ``None``. The F-score is pixel-exact at the fixed threshold sigmoid(logit) >= 0.5, from
    true/false positive counts summed over the dataset (an ODS-like score at one threshold and
    without the boundary-matching tolerance of the BSDS benchmark).
    """

    kind = "edges"
    higher_is_better: ClassVar[dict[str, bool]] = {"f_score": True, "precision": True, "recall": True}
    primary_metric = "f_score"

    def __init__(
        self,
        name: str,
        head: nn.Module | None = None,
        weight: float = 1.0,
        pos_weight: float | str | None = None,
        ignore_index: float = 255,
    ) -> None:
        super().__init__(name, head, weight)
        if pos_weight is not None and pos_weight != "auto":
            if isinstance(pos_weight, bool) or not isinstance(pos_weight, int | float) or not pos_weight > 0:
                raise TaskInputError(
                    name, "pos_weight", f"expected a number > 0, 'auto' or None, got {pos_weight!r}"
                )
        self.pos_weight = pos_weight
        self.ignore_index = ignore_index

    @property
    def out_channels(self) -> int:
        return 1

    @property
    def missing_value(self) -> float:
        return float(self.ignore_index)

    def _prepare(self, pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        pred = self._check_float_pred(pred, 4, 1, "(N, 1, H, W) logits")
        target = self._dense_target(target, 1, "binary map")
        if target.is_complex():
            raise self._error("target", f"dtype {target.dtype}, expected real values in [0, 1]")
        self._check_batch(pred, target)
        pred = self._match_spatial(pred, (target.shape[2], target.shape[3]))
        target = target.to(pred.dtype) if target.dtype == torch.bool else target
        valid = target != self.ignore_index
        if target.is_floating_point():
            valid = valid & ~torch.isnan(target)
        labelled = target[valid]
        if labelled.numel() and (bool((labelled < 0).any()) or bool((labelled > 1).any())):
            raise self._error(
                "target", f"values outside [0, 1] that are not the ignore value {self.ignore_index}"
            )
        return pred, target, valid

    def _loss(self, pred: Tensor, target: Tensor, valid: Tensor) -> Tensor:
        t = torch.where(valid, target.to(pred.dtype), torch.zeros_like(pred))
        pw: Tensor | None = None
        if self.pos_weight == "auto":
            pos = (t * valid).sum()
            neg = valid.sum() - pos
            pw = (neg / pos.clamp_min(1.0)).detach()
        elif self.pos_weight is not None:
            pw = torch.tensor(float(self.pos_weight), dtype=pred.dtype, device=pred.device)
        bce = F.binary_cross_entropy_with_logits(pred, t, pos_weight=pw, reduction="none")
        return _masked_mean(bce, valid)

    def _new_state(self) -> MetricState:
        return {k: torch.zeros((), dtype=torch.float64) for k in ("tp", "fp", "fn")}

    def _update(self, state: MetricState, pred: Tensor, target: Tensor, valid: Tensor) -> None:
        guess = (pred >= 0)[valid]
        truth = (target >= 0.5)[valid]
        state["tp"] += float((guess & truth).sum())
        state["fp"] += float((guess & ~truth).sum())
        state["fn"] += float((~guess & truth).sum())

    def _compute(self, state: MetricState) -> dict[str, float]:
        tp, fp, fn = state["tp"], state["fp"], state["fn"]
        precision = _ratio(tp, tp + fp)
        recall = _ratio(tp, tp + fn)
        f_score = _ratio(2 * tp, 2 * tp + fp + fn)
        return {"f_score": f_score, "precision": precision, "recall": recall}


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
