"""Derivation (DESIGN §6): a fixed architecture -> a compact multi-task model.

The derived model must compute exactly what the supermodel computes in ``mode="fixed"`` under the
same architecture (eval and train mode), over the zoo and for several domains, and hold each distinct
value's operator once (value numbering). Its reports are checked in test_derive_reports.py, saving,
loading and heads that are not plain in test_derive_heads.py.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from derive_helpers import (
    EVAL_TOL,
    TINY_BNS,
    TINY_CONVS,
    TRAIN_TOL,
    architecture,
    assert_same,
    check_both_modes,
    count,
    deep_residual,
    make_heads,
    n_params,
    perturb,
    random_architecture,
    tiny,
)
from torch import nn

from automtl import backbones, build
from automtl.model.architecture import Architecture
from automtl.model.derive import MultiTaskModel, derive

pytestmark = pytest.mark.usefixtures("one_thread")


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


def test_value_numbering_is_linear_in_depth() -> None:
    """Value keys of a deep residual chain must not nest (hashing nested keys doubles per block)."""
    # nested keys took about 20 s here at 22 blocks, twice that per extra block (the time is measured
    # in benchmarks/bench_supermodel.py::test_derive_deep_residual); flat keys take milliseconds
    blocks = 22
    model = build(deep_residual(blocks), {"a": nn.Identity(), "b": nn.Identity()}, input_shape=(2, 4, 4), bn="follow")
    model.materialize()
    arch = random_architecture(model, seed=0)
    derived = model.derive(arch)
    shared = model.derive(model.uniform_architecture("shared"))
    assert count(shared.graph, "conv2d") == blocks
    model.eval()
    assert_same(model, derived, torch.randn(2, 2, 4, 4), arch, EVAL_TOL)


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
