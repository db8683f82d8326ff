"""API behaviour of the supermodel: build, heads, parameters, errors, architectures, skips, filling."""

from __future__ import annotations

import functools
import json
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from automtl import backbones
from automtl.compiler.mtl import BRANCHES
from automtl.model.architecture import Architecture
from automtl.model.mixing import MixedOp, TaskBatchNorm
from automtl.model.supermodel import SuperModel, build

TINY = (3, 32, 32)


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> object:
    """Small models: one thread is fastest, and far faster when other work shares the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tiny(tasks: tuple[str, ...] = ("seg", "depth"), **options: object) -> SuperModel:
    torch.manual_seed(0)
    heads = {t: nn.Linear(10, 2 + i) for i, t in enumerate(tasks)}
    return build(backbones.get("tiny_cnn"), heads, input_shape=TINY, **options)


class Forms(nn.Module):
    """One conv per skip form: same shape (identity), stride 2 (projection), padding 0 (none)."""

    def __init__(self) -> None:
        super().__init__()
        self.same = nn.Conv2d(3, 3, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(3)
        self.down = nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.valid = nn.Conv2d(8, 8, 3, padding=0, bias=False)
        self.bn3 = nn.BatchNorm2d(8)
        self.wider = nn.Conv2d(8, 16, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.same(x)))
        x = F.relu(self.bn2(self.down(x)))
        x = F.relu(self.bn3(self.valid(x)))
        return self.wider(x)


def _forms(**options: object) -> SuperModel:
    torch.manual_seed(0)
    return build(Forms(), {"a": nn.Identity(), "b": nn.Identity()}, input_shape=(3, 16, 16), **options)


@functools.cache
def _resnet18_layer4() -> SuperModel:
    return build(backbones.get("resnet18"), {"a": nn.Identity(), "b": nn.Identity()}, input_shape=TINY,
                 trunk_output="layer4")


# --- build, heads, parameters ---------------------------------------------------------------------
def test_build_returns_a_module_with_heads_registered_from_a_plain_dict() -> None:
    heads = {"seg": nn.Linear(10, 2), "depth": nn.Linear(10, 3)}
    model = build(backbones.get("tiny_cnn"), heads, input_shape=TINY)
    assert isinstance(model, nn.Module) and isinstance(model, SuperModel)
    assert isinstance(model.heads, nn.ModuleDict) and list(model.heads) == ["seg", "depth"]
    assert model.heads["seg"] is heads["seg"]
    params = {id(p) for p in model.parameters()}
    assert all(id(p) in params for h in heads.values() for p in h.parameters())
    assert {"heads.seg.weight", "heads.depth.bias"} <= set(model.state_dict())
    assert model.task_names == ["seg", "depth"]
    out = model(torch.randn(4, *TINY))
    assert {k: tuple(v.shape) for k, v in out.items()} == {"seg": (4, 2), "depth": (4, 3)}


def test_policy_and_weight_parameters_are_disjoint_and_complete() -> None:
    model = _tiny()
    model.fill_specific()
    policy = {id(p) for p in model.policy_parameters()}
    weights = [id(p) for p in model.weight_parameters()]
    assert policy == {id(model.policy.logits)}
    assert len(weights) == len(set(weights))
    assert policy.isdisjoint(weights)
    assert policy | set(weights) == {id(p) for p in model.parameters()}
    named = dict(model.named_parameters())
    for name in ("trunk.conv1.specific_weight", "trunk.conv1.projection", "trunk.bn1.specific_weight"):
        assert id(named[name]) in weights


def test_source_weights_are_copied_not_trained_in_place() -> None:
    torch.manual_seed(0)
    net = backbones.get("tiny_cnn")
    before = net.conv1.weight.detach().clone()
    model = build(net, {"a": nn.Identity()}, input_shape=TINY)
    torch.testing.assert_close(model.trunk.get_submodule("conv1").weight.detach(), before, rtol=0, atol=0)
    opt = torch.optim.SGD(model.weight_parameters(), lr=1.0)
    model(torch.randn(2, *TINY), mode="warmup")["a"].square().sum().backward()
    opt.step()
    torch.testing.assert_close(net.conv1.weight.detach(), before, rtol=0, atol=0)
    assert not torch.equal(model.trunk.get_submodule("conv1").weight.detach(), before)


def test_materialize_is_idempotent_and_batching_propagates() -> None:
    model = _tiny().materialize()
    proj = model.trunk.get_submodule("conv1").projection.detach().clone()
    model.materialize()
    torch.testing.assert_close(model.trunk.get_submodule("conv1").projection.detach(), proj, rtol=0, atol=0)
    assert model.batching == "dense" and all(m.batching == "dense" for m in model.mixed_modules())
    model.set_batching("grouped")
    assert all(m.batching == "grouped" for m in model.mixed_modules())
    with pytest.raises(ValueError, match="batching"):
        model.set_batching("sparse")


# --- bad input ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["my-task", "1st", "class", "two words", ""])
def test_task_names_must_be_identifiers(name: str) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(name))):
        build(backbones.get("tiny_cnn"), {"ok": nn.Identity(), name: nn.Identity()}, input_shape=TINY)


def test_zero_tasks() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        build(backbones.get("tiny_cnn"), {}, input_shape=TINY)


def test_a_head_that_is_not_a_module_is_named() -> None:
    with pytest.raises(ValueError, match="'depth'.*nn.Module"):
        build(backbones.get("tiny_cnn"), {"seg": nn.Identity(), "depth": 3}, input_shape=TINY)


def test_a_head_that_does_not_fit_is_named() -> None:
    heads = {"seg": nn.Linear(10, 2), "depth": nn.Linear(7, 1)}
    with pytest.raises(ValueError, match=r"head of task 'depth'.*\[1, 10\]"):
        build(backbones.get("tiny_cnn"), heads, input_shape=TINY)


def test_bad_options() -> None:
    with pytest.raises(ValueError, match="bn"):
        _tiny(bn="shared")
    with pytest.raises(ValueError, match="searchable"):
        _tiny(searchable=("max_pool2d",))
    model = _tiny()
    x = torch.randn(2, *TINY)
    with pytest.raises(ValueError, match="unknown mode 'greedy'"):
        model(x, mode="greedy")
    with pytest.raises(ValueError, match="architecture"):
        model(x, mode="fixed")


def test_multi_domain_input_must_name_every_task() -> None:
    model = _tiny()
    x = torch.randn(2, *TINY)
    with pytest.raises(ValueError, match=r"missing \['depth'\]"):
        model({"seg": x})
    with pytest.raises(ValueError, match=r"unknown \['edges'\]"):
        model({"seg": x, "depth": x, "edges": x})
    with pytest.raises(ValueError, match="same shape"):
        model({"seg": x, "depth": x[:1]})
    out = model({"seg": x, "depth": torch.randn(2, *TINY)})
    assert out["seg"].shape == (2, 2) and out["depth"].shape == (2, 3)


def test_architecture_for_another_backbone() -> None:
    other = build(Forms(), {"seg": nn.Identity(), "depth": nn.Identity()}, input_shape=(3, 16, 16))
    with pytest.raises(ValueError, match="backbone"):
        _tiny()(torch.randn(2, *TINY), mode="fixed", architecture=other.architecture())


def test_architecture_for_other_tasks_or_options() -> None:
    model = _tiny()
    with pytest.raises(ValueError, match=r"tasks \['seg', 'edges'\]"):
        model.architecture_tensor(_tiny(("seg", "edges")).architecture())
    with pytest.raises(ValueError, match="options"):
        model.architecture_tensor(_tiny(bn="specific").architecture())


def test_architecture_with_an_unknown_branch_names_node_and_task() -> None:
    model = _tiny()
    arch = model.architecture()
    arch.choices["block.conv1"]["depth"] = "bypass"
    with pytest.raises(ValueError, match=r"node 'block.conv1', task 'depth': branch 'bypass'.*branches are"):
        model.architecture_tensor(arch)


def test_architecture_with_a_branch_not_offered_at_a_node() -> None:
    model = _forms()
    arch = model.uniform_architecture("shared")
    arch.choices["valid"]["b"] = "skip"
    with pytest.raises(ValueError, match=r"node 'valid', task 'b': branch 'skip' is not offered.*shared, specific"):
        model(torch.randn(2, 3, 16, 16), mode="fixed", architecture=arch)


def test_architecture_missing_or_extra_nodes() -> None:
    model = _tiny()
    arch = model.architecture()
    del arch.choices["conv2"]
    with pytest.raises(ValueError, match="no entry for choice node 'conv2'"):
        model.architecture_tensor(arch)
    arch = model.architecture()
    arch.choices["fc"] = {"seg": "shared", "depth": "shared"}
    with pytest.raises(ValueError, match="'fc'"):
        model.architecture_tensor(arch)
    arch = model.architecture()
    del arch.choices["conv2"]["seg"]
    with pytest.raises(ValueError, match="task 'seg' at node 'conv2'"):
        model.architecture_tensor(arch)


# --- architectures --------------------------------------------------------------------------------
def test_architecture_json_round_trip(tmp_path: object) -> None:
    model = _tiny()
    arch = model.architecture(sample=True, generator=torch.Generator().manual_seed(3))
    arch.meta["note"] = "round trip"
    path = tmp_path / "arch.json"  # type: ignore[operator]
    arch.save(path)
    loaded = Architecture.load(path)
    assert loaded == arch
    assert json.loads(path.read_text())["format"] == "automtl.architecture/1"
    assert Architecture.from_dict(json.loads(arch.to_json())) == arch
    torch.testing.assert_close(model.architecture_tensor(loaded), model.architecture_tensor(arch))


def test_architecture_files_that_are_not_architectures(tmp_path: object) -> None:
    bad = tmp_path / "bad.json"  # type: ignore[operator]
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        Architecture.load(bad)
    bad.write_text(json.dumps({"format": "something/else"}))
    with pytest.raises(ValueError, match="not an automtl architecture"):
        Architecture.load(bad)
    bad.write_text(json.dumps({"format": "automtl.architecture/1", "tasks": []}))
    with pytest.raises(ValueError, match="lacks the field 'backbone'"):
        Architecture.load(bad)


def test_architecture_is_the_argmax_of_offered_branches() -> None:
    model = _forms()
    idx = {c.node: c.index for c in model.choices}
    with torch.no_grad():
        logits = model.policy.logits
        logits.zero_()
        logits[0, idx["same"], 2] = 3.0  # task a: skip at "same"
        logits[1, idx["down"], 1] = 3.0  # task b: specific at "down"
        logits[:, idx["valid"], 2] = 9.0  # skip is not offered at "valid": the argmax ignores it
        logits[:, idx["valid"], 1] = 1.0
    arch = model.architecture()
    assert arch.choices["same"] == {"a": "skip", "b": "shared"}
    assert arch.choices["down"] == {"a": "shared", "b": "specific"}
    assert arch.choices["valid"] == {"a": "specific", "b": "specific"}
    assert arch.tasks == ["a", "b"] and arch.backbone == model.backbone_digest
    arch.check(model)


def test_sampled_architectures_are_reproducible_with_a_seed() -> None:
    model = _tiny(("a", "b", "c"))
    with torch.no_grad():
        model.policy.logits.copy_(torch.randn(model.policy.logits.shape, generator=torch.Generator().manual_seed(0)))
    first = model.architecture(sample=True, generator=torch.Generator().manual_seed(7))
    again = model.architecture(sample=True, generator=torch.Generator().manual_seed(7))
    assert first == again
    first.check(model)
    others = [model.architecture(sample=True, generator=torch.Generator().manual_seed(s)) for s in range(8, 16)]
    assert any(o.choices != first.choices for o in others)
    with torch.no_grad():  # a near-certain policy samples its argmax
        model.policy.logits.fill_(0.0)
        model.policy.logits[..., 1] = 50.0
    sampled = model.architecture(sample=True, generator=torch.Generator().manual_seed(1))
    assert sampled == model.uniform_architecture("specific")


# --- trunk output and skip forms ------------------------------------------------------------------
def test_trunk_output_cuts_the_classifier() -> None:
    model = _resnet18_layer4()
    (out,) = model.graph.outputs
    assert out.startswith("layer4.")
    assert model.graph[out].shape[1] == 512
    assert not any(n.kind in ("linear", "adaptive_avg_pool2d", "flatten") for n in model.mtl_graph)
    feats = model(torch.randn(2, *TINY), mode="warmup")
    assert feats["a"].shape == (2, 512, 1, 1) and feats["b"].shape == (2, 512, 1, 1)


def test_skip_forms() -> None:
    model = _forms()
    by_node = {c.node: c for c in model.choices}
    assert by_node["same"].skip == "identity" and by_node["same"].branches == BRANCHES
    assert by_node["down"].skip == "projection" and by_node["down"].branches == BRANCHES
    assert by_node["valid"].skip is None and by_node["valid"].branches == ("shared", "specific")
    assert by_node["wider"].skip == "projection"
    model.materialize()
    down = model.trunk.get_submodule("down")
    assert down.projection.shape == (1, 8, 3)  # one copy read by every task until the specific copies exist
    model.fill_specific()
    assert down.projection.shape == (2, 8, 3) and torch.equal(down.projection[0], down.projection[1])
    assert model.trunk.get_submodule("same").projection is None
    assert model.policy.mask[by_node["valid"].index].tolist() == [True, True, False]
    gates = model.policy.gates("soft")
    assert (gates[:, by_node["valid"].index, 2] == 0).all()


def test_resnet18_downsampling_convs_get_projections() -> None:
    model = _resnet18_layer4()
    forms = {c.node: c.skip for c in model.choices}
    assert forms["conv1"] == "projection"  # 7x7, stride 2, padding 3
    assert forms["layer1.0.conv1"] == "identity"
    assert forms["layer2.0.conv1"] == "projection"  # stride 2, 64 -> 128
    assert forms["layer2.0.downsample.0"] == "projection"  # 1x1 stride 2


def test_skip_can_be_turned_off() -> None:
    model = _forms(skip=False)
    assert all(c.skip is None and c.branches == ("shared", "specific") for c in model.choices)


# --- gates ----------------------------------------------------------------------------------------
def test_gates_follow_their_definitions() -> None:
    model = _forms()
    policy = model.policy
    with torch.no_grad():
        policy.logits.copy_(torch.randn(policy.logits.shape, generator=torch.Generator().manual_seed(0)))
    noise = torch.randn(policy.logits.shape, generator=torch.Generator().manual_seed(1))
    offered = policy.mask
    valid = next(c.index for c in model.choices if c.node == "valid")
    z = (policy.logits + noise) / 0.5
    want = torch.exp(z) * offered
    want = want / want.sum(-1, keepdim=True)
    soft = policy.gates("soft", 0.5, noise=noise)
    torch.testing.assert_close(soft, want)
    assert (soft[:, valid, 2] == 0).all()
    hard = policy.gates("hard", 0.5, noise=noise)
    torch.testing.assert_close(hard, F.one_hot(want.argmax(-1), 3).to(hard.dtype))
    # straight-through: the hard gates' gradient is the soft gates'
    w = torch.randn(hard.shape, generator=torch.Generator().manual_seed(2))
    (g_hard,) = torch.autograd.grad((policy.gates("hard", 0.5, noise=noise) * w).sum(), policy.logits)
    (g_soft,) = torch.autograd.grad((policy.gates("soft", 0.5, noise=noise) * w).sum(), policy.logits)
    torch.testing.assert_close(g_hard, g_soft)
    warm = policy.gates("warmup")
    assert torch.allclose(warm[:, valid], torch.tensor([0.5, 0.5, 0.0]))
    others = [c.index for c in model.choices if c.index != valid]
    assert torch.allclose(warm[:, others], torch.full((2, len(others), 3), 1 / 3))
    arch = model.uniform_architecture("skip")
    fixed = policy.gates("fixed", fixed=model.architecture_tensor(arch))
    assert fixed[:, valid].tolist() == [[1.0, 0.0, 0.0]] * 2  # skip not offered: shared
    assert (fixed[:, others, 2] == 1).all()
    torch.manual_seed(0)
    assert not torch.equal(policy.gates("soft"), policy.gates("soft"))  # fresh Gumbel noise by default


# --- filling and batch norm statistics -------------------------------------------------------------
@pytest.mark.parametrize("bn", ["specific", "follow"])
def test_fill_specific_copies_the_shared_weights(bn: str) -> None:
    model = _tiny(bn=bn)
    x = torch.randn(4, *TINY)
    model.train()
    model(x, mode="warmup")["seg"].sum().backward()  # warm up a little: BN statistics move
    model.fill_specific()
    for m in model.mixed_modules():
        assert bool(m.filled)
        assert m.specific_weight.shape == (2, *m.weight.shape)
        for t in range(2):
            torch.testing.assert_close(m.specific_weight[t], m.weight, rtol=0, atol=0)
    for m in model.trunk.modules():
        if isinstance(m, TaskBatchNorm) and {"shared", "specific"} <= set(m.branches):
            torch.testing.assert_close(m.specific_running_mean[1], m.running_mean, rtol=0, atol=0)
    for train in (True, False):
        model.train(train)
        with torch.no_grad():
            specific = model(x, mode="fixed", architecture=model.uniform_architecture("specific"))
            shared = model(x, mode="fixed", architecture=model.uniform_architecture("shared"))
        for t in model.task_names:
            torch.testing.assert_close(specific[t], shared[t], rtol=1e-6, atol=1e-6)
    with torch.no_grad():  # and they are separate copies
        model.mixed_modules()[0].specific_weight[0].mul_(2.0)
        specific = model(x, mode="fixed", architecture=model.uniform_architecture("specific"))
    assert not torch.allclose(specific["seg"], shared["seg"])
    torch.testing.assert_close(specific["depth"], shared["depth"], rtol=1e-6, atol=1e-6)


def test_state_dict_round_trip_after_filling() -> None:
    model = _tiny().fill_specific().eval()
    with torch.no_grad():
        for m in model.mixed_modules():
            m.specific_weight.add_(0.1)
    fresh = _tiny().eval()
    fresh.load_state_dict(model.state_dict())
    x = torch.randn(2, *TINY)
    arch = model.uniform_architecture("specific")
    with torch.no_grad():
        want, got = model(x, mode="fixed", architecture=arch), fresh(x, mode="fixed", architecture=arch)
    for t in want:
        torch.testing.assert_close(got[t], want[t])


def _bn_inputs(model: SuperModel, name: str) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    model.trunk.get_submodule(name).register_forward_pre_hook(lambda mod, args: seen.append(_joined(args[0])))
    return seen


def test_running_statistics_follow_each_task() -> None:
    """bn="specific": every task's running statistics move towards its own batch statistics."""
    model = _tiny(("a", "b"), bn="specific").train()
    bn = model.trunk.get_submodule("bn2")
    m = bn.momentum
    old_mean, old_var = bn.specific_running_mean.clone(), bn.specific_running_var.clone()
    seen = _bn_inputs(model, "bn2")
    model({"a": torch.randn(4, *TINY), "b": torch.randn(4, *TINY) * 3 + 1}, mode="soft")
    for t, x in enumerate(seen[0].chunk(2)):
        mean = x.mean((0, 2, 3))
        var = x.var((0, 2, 3), unbiased=True)
        torch.testing.assert_close(bn.specific_running_mean[t], (1 - m) * old_mean[t] + m * mean)
        torch.testing.assert_close(bn.specific_running_var[t], (1 - m) * old_var[t] + m * var)


