"""MPNAS block variants: each block's kernel variants (5x5, 7x7) as options beside the block and the zero block."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import randomize_norms
from test_mpnas import _suite_data, exports_exactly
from torch import nn

import automtl
from automtl.app.block_pictures import block_grid, block_status
from automtl.compiler.blocks import kernel_variant, with_kernel_variants
from automtl.compiler.codegen import node_modules
from automtl.model.blocks import SmallResNet, build_blocks
from automtl.model.derive import derive
from automtl.search.mpnas import MPNASConfig, MPNASSearcher, mpnas
from automtl.search.paths import PathCost, sharing
from automtl.train.tasks import classification_head


class _Block(nn.Module):
    """SmallResNet's residual block at kernel ``k`` (same padding)."""

    def __init__(self, channels: int, k: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, k, padding=k // 2, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, k, padding=k // 2, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))) + x)


def _model(kernels: tuple[int, ...] = (5, 7), domain_bn: bool = False, classes: dict[str, int] | None = None,
           seed: int = 0) -> automtl.SuperModel:
    classes = classes or {"a": 3, "b": 5, "c": 2}
    torch.manual_seed(seed)
    heads = {t: classification_head(16, n) for t, n in classes.items()}
    return build_blocks(randomize_norms(SmallResNet(8, 2, 2), seed), heads, input_shape=(3, 8, 8), kernels=kernels,
                        domain_bn=domain_bn)


def test_a_kernel_variant_costs_what_the_compiled_block_at_that_kernel_costs() -> None:
    three = automtl.compile(_Block(8, 3), (1, 8, 8, 8))
    for k in (5, 7):
        variant = kernel_variant(three, k)
        assert variant is not None
        want = automtl.compile(_Block(8, k), (1, 8, 8, 8))
        assert (variant.params, variant.flops) == (want.params, want.flops)
        assert variant[variant.outputs[0]].shape == three[three.outputs[0]].shape
        convs = [n for n in variant if n.kind == "conv2d"]
        assert all(n.attrs["kernel_size"] == (k, k) and "weight" not in n.tensors for n in convs)
    assert kernel_variant(three, 3) is None  # nothing to change
    assert all(n.attrs["kernel_size"] == (3, 3) for n in three if n.kind == "conv2d")  # the source is untouched
    with pytest.raises(ValueError, match="odd"):
        kernel_variant(three, 4)


def test_blocks_offer_their_variants_after_the_zero_block_and_count_their_params() -> None:
    model = _model()
    assert [[o.name for o in c.options] for c in model.choices] == [["block", "zero", "k5", "k7"]] * 4
    assert len({o.bank for c in model.choices for o in c.options if o.bank}) == 12  # one bank per block and kernel
    assert model.mtl_graph.params == sum(p.numel() for p in model.trunk.parameters())
    plain = _model(kernels=())
    assert [[o.name for o in c.options] for c in plain.choices] == [["block", "zero"]] * 4
    # the strided convolution between the stages is no block: its kernel stays
    graph = with_kernel_variants(plain.graph, (5,))
    assert [n.name for n in graph if "variants" in n.attrs] == [c.node for c in plain.choices]


@pytest.mark.parametrize("domain_bn", [False, True])
def test_variant_paths_derive_equal_to_fixed_mode_and_share_a_variant_only_with_its_users(domain_bn: bool) -> None:
    model = _model(domain_bn=domain_bn).eval()
    # options: 0 block, 1 zero, 2 k5, 3 k7
    pick = torch.tensor([[2, 1, 0, 3], [2, 0, 3, 1], [0, 3, 3, 1]])
    arch = model.architecture_from_indices(pick)
    xs = {t: torch.randn(4, 3, 8, 8) for t in ("a", "b", "c")}
    want = model(xs, architecture=arch)
    derived = derive(model, arch, multi_domain=True).eval()
    got = derived.as_dict(*xs.values())
    for t in want:
        assert torch.allclose(got[t], want[t], atol=1e-5), t
    mods = node_modules(derived.net)
    assert mods["layers.0[a]"] is mods["layers.0[b]"]  # both run layers.0 at 5x5: one set of weights
    assert mods["layers.3[b]"] is mods["layers.3[c]"] and mods["layers.3[a]"] is not mods["layers.3[b]"]
    kernels = {n.attrs["derived"]["source"] + f"[{n.attrs['derived']['tasks'][0]}]":
               {m.attrs["kernel_size"] for m in n.attrs["graph"] if m.kind == "conv2d"}
               for n in derived.graph if n.kind == "block"}
    assert kernels["layers.0[a]"] == {(5, 5)} and kernels["layers.1[c]"] == {(7, 7)}
    assert kernels["layers.3[a]"] == {(3, 3)}
    for kind in ("params", "flops"):
        report = derived.report()["per_task"]
        assert PathCost(model, kind)(pick).tolist() == [report[t][kind] for t in ("a", "b", "c")]


def test_sharing_and_the_paths_picture_count_a_variant_as_its_own_bank() -> None:
    model = _model()
    arch = model.architecture_from_indices(torch.tensor([[2, 1, 0, 3], [2, 0, 3, 1], [0, 3, 3, 1]]))
    rows = {r["block"]: r for r in sharing(model, arch)}
    assert rows["layers.0"]["status"] == "shared" and rows["layers.0"]["options"] == {"a": "k5", "b": "k5",
                                                                                       "c": "block"}
    assert rows["layers.4"]["status"] == "specific"  # only a runs it
    assert rows["layers.1"]["status"] == "specific"  # b runs the block, c its 7x7 variant: two banks
    blocks, grid = block_grid(arch)
    assert grid[0] == ["shared", "skipped", "specific", "specific"]
    assert grid[1][blocks.index("layers.1")] == "specific" and grid[2][blocks.index("layers.3")] == "shared"
    # the report's status from the architecture alone agrees with the model's view, block by block
    assert block_status(arch) == {b: rows[b]["status"] for b in blocks}


def test_warmup_forces_a_running_option_and_reaches_every_variant() -> None:
    tasks, data, classes = _suite_data(32)
    torch.manual_seed(0)
    heads = {t: classification_head(16, n) for t, n in classes.items()}
    model = build_blocks(SmallResNet(8, 2, 1), heads, input_shape=(3, 8, 8), kernels=(5, 7))
    s = MPNASSearcher(model, tasks, data, MPNASConfig(search_steps=4, train_steps=0, batch_size=8, quiet=True))
    assert s.sample().shape == (len(classes), len(model.choices))  # one path per domain
    torch.manual_seed(1)
    seen = set()
    for _ in range(50):
        path = s.controller.sample()
        before = path.clone()
        s._force_on(path, torch.ones_like(path, dtype=torch.bool))
        assert not bool((path == 1).any())  # every forced choice runs
        assert bool((path[before != 1] == before[before != 1]).all())  # a running pick stays
        seen |= set(path[before == 1].tolist())
    assert seen == {0, 2, 3}
    plain = build_blocks(SmallResNet(8, 2, 1), heads, input_shape=(3, 8, 8))
    p = MPNASSearcher(plain, tasks, data, MPNASConfig(search_steps=4, train_steps=0, batch_size=8, quiet=True))
    path = torch.ones(len(classes), len(plain.choices), dtype=torch.long)
    p._force_on(path, torch.ones_like(path, dtype=torch.bool))
    assert bool((path == 0).all())  # block / zero: forced on is the block


def test_a_search_with_variants_runs_end_to_end_and_exports(tmp_path: Path) -> None:
    tasks, data, classes = _suite_data(32)
    torch.manual_seed(0)
    heads = {t: classification_head(16, n) for t, n in classes.items()}
    model = build_blocks(SmallResNet(8, 2, 1), heads, input_shape=(3, 8, 8), kernels=(5,))
    result = mpnas(model, tasks, data, MPNASConfig(search_steps=6, warmup_fraction=0.5, train_steps=2,
                                                   batch_size=8, quiet=True))
    assert set(result.paths) == set(classes)
    assert result.model.report()["total"]["params"] > 0
    with pytest.raises(ValueError, match="kernels"):
        MPNASConfig(kernels=[4])


def test_a_derived_model_with_variants_exports_to_onnx_and_matches(tmp_path: Path) -> None:
    model = _model(classes={"a": 3, "b": 5}).eval()
    exports_exactly(model, torch.tensor([[2, 1, 3, 0], [3, 2, 1, 0]]), tmp_path / "m.onnx")


def test_kernel_variants_from_a_config_run_through_the_cli(tmp_path: Path, capsys) -> None:
    import json

    from test_mpnas_cli import CONFIG

    from automtl.app.cli import main

    config = tmp_path / "mpnas.yaml"
    config.write_text(CONFIG.replace("recalibrate_batches: 2}", "recalibrate_batches: 2, kernels: [5]}")
                      .replace("baselines: [independent, all-shared]", "baselines: []"))
    run = tmp_path / "run"
    assert main(["search", str(config), "--out", str(run), "--quiet"]) == 0
    report = json.loads((run / "report.json").read_text())
    arch = json.loads((run / "architecture.json").read_text())
    picks = {b: per for b, per in arch["choices"].items()}
    assert {o for per in picks.values() for o in per.values()} <= {"block", "zero", "k5"}
    for t in ("digits", "glyphs"):  # the report names each variant a path runs
        assert report.get("variants", {}).get(t, {}) == {b: per[t] for b, per in picks.items() if per[t] == "k5"}
    for b, per in picks.items():  # shared: one bank that both domains run
        runs = [o for o in per.values() if o != "zero"]
        want = "shared" if len(runs) == 2 and runs[0] == runs[1] else "specific" if runs else "dropped"
        assert report["blocks"][b] == want
    capsys.readouterr()
    config.write_text(config.read_text().replace("kernels: [5]", "kernels: [4]"))
    assert main(["search", str(config), "--out", str(tmp_path / "bad"), "--quiet"]) == 2
    assert "kernels" in capsys.readouterr().err


def test_inverted_residual_blocks_vary_their_depthwise_kernel_and_derive_exactly() -> None:
    from automtl import backbones

    torch.manual_seed(0)
    heads = {"a": classification_head(1280, 3), "b": classification_head(1280, 4)}
    model = build_blocks(randomize_norms(backbones.get("mobilenet_v2"), 0), heads, input_shape=(3, 32, 32),
                         kernels=(5,), trunk_output="features").eval()
    assert model.choices and all([o.name for o in c.options] == ["block", "zero", "k5"] for c in model.choices)
    skippable = {c.node for c in model.choices}
    assert {n.name for n in model.graph if "variants" in n.attrs} == skippable  # a strided block has none
    node = model.graph[model.choices[0].node]
    convs = [(n.attrs["kernel_size"], n.attrs["groups"]) for n in node.attrs["variants"]["k5"] if n.kind == "conv2d"]
    depthwise = [k for k, g in convs if g > 1]
    assert depthwise == [(5, 5)] and all(k == (1, 1) for k, g in convs if g == 1)  # 1x1 convolutions stay
    pick = torch.zeros(2, len(model.choices), dtype=torch.long)
    pick[0, ::2], pick[1, 1::3] = 2, 1
    arch = model.architecture_from_indices(pick)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = model(x, architecture=arch)
        got = derive(model, arch).eval().as_dict(x)
    assert all(torch.allclose(got[t], want[t], atol=1e-5) for t in want)


def test_relaxed_gates_mix_every_variant_and_the_zero_block() -> None:
    from automtl.model.blocks import BlockModule

    model = _model(classes={"a": 3, "b": 5}).eval()
    block = next(m for m in model.trunk.modules() if isinstance(m, BlockModule))
    x = torch.randn(4, 8, 8, 8)  # two tasks' stacked inputs, 2 each
    gates = torch.softmax(torch.randn(2, len(model.choices), 4), -1).requires_grad_()
    y = block(x, gates, shared_input=False)
    g = gates[:, block.index]
    runs = [block.block, *block.variants]
    for t, xt in enumerate(x.chunk(2)):
        want = sum(g[t, j] * m(xt) for j, m in zip([0, 2, 3], runs, strict=True)) + g[t, 1] * xt
        assert torch.allclose(y.chunk(2)[t], want, atol=1e-5)
    y.sum().backward()
    assert gates.grad is not None and bool((gates.grad[:, block.index] != 0).all())


def test_a_derived_domain_block_holds_the_batch_norms_of_its_users_exports_and_loads_back(tmp_path: Path) -> None:
    from automtl.compiler.blocks import DomainBlocks
    from automtl.model.derive import MultiTaskModel

    model = _model(kernels=(), domain_bn=True, classes={"a": 3, "b": 5}).eval()
    pick = torch.tensor([[0, 1, 0, 1], [1, 1, 0, 0]])  # layers.0: a's alone; layers.3: both; layers.4: b's alone
    derived = derive(model, model.architecture_from_indices(pick), multi_domain=True).eval()
    held = sorted(m.domains for m in derived.net.modules() if isinstance(m, DomainBlocks))
    assert held == [[0], [0, 1], [1]]
    report = derived.report()
    assert [report["per_task"][t]["params"] for t in ("a", "b")] == PathCost(model, "params")(pick).tolist()
    exports_exactly(model, pick, tmp_path / "m.onnx")
    derived.save(tmp_path / "model.pt")
    again = MultiTaskModel.load(tmp_path / "model.pt").eval()
    xs = [torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)]
    assert all(torch.equal(x, y) for x, y in zip(derived(*xs), again(*xs), strict=True))
