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
from automtl.compiler.width import group_width
from automtl.compiler.width_plan import WidthPlan
from automtl.model.width import SlimmableNet, runtime_pin, sandwich


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
    plan = WidthPlan(automtl.compile(Residual(), (1, 8, 8)), keep_outputs=False, pin=runtime_pin)
    groups = plan.groups
    # the stem's channels are tied to a2's through the first residual add; b2's to the projection's
    stem = plan.layout("stem")[0][0]
    assert plan.layout("a2")[0][0] == stem and plan.layout("add")[0][0] == stem
    assert plan.layout("proj")[0][0] == plan.layout("b2")[0][0] != stem
    # a1 and b1 are free; the concat lays c1 and c2 side by side; the depthwise conv keeps that layout
    assert plan.layout("a1") == [("a1", 8)] and plan.layout("b1") == [("b1", 12)]
    assert plan.layout("cat") == [("c1", 6), ("c2", 4)] == plan.layout("dw") == plan.layout("bn")
    assert groups["x"].fixed and "x" not in plan.thinnable
    assert set(plan.thinnable) == {stem, "a1", "b1", plan.layout("b2")[0][0], "c1", "c2", "last"}
    assert group_width(6, 0.25) == 2 and group_width(4, 0.25) == 1 and group_width(3, 0.01) == 1
    assert group_width(48, 0.3, multiple=8) == 16


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


# --- the strategy ------------------------------------------------------------------------------------
def _tiny_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, padding=1, stride=2), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten())


def _searcher(method: str = "slimda", steps: int = 3, seed: int = 0, **kw):  # noqa: ANN202
    from torch.utils.data import Subset

    from automtl.model.width import build_slim_classifier
    from automtl.search.slimda import SlimDAConfig, SlimDASearcher
    from automtl.train.domain_shift import FontDigits, HandDigits
    from automtl.train.tasks import Classification

    torch.manual_seed(seed)
    data = (FontDigits(48, seed=1), Subset(HandDigits("adapt"), range(48)), Subset(HandDigits("test"), range(40)))
    model = build_slim_classifier(_tiny_net(), 10, input_shape=(1, 8, 8))
    cfg = SlimDAConfig(method=method, steps=steps, batch_size=8, eval_batch_size=16, quiet=True, seed=seed,
                       calibration_batches=2, budget_candidates=6, **kw)
    return SlimDASearcher(model, {"digit": Classification("digit", 10)}, data, cfg)


def test_the_strategy_by_name_and_from_a_config(tmp_path) -> None:  # noqa: ANN001
    from automtl.app.config import load_config
    from automtl.app.config.errors import ConfigError
    from automtl.search import get_strategy
    from automtl.search.slimda import SlimDAConfig, SlimDASearcher

    assert get_strategy("slimda").loop is SlimDASearcher and get_strategy("slimda").options is SlimDAConfig
    text = ("backbone: {name: tiny_cnn, input_shape: [1, 8, 16], trunk_output: block}\n"
            "tasks: {left: {kind: classification}}\ndata: {name: multi_digits, images: 8}\ndevice: cpu\n"
            "search:\n  strategy: slimda\n  widths: [1.0, 0.5, 0.125]\n  model_batch: 3\n  method: symnet\n")
    (tmp_path / "run.yaml").write_text(text)
    cfg = load_config(tmp_path / "run.yaml")
    assert isinstance(cfg.search, SlimDAConfig) and cfg.strategy == "slimda"
    assert cfg.search.widths == [0.125, 0.5, 1.0] and cfg.search.model_batch == 3 and cfg.search.method == "symnet"
    (tmp_path / "bad.yaml").write_text(text.replace("model_batch: 3", "model_batch: 1"))
    with pytest.raises(ConfigError, match="model_batch must be an int >= 2"):
        load_config(tmp_path / "bad.yaml")
    with pytest.raises(ValueError, match=r"SlimDAConfig.widths must be a non-empty list of fractions in \(0, 1\]"):
        SlimDAConfig(widths=[0.5, 1.5])


