"""MPNAS: block / zero choices, per-domain REINFORCE controllers, rewards, sharing, the strategy."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import randomize_norms
from torch import nn
from torch.utils.data import Dataset

import automtl
from automtl import backbones
from automtl.compiler.blocks import block_region, collapse_blocks
from automtl.compiler.codegen import codegen, node_modules
from automtl.compiler.errors import CompileError
from automtl.model.blocks import BlockModule, SmallResNet, build_blocks, find_blocks, find_graph_blocks, with_blocks
from automtl.model.derive import derive
from automtl.model.policies import CategoricalPolicy, MovingAverage, reinforce_loss
from automtl.search.distributed import exit_process, leave
from automtl.search.mpnas import MPNASConfig, MPNASSearcher, mpnas
from automtl.search.paths import FixedPath, PathCost, block_paths, jaccard, recalibrate_batch_norms, reward, sharing
from automtl.search.strategies import get_strategy
from automtl.train.data import MultiDomain
from automtl.train.domains import DOMAINS, domain_suite, make_domain, suite_splits
from automtl.train.tasks import Classification, classification_head


def _heads(classes: dict[str, int], channels: int) -> dict[str, nn.Module]:
    return {t: classification_head(channels, n) for t, n in classes.items()}


def _model(classes: dict[str, int] | None = None, seed: int = 0) -> automtl.SuperModel:
    classes = classes or {"a": 3, "b": 5}
    torch.manual_seed(seed)
    net = randomize_norms(SmallResNet(8, 2, 2), seed)
    return build_blocks(net, _heads(classes, 16), input_shape=(3, 8, 8))


# --- the controller's pieces ---------------------------------------------------------------------
def test_reinforce_gradient_equals_the_hand_computation() -> None:
    class One:  # one choice node with two options
        index, options = 0, (None, None)

    policy = CategoricalPolicy(2, [One()])
    with torch.no_grad():
        policy.logits.copy_(torch.tensor([[[0.3, -0.2]], [[1.0, 0.5]]]))
    pick = torch.tensor([[0], [1]])
    r, b = torch.tensor([0.9, 0.2]), torch.tensor([0.5, 0.6])
    reinforce_loss(policy, pick, r, b).backward()
    # d/dz of -(r - b) log softmax(z)[k] = -(r - b) (onehot_k - p)
    want = torch.zeros(2, 1, 2)
    for t, (z, k) in enumerate([([0.3, -0.2], 0), ([1.0, 0.5], 1)]):
        e = [math.exp(v) for v in z]
        p = [v / sum(e) for v in e]
        adv = float(r[t] - b[t])
        for j in range(2):
            want[t, 0, j] = -adv * ((1.0 if j == k else 0.0) - p[j])
    assert torch.allclose(policy.logits.grad, want, atol=1e-6)


def test_moving_average_baseline_starts_at_the_first_reward_then_averages() -> None:
    avg = MovingAverage(2, momentum=0.95)
    avg.update(torch.tensor([1.0, 2.0]))
    assert avg.value.tolist() == [1.0, 2.0]
    avg.update(torch.tensor([0.0, 4.0]))
    assert torch.allclose(avg.value, torch.tensor([0.95, 0.95 * 2 + 0.05 * 4]))
    avg.update(torch.tensor([3.0]), tasks=torch.tensor([1]))  # one domain only
    assert torch.allclose(avg.value, torch.tensor([0.95, 0.95 * (0.95 * 2 + 0.05 * 4) + 0.05 * 3]))


def test_reward_forms() -> None:
    q, c, c0 = torch.tensor([0.8, 0.5]), torch.tensor([120.0, 50.0]), torch.tensor([100.0, 100.0])
    absolute = reward(q, c, c0, -0.1, "absolute")
    assert torch.allclose(absolute, torch.tensor([0.8 - 0.1 * 0.2, 0.5 - 0.1 * 0.5], dtype=torch.float64))
    mnas = reward(q, c, c0, -0.07, "mnas")
    assert torch.allclose(mnas, torch.tensor([0.8 * 1.2 ** -0.07, 0.5 * 0.5 ** -0.07], dtype=torch.float64))
    with pytest.raises(ValueError, match="reward must be one of"):
        reward(q, c, c0, -0.1, "nope")


def test_jaccard_of_a_hand_made_pair_of_paths() -> None:
    j = jaccard({"a": ["b1", "b2", "b3"], "b": ["b2", "b3", "b4"], "c": []})
    assert j["a"]["b"] == j["b"]["a"] == pytest.approx(2 / 4)
    assert j["a"]["a"] == 1.0 and j["a"]["c"] == 0.0 and j["c"]["c"] == 1.0


# --- blocks: the compiler pass and the choice kind ------------------------------------------------
@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_zoo_blocks_collapse_with_exact_cost_and_output(name: str) -> None:
    torch.manual_seed(0)
    net = randomize_norms(backbones.get(name), 0)
    graph = automtl.compile(net, (3, 32, 32))
    blocks = find_graph_blocks(graph)
    assert blocks == find_blocks(net)[: len(blocks)] or set(blocks) <= set(find_blocks(net))
    if name == "resnet18":
        assert blocks == ["layer1.0", "layer1.1", "layer2.1", "layer3.1", "layer4.1"]
        assert block_region(graph, "layer1.0")[0][-2:] == ["add", "layer1.0.relu2"]  # the residual add inside
    else:
        assert "features.3" in blocks and block_region(graph, "features.3")[2] == "add"  # the add after the block
    collapsed = collapse_blocks(graph, blocks)
    assert (collapsed.params, collapsed.flops) == (graph.params, graph.flops)
    assert sum(n.kind == "block" for n in collapsed) == len(blocks)
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(codegen(collapsed).eval()(x), codegen(graph).eval()(x), atol=1e-5)


def test_a_block_that_is_not_there_or_has_two_outputs_is_named() -> None:
    graph = automtl.compile(SmallResNet(8, 1, 1), (3, 8, 8))
    with pytest.raises(CompileError, match="block 'nope': no operator is named"):
        collapse_blocks(graph, ["nope"])

    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU())
            self.b = nn.Conv2d(3, 3, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.a[0](x)
            return self.b(self.a[1](h)) + h  # a.0's value leaves the block "a" twice

    with pytest.raises(CompileError, match="block 'a' gives 2 values to the rest of the network"):
        collapse_blocks(automtl.compile(Two(), (3, 4, 4)), ["a"])


def test_block_choices_offer_zero_only_where_shapes_match() -> None:
    model = _model()
    assert [c.node for c in model.choices] == ["layers.0", "layers.1", "layers.3", "layers.4"]
    assert all(c.branches == ("block", "zero") and c.options[0].bank == f"block:{c.node}" for c in model.choices)
    assert "layers.2.0" in model.graph  # the strided convolution changes shapes: no block, no choice


@pytest.mark.parametrize("multi_domain", [False, True])
def test_zero_block_derives_to_identity_and_derive_equals_fixed_mode(multi_domain: bool) -> None:
    model = _model().eval()
    pick = torch.tensor([[0, 1, 0, 1], [1, 1, 0, 0]])  # a skips layers.1 and layers.4; b skips layers.0, layers.1
    arch = model.architecture_from_indices(pick)
    x = torch.randn(4, 3, 8, 8)
    xs = {"a": x, "b": torch.randn(4, 3, 8, 8)}
    want = model(xs if multi_domain else x, architecture=arch)
    derived = derive(model, arch, multi_domain=multi_domain).eval()
    got = derived.as_dict(*xs.values()) if multi_domain else derived.as_dict(x)
    for t in want:
        assert torch.allclose(got[t], want[t], atol=1e-5), t
    blocks = {n.attrs["derived"]["source"] for n in derived.graph if n.kind == "block"}
    assert blocks == {"layers.0", "layers.3", "layers.4"}  # layers.1 is dropped: nobody runs it
    # both paths run layers.3, on different values (a ran layers.0 before it), with one set of weights
    assert derived.report()["sharing"]["layers.3"] == ["a", "b"]
    mods = node_modules(derived.net)
    assert mods["layers.3[a]"] is mods["layers.3[b]"]
    # every block run: the original network
    full = model.architecture_from_indices(torch.zeros(2, 4, dtype=torch.long))
    torch.manual_seed(0)
    net = randomize_norms(SmallResNet(8, 2, 2), 0)
    assert torch.allclose(derive(model, full).eval().net(x)[0], model.heads["a"](net(x)), atol=1e-5)


def test_path_cost_is_the_derived_path_exactly() -> None:
    model = _model({"a": 3, "b": 5, "c": 2})
    pick = torch.tensor([[0, 1, 0, 1], [1, 1, 1, 1], [0, 0, 0, 0]])
    report = derive(model, model.architecture_from_indices(pick)).report()["per_task"]
    for kind in ("params", "flops"):
        cost = PathCost(model, kind)(pick)
        assert cost.tolist() == [report[t][kind] for t in ("a", "b", "c")]
    assert PathCost(model, "flops")(pick)[1] < PathCost(model, "flops").full()[1]


def test_sharing_rows_and_paths() -> None:
    model = _model({"a": 3, "b": 5, "c": 2})
    arch = model.architecture_from_indices(torch.tensor([[0, 1, 0, 1], [1, 1, 0, 1], [1, 1, 1, 1]]))
    paths = block_paths(model, arch)
    assert paths == {"a": ["layers.0", "layers.3"], "b": ["layers.3"], "c": []}
    status = {r["block"]: r["status"] for r in sharing(model, arch)}
    assert status == {"layers.0": "specific", "layers.1": "dropped", "layers.3": "shared", "layers.4": "dropped"}
    assert jaccard(paths)["a"]["b"] == 0.5


# --- the strategy ---------------------------------------------------------------------------------
def _suite_data(n: int = 48) -> tuple[dict[str, Classification], list[Dataset], dict[str, int]]:
    suite = domain_suite(8, n, 16, seed=0, domains=("digits", "shapes"))
    return suite.tasks, list(suite.splits()), suite.num_classes


def test_the_suite_has_five_domains_of_different_statistics() -> None:
    suite = domain_suite(16, 40, 10)
    assert list(suite.tasks) == list(DOMAINS) and len(DOMAINS) >= 5
    assert len(set(suite.num_classes.values())) >= 4
    means = [float(d.images.mean()) for d in suite.train.datasets.values()]
    assert max(means) - min(means) > 0.05
    for d in suite.train.datasets.values():
        assert d.images.shape[1:] == (3, 16, 16) and int(d.labels.max()) < d.num_classes
    native = {name: make_domain(name, 2).images.shape[-1] for name in DOMAINS}
    assert len(set(native.values())) >= 3  # different image sizes before resizing
    item = suite.train[0]
    assert set(item) == set(DOMAINS) and all(x.shape == (3, 16, 16) for x, _ in item.values())


def test_mpnas_runs_from_python_and_resumes_exactly(tmp_path: Path, deterministic: None) -> None:
    tasks, data, classes = _suite_data()

    def searcher() -> MPNASSearcher:
        torch.manual_seed(0)
        model = build_blocks(SmallResNet(8, 2, 1), _heads(classes, 16), input_shape=(3, 8, 8))
        cfg = MPNASConfig(search_steps=6, warmup_fraction=0.5, train_steps=3, batch_size=8, quiet=True)
        return MPNASSearcher(model, tasks, data, cfg)

    first = searcher()
    full = first.run()
    assert full is not None and set(full.metrics) == {"digits", "shapes"}
    assert full.history["search"][0]["reward"] == full.history["search"][0]["baseline"]  # first advantage 0
    assert full.history["search"][0]["enable"] == 1.0 and full.history["search"][3]["enable"] == 0.0
    assert len(full.history["train"]) == 3 and full.report["params_ratio"] < 1
    cut = searcher()
    assert cut.run(stop_after=4, checkpoint=tmp_path / "ck.pt") is None
    resumed = MPNASSearcher.resume(tmp_path / "ck.pt", cut.model, tasks, data)
    assert resumed.step == 4
    again = resumed.run()
    assert again is not None
    assert torch.equal(resumed.controller.logits, first.controller.logits)
    assert again.history["search"][4:] == full.history["search"][4:]
    assert again.metrics == full.metrics and again.architecture.choices == full.architecture.choices


def test_controllers_freeze_during_warmup_and_multi_head_search_shares_one_path() -> None:
    tasks, data, classes = _suite_data(32)
    torch.manual_seed(0)
    model = build_blocks(SmallResNet(8, 2, 1), _heads(classes, 16), input_shape=(3, 8, 8))
    s = MPNASSearcher(model, tasks, data, MPNASConfig(search_steps=4, warmup_fraction=1.0, train_steps=0,
                                                      batch_size=8, quiet=True))
    s.run_stages()
    assert torch.count_nonzero(s.controller.logits) == 0  # learning rate 0 all through the warm-up
    torch.manual_seed(0)
    model = build_blocks(SmallResNet(8, 2, 1), _heads(classes, 16), input_shape=(3, 8, 8))
    result = mpnas(model, tasks, data, MPNASConfig(search_steps=4, warmup_fraction=0.0, train_steps=1,
                                                   batch_size=8, quiet=True, controller="shared"))
    assert result.paths["digits"] == result.paths["shapes"]
    assert len(result.history["search"][0]["reward"]) == 1  # one controller, one reward (the mean)


def test_mpnas_is_a_registered_strategy_and_runs_from_a_config(tmp_path: Path) -> None:
    from automtl.app.config import build_model, build_tasks, load_config

    assert get_strategy("mpnas").loop is MPNASSearcher and get_strategy("mpnas").options is MPNASConfig
    path = tmp_path / "run.yaml"
    path.write_text(
        "backbone: {name: resnet18, input_shape: [3, 16, 16], trunk_output: layer2}\n"
        "tasks:\n  digits: {kind: classification, num_classes: 10}\n  shapes: {kind: classification, num_classes: 5}\n"
        "data: {factory: 'automtl.train.domains:suite_splits', size: 16, n_train: 24, n_val: 8}\n"
        "search: {strategy: mpnas, search_steps: 2, train_steps: 1, batch_size: 4, reward: mnas, beta: -0.07,"
        " cost_kind: params, final_weighting: abdp}\n")
    cfg = load_config(path, check_memory=False)
    assert cfg.strategy == "mpnas" and isinstance(cfg.search, MPNASConfig) and cfg.search.reward == "mnas"
    model = with_blocks(build_model(cfg))
    assert [c.node for c in model.choices] == ["layer1.0", "layer1.1", "layer2.1"]
    # the config's data check takes (image, {task: target}) items; the suite's are {domain: (x, y)}
    data = suite_splits(**{k: v for k, v in cfg.data.options.items() if k != "seed"}, tasks=list(cfg.tasks))
    result = MPNASSearcher(model, build_tasks(cfg), data, cfg.search).run()
    assert result is not None and set(result.metrics) == {"digits", "shapes"}
    assert result.config.final_weighting == "abdp"
    with pytest.raises(Exception, match="cost_kind"):
        MPNASConfig(cost_kind="latency")


@pytest.mark.parametrize("domain_bn", [False, True])
def test_recalibration_makes_eval_mode_normalise_with_the_batches_statistics(domain_bn: bool) -> None:
    """Running statistics left by training (here: of other inputs) are replaced by the average over the
    given batches at the current weights: eval mode then computes what train mode does on that batch."""
    torch.manual_seed(0)
    model = build_blocks(SmallResNet(8, 2, 2), _heads({"a": 3, "b": 5}, 16), input_shape=(3, 8, 8),
                         domain_bn=domain_bn)
    path = FixedPath(model, model.architecture_from_indices(torch.tensor([[0, 1, 0, 0], [0, 0, 1, 0]])),
                     multi_domain=True)
    x = torch.randn(32, 3, 8, 8) * 2 + 1
    xs = [x, x.flip(0)]  # the same statistics for both domains (a shared batch norm averages the domains')
    with torch.no_grad():
        model.train()
        path(torch.randn(32, 3, 8, 8), torch.randn(32, 3, 8, 8))  # statistics of other inputs
        want = path(*xs)  # train mode: each batch norm by this batch's statistics
    weights = {k: v.clone() for k, v in model.named_parameters()}
    model.eval()
    assert not all(torch.allclose(path(*xs)[t], want[t], atol=1e-2) for t in want)
    assert recalibrate_batch_norms(path, [xs] * 5, lambda batch: path(*batch), limit=3) == 3
    assert not model.training  # put back as it was
    got = path(*xs)
    assert all(torch.allclose(got[t], want[t], rtol=1e-2, atol=1e-2) for t in want)
    assert all(torch.equal(v, weights[k]) for k, v in model.named_parameters())
    assert all(m.momentum == 0.1 for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))


# --- the controllers learn ------------------------------------------------------------------------
class _Colours(Dataset):
    """Labels from the mean colour (the stem sees it: no block needed) or from a checkerboard."""

    def __init__(self, n: int, seed: int, kind: str) -> None:
        rng = np.random.default_rng(seed)
        self.y = torch.from_numpy(rng.integers(0, 3, n))
        x = rng.normal(0, 0.3, (n, 3, 8, 8)).astype(np.float32)
        for i, c in enumerate(self.y.tolist()):
            if kind == "colour":
                x[i, c] += 1.0
            else:
                period = c + 1
                yy, xx = np.mgrid[0:8, 0:8]
                x[i] += (((yy // period + xx // period) % 2) * 2 - 1).astype(np.float32)
        self.x = torch.from_numpy(x)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]


def test_controllers_learn_that_one_domain_is_best_served_by_skipping(deterministic: None) -> None:
    """The colour domain gains nothing from the block, so the cost term makes its controller skip it;
    the pattern domain's cost target is its full path, so its controller keeps the block."""
    tasks = {"colour": Classification("colour", 3), "pattern": Classification("pattern", 3)}
    splits = [MultiDomain({"colour": _Colours(n, s, "colour"), "pattern": _Colours(n, s + 1, "pattern")})
              for n, s in ((96, 0), (64, 10), (32, 20))]
    skipped, kept = 0, 0
    for seed in range(3):
        torch.manual_seed(seed)
        model = build_blocks(SmallResNet(8, 1, 1), _heads({"colour": 3, "pattern": 3}, 8), input_shape=(3, 8, 8))
        ratio = float(PathCost(model, "flops")(torch.tensor([[1], [1]]))[0] / PathCost(model, "flops").full()[0])
        cfg = MPNASConfig(search_steps=60, warmup_fraction=0.1, train_steps=0, batch_size=16, quiet=True, seed=seed,
                          policy_lr=0.1, beta=-0.5, cost_target={"colour": ratio, "pattern": 1.0})
        s = MPNASSearcher(model, tasks, splits, cfg)
        s.run_stages()
        arch = s.architecture()
        skipped += arch.branch("layers.0", "colour") == "zero"
        kept += arch.branch("layers.0", "pattern") == "block"
    assert skipped >= 2 and kept >= 2


