"""Tasks: losses and metrics against hand computations, masking, input validation and heads."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from automtl.train.tasks import (
    TASKS,
    Classification,
    Depth,
    Edges,
    Normals,
    Segmentation,
    TaskInputError,
    check_finite,
    classification_head,
    dense_head,
    get_task,
)


def _logits_for(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N, C, H, W) logits whose argmax is ``labels`` (N, H, W)."""
    return F.one_hot(labels, num_classes).permute(0, 3, 1, 2).float() * 5.0


# classification --------------------------------------------------------------------------------


def test_classification_loss_matches_hand_cross_entropy() -> None:
    task = Classification("cls", 2)
    pred = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    loss = task.loss(pred, torch.tensor([0, 1]))
    expected = (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(-1))) / 2
    assert loss is not None
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_classification_accuracy_is_exact_over_batches() -> None:
    task = Classification("cls", 3)
    state = task.metric_state()
    task.update(state, torch.tensor([[3.0, 0, 0], [0, 3.0, 0]]), torch.tensor([0, 1]))  # 2 of 2
    task.update(state, torch.tensor([[3.0, 0, 0]]), torch.tensor([2]))  # 0 of 1
    assert task.compute(state)["accuracy"] == pytest.approx(2 / 3)  # not the batch mean 0.5


def test_classification_masks_ignored_samples_and_missing_targets() -> None:
    task = Classification("cls", 2)
    pred = torch.tensor([[5.0, 0.0], [0.0, 1.0]], requires_grad=True)
    loss = task.loss(pred, torch.tensor([-100, 1]))
    assert loss is not None
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1)), rel=1e-6)
    loss.backward()
    assert torch.all(pred.grad[0] == 0)  # the unlabelled sample gets no gradient
    assert task.loss(pred, torch.tensor([-100, -100])) is None
    assert task.loss(pred, None) is None
    state = task.update(task.metric_state(), pred, None)
    assert math.isnan(task.compute(state)["accuracy"])
    assert task.metrics(pred, torch.tensor([-100, 0]))["accuracy"] == 0.0


@pytest.mark.parametrize(
    ("pred", "target", "field", "words"),
    [
        (torch.zeros(2, 3), torch.tensor([0.0, 1.0]), "target", "dtype"),
        (torch.zeros(2, 3), torch.tensor([0, 1, 2]), "target", "batch size"),
        (torch.zeros(2, 3), torch.tensor([0, 3]), "target", "class index 3"),
        (torch.zeros(2, 4), torch.tensor([0, 1]), "pred", "channels"),
        (torch.zeros(2, 3, 1), torch.tensor([0, 1]), "pred", "shape"),
        (torch.zeros(2, 3, dtype=torch.long), torch.tensor([0, 1]), "pred", "dtype"),
    ],
)
def test_classification_bad_input_names_task_and_field(
    pred: torch.Tensor, target: torch.Tensor, field: str, words: str
) -> None:
    task = Classification("digits", 3)
    with pytest.raises(ValueError, match=f"task 'digits': {field}: .*{words}") as info:
        task.loss(pred, target)
    assert isinstance(info.value, TaskInputError)
    assert (info.value.task, info.value.field) == ("digits", field)


# segmentation ----------------------------------------------------------------------------------