def test_running_statistics_of_a_branch_come_from_the_tasks_using_it() -> None:
    """bn="follow", fixed: the shared bank averages the tasks on "shared"; unused banks stay put."""
    model = _tiny(("a", "b", "c"), bn="follow").fill_specific().train()
    bn = model.trunk.get_submodule("bn2")
    arch = model.uniform_architecture("shared")
    arch.choices["conv2"]["c"] = "specific"
    before = {k: v.clone() for k, v in bn.state_dict().items()}
    seen = _bn_inputs(model, "bn2")
    xs = {t: torch.randn(4, *TINY) * (1 + i) for i, t in enumerate("abc")}
    model(xs, mode="fixed", architecture=arch)
    per_task = seen[0].chunk(3)
    m = bn.momentum
    mean_ab = (per_task[0].mean((0, 2, 3)) + per_task[1].mean((0, 2, 3))) / 2
    torch.testing.assert_close(bn.running_mean, (1 - m) * before["running_mean"] + m * mean_ab)
    want_c = (1 - m) * before["specific_running_mean"][2] + m * per_task[2].mean((0, 2, 3))
    torch.testing.assert_close(bn.specific_running_mean[2], want_c)
    torch.testing.assert_close(bn.specific_running_mean[:2], before["specific_running_mean"][:2])
    torch.testing.assert_close(bn.skip_running_mean, before["skip_running_mean"])