def exports_exactly(model: automtl.SuperModel, pick: torch.Tensor, path: Path) -> None:
    """The multi-domain model derived at ``pick`` (domains a, b; 3x8x8 inputs) exports to ONNX with one input
    and one output per domain, equal to PyTorch under onnxruntime."""
    from automtl.app.export import check_onnx, export_onnx

    derived = derive(model, model.architecture_from_indices(pick), multi_domain=True).eval()
    proto = export_onnx(derived, path, [(3, 8, 8), (3, 8, 8)])
    assert len(proto.graph.input) == 2 and [o.name for o in proto.graph.output] == ["a", "b"]
    diffs = check_onnx(path, derived, [torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)])
    assert set(diffs) == {"a", "b"} and max(diffs.values()) < 1e-4


def test_the_derived_multi_domain_model_exports_to_onnx_one_input_and_output_per_domain(tmp_path: Path) -> None:
    exports_exactly(_model({"a": 3, "b": 5}).eval(), torch.tensor([[0, 1, 0, 1], [1, 1, 0, 0]]), tmp_path / "m.onnx")


def test_show_draws_the_domain_paths_and_their_jaccard_matrix(tmp_path: Path) -> None:
    from automtl.app.block_pictures import block_grid, block_jaccard
    from automtl.app.pictures import render_all

    model = _model({"a": 3, "b": 5, "c": 2})
    arch = model.architecture_from_indices(torch.tensor([[0, 1, 0, 1], [1, 1, 0, 1], [1, 1, 1, 1]]))
    blocks, rows = block_grid(arch)
    assert blocks == ["layers.0", "layers.1", "layers.3", "layers.4"]
    assert rows[0] == ["specific", "skipped", "shared", "skipped"] and rows[2] == ["skipped"] * 4
    assert block_jaccard(arch)[0][1] == 0.5 and block_jaccard(arch)[0][2] == 0.0
    paths = render_all(arch, tmp_path / "pictures", history={"search": [{"step": 0, "loss": {"a": 1.0}}]})
    assert {"paths", "jaccard"} <= set(paths) and all(p.stat().st_size > 1000 for p in paths.values())


