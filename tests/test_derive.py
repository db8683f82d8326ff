"""Derivation (DESIGN §6): a fixed architecture -> a compact multi-task model.

The derived model must compute exactly what the supermodel computes in ``mode="fixed"`` under the
same architecture (eval and train mode), hold each distinct value's operator once (value
numbering), keep only the weights some task uses, report its costs against T separate
backbones, and survive save / load without the supermodel.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from automtl import backbones, build
from automtl.model.architecture import Architecture
from automtl.model.derive import MultiTaskModel, derive
from automtl.model.mixing import MixedOp, TaskBatchNorm
from automtl.model.supermodel import SuperModel

EVAL_TOL = 1e-5  # float32, running statistics
TRAIN_TOL = 1e-8  # float64: train-mode BN on small deep feature maps amplifies float32 rounding past 1e-5


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Small models: one thread is as fast and does not suffer when the machine is busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- helpers -----------------------------------------------------------------------------------
# backbone -> (trunk_output, its channels, input size): cut before any dropout, so train mode is
# deterministic.
ZOO: dict[str, tuple[str | None, int, int]] = {
    "resnet18": ("layer4", 512, 32),
    "resnet34": ("layer4", 512, 32),
    "resnet50": ("layer4", 2048, 32),
    "mobilenet_v2": ("features", 1280, 32),
    "mnasnet": ("layers", 1280, 32),
    "deeplab_resnet34": (None, 512, 32),
    "tiny_cnn": (None, 10, 32),  # the whole net: its classifier (a shared linear) has no dropout
}
HEAVY = {
    "resnet34": ("follow", ("shared", "skip")),
    "resnet50": ("specific", ("specific", "random")),
    "deeplab_resnet34": ("follow", ("random", "specific")),
}


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


# --- derived == supermodel over the zoo ----------------------------------------------------------
def _zoo_cases() -> list[Any]:
    cases = []
    for name in backbones.names():
        if name in HEAVY:  # deep nets: one case each; between them both bn modes and every architecture kind
            bn, kinds = HEAVY[name]
            cases.append(pytest.param(name, bn, kinds, id=f"{name}-{bn}"))
        else:
            for bn in ("specific", "follow"):
                cases.append(pytest.param(name, bn, ("shared", "specific", "skip", "random"), id=f"{name}-{bn}"))
    return cases


@pytest.mark.parametrize(("name", "bn", "kinds"), _zoo_cases())
def test_zoo_derived_equals_supermodel(name: str, bn: str, kinds: tuple[str, ...]) -> None:
    cut, channels, size = ZOO[name]
    tasks = 3 if name == "tiny_cnn" else 2
    torch.manual_seed(0)
    heads = make_heads(channels, tasks, spatial=name != "tiny_cnn")
    model = perturb(build(name, heads, trunk_output=cut, bn=bn, input_shape=(3, size, size)))
    x = torch.randn(4, 3, size, size)  # at 32x32 the last stage is 1x1: 4 values per channel for train-mode BN
    super_params = n_params(model)
    model.eval()
    derived: list[tuple[Architecture, MultiTaskModel]] = []
    for i, kind in enumerate(kinds):
        arch = architecture(model, kind, seed=i)
        d = model.derive(arch).eval()
        assert_same(model, d, x, arch, EVAL_TOL)
        assert n_params(d) == d.report()["total"]["params"] < super_params  # only the weights some task uses
        derived.append((arch, d))
    model.double().train()  # converted once for all architectures: the models are large
    for arch, d in derived:
        assert_same(model, d.double().train(), x.double(), arch, TRAIN_TOL)


# --- value numbering -------------------------------------------------------------------------------
TINY_CONVS, TINY_BNS = 4, 4  # conv1, conv2, block.conv1, block.conv2 (the block's convs have identity skips)


def tiny(bn: str = "follow", tasks: int = 3, heads: dict[str, nn.Module] | None = None,
         check_heads: bool = True) -> SuperModel:
    torch.manual_seed(0)
    heads = heads or make_heads(10, tasks, spatial=False)
    return perturb(build("tiny_cnn", heads, bn=bn, check_heads=check_heads))


def test_all_shared_follow_holds_the_trunk_once() -> None:
    model = tiny("follow")
    derived = model.derive(model.uniform_architecture("shared"))
    backbone = model.graph
    assert count(derived.graph, "conv2d") == count(backbone, "conv2d") == TINY_CONVS
    assert count(derived.graph, "batch_norm") == count(backbone, "batch_norm") == TINY_BNS
    assert count(derived.graph, "linear") == 1 + 3  # the classifier once, one per head
    heads = n_params(model.heads)
    assert derived.report()["total"]["params"] == backbone.params + heads == n_params(derived)
    check_both_modes(model, derived, torch.randn(2, 3, 32, 32), model.uniform_architecture("shared"))


def test_resnet18_all_shared_follow_holds_the_trunk_once() -> None:
    torch.manual_seed(0)
    heads = make_heads(512, 3)
    model = build("resnet18", heads, trunk_output="layer4", bn="follow", input_shape=(3, 32, 32))
    derived = model.derive(model.uniform_architecture("shared"))
    head_convs = 2
    assert count(model.graph, "conv2d") == 20
    assert count(derived.graph, "conv2d") == 20 + head_convs
    assert derived.report()["total"]["params"] == model.graph.params + n_params(model.heads)
    specific = model.derive(model.uniform_architecture("specific"))
    assert count(specific.graph, "conv2d") == 3 * 20 + head_convs


@pytest.mark.parametrize("bn", ["specific", "follow"])
def test_all_specific_holds_t_copies(bn: str) -> None:
    model = tiny(bn)
    derived = model.derive(model.uniform_architecture("specific"))
    assert count(derived.graph, "conv2d") == 3 * TINY_CONVS
    assert count(derived.graph, "batch_norm") == 3 * TINY_BNS
    assert derived.report()["sharing"]["conv2"] == ["t0", "t1", "t2"]


def test_bn_specific_forks_after_a_shared_conv() -> None:
    """bn="specific": every task normalises with its own BN, so values diverge right after conv1."""
    model = tiny("specific")
    derived = model.derive(model.uniform_architecture("shared"))
    sources = [n.attrs["derived"]["source"] for n in derived.graph if n.kind == "conv2d"]
    assert sources.count("conv1") == 1  # conv1 reads the shared input: one copy
    assert sources.count("conv2") == 3  # conv2 reads per-task values: one copy each, weights tied
    assert count(derived.graph, "batch_norm") == 3 * TINY_BNS
    bn_params = sum(n.params for n in model.graph if n.kind == "batch_norm")
    assert n_params(derived) == model.graph.params + 2 * bn_params + n_params(model.heads)


def test_identity_skip_adds_no_operator() -> None:
    model = tiny("follow")
    specific, skipped = model.uniform_architecture("shared"), model.uniform_architecture("shared")
    for task in model.task_names:
        specific.choices["block.conv1"][task] = "specific"
        skipped.choices["block.conv1"][task] = "skip"
    # both fork at block.conv1 (its BN follows it: per-task banks), but the skip adds no operator
    with_conv, without = model.derive(specific), model.derive(skipped)
    assert len(without.graph) == len(with_conv.graph) - 3
    assert count(without.graph, "conv2d") == count(with_conv.graph, "conv2d") - 3 == 2 + 3  # stem + 3 block.conv2
    assert not any(n.attrs.get("derived", {}).get("source") == "block.conv1" for n in without.graph)
    assert [without.graph[f"block.bn1[{t}]"].inputs for t in model.task_names] == [["relu2"]] * 3
    check_both_modes(model, without, torch.randn(2, 3, 32, 32), skipped)
    # all-skip: the identity skips vanish, the projections (conv1, conv2) stay as 1x1 convs per task
    all_skip = model.derive(model.uniform_architecture("skip"))
    convs = [n for n in all_skip.graph if n.kind == "conv2d"]
    assert len(convs) == 3 * 2 and all(tuple(n.attrs["kernel_size"]) == (1, 1) for n in convs)
    assert {n.attrs["derived"]["source"] for n in convs} == {"conv1", "conv2"}


def test_tasks_fork_where_their_choices_diverge() -> None:
    """Two tasks share up to the first node where their branches differ, and not after."""
    model = tiny("follow", tasks=2)
    arch = model.uniform_architecture("shared")
    arch.choices["block.conv2"]["t1"] = "specific"
    derived = model.derive(arch)
    sharing = derived.report()["sharing"]
    assert sharing["block.conv1"] == ["t0+t1"]
    assert sharing["block.conv2"] == ["t0", "t1"]
    assert sharing["add"] == ["t0", "t1"] and sharing["fc"] == ["t0", "t1"]
    assert count(derived.graph, "conv2d") == TINY_CONVS + 1
    # the forked classifier copies share one weight
    fcs = [n for n in derived.graph if n.attrs.get("derived", {}).get("source") == "fc"]
    assert len(fcs) == 2
    assert n_params(derived) == model.graph.params + 2304 + 32 + n_params(model.heads)
    check_both_modes(model, derived, torch.randn(2, 3, 32, 32), arch)


def _deep_residual(blocks: int) -> nn.Module:
    class Deep(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.convs = nn.ModuleList(nn.Conv2d(2, 2, 3, padding=1) for _ in range(blocks))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for conv in self.convs:
                x = x + conv(x)
            return x

    return Deep()


def test_value_numbering_is_linear_in_depth() -> None:
    """Value keys of a deep residual chain must not nest (hashing nested keys doubles per block)."""
    blocks = 22  # nested keys: about 20 s here and twice that per extra block; flat keys: milliseconds
    model = build(_deep_residual(blocks), {"a": nn.Identity(), "b": nn.Identity()}, input_shape=(2, 4, 4), bn="follow")
    model.materialize()
    arch = random_architecture(model, seed=0)
    start = time.perf_counter()
    derived = model.derive(arch)
    shared = model.derive(model.uniform_architecture("shared"))
    assert time.perf_counter() - start < 5.0
    assert count(shared.graph, "conv2d") == blocks
    model.eval()
    assert_same(model, derived, torch.randn(2, 2, 4, 4), arch, EVAL_TOL)


# --- reports ---------------------------------------------------------------------------------------
def test_report_by_hand_on_tiny_cnn() -> None:
    """Params, FLOPs, baseline, ratios and sharing of a mixed architecture, computed by hand."""
    heads = {"a": nn.Sequential(nn.Linear(10, 3)), "b": nn.Sequential(nn.Linear(10, 2))}
    model = tiny("follow", heads=heads)
    arch = model.uniform_architecture("shared")
    arch.choices["block.conv1"].update(a="specific", b="shared")
    arch.choices["block.conv2"].update(a="skip", b="specific")  # an identity skip for a
    derived = model.derive(arch)
    report = derived.report()
    # tiny_cnn at 1x3x32x32: per-operator params and FLOPs (a multiply-add counts as 2)
    P = {"conv1": 216, "bn1": 16, "conv2": 1152, "bn2": 32, "block.conv1": 2304, "block.bn1": 32,
         "block.conv2": 2304, "block.bn2": 32, "fc": 170}
    F = {"conv1": 442_368, "bn1": 16_384, "relu1": 8192, "conv2": 589_824, "bn2": 8192, "relu2": 4096,
         "block.conv1": 1_179_648, "block.bn1": 8192, "block.relu1": 4096, "block.conv2": 1_179_648,
         "block.bn2": 8192, "add": 4096, "block.relu2": 4096, "avgpool": 4096, "flatten": 0, "fc": 320}
    assert model.graph.params == sum(P.values()) == 6258
    assert model.graph.flops == sum(F.values()) == 3_461_440
    head_p, head_f = {"a": 33, "b": 22}, {"a": 2 * 10 * 3, "b": 2 * 10 * 2}
    stem_p = P["conv1"] + P["bn1"] + P["conv2"] + P["bn2"]
    stem_f = sum(F[k] for k in ("conv1", "bn1", "relu1", "conv2", "bn2", "relu2"))
    tail_f = sum(F[k] for k in ("block.bn1", "block.relu1", "block.bn2", "add", "block.relu2", "avgpool", "fc"))
    # a: block.conv1 specific, block.conv2 skipped (its BN follows: the per-task skip bank)
    # b: block.conv1 shared, block.conv2 specific
    per_task = {
        "a": {"params": stem_p + P["block.conv1"] + 2 * 32 + P["fc"] + head_p["a"],
              "flops": stem_f + F["block.conv1"] + tail_f + head_f["a"]},
        "b": {"params": stem_p + P["block.conv1"] + P["block.conv2"] + 2 * 32 + P["fc"] + head_p["b"],
              "flops": stem_f + F["block.conv1"] + F["block.conv2"] + tail_f + head_f["b"]},
    }
    assert report["tasks"] == ["a", "b"]
    assert report["per_task"] == per_task
    total_p = stem_p + 2 * P["block.conv1"] + P["block.conv2"] + 4 * 32 + P["fc"] + sum(head_p.values())
    total_f = stem_f + 2 * F["block.conv1"] + F["block.conv2"] + 2 * tail_f + sum(head_f.values())
    assert report["total"] == {"params": total_p, "flops": total_f}
    assert total_p == n_params(derived)
    separate = {"params": 2 * 6258 + 55, "flops": 2 * 3_461_440 + 100}
    assert report["separate"] == separate
    assert report["params_ratio"] == pytest.approx(total_p / separate["params"])
    assert report["flops_ratio"] == pytest.approx(total_f / separate["flops"])
    assert report["shared_fraction"] == pytest.approx(5 / 8)  # conv1, conv2 for both; block.conv1 for b
    sharing = report["sharing"]
    assert sharing["conv1"] == sharing["relu2"] == ["a+b"]
    assert sharing["block.conv1"] == ["a", "b"] and sharing["block.conv2"] == ["b"]
    assert sharing["block.bn2"] == ["a", "b"] and sharing["fc"] == ["a", "b"]


def test_all_shared_report_is_one_backbone() -> None:
    model = tiny("follow", tasks=2, heads={"a": nn.Sequential(nn.Linear(10, 3)), "b": nn.Sequential(nn.Linear(10, 2))})
    report = model.derive(model.uniform_architecture("shared")).report()
    assert report["total"] == {"params": 6258 + 55, "flops": 3_461_440 + 100}
    assert report["per_task"] == {"a": {"params": 6258 + 33, "flops": 3_461_440 + 60},
                                  "b": {"params": 6258 + 22, "flops": 3_461_440 + 40}}
    assert report["flops_ratio"] == pytest.approx((3_461_440 + 100) / (2 * 3_461_440 + 100))
    assert set(report["sharing"]) >= {"conv1", "fc", "head.a.0", "head.b.0"}
    assert report["shared_fraction"] == 1.0


def test_code_is_readable() -> None:
    model = tiny("follow", tasks=2)
    arch = model.uniform_architecture("shared")
    arch.choices["block.conv2"]["t1"] = "specific"
    code = model.derive(arch).code
    print(code)
    assert "gates" not in code and "mtl" not in code and "tile_tasks" not in code
    assert "self.conv1(x)" in code and "self.block_conv2_t1_(" in code and "torch.nn.functional.relu(" in code
    assert "return (" in code
    assert len(code.splitlines()) < 40


# --- persistence -----------------------------------------------------------------------------------
def test_save_load_without_the_supermodel(tmp_path: Path) -> None:
    model = tiny("follow")
    arch = random_architecture(model, seed=3)
    derived = model.derive(arch).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = derived(x)
    report = derived.report()
    path = tmp_path / "mt.pt"
    derived.save(path)
    del model, derived
    gc.collect()
    loaded = MultiTaskModel.load(path).eval()
    assert loaded.task_names == ["t0", "t1", "t2"] and loaded.architecture.to_dict() == arch.to_dict()
    with torch.no_grad():
        got = loaded(x)
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)
    assert loaded.report() == report
    assert loaded.code == loaded.net.code and "gates" not in loaded.code
    (tmp_path / "bad.pt").write_bytes(b"")
    torch.save({"format": "something else"}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="not an automtl multi-task model"):
        MultiTaskModel.load(tmp_path / "bad.pt")


# --- multi-domain ------------------------------------------------------------------------------------
@pytest.mark.parametrize("bn", ["specific", "follow"])
@pytest.mark.parametrize("kind", ["shared", "random"])
def test_multi_domain(bn: str, kind: str) -> None:
    heads = make_heads(16, 2)
    torch.manual_seed(0)
    model = perturb(build("tiny_cnn", heads, trunk_output="block.relu2", bn=bn))
    arch = architecture(model, kind, seed=5)
    derived = derive(model, arch, multi_domain=True)
    inputs = [n.name for n in derived.graph if n.kind == "input"]
    assert inputs == ["x_cls", "x_seg"]
    xs = {t: torch.randn(2, 3, 32, 32) for t in model.task_names}
    check_both_modes(model, derived, xs, arch)
    if kind == "shared":  # nothing is computed once, but every operator's weights are
        assert count(derived.graph, "conv2d") == 2 * TINY_CONVS + 1
        bn_params = sum(n.params for n in model.graph if n.kind == "batch_norm")
        extra = bn_params if bn == "specific" else 0
        assert n_params(derived) == model.graph.params + extra + n_params(model.heads)


# --- heads -----------------------------------------------------------------------------------------
class Untraceable(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc = nn.Linear(channels, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x)
        if y.sum() > 0:
            return y
        return -y


def test_untraceable_head_stays_one_call(tmp_path: Path) -> None:
    heads = {"plain": nn.Sequential(nn.Linear(10, 3), nn.ReLU()), "odd": Untraceable(10)}
    model = tiny("follow", heads=heads)
    arch = random_architecture(model, seed=1)
    derived = model.derive(arch)
    odd = [n for n in derived.graph if n.name.startswith("head.odd")]
    assert [(n.name, n.kind) for n in odd] == [("head.odd", "opaque")]
    plain = [n.kind for n in derived.graph if n.name.startswith("head.plain")]
    assert plain == ["linear", "relu"]  # a traceable head is inlined
    check_both_modes(model, derived, torch.randn(2, 3, 32, 32), arch)
    assert n_params(derived) == derived.report()["total"]["params"]
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        want = derived(x)
    derived.save(tmp_path / "m.pt")
    with torch.no_grad():
        got = MultiTaskModel.load(tmp_path / "m.pt").eval()(x)
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))


class LeafGroupNorm(nn.GroupNorm):
    """Not a registry module: kept as a leaf (``leaf_modules=``), it stays one opaque call."""


class WithGroupNorm(nn.Module):
    """A trunk operator outside the registry (a GroupNorm kept as a leaf): opaque, so always shared."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.gn = LeafGroupNorm(2, 8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.gn(self.conv1(x)))


