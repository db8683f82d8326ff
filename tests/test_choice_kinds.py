"""Choice kinds: a new kind registered through the public registry works with no change to the core.

The toy kind gives each convolution four options: two block variants (each its own bank,
shared by whoever picks it), a zero block (identity) and a half-width variant of the first
block. The test registers it, builds a supermodel with it, takes a search step with each
policy, derives, and checks derive == the supermodel in fixed mode for every option.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import automtl
from automtl.compiler.ir import Node
from automtl.compiler.mtl import MTLOptions, Option
from automtl.compiler.ops import get as get_op
from automtl.model.architecture import Architecture
from automtl.model.choices import CHOICE_KINDS, ChoiceKind, Derived, register_choice_kind
from automtl.model.policies import POLICIES, MovingAverage, make_policy, reinforce_loss
from automtl.search.regularizers import CostModel, shared_columns, sharing_regularizer

OPTIONS = (Option("a", "block:a"), Option("b", "block:b"), Option("zero", None), Option("a_half", "block:a", 0.5))


class ToyBlocks(nn.Module):
    """Executes the toy options' mixture per task: ``Σ_k g[t, k] · option_k(x_t)`` (outputs mixed)."""

    def __init__(self, node: Node, in_shape: tuple[int, ...]) -> None:
        super().__init__()
        a = node.attrs
        self.index, self.tasks = a["index"], a["tasks"]
        self.conv = dict(stride=a["stride"], padding=a["padding"])
        shape = (a["out_channels"], a["in_channels"], *a["kernel_size"])
        self.weight_a = nn.Parameter(torch.randn(shape) * 0.2)
        self.weight_b = nn.Parameter(torch.randn(shape) * 0.2)
        half = torch.zeros(a["out_channels"])
        half[: a["out_channels"] // 2] = 1
        self.register_buffer("half_mask", half.view(-1, 1, 1, 1))

    def weights(self) -> list[torch.Tensor | None]:
        return [self.weight_a, self.weight_b, None, self.weight_a * self.half_mask]

    def forward(self, x: torch.Tensor, gates: torch.Tensor, shared_input: bool) -> torch.Tensor:
        T = self.tasks
        xs = [x] * T if shared_input else list(x.chunk(T))
        outs = []
        for t in range(T):
            y = 0
            for k, w in enumerate(self.weights()):
                val = xs[t] if w is None else F.conv2d(xs[t], w, **self.conv)
                y = y + gates[t, self.index, k] * val
            outs.append(y)
        return torch.cat(outs)


class Toy(ChoiceKind):
    name = "toy_blocks"

    def offer(self, node: Node, in_shape: tuple[int, ...], options: MTLOptions) -> tuple[Option, ...] | None:
        a = node.attrs
        same = node.kind == "conv2d" and a["in_channels"] == a["out_channels"] and tuple(in_shape) == node.shape
        return OPTIONS if same else None  # a zero block only where the identity fits

    def module(self, node: Node, in_shape: tuple[int, ...]) -> nn.Module:
        return ToyBlocks(node, in_shape)

    def cost(self, node: Node, in_shape: tuple[int, ...], option: Option) -> tuple[int, int]:
        if option.bank is None:
            return 0, 0
        plain = Node(node.name, "conv2d", node.inputs, {**node.attrs, "bias": False})  # the blocks have no bias
        base = get_op("conv2d")
        return base.params(plain, [in_shape]), base.flops(plain, [in_shape], node.shape)

    def is_identity(self, choice, option: Option) -> bool:  # noqa: ANN001
        return option.name == "zero"

    def derive(self, module: nn.Module, node: Node, option: Option, task: int) -> Derived | None:
        w = module.weights()[OPTIONS.index(option)]
        if w is None:
            return None
        attrs = {k: v for k, v in node.attrs.items()
                 if k in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups")}
        return Derived("conv2d", {**attrs, "bias": False}, {"weight": w.detach().clone()})


if "toy_blocks" not in CHOICE_KINDS:
    register_choice_kind(Toy())


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.c1 = nn.Conv2d(6, 6, 3, padding=1)
        self.c2 = nn.Conv2d(6, 6, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = torch.relu(self.c1(x))
        return self.pool(torch.relu(self.c2(x))).flatten(1)


def _model(policy: str = "gumbel") -> automtl.SuperModel:
    torch.manual_seed(0)
    heads = {"a": nn.Linear(6, 3), "b": nn.Linear(6, 2)}
    model = automtl.build(Net(), heads, input_shape=(3, 8, 8), choice="toy_blocks")
    if policy != "gumbel":
        model.policy = make_policy(policy, 2, model.choices)
    return model


def test_the_toy_kind_builds_through_the_public_registry() -> None:
    model = _model()
    assert [c.node for c in model.choices] == ["c1", "c2"]  # the stem changes channels: no zero block, no choice
    assert all(c.choice_kind == "toy_blocks" and c.branches == ("a", "b", "zero", "a_half") for c in model.choices)
    assert model.policy.logits.shape == (2, 2, 4)
    assert shared_columns(model.choices).tolist() == [-1, -1]  # no "shared" bank: the sharing prior stays out
    reg = sharing_regularizer(model.policy.probabilities(), [1, 2], 6.0, shared_columns(model.choices))
    assert float(reg.detach()) == 0.0


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_a_search_step_with_each_policy_then_derive_equals_fixed_mode(policy: str) -> None:
    model = _model(policy)
    x = torch.randn(4, 3, 8, 8)
    targets = {"a": torch.randint(0, 3, (4,)), "b": torch.randint(0, 2, (4,))}
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    before = model.policy.logits.detach().clone()
    if policy == "gumbel":
        out = model(x, mode="soft", tau=1.0)
        loss = sum(F.cross_entropy(out[t], targets[t]) for t in out)
        loss.backward()
    else:  # REINFORCE on a sampled path, weights trained along it
        pick = model.policy.sample(torch.Generator().manual_seed(1))
        out = model(x, gates=model.policy.one_hot(pick))
        losses = torch.stack([F.cross_entropy(out[t], targets[t]) for t in out])
        reward = -losses.detach()
        baseline = MovingAverage(2)
        baseline.update(torch.zeros(2))
        (losses.sum() + reinforce_loss(model.policy, pick, reward, baseline.value)).backward()
    assert model.policy.logits.grad is not None and model.policy.logits.grad.abs().sum() > 0
    blocks = [m for m in model.trunk.modules() if isinstance(m, ToyBlocks)]
    assert len(blocks) == 2 and all(m.weight_a.grad is not None for m in blocks)
    opt.step()
    assert not torch.equal(model.policy.logits.detach(), before)

    model.eval()
    for k in range(4):  # every option, then a mixed pick
        pick = torch.full((2, 2), k)
        _check_derive(model, model.architecture_from_indices(pick), x)
    _check_derive(model, model.architecture_from_indices(torch.tensor([[0, 2], [3, 1]])), x)


def _check_derive(model: automtl.SuperModel, arch: Architecture, x: torch.Tensor) -> None:
    want = model(x, mode="fixed", architecture=arch)
    derived = model.derive(arch)
    got = derived.as_dict(x)
    for t in want:
        assert torch.allclose(got[t], want[t], atol=1e-5), (arch.choices, t)
    report = derived.report()
    # picks of one bank by both tasks are one value: the block is computed once
    if all(len(set(per.values())) == 1 for per in arch.choices.values()):
        assert all(len(v) == 1 for v in report["sharing"].values() if v)


def test_cost_model_reads_option_banks() -> None:
    model = _model()
    cost = CostModel(model, "params")
    conv = 6 * 6 * 9
    pick = torch.tensor([[0, 2], [0, 1]])  # c1: both a (one bank); c2: zero for a, b for b
    got = cost.expected(F.one_hot(pick, 4).double())
    derived = model.derive(model.architecture_from_indices(pick)).report()
    assert float(got) == derived["total"]["params"]
    assert derived["total"]["params"] == (3 * 6 * 9 + 6) + 2 * conv + (6 * 3 + 3) + (6 * 2 + 2)


def test_old_architecture_files_still_load(tmp_path: Path) -> None:
    model = automtl.build(Net(), {"a": nn.Linear(6, 3)}, input_shape=(3, 8, 8))
    data = model.architecture().to_dict()
    del data["options"]["choice"]  # as written before choice kinds existed
    path = tmp_path / "old.json"
    path.write_text(json.dumps(data))
    arch = Architecture.load(path)
    arch.check(model)
    assert arch.options["choice"] == "branches"


def test_unknown_choice_kind_is_named() -> None:
    with pytest.raises(ValueError, match="unknown choice kind .nope.; known: .*branches"):
        automtl.build(Net(), {"a": nn.Linear(6, 3)}, input_shape=(3, 8, 8), choice="nope")


def test_cost_model_baseline_counts_the_heads_flops() -> None:
    """The budget's baseline is the derived report's: T backbones plus every head's FLOPs."""
    model = automtl.build(Net(), {"a": nn.Linear(6, 3), "b": nn.Sequential(nn.Linear(6, 4), nn.ReLU())},
                          input_shape=(3, 8, 8))
    report = model.derive(model.uniform_architecture("shared")).report()
    heads = report["separate"]["flops"] - 2 * model.graph.flops
    assert heads > 0
    assert CostModel(model, "flops").baseline() == report["separate"]