def test_domain_batch_norms_derive_exactly_with_shared_convolutions() -> None:
    torch.manual_seed(0)
    model = build_blocks(randomize_norms(SmallResNet(8, 2, 2), 0), _heads({"a": 3, "b": 5}, 16),
                         input_shape=(3, 8, 8), domain_bn=True)
    assert all(c.choice_kind == "domain_block" for c in model.choices) and model.options.bn == "specific"
    xs = {"a": torch.randn(4, 3, 8, 8), "b": torch.randn(4, 3, 8, 8)}
    gates = model.policy.one_hot(torch.zeros(2, 4, dtype=torch.long))
    model.train()
    model(xs, gates=gates)  # one training step's statistics: each domain's batch norms see their domain only
    block = next(m for m in model.trunk.modules() if isinstance(m, BlockModule)).block
    bn_a, bn_b = block.copies[0].get_submodule("layers_0_bn1"), block.copies[1].get_submodule("layers_0_bn1")
    assert not torch.equal(bn_a.running_mean, bn_b.running_mean)
    conv_a, conv_b = block.copies[0].get_submodule("layers_0_conv1"), block.copies[1].get_submodule("layers_0_conv1")
    assert conv_a.weight is conv_b.weight
    model.eval()
    arch = model.architecture_from_indices(torch.tensor([[0, 1, 0, 1], [1, 1, 0, 0]]))
    want = model(xs, architecture=arch)
    derived = derive(model, arch, multi_domain=True).eval()
    got = derived.as_dict(*xs.values())
    assert all(torch.allclose(got[t], want[t], atol=1e-5) for t in want)
    other = _model()
    plain = derive(other, other.architecture_from_indices(model.architecture_tensor(arch)),
                   multi_domain=True).report()["total"]["params"]
    # a second domain's batch norms where both domains run the block: two in layers.3 (16 channels; layers.0
    # is a's alone, layers.4 b's alone) and the stem's (8); the strided convolution's already follows the
    # block choice before it, per domain
    assert derived.report()["total"]["params"] == plain + 2 * 2 * 16 + 2 * 8
    # one input for all: the stem's batch norms are per domain already, so every block sees per-domain values
    one = model(xs["a"], architecture=arch)
    got = derive(model, arch).eval().as_dict(xs["a"])
    assert all(torch.allclose(got[t], one[t], atol=1e-5) for t in one)
    follow = build_blocks(SmallResNet(8, 2, 2), _heads({"a": 3, "b": 5}, 16), input_shape=(3, 8, 8), domain_bn=True,
                          bn="follow")
    with pytest.raises(ValueError, match="needs one input per domain"):
        follow(xs["a"], architecture=follow.architecture_from_indices(torch.zeros(2, 4, dtype=torch.long)))