def test_opaque_trunk_operator_keeps_one_module(tmp_path: Path) -> None:
    """Copies of an opaque operator on diverged values still share its one set of weights."""
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="opaque"):
        model = perturb(build(WithGroupNorm(), {"a": nn.Identity(), "b": nn.Identity()}, input_shape=(3, 8, 8),
                              leaf_modules=[LeafGroupNorm]))
    arch = model.uniform_architecture("specific")
    derived = model.derive(arch)
    assert [n.kind for n in derived.graph if n.attrs.get("derived", {}).get("source") == "gn"] == ["opaque", "opaque"]
    norms = {id(m) for m in derived.modules() if isinstance(m, nn.GroupNorm)}
    assert len(norms) == 1
    convs = 2 * (8 * 3 * 9 + 8) + 2 * (8 * 8 * 9 + 8)
    assert n_params(derived) == derived.report()["total"]["params"] == convs + 16
    check_both_modes(model, derived, torch.randn(2, 3, 8, 8), arch)
    derived.save(tmp_path / "gn.pt")
    loaded = MultiTaskModel.load(tmp_path / "gn.pt")
    assert len({id(m) for m in loaded.modules() if isinstance(m, nn.GroupNorm)}) == 1


class TwoOutputs(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc = nn.Linear(channels, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.fc(x)
        return y, y.relu()


def test_bare_leaf_and_multi_output_heads() -> None:
    """A bare nn.Linear head is inlined as a typed operator; a head with two outputs stays one call.

    (``build`` refuses a head that does not return one tensor, since no task can train it; a model built
    without that check still derives and runs exactly.)"""
    with pytest.raises(ValueError, match="the head of task 'pair' returns a tuple"):
        tiny("follow", heads={"bare": nn.Linear(10, 3), "pair": TwoOutputs(10)})
    model = tiny("follow", heads={"bare": nn.Linear(10, 3), "pair": TwoOutputs(10)}, check_heads=False)
    derived = model.derive(model.uniform_architecture("shared")).eval()
    assert [(n.name, n.kind) for n in derived.graph if n.name.startswith("head.")] == [
        ("head.bare.0", "linear"), ("head.pair", "opaque")]
    assert derived.report()["per_task"]["bare"]["flops"] == 3_461_440 + 2 * 10 * 3
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = model.eval()(x, mode="fixed", architecture=model.uniform_architecture("shared"))
        got = derived.as_dict(x)
    assert isinstance(got["pair"], tuple) and len(got["pair"]) == 2
    for a, b in [(got["bare"], want["bare"]), *zip(got["pair"], want["pair"], strict=True)]:
        torch.testing.assert_close(a, b, rtol=EVAL_TOL, atol=1e-6)
