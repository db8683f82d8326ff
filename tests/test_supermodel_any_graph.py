"""The supermodel on any compiled graph: only activations are stacked per task, grouped choices are exact.

Patterns that broke it: a parameter read by a functional call (layer scale) was tiled like an
activation; a grouped or depthwise choice convolution reading a value shared by all tasks mixed
channels across the wrong groups (silently: the derived model is exact, the supermodel was not).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import automtl


class LayerScale(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.rand(c) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma.view(1, -1, 1, 1)


class FusedBNAct(nn.Module):
    """A BN-activation module written with ``F.batch_norm`` on its own parameters."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.rand(c) + 0.5)
        self.bias = nn.Parameter(torch.randn(c) * 0.1)
        self.register_buffer("running_mean", torch.randn(c) * 0.1)
        self.register_buffer("running_var", torch.rand(c) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, self.training, 0.1, 1e-5)
        return F.relu(x)


def stack(spec: list[tuple[str, int]], channels: int) -> nn.Sequential:
    """Layers from ``spec``: ("conv", groups), ("scale", 0), ("bn", 0)."""
    layers: list[nn.Module] = []
    for kind, groups in spec:
        if kind == "conv":
            layers.append(nn.Conv2d(channels, channels, 3, padding=1, groups=groups))
        elif kind == "scale":
            layers.append(LayerScale(channels))
        else:
            layers.append(FusedBNAct(channels))
    return nn.Sequential(*layers)


def perturb(model: automtl.SuperModel) -> automtl.SuperModel:
    """Fill the specific branches, then move every parameter so no two banks are equal."""
    model.materialize().fill_specific()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    return model.eval()


def check(net: nn.Module, tasks: int, batch: int = 2, seed: int = 0) -> None:
    net.eval()
    heads = {f"t{i}": nn.Identity() for i in range(tasks)}
    model = automtl.build(net, heads, input_shape=(4, 6, 6)).eval()
    x = torch.randn(batch, 4, 6, 6, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        want = net(x)
        out = model(x, architecture=model.uniform_architecture("shared"))
        for t in heads:
            torch.testing.assert_close(out[t], want, atol=1e-5, rtol=1e-5)
        model = perturb(model)
        gen = torch.Generator().manual_seed(seed)
        for _ in range(3):
            pick = torch.stack([torch.randint(0, len(c.options), (tasks,), generator=gen) for c in model.choices], 1)
            arch = model.architecture_from_indices(pick)
            fixed = model(x, architecture=arch)
            derived = model.derive(arch).eval().as_dict(x)
            for t in heads:
                torch.testing.assert_close(derived[t], fixed[t], atol=1e-4, rtol=1e-4)


def test_grouped_choice_on_a_shared_input_is_exact() -> None:
    check(stack([("conv", 2), ("conv", 4), ("conv", 1)], 4), tasks=2)


def test_layer_scale_parameter_is_not_stacked() -> None:
    net = stack([("conv", 1), ("scale", 0), ("conv", 1), ("scale", 0)], 4)
    for tasks in (2, 3):
        check(net, tasks=tasks)
    model = automtl.build(net, {"a": nn.Identity(), "b": nn.Identity()}, input_shape=(4, 6, 6))
    assert not any(n.kind == "tile_tasks" and "gamma" in n.name for n in model.mtl_graph)


def test_functional_batch_norm_module() -> None:
    check(stack([("conv", 1), ("bn", 0), ("conv", 2), ("bn", 0)], 4), tasks=3)


@settings(max_examples=12, deadline=None)
@given(
    spec=st.lists(st.tuples(st.sampled_from(["conv", "scale", "bn"]), st.sampled_from([1, 2, 4])), min_size=1,
                  max_size=5),
    tasks=st.integers(1, 5),
    batch=st.integers(1, 3),
)
def test_random_stacks_supermodel_equals_backbone_and_derive_equals_fixed(spec, tasks, batch) -> None:
    spec = [("conv", 1)] + spec  # at least one choice
    check(stack(spec, 4), tasks=tasks, batch=batch)
