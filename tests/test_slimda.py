"""SlimDA: the width machinery (channel groups, slicing, FLOPs), its losses, the strategy and the budget search."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import automtl
from automtl.compiler.errors import CompileError
from automtl.model.width import SlimmableNet, sandwich
from automtl.model.width_groups import channel_groups, group_width


class Residual(nn.Module):
    """Stem, two residual blocks (the second with a projection), a concat branch, a depthwise conv, a pool."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.bn0 = nn.BatchNorm2d(8)
        self.a1 = nn.Conv2d(8, 8, 3, padding=1)
        self.abn = nn.BatchNorm2d(8)
        self.a2 = nn.Conv2d(8, 8, 3, padding=1)
        self.b1 = nn.Conv2d(8, 12, 3, padding=1, stride=2)
        self.b2 = nn.Conv2d(12, 12, 3, padding=1)
        self.proj = nn.Conv2d(8, 12, 1, stride=2)
        self.c1 = nn.Conv2d(12, 6, 1)
        self.c2 = nn.Conv2d(12, 4, 1)
        self.dw = nn.Conv2d(10, 10, 3, padding=1, groups=10)
        self.bn = nn.BatchNorm2d(10)
        self.last = nn.Conv2d(10, 16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn0(self.stem(x)))
        x = F.relu(x + self.a2(F.relu(self.abn(self.a1(x)))))
        x = F.relu(self.proj(x) + self.b2(F.relu(self.b1(x))))
        x = torch.cat([self.c1(x), self.c2(x)], 1)
        x = F.relu(self.bn(self.dw(x)))
        return F.adaptive_avg_pool2d(F.relu(self.last(x)), 1).flatten(1)


def _bank(seed: int = 0) -> SlimmableNet:
    torch.manual_seed(seed)
    net = SlimmableNet(automtl.compile(Residual(), (1, 8, 8)))
    for m in net.modules():  # non-trivial BN statistics, so eval mode slices them too
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(m.weight, 0.5, 1.5)
    return net.eval()


def test_tied_channel_groups_on_a_residual_network() -> None:
    plan = channel_groups(automtl.compile(Residual(), (1, 8, 8)))
    groups = plan.groups
    # the stem's channels are tied to a2's through the first residual add; b2's to the projection's
    stem = plan.layout["stem"][0][0]
    assert plan.layout["a2"][0][0] == stem and plan.layout["add"][0][0] == stem
    assert plan.layout["proj"][0][0] == plan.layout["b2"][0][0] != stem
    # a1 and b1 are free; the concat lays c1 and c2 side by side; the depthwise conv keeps that layout
    assert plan.layout["a1"] == [("a1", 8)] and plan.layout["b1"] == [("b1", 12)]
    assert plan.layout["cat"] == [("c1", 6), ("c2", 4)] == plan.layout["dw"] == plan.layout["bn"]
    assert groups["x"].fixed is not None and "x" not in plan.thinnable
    assert set(plan.thinnable) == {stem, "a1", "b1", plan.layout["b2"][0][0], "c1", "c2", "last"}
    assert group_width(6, 0.25) == 2 and group_width(4, 0.25) == 1 and group_width(3, 0.01) == 1


def test_a_fixed_group_is_refused_by_name() -> None:
    net = _bank()
    with pytest.raises(CompileError, match="channel group 'x' may not be cut"):
        net.flops({"x": 0.5})
    with pytest.raises(CompileError, match="unknown channel group 'nope'"):
        net.flops({"nope": 0.5})


@pytest.mark.parametrize("config", ["half", "quarter", "mixed"])
def test_width_slicing_equals_a_freshly_built_thin_network(config: str) -> None:
    net = _bank()
    rng = random.Random(3)
    factors = {"half": net.uniform(0.5), "quarter": net.uniform(0.25),
               "mixed": net.random([0.25, 0.5, 0.75, 1.0], rng)}[config]
    x = torch.randn(5, 1, 8, 8)
    got = net(x, factors)
    thin = net.thin(factors)
    convs = [m for m in thin.modules() if isinstance(m, nn.Conv2d)]
    assert sum(c.out_channels for c in convs) < sum(m.out_channels for m in Residual().modules()
                                                  if isinstance(m, nn.Conv2d))
    assert got.shape == (5, len(net.out_index))
    assert torch.allclose(got, thin(x), atol=1e-5)
    full = net(x, net.full())  # and the full configuration is the backbone itself
    assert full.shape == (5, 16)


