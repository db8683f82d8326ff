"""The fast supermodel (weights mixed, tasks batched) equals the naive reference (outputs mixed, one
task at a time, every branch its own call): outputs and the gradients of every parameter and of
the policy logits, in every mode, for every zoo backbone.

Everything runs in float64 so the tolerance (relative 1e-5) separates a real disagreement from
rounding: at 32x32 input the deep nets' last batch norms see only 2 values per channel, where
float32 rounding alone reaches 1e-3 in train mode.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from derive_helpers import random_architecture
from naive import naive_forward
from torch import nn

from automtl import backbones
from automtl.model.mixing import MixedOp, TaskBatchNorm
from automtl.model.supermodel import SuperModel, build

DTYPE = torch.float64
RTOL = 1e-5
MODES = ("soft", "hard", "fixed", "warmup")
TASKS = (1, 2, 3, 5)
BATCH = 2


class Toy(nn.Module):
    """Every operator form the rewrite distinguishes, in a few channels.

    A batch norm on the input (a shared value under ``bn="follow"``) that a later concat joins to a
    per-task one (a ``tile_tasks``); biased convolutions, a grouped and a depthwise conv (identity and
    projection skips with groups), a dilated conv, a 3x3 conv with padding 0 (no skip branch), 1x1
    convs, a residual add, pooling, and searchable linear layers (projection and identity skips)
    with a BN1d.
    """

    def __init__(self) -> None:
        super().__init__()
        self.b0 = nn.BatchNorm2d(3)
        self.c1 = nn.Conv2d(3, 8, 3, padding=1, bias=True)
        self.b1 = nn.BatchNorm2d(8)
        self.mix = nn.Conv2d(11, 8, 1, bias=False)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2, bias=True)
        self.b2 = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8, bias=False)
        self.b3 = nn.BatchNorm2d(8)
        self.dil = nn.Conv2d(8, 12, 3, padding=2, dilation=2, bias=False)
        self.b4 = nn.BatchNorm2d(12)
        self.valid = nn.Conv2d(12, 12, 3, padding=0, bias=True)
        self.pw = nn.Conv2d(12, 6, 1, bias=False)
        self.b5 = nn.BatchNorm2d(6)
        self.fc1 = nn.Linear(6, 10)
        self.bn1d = nn.BatchNorm1d(10)
        self.fc2 = nn.Linear(10, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x0 = self.b0(x)
        x = F.relu(self.b1(self.c1(x0)))
        x = self.mix(torch.cat([x, F.relu(x0)], 1))
        x = F.relu(self.b2(self.grouped(x)) + x)
        x = F.relu(self.b3(self.dw(x)))
        x = F.relu(self.b4(self.dil(x)))
        x = F.max_pool2d(self.valid(x), 2)
        x = F.relu(self.b5(self.pw(x)))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.fc2(F.relu(self.bn1d(self.fc1(x))))


class MLP(nn.Module):
    """Linear layers only: the first reads the shared input, a 4-d value (N, 1, 4, features)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc0 = nn.Linear(6, 6)
        self.fc1 = nn.Linear(24, 16)
        self.bn = nn.BatchNorm1d(16)
        self.fc2 = nn.Linear(16, 16, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(F.relu(self.fc0(x)), 1)
        return self.fc2(F.relu(self.bn(self.fc1(x))))


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Any:
    """Small float64 ops: one thread is fastest, and far faster when other work shares the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _heads(name: str, T: int) -> dict[str, nn.Module]:
    if name == "mlp":
        return {f"task{i}": nn.Linear(16, 1 + i) for i in range(T)}
    if name == "toy":  # real heads with parameters, of two kinds
        return {f"task{i}": nn.Linear(10, 2 + i) if i % 2 == 0 else nn.Sequential(nn.ReLU(), nn.Linear(10, 1))
                for i in range(T)}
    return {f"task{i}": nn.Identity() for i in range(T)}


IMAGE = (3, 32, 32)
# name -> (backbone, input shape, build options); "resnet18@layer2" is resnet18 cut after layer2 at
# 16x16 input (cheap enough for every combination; the whole resnet18 is tested with the zoo).
CONFIGS: dict[str, tuple[str, tuple[int, ...], dict[str, Any]]] = {
    "tiny_cnn": ("tiny_cnn", IMAGE, {}),
    "tiny_cnn+linear": ("tiny_cnn", IMAGE, {"searchable": ("conv2d", "linear")}),
    "resnet18@layer2": ("resnet18", (3, 16, 16), {"trunk_output": "layer2"}),
    "toy": ("toy", IMAGE, {"searchable": ("conv2d", "linear")}),
    "mlp": ("mlp", (1, 4, 6), {"searchable": ("linear",)}),
}


@functools.cache
def _pristine(config: str, T: int, bn: str) -> SuperModel:
    backbone, shape, options = CONFIGS[config]
    torch.manual_seed(0)
    net = {"toy": Toy, "mlp": MLP}[backbone]() if backbone in ("toy", "mlp") else backbones.get(backbone)
    model = build(net, _heads(backbone, T), input_shape=shape, bn=bn, **options)
    model.materialize()
    for m in model.trunk.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0  # dropout draws differ between a batched and a per-task run; it is not under test
    model.to(DTYPE)
    gen = torch.Generator().manual_seed(T)
    with torch.no_grad():  # non-uniform logits, so soft gates differ per task, node and branch
        model.policy.logits.copy_(torch.randn(model.policy.logits.shape, generator=gen, dtype=DTYPE) * 1.5)
        _perturb_norms(model, gen)
    return model


def _perturb_norms(model: SuperModel, gen: torch.Generator) -> None:
    """Make every BN bank (shared, per task, per branch) and its statistics differ from the others."""
    for m in model.trunk.modules():
        if isinstance(m, TaskBatchNorm):
            for name, t in [*m.named_parameters(recurse=False), *m.named_buffers(recurse=False)]:
                r = torch.rand(t.shape, generator=gen, dtype=t.dtype)
                if name.endswith("running_var"):
                    t.copy_(0.5 + r)
                elif name.endswith("running_mean"):
                    t.copy_((r - 0.5) * 0.4)
                elif name.endswith("weight"):
                    t.copy_(0.5 + r)
                else:
                    t.copy_((r - 0.5) * 0.4)


def _fill(model: SuperModel, seed: int) -> None:
    """End warm-up, then move every task's specific weights (and biases) away from the shared ones."""
    model.fill_specific()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.mixed_modules():
            w = m.specific_weight
            w.add_(torch.randn(w.shape, generator=gen, dtype=w.dtype) * m.weight.std() * 0.5)
            if m.specific_bias is not None:
                m.specific_bias.add_(torch.randn(m.specific_bias.shape, generator=gen, dtype=DTYPE) * 0.1)
        _perturb_norms(model, gen)


def _model(config: str, T: int, bn: str, filled: bool) -> SuperModel:
    model = copy.deepcopy(_pristine(config, T, bn))
    if filled:
        _fill(model, seed=100 + T)
    return model


def _run_kwargs(model: SuperModel, mode: str, seed: int) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(seed)
    u = torch.rand(model.policy.logits.shape, generator=gen, dtype=DTYPE).clamp(1e-10, 1 - 1e-7)
    kwargs: dict[str, Any] = {"mode": mode, "noise": -torch.log(-torch.log(u)), "tau": 0.7}
    if mode == "fixed":
        kwargs["architecture"] = random_architecture(model, seed)
    return kwargs


def _inputs(model: SuperModel, multi_domain: bool, seed: int) -> Any:
    gen = torch.Generator().manual_seed(seed)
    shape = (BATCH, *model.graph[model.graph.inputs[0]].shape[1:])
    if multi_domain:
        return {t: torch.randn(shape, generator=gen, dtype=DTYPE) for t in model.task_names}
    return torch.randn(shape, generator=gen, dtype=DTYPE)


def _step(model: SuperModel, forward: Any, x: Any, kwargs: dict[str, Any], seed: int) -> tuple[Any, Any]:
    """Outputs and gradients (of every parameter, by name) of a random linear function of the outputs.

    Random output weights, not a plain sum: a sum of batch-normalised values has zero gradient.
    """
    model.zero_grad(set_to_none=True)
    out = forward(model, x, **kwargs)
    gen = torch.Generator().manual_seed(seed)
    loss = sum((o * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum() for o in out.values())
    loss.backward()
    grads = {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}
    return {k: v.detach() for k, v in out.items()}, grads


def _fast(model: SuperModel, x: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
    return model(x, **kwargs)


def _close(got: torch.Tensor, want: torch.Tensor, what: str, floor: float = 0.0) -> None:
    """Relative error at most RTOL, measured against the tensor's largest entry (or ``floor``)."""
    scale = max(want.abs().max().item() if want.numel() else 0.0, floor, 1e-30)
    torch.testing.assert_close(got, want, rtol=RTOL, atol=RTOL * scale, msg=lambda m: f"{what}: {m}")


def check_equivalent(model: SuperModel, mode: str, *, multi_domain: bool = False, seed: int = 0) -> None:
    """model(x) == naive_forward(model, x): outputs, parameter gradients, logits gradient."""
    x = _inputs(model, multi_domain, seed)
    kwargs = _run_kwargs(model, mode, seed)
    where = f"mode={mode} train={model.training} filled={bool(model.mixed_modules()[0].filled)}"
    out, grads = _step(model, _fast, x, kwargs, seed)
    ref, ref_grads = _step(model, naive_forward, x, kwargs, seed)
    assert list(out) == list(ref) == model.task_names
    for task in ref:
        assert out[task].shape == ref[task].shape, f"{where}: output {task}"
        _close(out[task], ref[task], f"{where}: output of {task}")
    logits = ref_grads["policy.logits"]
    if mode in ("soft", "hard"):
        assert logits is not None and logits.abs().sum() > 0, f"{where}: the logits get no gradient"
    else:  # fixed and warmup gates do not depend on the logits
        assert logits is None and grads["policy.logits"] is None, f"{where}: logits got a gradient"
    # A gradient that is zero in exact arithmetic (a conv bias before a training-mode BN) is
    # rounding noise: measure it against the largest gradient of the model, scaled down by 1e-4.
    floor = 1e-4 * max(g.abs().max().item() for g in ref_grads.values() if g is not None and g.numel())
    nonzero = 0
    for name, want in ref_grads.items():
        got = grads[name]
        if want is None or got is None:  # a parameter the forward did not read reads as zero gradient
            param = model.get_parameter(name)
            want = torch.zeros_like(param) if want is None else want
            got = torch.zeros_like(param) if got is None else got
        _close(got, want, f"{where}: gradient of {name}", floor)
        nonzero += bool(want.abs().sum() > 0)
    assert nonzero > 0, f"{where}: every gradient is zero"


def _check_all_modes(model: SuperModel, modes: tuple[str, ...], **kwargs: Any) -> None:
    for train in (True, False):
        model.train(train)
        for i, mode in enumerate(modes):
            check_equivalent(model, mode, seed=i, **kwargs)


# --- every combination on the small configurations ---------------------------------------------------
@pytest.mark.parametrize("bn", ["specific", "follow"])
@pytest.mark.parametrize("T", TASKS)
@pytest.mark.parametrize("config", ["tiny_cnn", "resnet18@layer2"])
def test_every_mode_before_and_after_filling(config: str, T: int, bn: str) -> None:
    """Every mode, train and eval; before filling (specific reads shared) only on tiny_cnn, for time."""
    model = _model(config, T, bn, filled=False)
    if config == "tiny_cnn":
        _check_all_modes(model, MODES)
    _fill(model, seed=7)
    _check_all_modes(model, MODES)


@pytest.mark.parametrize("bn", ["specific", "follow"])
@pytest.mark.parametrize(("config", "T"), [("toy", 1), ("toy", 3), ("tiny_cnn+linear", 2), ("mlp", 3)])
def test_all_operator_forms(config: str, T: int, bn: str) -> None:
    """Biased, grouped, depthwise, dilated, padding-0 and 1x1 convs; searchable linear layers; a BN
    and a linear on the shared input; a shared value tiled to meet per-task ones."""
    model = _model(config, T, bn, filled=False)
    forms = {c.skip for c in model.choices}
    assert forms >= ({"identity", "projection", None} if config == "toy" else {"projection"})
    assert any(c.kind == "linear" for c in model.choices)
    kinds = {n.kind for n in model.mtl_graph}
    if config == "toy" and bn == "follow":
        assert "tile_tasks" in kinds
    if config == "mlp":
        assert model.mtl_graph["fc0"].attrs["shared_input"] and len(model.mtl_graph["fc0"].shape) == 4
    _check_all_modes(model, MODES)
    _fill(model, seed=3)
    _check_all_modes(model, MODES)


# --- the whole zoo -----------------------------------------------------------------------------------
# One (T, mode, bn, train, trunk_output) per backbone, so that every backbone, mode, T, bn and
# train/eval appears. The nets too big for the time budget in float64 are cut after a stage that has
# every operator form they use (resnet50's bottlenecks, deeplab's dilated stage 3); a backbone added
# to the zoo later is tested whole with the default.
ZOO_PLAN: dict[str, tuple[int, str, str, bool, str | None]] = {
    "tiny_cnn": (5, "warmup", "follow", True, None),
    "resnet18": (1, "hard", "specific", False, None),
    "resnet34": (1, "soft", "follow", True, "layer2"),
    "resnet50": (3, "fixed", "follow", True, "layer2"),
    "mobilenet_v2": (2, "soft", "specific", False, None),
    "mnasnet": (1, "fixed", "follow", False, None),
    "deeplab_resnet34": (2, "hard", "specific", True, "layer3.0"),
}
DEFAULT_PLAN: tuple[int, str, str, bool, str | None] = (2, "soft", "follow", False, None)


for _name in backbones.names():
    _cut = ZOO_PLAN.get(_name, DEFAULT_PLAN)[4]
    CONFIGS.setdefault(f"zoo:{_name}", (_name, IMAGE, {} if _cut is None else {"trunk_output": _cut}))


@pytest.mark.parametrize("name", backbones.names())
def test_zoo_backbone(name: str) -> None:
    T, mode, bn, train, _ = ZOO_PLAN.get(name, DEFAULT_PLAN)
    model = _pristine(f"zoo:{name}", T, bn)
    _pristine.cache_clear()  # used once: fill it in place
    _fill(model, seed=T)
    model.train(train)
    check_equivalent(model, mode)


def test_plan_covers_every_mode_and_task_count() -> None:
    plans = [ZOO_PLAN.get(n, DEFAULT_PLAN) for n in backbones.names()]
    assert {p[0] for p in plans} == set(TASKS)
    assert {p[1] for p in plans} == set(MODES)
    assert {p[2] for p in plans} == {"specific", "follow"}
    assert {p[3] for p in plans} == {True, False}
    assert set(backbones.names()) >= set(ZOO_PLAN)


# --- multi-domain input and grouped batching ------------------------------------------------------------
@pytest.mark.parametrize(
    ("config", "T", "bn"),
    [
        ("tiny_cnn", 1, "specific"), ("tiny_cnn", 1, "follow"), ("tiny_cnn", 3, "specific"),
        ("tiny_cnn", 3, "follow"), ("resnet18@layer2", 2, "follow"), ("toy", 5, "specific"),
        ("toy", 5, "follow"), ("mlp", 2, "specific"), ("mlp", 2, "follow"),
    ],
)
def test_multi_domain_input(config: str, T: int, bn: str) -> None:
    model = _model(config, T, bn, filled=True)
    _check_all_modes(model, MODES, multi_domain=True)


class Colliding(nn.Module):
    """Submodules ``add.0`` / ``add.1`` whose Python names collide with the functional ``add_1``."""

    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(3, 8, 3, padding=1)
        self.add = nn.ModuleList([nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.c(x)
        y = x + x
        return self.add[1](self.add[0](y + 1))


@pytest.mark.parametrize("multi_domain", [False, True])
def test_operator_names_that_collide_with_submodule_names(multi_domain: bool) -> None:
    torch.manual_seed(0)
    model = build(Colliding(), {"a": nn.Identity(), "b": nn.Identity()}, input_shape=(3, 8, 8))
    model.materialize().to(DTYPE)
    _fill(model, seed=0)
    assert {"add_1", "add.1"} <= {n.name for n in model.mtl_graph}
    _check_all_modes(model, ("soft", "fixed"), multi_domain=multi_domain)


@pytest.mark.parametrize(
    ("config", "T", "bn", "multi_domain"),
    [
        ("tiny_cnn", 3, "specific", False), ("tiny_cnn", 3, "follow", True), ("tiny_cnn", 5, "follow", False),
        ("toy", 2, "specific", True), ("toy", 2, "follow", False), ("resnet18@layer2", 2, "follow", False),
    ],
)
def test_grouped_batching(config: str, T: int, bn: str, multi_domain: bool) -> None:
    """``set_batching("grouped")`` equals the reference, and dense batching, in every mode."""
    model = _model(config, T, bn, filled=True)
    model.set_batching("grouped")
    assert all(m.batching == "grouped" for m in model.mixed_modules())
    _check_all_modes(model, MODES, multi_domain=multi_domain)
    dense = copy.deepcopy(model)  # the same running statistics from here on
    dense.set_batching("dense")
    for train in (True, False):
        model.train(train)
        dense.train(train)
        for i, mode in enumerate(("soft", "fixed")):
            x = _inputs(model, multi_domain, seed=i)
            kwargs = _run_kwargs(model, mode, seed=i)
            out, grads = _step(model, _fast, x, kwargs, seed=i)
            want, want_grads = _step(dense, _fast, x, kwargs, seed=i)
            floor = 1e-4 * max(g.abs().max().item() for g in want_grads.values() if g is not None and g.numel())
            for task in want:
                _close(out[task], want[task], f"grouped vs dense, {mode}: output of {task}")
            for name, g in want_grads.items():
                if g is not None:
                    _close(grads[name], g, f"grouped vs dense, {mode}: gradient of {name}", floor)


def test_reference_detects_a_wrong_branch() -> None:
    """The comparison can fail: a model whose specific weights differ from what the reference reads."""
    model = _model("tiny_cnn", 2, "specific", filled=True)
    x = _inputs(model, False, 0)
    kwargs = _run_kwargs(model, "soft", 0)
    want = naive_forward(model, x, **kwargs)
    with torch.no_grad():
        model.mixed_modules()[1].specific_weight[1].mul_(1.01)
    got = model(x, **kwargs)
    torch.testing.assert_close(got["task0"], want["task0"], rtol=RTOL, atol=0)
    with pytest.raises(AssertionError):
        _close(got["task1"], want["task1"], "task1")


def test_every_mixed_op_is_a_module_the_reference_reads() -> None:
    from naive import submodule_names

    model = _model("toy", 2, "follow", filled=False)
    names = submodule_names(model)
    mixed = {n.name for n in model.mtl_graph if n.kind.startswith("mtl_")}
    assert mixed <= set(names)
    for node in mixed:
        assert isinstance(model.trunk.get_submodule(names[node]), (MixedOp, TaskBatchNorm))
    assert len(mixed) == len(model.mixed_modules()) + sum(
        isinstance(m, TaskBatchNorm) for m in model.trunk.modules()
    )
