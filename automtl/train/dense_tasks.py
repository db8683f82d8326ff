"""Per-pixel regression and binary tasks: depth, surface normals and edges."""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .task_base import MetricState, Task, TaskInputError, _masked_mean, _ratio


class _FloatMapTask(Task):
    """A per-pixel regression of ``_channels`` floating-point channels, in which 0 marks a missing value."""

    _channels: ClassVar[int]
    #: what the prediction holds (``"depth"``) and what a target is (``"depth map"``), for error messages
    _what: ClassVar[str]
    _map_name: ClassVar[str]

    @property
    def out_channels(self) -> int:
        return self._channels

    @property
    def missing_value(self) -> float:
        return 0.0

    def _float_maps(self, pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """``pred`` (upsampled to the target's size) and ``target``, checked: (N, C, H, W), floating point."""
        c = self._channels
        pred = self._check_float_pred(pred, 4, c, f"(N, {c}, H, W) {self._what}")
        target = self._dense_target(target, c, self._what)
        if not target.is_floating_point():
            raise self._error("target", f"dtype {target.dtype}, expected a floating-point {self._map_name}")
        self._check_batch(pred, target)
        return self._match_spatial(pred, (target.shape[2], target.shape[3])), target


class Depth(_FloatMapTask):
    """Depth (or any one-channel positive regression): L1 over valid pixels; abs error, abs-rel error, RMSE.

    A pixel is valid when its target is finite and > 0, so 0 (or NaN) marks a missing depth.
    """

    kind = "depth"
    higher_is_better: ClassVar[dict[str, bool]] = {"abs_err": False, "abs_rel": False, "rmse": False}
    primary_metric = "abs_err"
    _channels, _what, _map_name = 1, "depth", "depth map"

    def _prepare(self, pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        pred, target = self._float_maps(pred, target)
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


class Normals(_FloatMapTask):
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
    _channels, _what, _map_name = 3, "normals", "normal map"

    def _prepare(self, pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        pred, target = self._float_maps(pred, target)
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
