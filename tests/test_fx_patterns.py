"""The torch.fx frontend on a suite of popular CNN patterns (tests/cnn_patterns.py), with no hint.

Every pattern must compile with no ``leaf_modules=`` / ``wrap_functions=``, count exactly the source
module's parameters, and compute what the source computes; over the suite at most 5% of the operators
may stay opaque. The counts are printed (``pytest -s``) as a table.
"""

from __future__ import annotations

import warnings
from collections import Counter

import pytest
import torch
from cnn_patterns import PATTERNS
from torch import nn

import automtl
from automtl.compiler.frontends.fx import OpaqueOperatorWarning
from automtl.compiler.ir import Graph

SHAPE = (3, 32, 32)
MAX_OPAQUE_FRACTION = 0.05


def compile_pattern(name: str, randomize) -> tuple[nn.Module, Graph]:
    torch.manual_seed(0)
    module = randomize(PATTERNS[name]())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OpaqueOperatorWarning)
        return module, automtl.compile(module, input_shape=SHAPE)


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("name", list(PATTERNS))
def test_pattern_compiles_exactly_with_no_hint(name: str, randomize, assert_same) -> None:
    module, graph = compile_pattern(name, randomize)
    assert graph.params == n_params(module), "every parameter counted once"
    assert [n.name for n in graph if n.kind == "opaque"] == []
    assert_same(module, graph, batch=3)


def test_suite_opaque_fraction_and_counts(randomize) -> None:
    rows = []
    kinds: Counter[str] = Counter()
    for name in PATTERNS:
        module, graph = compile_pattern(name, randomize)
        ops = [n for n in graph if n.kind != "input"]
        kinds.update(n.kind for n in ops)
        rows.append((name, len(ops), sum(n.kind == "opaque" for n in ops), graph.params, n_params(module)))
    total, opaque = sum(r[1] for r in rows), sum(r[2] for r in rows)
    print(f"\n{'pattern':18s} {'ops':>5s} {'opaque':>6s} {'params':>8s} {'source':>8s}")
    for row in rows:
        print(f"{row[0]:18s} {row[1]:5d} {row[2]:6d} {row[3]:8d} {row[4]:8d}")
    print(f"{len(rows)} patterns: {total} operators, {opaque} opaque ({opaque / total:.1%}); kinds: {dict(kinds)}")
    assert len(rows) >= 20
    assert opaque <= MAX_OPAQUE_FRACTION * total
    assert all(r[3] == r[4] for r in rows)
    # the patterns exercise what they are meant to exercise
    for kind in ("batch_norm", "layer_norm", "parameter", "permute", "narrow", "reshape", "pad", "concat",
                 "interpolate", "avg_pool2d", "hardswish", "hardsigmoid", "silu", "gelu", "linear"):
        assert kinds[kind] > 0, kind


def test_reused_relu_gets_one_operator_per_call(randomize) -> None:
    _, graph = compile_pattern("resnet_d", randomize)
    assert [n.name for n in graph if n.name.startswith("layer1.relu")] == [
        "layer1.relu", "layer1.relu_1", "layer1.relu_2",
    ]
    assert {graph[n].kind for n in ("layer1.relu", "layer1.relu_1", "layer1.relu_2")} == {"relu"}


def test_fused_bn_act_is_a_batch_norm_named_after_its_module(randomize) -> None:
    module, graph = compile_pattern("fused_bn_act", randomize)
    for bn in ("bn1", "bn2", "bn3"):
        node = graph[bn]
        assert node.kind == "batch_norm" and node.params == 2 * node.attrs["num_features"]
        assert torch.equal(node.tensors["running_var"], module.get_submodule(bn).running_var)
    assert graph["bn2.act"].kind == "hardswish"


def test_dynamic_same_padding_is_static_pad_and_conv(randomize) -> None:
    _, graph = compile_pattern("tf_same_padding", randomize)
    pads = [n.attrs["pad"] for n in graph if n.kind == "pad"]
    assert pads == [[0, 1, 0, 1], [1, 2, 1, 2], [0, 1, 0, 1]]  # 32 -> 16 (k3 s2), 16 -> 8 (k5 s2), 8 -> 4
    assert (graph["conv_stem"].kind, graph["conv_stem"].attrs["padding"]) == ("conv2d", (0, 0))
    assert graph["max_pool2d"].shape == (1, 8, 4, 4)


def test_convnext_layer_norms_permutes_and_layer_scale(randomize) -> None:
    module, graph = compile_pattern("convnext", randomize)
    assert graph["stem.1"].kind == "layer_norm" and graph["stem.1"].shape == (1, 8, 8, 16)
    assert graph["stage1.gamma"].kind == "parameter" and graph["stage1.gamma"].shape == (16,)
    assert graph["stage2.gamma"].shape == (1, 24, 1, 1)  # `gamma.reshape(1, -1, 1, 1)` folded into the operator
    assert graph["stage1.gamma"].params == 16 and graph["stage1.fc1"].shape == (1, 8, 8, 64)