def test_flops_of_a_sliced_network_equal_the_compilers_count_of_the_thin_network() -> None:
    net = _bank()
    factors = net.random([0.25, 0.5, 1.0], random.Random(7))
    thin = net.thin_graph(factors)
    x = torch.randn(1, 1, 8, 8)
    with FlopCounterMode(display=False) as counter:  # counts the convolutions actually run, 2 per MAC
        net(x, factors)
    conv_flops = sum(n.flops for n in thin if n.kind in ("conv2d", "linear"))
    assert counter.get_total_flops() == conv_flops
    assert net.flops(factors) == thin.flops < net.flops(net.full())
    assert net.flops(net.uniform(0.25)) < net.flops(net.uniform(0.5)) < net.flops(net.full())


def test_sandwich_rule_samples_largest_and_smallest_every_step() -> None:
    net = _bank()
    rng = random.Random(0)
    widths = [0.25, 0.5, 0.75, 1.0]
    seen = set()
    for _ in range(20):
        batch = sandwich(net, widths, 4, rng)
        assert len(batch) == 4 and batch[0] == net.full() and batch[1] == net.uniform(0.25)
        seen.update(tuple(sorted(b.items())) for b in batch[2:])
    assert len(seen) > 10  # the others vary
    with pytest.raises(ValueError, match="m must be >= 2"):
        sandwich(net, widths, 1, rng)


def test_calibration_recomputes_the_statistics_of_the_kept_channels() -> None:
    net = _bank()
    factors = net.uniform(0.5)
    xs = [torch.randn(16, 1, 8, 8) for _ in range(3)]
    assert net.calibrate(factors, xs) == 3
    # after calibration, eval mode on the whole data equals train-mode batch statistics on all of it
    bn = net.slim["bn0"]
    k = len(bn.idx_out)
    stem_out = [F.conv2d(x, net.slim["stem"].op.weight[:k], net.slim["stem"].op.bias[:k], padding=1) for x in xs]
    mean = torch.stack([o.mean((0, 2, 3)) for o in stem_out]).mean(0)
    assert torch.allclose(bn.op.running_mean[:k], mean, atol=1e-5)


# --- losses ------------------------------------------------------------------------------------------
def test_seed_sharpening_and_distillation_by_hand() -> None:
    from automtl.search.slimda_losses import seed_loss, sharpen

    p = torch.tensor([[0.5, 0.3, 0.2]])
    # T = 0.5 squares the probabilities: 0.25, 0.09, 0.04 over 0.38
    assert torch.allclose(sharpen(p, 0.5), torch.tensor([[0.25, 0.09, 0.04]]) / 0.38)
    assert torch.allclose(sharpen(p, 1.0), p)
    teachers = [torch.log(torch.tensor([[0.6, 0.3, 0.1]])), torch.log(torch.tensor([[0.2, 0.5, 0.3]]))]
    students = [torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[0.0, 2.0, 0.0]])]
    # ensemble (0.4, 0.4, 0.2); sharpened at T=0.5: (0.16, 0.16, 0.04) / 0.36
    q = torch.tensor([0.16, 0.16, 0.04]) / 0.36
    hand = []
    for s in ([1.0, 0.0, 0.0], [0.0, 2.0, 0.0]):
        z = torch.tensor(s)
        logp = z - torch.log(torch.exp(z).sum())
        hand.append(-(q * logp).sum())
    got = seed_loss(students, teachers, 0.5)
    assert torch.allclose(got, torch.stack(hand).mean())
    students[0].requires_grad_(True)
    seed_loss(students, teachers, 0.5).backward()
    assert students[0].grad is not None  # the students learn; the teachers are constants


def test_symnet_losses_by_hand() -> None:
    from automtl.search.slimda_losses import confusion_weight, symnet_losses

    s, t = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    y = torch.tensor([0])
    out = symnet_losses(s, t, y, t, s)  # the target batch is the source one with Cs and Ct swapped
    e = torch.exp(torch.tensor(1.0))
    z = 2 * e + 2  # softmax over [1, 0, 0, 1] and over [0, 1, 1, 0]
    assert torch.allclose(out["task_s"], -torch.log(e / (e + 1)))
    assert torch.allclose(out["task_t"], -torch.log(1 / (e + 1)))
    # source mass on the Cs half and target mass on the Ct half are both (e + 1) / z
    assert torch.allclose(out["domain"], -2 * torch.log((e + 1) / z))
    assert torch.allclose(out["category"], -0.5 * (torch.log(e / z) + torch.log(1 / z)))
    assert torch.allclose(out["domain_confusion"], -torch.log((e + 1) / z))
    q = torch.tensor([(1 + e) / z, (e + 1) / z])
    assert torch.allclose(out["entropy"], -(q * q.log()).sum())
    assert confusion_weight(0.0) == 0.0 and 0.99 < confusion_weight(1.0) < 1.0


def test_spearman() -> None:
    from automtl.search.slimda_losses import spearman

    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486832980505138)