def test_automtl_mpnas_runs_a_config_into_a_folder_and_the_model_loads_back(tmp_path: Path) -> None:
    from automtl.app.cli import main
    from automtl.model.derive import MultiTaskModel

    path = tmp_path / "run.yaml"
    path.write_text(
        "backbone: {name: resnet18, input_shape: [3, 16, 16], trunk_output: layer1}\n"
        "tasks:\n  digits: {kind: classification, num_classes: 10}\n  glyphs: {kind: classification, num_classes: 8}\n"
        "data: {factory: 'automtl.train.domains:suite_splits', size: 16, n_train: 24, n_val: 8}\n"
        "search: {strategy: mpnas, search_steps: 2, train_steps: 1, batch_size: 4}\n")
    out = tmp_path / "out"
    assert main(["mpnas", str(path), "--out", str(out), "--quiet"]) == 0
    result = json.loads((out / "result.json").read_text())
    assert set(result["paths"]) == {"digits", "glyphs"} and result["params_ratio"] < 1
    assert (out / "pictures" / "paths.png").is_file() and (out / "pictures" / "jaccard.png").is_file()
    model = MultiTaskModel.load(out / "model.pt").eval()
    x = [torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16)]
    assert [tuple(o.shape) for o in model(*x)] == [(2, 10), (2, 8)]
    path.write_text(path.read_text().replace("strategy: mpnas, search_steps: 2, train_steps: 1, ", ""))
    assert main(["mpnas", str(path), "--out", str(out)]) != 0  # an automtl config: one error line


