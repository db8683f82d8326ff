"""Tasks on integer class labels with an ignore index: classification and semantic segmentation."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .heads import classification_head
from .task_base import MetricState, Task, TaskInputError, _ratio


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
