"""Helpers of the derivation tests: heads, perturbed supermodels, architectures, and the check that a derived
model computes what its supermodel computes under the same architecture (eval and train mode)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from automtl import build
from automtl.model.architecture import Architecture
from automtl.model.derive import MultiTaskModel
from automtl.model.mixing import MixedOp, TaskBatchNorm
from automtl.model.supermodel import SuperModel

EVAL_TOL = 1e-5  # float32, running statistics
TRAIN_TOL = 1e-8  # float64: train-mode BN on small deep feature maps amplifies float32 rounding past 1e-5


def make_heads(channels: int, tasks: int, spatial: bool = True) -> dict[str, nn.Module]:
    """Traceable heads of different kinds; on a flat trunk output plain linear maps."""
    if not spatial:
        return {f"t{i}": nn.Sequential(nn.Linear(channels, 2 + i)) for i in range(tasks)}
    kinds: list[nn.Module] = [
        nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 3)),
        nn.Sequential(nn.Conv2d(channels, 2, 1)),
        nn.Sequential(nn.Conv2d(channels, 4, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()),
    ]
    return {name: kinds[i] for i, name in enumerate(["cls", "seg", "depth"][:tasks])}


@torch.no_grad()
def perturb(model: SuperModel, seed: int = 0) -> SuperModel:
    """End warm-up (``fill_specific``), then make every branch's weights differ from the shared ones."""
    gen = torch.Generator().manual_seed(seed)

    def noise(t: torch.Tensor, scale: float) -> torch.Tensor:
        return torch.randn(t.shape, generator=gen, dtype=t.dtype) * scale

    model.materialize()
    model.fill_specific()
    for m in model.trunk.modules():
        if isinstance(m, MixedOp):
            m.specific_weight.add_(noise(m.specific_weight, 0.05))
            if m.specific_bias is not None:
                m.specific_bias.add_(noise(m.specific_bias, 0.05))
        elif isinstance(m, TaskBatchNorm):
            for b in m.branches:
                for what, scale in (("weight", 0.2), ("bias", 0.1), ("running_mean", 0.1)):
                    if what in ("weight", "bias") and not m.affine:
                        continue
                    m._bank(b, what).add_(noise(m._bank(b, what), scale))
                m._bank(b, "running_var").mul_(torch.rand(m._bank(b, "running_var").shape, generator=gen) + 0.5)
    return model


def random_architecture(model: SuperModel, seed: int) -> Architecture:
    """Each task picks a random branch among the ones each choice offers."""
    gen = torch.Generator().manual_seed(seed)
    pick = torch.zeros(len(model.task_names), max(len(model.choices), 1), dtype=torch.long)
    for c in model.choices:
        pick[:, c.index] = torch.randint(len(c.branches), (len(model.task_names),), generator=gen)
    arch = model.architecture_from_indices(pick)
    arch.check(model)
    return arch


def architecture(model: SuperModel, kind: str, seed: int = 0) -> Architecture:
    return random_architecture(model, seed) if kind == "random" else model.uniform_architecture(kind)


def assert_same(model: SuperModel, derived: MultiTaskModel, x: Any, arch: Architecture, tol: float) -> None:
    """Derived outputs == supermodel mode="fixed" outputs, task by task (relative to the output's scale)."""
    with torch.no_grad():
        want = model(x, mode="fixed", architecture=arch)
        xs = [x[t] for t in model.task_names] if isinstance(x, dict) else [x]
        got = derived.as_dict(*xs)
    assert list(got) == list(want) == model.task_names
    for task in model.task_names:
        assert got[task].shape == want[task].shape, task
        err = ((got[task] - want[task]).abs().max() / want[task].abs().max().clamp_min(1e-12)).item()
        assert err <= tol, f"task {task}: derived differs from the supermodel by {err:.3g} (relative)"


def check_both_modes(model: SuperModel, derived: MultiTaskModel, x: Any, arch: Architecture) -> None:
    """Eval (float32) then train (float64); leaves both models in float32 eval mode."""
    model.eval()
    derived.eval()
    assert_same(model, derived, x, arch, EVAL_TOL)
    x64 = {k: v.double() for k, v in x.items()} if isinstance(x, dict) else x.double()
    model.double().train()
    derived.double().train()
    try:
        assert_same(model, derived, x64, arch, TRAIN_TOL)
    finally:
        model.float().eval()
        derived.float().eval()


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def count(graph: Any, kind: str) -> int:
    return sum(n.kind == kind for n in graph)


TINY_CONVS, TINY_BNS = 4, 4  # conv1, conv2, block.conv1, block.conv2 (the block's convs have identity skips)


def tiny(bn: str = "follow", tasks: int = 3, heads: dict[str, nn.Module] | None = None,
         check_heads: bool = True) -> SuperModel:
    torch.manual_seed(0)
    heads = heads or make_heads(10, tasks, spatial=False)
    return perturb(build("tiny_cnn", heads, bn=bn, check_heads=check_heads))


def deep_residual(blocks: int) -> nn.Module:
    """``x = x + conv(x)`` repeated: the chain whose value keys must stay flat in derive."""

    class Deep(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.convs = nn.ModuleList(nn.Conv2d(2, 2, 3, padding=1) for _ in range(blocks))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for conv in self.convs:
                x = x + conv(x)
            return x

    return Deep()