def test_segmentation_miou_on_a_2x2_case() -> None:
    task = Segmentation("seg", 2)
    target = torch.tensor([[[0, 0], [1, 1]]])
    pred = _logits_for(torch.tensor([[[0, 1], [1, 1]]]), 2)
    m = task.metrics(pred, target)
    # class 0: tp 1, union 2 -> 1/2; class 1: tp 2, union 3 -> 2/3
    assert m["miou"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert m["pixel_acc"] == pytest.approx(3 / 4)


def test_segmentation_miou_accumulates_a_confusion_matrix() -> None:
    task = Segmentation("seg", 2)
    state = task.metric_state()
    # batch 1: all class 0, all right; batch 2: one pixel of class 1 predicted as 0
    task.update(
        state, _logits_for(torch.zeros(1, 1, 3, dtype=torch.long), 2), torch.zeros(1, 1, 3, dtype=torch.long)
    )
    task.update(
        state, _logits_for(torch.zeros(1, 1, 1, dtype=torch.long), 2), torch.ones(1, 1, 1, dtype=torch.long)
    )
    m = task.compute(state)
    # confusion: class 0 tp 3, union 4 -> 3/4; class 1 tp 0, union 1 -> 0. Batch mean would be (1 + 0) / 2.
    assert m["miou"] == pytest.approx(3 / 8)
    assert m["pixel_acc"] == pytest.approx(3 / 4)


def test_segmentation_ignores_pixels_and_upsamples_smaller_logits() -> None:
    task = Segmentation("seg", 3)
    target = torch.tensor([[[0, 255], [2, 1]]])
    pred = torch.randn(1, 3, 2, 2)
    loss = task.loss(pred, target)
    flat_pred = pred.permute(0, 2, 3, 1).reshape(-1, 3)[[0, 2, 3]]
    assert loss is not None
    assert loss.item() == pytest.approx(F.cross_entropy(flat_pred, torch.tensor([0, 2, 1])).item(), rel=1e-6)
    assert task.loss(pred, torch.full((1, 2, 2), 255)) is None

    small = torch.randn(2, 3, 2, 2)
    big_target = torch.randint(0, 3, (2, 1, 8, 8))  # (N, 1, H, W) is accepted too
    up = F.interpolate(small, size=(8, 8), mode="bilinear", align_corners=False)
    expected = F.cross_entropy(up, big_target[:, 0])
    assert task.loss(small, big_target).item() == pytest.approx(expected.item(), rel=1e-6)
    with pytest.raises(ValueError, match="task 'seg': pred: spatial size"):
        task.loss(torch.randn(2, 3, 16, 16), big_target)


@pytest.mark.parametrize(
    ("target", "field", "words"),
    [
        (torch.zeros(1, 4, 4), "target", "dtype"),
        (torch.zeros(2, 4, 4, dtype=torch.long), "target", "batch size"),
        (torch.full((1, 4, 4), 5), "target", "class index 5"),
        (torch.zeros(1, 2, 4, 4, dtype=torch.long), "target", "shape"),
    ],
)
def test_segmentation_bad_target_names_task_and_field(target: torch.Tensor, field: str, words: str) -> None:
    with pytest.raises(ValueError, match=f"task 'sem': {field}: .*{words}"):
        Segmentation("sem", 3).loss(torch.zeros(1, 3, 4, 4), target)


# depth -----------------------------------------------------------------------------------------


def test_depth_l1_and_metrics_over_valid_pixels_only() -> None:
    task = Depth("depth")
    target = torch.tensor([[[[2.0, 4.0], [0.0, float("nan")]]]])
    pred = torch.tensor([[[[3.0, 3.0], [7.0, 1.0]]]], requires_grad=True)
    loss = task.loss(pred, target)
    assert loss is not None
    assert loss.item() == pytest.approx(1.0)  # (|3-2| + |3-4|) / 2
    loss.backward()
    assert torch.isfinite(pred.grad).all()  # a NaN label must not leak into the gradient
    assert pred.grad[0, 0, 1].abs().sum() == 0
    m = task.metrics(pred, target)
    assert m["abs_err"] == pytest.approx(1.0)
    assert m["abs_rel"] == pytest.approx((1 / 2 + 1 / 4) / 2)
    assert m["rmse"] == pytest.approx(1.0)
    assert task.loss(pred, torch.zeros(1, 2, 2)) is None  # (N, H, W) accepted; all missing


def test_depth_rejects_integer_target() -> None:
    with pytest.raises(ValueError, match="task 'd': target: dtype"):
        Depth("d").loss(torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2, dtype=torch.long))


# normals ---------------------------------------------------------------------------------------


def test_normals_cosine_loss_and_angles() -> None:
    task = Normals("normals")
    target = torch.zeros(1, 3, 1, 3)
    target[0, 2, 0, 0] = 1.0  # pixel 0: +z
    target[0, 0, 0, 1] = 1.0  # pixel 1: +x
    # pixel 2: zero vector = missing
    pred = torch.zeros(1, 3, 1, 3)
    pred[0, 2, 0, 0] = 3.0  # same direction, different length -> 0 degrees
    pred[0, 1, 0, 1] = 0.5  # +y, orthogonal -> 90 degrees
    pred[0, 0, 0, 2] = 1.0
    loss = task.loss(pred, target)
    assert loss is not None
    assert loss.item() == pytest.approx(0.5)  # ((1 - 1) + (1 - 0)) / 2
    m = task.metrics(pred, target)
    assert m["mean_angle"] == pytest.approx(45.0)
    assert m["within_11_25"] == pytest.approx(50.0)
    assert m["within_30"] == pytest.approx(50.0)


def test_normals_wrong_channel_count_names_pred() -> None:
    with pytest.raises(ValueError, match="task 'n': pred: .*3"):
        Normals("n").loss(torch.zeros(1, 1, 2, 2), torch.zeros(1, 3, 2, 2))


# edges -----------------------------------------------------------------------------------------


def test_edges_bce_with_pos_weight_and_ignore() -> None:
    target = torch.tensor([[[[1.0, 0.0], [255.0, 1.0]]]])
    pred = torch.tensor([[[[0.5, -1.0], [9.0, 2.0]]]])

    def bce(x: float, y: float, pw: float) -> float:
        s = 1 / (1 + math.exp(-x))
        return -(pw * y * math.log(s) + (1 - y) * math.log(1 - s))

    for pw in (1.0, 3.0):
        task = Edges("edges", pos_weight=None if pw == 1.0 else pw)
        expected = (bce(0.5, 1, pw) + bce(-1.0, 0, pw) + bce(2.0, 1, pw)) / 3
        assert task.loss(pred, target).item() == pytest.approx(expected, rel=1e-6)
    auto = Edges("edges", pos_weight="auto").loss(pred, target)  # 1 negative / 2 positives
    expected = (bce(0.5, 1, 0.5) + bce(-1.0, 0, 0.5) + bce(2.0, 1, 0.5)) / 3
    assert auto.item() == pytest.approx(expected, rel=1e-6)


