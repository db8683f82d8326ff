"""The supermodel's IR counts exactly the parameters its modules hold, for every choice kind.

The choice kinds say what they hold (:meth:`ChoiceKind.held_params`, from their banks and costs), so
``model.mtl_graph.params`` is the trunk's real parameter count (after warm-up, when every per-task
copy exists): projection skips (a 1x1 map per task, not a copy of the operator), identity skips,
linear layers, batch norms that follow their producer or are per task, blocks, kernel variants and
per-domain batch norms inside shared blocks.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import automtl
from automtl.model.blocks import SmallResNet, build_blocks
from automtl.train.tasks import classification_head


class _Mixed(nn.Module):
    """An identity-skip conv (same shape), a projection-skip conv (channels and stride change), a linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.same = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.down = nn.Conv2d(8, 16, 3, padding=1, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.stem(x)))
        x = torch.relu(self.down(torch.relu(self.same(x))))
        return self.fc(self.pool(x).flatten(1))


def _held(model: automtl.SuperModel) -> int:
    model.fill_specific()  # every per-task copy exists from here on
    return sum(p.numel() for p in model.trunk.parameters())


@pytest.mark.parametrize("bn", ["follow", "specific"])
@pytest.mark.parametrize("tasks", [1, 3])
def test_branches_count_projection_skips_as_one_by_one_maps(bn: str, tasks: int) -> None:
    heads = {f"t{i}": nn.Linear(12, 2) for i in range(tasks)}
    model = automtl.build(_Mixed(), heads, input_shape=(3, 8, 8), searchable=("conv2d", "linear"), bn=bn)
    skips = {c.node: c.skip for c in model.choices}
    assert {"identity", "projection"} <= set(skips.values())  # both skip forms are in the net
    assert model.mtl_graph.params == _held(model)
    # the projection skip holds one 1x1 map per task, not a copy of the 3x3 operator
    down = model.mtl_graph["down"]
    assert down.params == (1 + tasks) * (16 * 8 * 9 + 16) + tasks * 16 * 8


@pytest.mark.parametrize("domain_bn", [False, True])
@pytest.mark.parametrize("kernels", [(), (5,)])
def test_blocks_variants_and_domain_batch_norms_are_counted_as_held(domain_bn: bool, kernels: tuple[int, ...]) -> None:
    heads = {t: classification_head(16, 3) for t in ("a", "b")}
    model = build_blocks(SmallResNet(8, 2, 2), heads, input_shape=(3, 8, 8), kernels=kernels, domain_bn=domain_bn)
    assert model.mtl_graph.params == _held(model)