def _dp_worker(rank: int, world: int, init_file: str, out: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        tasks, data, classes = _suite_data(32)
        torch.manual_seed(0)
        model = build_blocks(SmallResNet(8, 2, 1), _heads(classes, 16), input_shape=(3, 8, 8), domain_bn=True)
        s = MPNASSearcher(model, tasks, data, MPNASConfig(search_steps=4, warmup_fraction=0.5, train_steps=2,
                                                          batch_size=8, quiet=True))
        result = s.run()
        torch.save({"logits": s.controller.logits.detach(), "baseline": s.baseline.value,
                    "model": {k: v.detach() for k, v in model.state_dict().items()},
                    "derived": {k: v.detach() for k, v in result.model.state_dict().items()},
                    "choices": result.architecture.choices, "world": s.world}, f"{out}/rank{rank}.pt")
    finally:
        leave()
    exit_process(0)  # past torch's gloo teardown, which can abort a finished process at exit


def test_data_parallel_processes_search_the_same_paths_and_end_identical(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    mp.spawn(_dp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    a, b = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2))
    assert a["world"] == b["world"] == 2 and a["choices"] == b["choices"]
    assert torch.equal(a["logits"], b["logits"]) and torch.equal(a["baseline"], b["baseline"])
    assert not torch.equal(a["logits"], torch.zeros_like(a["logits"]))  # the controllers moved
    for part in ("model", "derived"):
        assert all(torch.allclose(a[part][k].float(), b[part][k].float(), atol=1e-6) for k in a[part]), part