def test_edges_f_score_at_half_threshold() -> None:
    task = Edges("edges")
    target = torch.tensor([[[1.0, 1.0, 0.0, 0.0, 255.0]]])  # (N, H, W)
    pred = torch.tensor([[[[1.0, -1.0, 1.0, -1.0, 5.0]]]])
    m = task.metrics(pred, target)  # tp 1, fp 1, fn 1; the ignored pixel counts nowhere
    assert m["precision"] == pytest.approx(0.5)
    assert m["recall"] == pytest.approx(0.5)
    assert m["f_score"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="task 'edges': target: values outside"):
        task.loss(pred, torch.full((1, 1, 5), 2.0))


# shared behaviour ------------------------------------------------------------------------------


def _examples() -> list[tuple[object, torch.Tensor, torch.Tensor]]:
    torch.manual_seed(0)
    return [
        (Classification("c", 4), torch.randn(3, 4), torch.randint(0, 4, (3,))),
        (Segmentation("s", 4), torch.randn(2, 4, 4, 4), torch.randint(0, 4, (2, 8, 8))),
        (Depth("d"), torch.randn(2, 1, 8, 8), torch.rand(2, 1, 8, 8) + 0.5),
        (Normals("n"), torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)),
        (Edges("e"), torch.randn(2, 1, 8, 8), (torch.rand(2, 1, 8, 8) > 0.7).float()),
    ]


@pytest.mark.parametrize("index", range(5))
def test_every_task_has_consistent_metrics_gradients_and_merge(index: int) -> None:
    task, pred, target = _examples()[index]
    pred.requires_grad_(True)
    loss = task.loss(pred, target)
    assert loss is not None and loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0
    m = task.metrics(pred, target)
    assert set(m) == set(type(task).higher_is_better)
    assert task.primary_metric in m
    assert all(math.isfinite(v) for v in m.values())
    # two half batches accumulate (or merge) to the full-batch metrics
    a = task.update(task.metric_state(), pred[:1], target[:1])
    b = task.update(task.metric_state(), pred[1:], target[1:])
    merged = task.compute(task.merge(a, b))
    acc = task.accumulator()
    acc.update(pred[:1], target[:1])
    acc.update(pred[1:], target[1:])
    for key, value in m.items():
        assert merged[key] == pytest.approx(value, rel=1e-9, abs=1e-9)
        assert acc.compute()[key] == pytest.approx(value, rel=1e-9, abs=1e-9)
    acc.reset()
    assert all(math.isnan(v) for v in acc.compute().values())


def test_check_finite_names_task_and_step() -> None:
    ok = torch.tensor(1.5)
    assert check_finite("seg", ok, 3) is ok
    with pytest.raises(FloatingPointError, match="task 'seg': loss is nan at step 7"):
        check_finite("seg", torch.tensor(float("nan")), 7)
    with pytest.raises(FloatingPointError, match="task 'depth': loss is inf"):
        Depth("depth").check_finite(torch.tensor(float("inf")), 0)


def test_heads_shapes_and_default_heads() -> None:
    x = torch.randn(2, 16, 4, 4)
    assert classification_head(16, 7)(x).shape == (2, 7)
    head = dense_head(16, 5, 8)
    assert head(x).shape == (2, 5, 32, 32)
    assert dense_head(16, 1)(x).shape == (2, 1, 4, 4)
    seg = Segmentation("seg", 5, head=head)
    assert seg.head is head
    assert seg.make_head(16, 4)(x).shape == (2, 5, 16, 16)
    assert Classification("c", 3).make_head(16, 32)(x).shape == (2, 3)
    assert Normals("n").make_head(16, 2)(x).shape == (2, 3, 8, 8)
    with pytest.raises(ValueError, match="scale_factor"):
        dense_head(16, 5, 0)
    with pytest.raises(ValueError, match="task 'seg': head"):
        Segmentation("seg", 5, head="conv")  # type: ignore[arg-type]


def test_get_task_registry_and_constructor_checks() -> None:
    assert set(TASKS) == {"classification", "segmentation", "depth", "normals", "edges"}
    seg = get_task("segmentation", num_classes=5)
    assert isinstance(seg, Segmentation) and seg.name == "segmentation" and seg.num_classes == 5
    depth = get_task("Depth", name="z", weight=0.5)
    assert isinstance(depth, Depth) and depth.name == "z" and depth.weight == 0.5
    assert isinstance(get_task("edges", head=nn.Identity()).head, nn.Identity)
    with pytest.raises(ValueError, match="unknown task kind 'pose'"):
        get_task("pose")
    with pytest.raises(ValueError, match="task 'seg': ignore_index"):
        Segmentation("seg", 5, ignore_index=3)
    with pytest.raises(ValueError, match="task 'seg': weight"):
        Segmentation("seg", 5, weight=-1.0)
    with pytest.raises(ValueError, match="task name"):
        Depth("a.b")
    assert Segmentation("s", 3).missing_value == 255 and Classification("c", 3).missing_value == -100