def test_a_backbone_without_searchable_operators_still_runs() -> None:
    class MLP(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(12, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.flatten(x, 1))

    model = build(MLP(), {"a": nn.Identity(), "b": nn.Identity()}, input_shape=(3, 2, 2))
    assert model.choices == [] and not model.mixed_modules()
    x = torch.randn(2, 3, 2, 2)
    for mode in ("soft", "hard", "warmup"):
        out = model(x, mode=mode)
        torch.testing.assert_close(out["a"], out["b"])
    assert model.architecture().choices == {}
    out = model(x, mode="fixed", architecture=model.architecture())
    assert out["a"].shape == (2, 4)
    assert isinstance(model.trunk.get_submodule("fc"), nn.Linear)
    assert not any(isinstance(m, MixedOp) for m in model.modules())


def test_tune_batching_picks_one_and_leaves_the_model_as_it_was() -> None:
    import automtl

    torch.manual_seed(0)
    model = automtl.build("tiny_cnn", {"a": nn.Identity(), "b": nn.Identity()}, input_shape=(3, 16, 16),
                          trunk_output="block", check_heads=False)
    model.materialize().fill_specific()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    timings = model.tune_batching(torch.randn(2, 3, 16, 16), rounds=1)
    assert set(timings) == {"dense", "grouped"} and all(t > 0 for t in timings.values())
    assert model.batching == min(timings, key=timings.__getitem__)
    assert all(m.batching == model.batching for m in model.mixed_modules())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in model.parameters())


def _joined(x: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor:
    """A batch norm's input: a value, or a stacked value as its task slices (from a choice convolution)."""
    return torch.cat(x).detach() if isinstance(x, tuple) else x.detach()
