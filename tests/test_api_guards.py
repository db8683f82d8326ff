"""Bad input through the Python API: one clear error naming the task, or a well-defined result."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

import automtl
from automtl.search import evaluate
from automtl.train.tasks import Classification, Depth


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1))


def test_a_batch_of_zero_returns_empty_outputs_and_changes_nothing() -> None:
    model = automtl.build(_net(), {"a": nn.Conv2d(4, 2, 1), "b": nn.Conv2d(4, 1, 1)}, input_shape=(3, 8, 8))
    model.materialize()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = model(torch.zeros(0, 3, 8, 8), mode="soft", tau=1.0)
    assert out["a"].shape == (0, 2, 8, 8) and out["b"].shape == (0, 1, 8, 8)
    assert model.training and all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    multi = model({"a": torch.zeros(0, 3, 8, 8), "b": torch.zeros(0, 3, 8, 8)}, mode="warmup")
    assert multi["a"].shape == (0, 2, 8, 8)


class TupleHead(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, x


def test_a_head_that_returns_a_tuple_is_refused_at_build() -> None:
    with pytest.raises(ValueError, match="the head of task 'b' returns a tuple, not a tensor"):
        automtl.build(_net(), {"a": nn.Identity(), "b": TupleHead()}, input_shape=(3, 8, 8))


class Unlabelled(Dataset):
    """Depth targets that are all NaN (missing), classification labels present."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return torch.rand(3, 8, 8), {"cls": torch.tensor(i % 2), "depth": torch.full((1, 8, 8), float("nan"))}


def test_a_task_with_no_labelled_sample_is_named_not_nan() -> None:
    heads = {"cls": nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)),
             "depth": nn.Conv2d(4, 1, 1)}
    model = automtl.build(_net(), heads, input_shape=(3, 8, 8))
    tasks = {"cls": Classification("cls", 2), "depth": Depth("depth")}
    with pytest.raises(ValueError, match="task 'depth': the evaluated split has no labelled sample"):
        evaluate(model, tasks, DataLoader(Unlabelled(), batch_size=4))