@pytest.mark.parametrize("method", ["slimda", "symnet", "source_only"])
def test_each_method_trains_its_heads_and_the_trunk(method: str) -> None:
    s = _searcher(method)
    heads = {h: s.model.heads[h].weight.detach().clone() for h in ("cs", "ct", "ca")}
    trunk = [p.detach().clone() for p in s.model.trunk.parameters()]
    assert s.run()
    rec = s.history["train"]
    assert len(rec) == 3 and all(r["total"] > 0 for r in rec)
    changed = {h: not torch.equal(heads[h], s.model.heads[h].weight) for h in heads}
    assert changed == {"cs": True, "ct": method != "source_only", "ca": method == "slimda"}
    assert any(not torch.equal(a, b) for a, b in zip(trunk, s.model.trunk.parameters(), strict=True))
    assert ("seed" in rec[-1]) == (method == "slimda") and ("domain" in rec[-1]) == (method != "source_only")
    assert s.model.deploy == {"slimda": "ca", "symnet": "ct", "source_only": "cs"}[method]
    assert 0.0 <= s.accuracy(s.model.trunk.full()) <= 1.0


def test_exact_resume(tmp_path, deterministic) -> None:  # noqa: ANN001
    from automtl.search.checkpoint import load

    straight = _searcher(steps=4)
    straight.run()
    first = _searcher(steps=4)
    assert not first.run(stop_after=2, checkpoint=tmp_path / "c.pt")
    second = _searcher(steps=4)
    second.load_state_dict(load(tmp_path / "c.pt"))
    assert second.run()
    for a, b in zip(straight.model.state_dict().values(), second.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert [r["total"] for r in straight.history["train"]] == [r["total"] for r in second.history["train"]]


def test_upem_ranks_a_damaged_network_below_the_anchor_and_an_intact_slice() -> None:
    s = _searcher(steps=20)
    s.run()
    trunk = s.model.trunk
    anchor = s.target_logits(trunk.full())
    assert s.upem(trunk.full(), anchor) == pytest.approx(0.0, abs=1e-9)
    intact = s.upem(trunk.uniform(0.75), anchor)
    with torch.no_grad():
        for p in trunk.parameters():
            p.add_(torch.randn_like(p) * 0.5 * p.abs().mean())
    damaged = s.upem(trunk.full(), anchor)
    assert damaged > intact > 0.0


def test_budget_search_and_derive_budget_from_the_cli(tmp_path, capsys) -> None:  # noqa: ANN001
    import json

    from automtl.app.cli import main
    from automtl.search.slimda_budget import load_bank

    s = _searcher(steps=2)
    s.run()
    found = s.search_budget(0.5)
    assert found["flops"] <= 0.5 * found["full_flops"] and len(found["candidates"]) >= 2
    assert found["upem"] == min(c["upem"] for c in found["candidates"])
    with pytest.raises(ValueError, match="the smallest network .* needs"):
        s.search_budget(0.001)
    path = s.save_bank(tmp_path / "run")
    assert path.name == "slimda.pt"
    assert main(["derive", str(tmp_path / "run"), "--budget", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "UPEM" in out and "latency" in out
    record = json.loads((tmp_path / "run" / "derived" / "slim-0.5.json").read_text())
    assert record["flops_ratio"] <= 0.5 and (tmp_path / "run" / "derived" / "slim-0.5.onnx").is_file()
    compact = torch.load(tmp_path / "run" / "derived" / "slim-0.5.pt", weights_only=False)
    bank, _, images = load_bank(path)
    bank.trunk.calibrate(record["widths"], images)
    x = images[0]
    assert torch.allclose(compact(x), bank(x)["digit"], atol=1e-5)  # the compact model is the bank's slice
    assert main(["derive", str(tmp_path / "run"), "--budget", "0.0001"]) == 2
    assert "the smallest network" in capsys.readouterr().err


def test_a_zoo_backbone_with_depthwise_and_residual_blocks_slices_exactly() -> None:
    net = SlimmableNet(automtl.compile("mobilenet_v2", (3, 32, 32))).eval()
    assert len(net.groups) > 10 and [g for g, grp in net.plan.groups.items() if grp.fixed] == ["x"]
    factors = net.random([0.25, 0.5, 1.0], random.Random(0))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(net(x, factors), net.thin(factors)(x), atol=1e-5)
    assert net.flops(factors) < net.flops(net.full())
    _agrees_with_the_compiler_width_pass(net, factors)


def _agrees_with_the_compiler_width_pass(net: SlimmableNet, factors: dict[str, float]) -> None:
    """The compiler's own width pass (compiler/width.py) finds the same cuttable groups and the same thin FLOPs."""
    from automtl.compiler import width as compiler_width

    theirs = compiler_width.channel_groups(net.graph, keep_outputs=False)
    assert sorted(net.groups) == sorted(g.name for g in theirs if not g.fixed)
    assert net.thin_graph(factors).flops == compiler_width.scale_widths(net.graph, factors, keep_outputs=False).flops


def test_groups_and_flops_agree_with_the_compiler_width_pass() -> None:
    net = _bank()
    for seed in range(3):
        _agrees_with_the_compiler_width_pass(net, net.random([0.25, 0.5, 0.75, 1.0], random.Random(seed)))


class Pinned(nn.Module):
    """A depthwise conv with a channel multiplier, a channel split (chunk) and a grouped conv."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 16, 3, padding=1, groups=8)  # two filters per input channel
        self.pw = nn.Conv2d(16, 12, 1)
        self.ca = nn.Conv2d(6, 6, 3, padding=1)
        self.grp = nn.Conv2d(12, 8, 1, groups=4)
        self.last = nn.Conv2d(8, 16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dw(F.relu(self.bn(self.stem(x))))
        a, b = self.pw(x).chunk(2, 1)
        x = self.grp(torch.cat([self.ca(a), b], 1))
        return F.adaptive_avg_pool2d(F.relu(self.last(x)), 1).flatten(1)


def test_the_bank_keeps_full_what_it_cannot_slice_at_run_time() -> None:
    from automtl.compiler import width as compiler_width

    torch.manual_seed(0)
    graph = automtl.compile(Pinned(), (1, 8, 8))
    net = SlimmableNet(graph).eval()
    # the compiler alone scales the split and the grouped conv (in multiples); the bank pins them, naming why
    theirs = {g.name: g for g in compiler_width.channel_groups(graph, keep_outputs=False)}
    assert not theirs["pw"].fixed and theirs["pw"].multiple % 2 == 0 and not theirs["ca"].fixed
    assert sorted(net.groups) == ["last", "stem"]
    assert "channel split" in net.plan.groups["pw"].fixed and "grouped convolution" in net.plan.groups["grp"].fixed
    with pytest.raises(CompileError, match="channel group 'pw' may not be cut: the channel split"):
        net.flops({"pw": 0.5})
    # the depthwise conv with a multiplier follows the stem's width at run time, and equals the thin network
    x = torch.randn(3, 1, 8, 8)
    for factors in ({"stem": 0.25, "last": 0.5}, {"stem": 0.5, "last": 1.0}, net.uniform(0.75)):
        thin = net.thin(factors)
        assert sum(m.out_channels for m in thin.modules() if isinstance(m, nn.Conv2d) and m.groups == m.in_channels
                   and m.groups > 1) == 2 * round(8 * factors["stem"])
        with torch.no_grad():
            assert torch.allclose(net(x, factors), thin(x), atol=1e-5)
        assert net.flops(factors) == compiler_width.scale_widths(graph, factors, keep_outputs=False).flops
        assert net.flops(factors) < net.flops(net.full())
