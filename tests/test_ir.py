"""The IR: construction, validation errors, shape errors naming the node, the op table, cut and prune."""

from __future__ import annotations

import pytest
import torch

from automtl.compiler import passes
from automtl.compiler.codegen import codegen
from automtl.compiler.errors import CompileError, Source
from automtl.compiler.ir import Graph, Node
from automtl.compiler.ops import ShapeError


def conv(name: str, src: str, cin: int, cout: int, k: int = 3, stride: int = 1, pad: int = 1) -> Node:
    attrs = {"in_channels": cin, "out_channels": cout, "kernel_size": k, "stride": stride, "padding": pad,
             "dilation": 1, "groups": 1, "bias": False}
    return Node(name, "conv2d", [src], attrs)


def small_graph() -> Graph:
    """x -> c1 -> r1 -> c2 -> add(c2, r1) -> pool -> out, plus a side branch c3 used as a 2nd output."""
    g = Graph("small", file="small.prototxt")
    g.add(Node("x", "input", attrs={"shape": (1, 3, 8, 8)}))
    g.add(conv("c1", "x", 3, 4))
    g.add(Node("r1", "relu", ["c1"]))
    g.add(conv("c2", "r1", 4, 4))
    g.add(Node("sum", "add", ["c2", "r1"]))
    g.add(Node("pool", "max_pool2d", ["sum"], {"kernel_size": 2, "stride": 2, "padding": 0}))
    g.add(conv("c3", "r1", 4, 2, k=1, pad=0))
    g.outputs = ["pool", "c3"]
    return g


def test_valid_graph_validates_infers_and_runs() -> None:
    g = passes.run_all(small_graph())
    assert [n.shape for n in g] == [
        (1, 3, 8, 8), (1, 4, 8, 8), (1, 4, 8, 8), (1, 4, 8, 8), (1, 4, 8, 8), (1, 4, 4, 4), (1, 2, 8, 8),
    ]
    assert g.params == 4 * 3 * 9 + 4 * 4 * 9 + 2 * 4
    assert g.flops == sum(n.flops for n in g) > 0
    assert g.users("r1") == ["c2", "sum", "c3"]
    assert g.output_shapes() == {"pool": (1, 4, 4, 4), "c3": (1, 2, 8, 8)}
    out = codegen(g)(torch.randn(3, 3, 8, 8))
    assert [tuple(o.shape) for o in out] == [(3, 4, 4, 4), (3, 2, 8, 8)]


# --- validation ---------------------------------------------------------------------------------
def test_cycle_is_rejected() -> None:
    g = small_graph()
    g.nx.add_edge("sum", "c1")  # edit the DiGraph by hand: sum -> c1 closes a loop
    with pytest.raises(CompileError, match="'small' has a cycle"):
        passes.validate(g)


def test_dangling_input_rejected_on_add() -> None:
    g = Graph()
    g.add(Node("x", "input", attrs={"shape": (1, 3, 4, 4)}))
    with pytest.raises(CompileError, match="input 'ghost' is not produced") as info:
        g.add(Node("r", "relu", ["ghost"]))
    assert "'r'" in str(info.value)
    assert "r" not in g


def test_dangling_input_rejected_by_validate() -> None:
    g = small_graph()
    g["c2"].inputs = ["gone"]  # an edit that bypassed Graph.add
    with pytest.raises(CompileError, match="'gone' is not produced") as info:
        passes.validate(g)
    assert "'c2'" in str(info.value)


def test_duplicate_name_rejected() -> None:
    g = small_graph()
    with pytest.raises(CompileError, match="duplicate operator name 'r1'"):
        g.add(Node("r1", "relu", ["x"]))


def test_unknown_kind() -> None:
    g = small_graph()
    g.add(Node("weird", "frobnicate", ["pool"]))
    g.outputs = ["weird"]
    with pytest.raises(CompileError, match="unknown operator kind 'frobnicate'") as info:
        passes.validate(g)
    assert "'weird'" in str(info.value)
    assert "conv2d" in str(info.value)  # lists the known kinds


@pytest.mark.parametrize(
    ("kind", "inputs", "want"),
    [
        ("relu", ["c1", "r1"], "relu takes 1 inputs, got 2"),
        ("crop", ["c1"], "crop takes 2 inputs, got 1"),
        ("add", [], "add takes 1..n inputs, got 0"),
        ("sub", ["c1", "r1", "c2"], "sub takes 1..2 inputs, got 3"),
    ],
)
def test_wrong_arity(kind: str, inputs: list[str], want: str) -> None:
    g = small_graph()
    g.add(Node("bad", kind, inputs))
    with pytest.raises(CompileError, match=want) as info:
        passes.validate(g)
    assert "'bad'" in str(info.value)


def test_no_outputs_and_no_inputs() -> None:
    g = small_graph()
    g.outputs = []
    with pytest.raises(CompileError, match="'small' has no output") as info:
        passes.validate(g)
    assert "small.prototxt" in str(info.value)
    empty = Graph("empty")
    with pytest.raises(CompileError, match="'empty' has no input"):
        passes.validate(empty)


def test_output_not_produced() -> None:
    g = small_graph()
    g.outputs = ["pool", "nowhere"]
    with pytest.raises(CompileError, match="output 'nowhere' is not produced"):
        passes.validate(g)


# --- shape errors name the node -----------------------------------------------------------------
def test_add_shape_mismatch_names_node() -> None:
    g = small_graph()
    g.add(Node("bad_sum", "add", ["pool", "c3"], source=Source(file="net.prototxt", line=42, layer="bad_sum",
                                                                  layer_type="Eltwise")))
    with pytest.raises(ShapeError) as info:
        passes.run_all(g)
    msg = str(info.value)
    assert msg.startswith("net.prototxt:42: Eltwise 'bad_sum':")
    assert "[1, 4, 4, 4]" in msg and "[1, 2, 8, 8]" in msg and "do not match" in msg
    assert isinstance(info.value, CompileError)


def test_concat_shape_mismatch_names_node() -> None:
    g = small_graph()
    g.add(Node("cat_bad", "concat", ["pool", "c3"], {"dim": 1}))
    with pytest.raises(ShapeError, match=r"concat 'cat_bad'.*differ outside the concatenation axis 1"):
        passes.run_all(g)


def test_concat_ok_and_batch_axis_rejected() -> None:
    g = small_graph()
    g.add(Node("cat", "concat", ["c1", "c3", "r1"], {"dim": 1}))
    g.outputs = ["cat"]
    passes.run_all(g)
    assert g["cat"].shape == (1, 10, 8, 8)
    g.add(Node("cat0", "concat", ["c1", "r1"], {"dim": 0}))
    g.outputs = ["cat0"]
    with pytest.raises(ShapeError, match="'cat0'.*batch dimension"):
        passes.run_all(g)


def test_conv_channel_mismatch_names_node() -> None:
    g = small_graph()
    g.add(conv("c4", "c3", 4, 8))
    with pytest.raises(ShapeError, match=r"'c4'.*expects 4 input channels .* has 2"):
        passes.run_all(g)


def test_empty_conv_output() -> None:
    g = Graph("tiny")
    g.add(Node("x", "input", attrs={"shape": (1, 3, 4, 4)}))
    g.add(conv("big", "x", 3, 8, k=7, pad=1))
    g.outputs = ["big"]
    with pytest.raises(ShapeError, match="'big'.*output would be empty: input size 4 with kernel 7") as info:
        passes.run_all(g)
    assert info.value.hint == "use a larger input shape"


def test_non_positive_input_shape() -> None:
    g = Graph()
    g.add(Node("x", "input", attrs={"shape": (1, 0, 4, 4)}))
    g.outputs = ["x"]
    with pytest.raises(ShapeError, match="non-positive"):
        passes.run_all(g)


# --- table and summary --------------------------------------------------------------------------
def test_table_content() -> None:
    g = passes.run_all(small_graph())
    lines = g.table().splitlines()
    assert lines[0].split() == ["name", "kind", "output", "shape", "params", "FLOPs"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    assert set(lines[-2].replace(" ", "")) == {"-"}
    body = lines[2:-2]
    assert len(body) == len(g)
    c1 = body[1].split()
    assert c1 == ["c1", "conv2d", "1x4x8x8", "108", f"{g['c1'].flops:,}"]
    assert body[0].split()[:3] == ["x", "input", "1x3x8x8"]
    assert lines[-1].split() == ["total", f"{g.params:,}", f"{g.flops:,}"]
    assert "," in f"{g.flops:,}"  # thousands separators are used
    widths = {len(line) for line in lines[2:-2]}
    assert max(widths) <= len(lines[1])  # columns align under the rule


def test_summary_rows() -> None:
    g = passes.run_all(small_graph())
    rows = g.summary()
    assert [r["name"] for r in rows] == [n.name for n in g]
    assert rows[1] == {"name": "c1", "kind": "conv2d", "shape": (1, 4, 8, 8), "params": 108,
                       "flops": 2 * 4 * 8 * 8 * 27}


# --- passes: cut and prune ----------------------------------------------------------------------
def test_cut_keeps_only_the_path_to_the_new_output() -> None:
    g = passes.run_all(small_graph())
    passes.cut(g, "sum")
    assert [n.name for n in g] == ["x", "c1", "r1", "c2", "sum"]
    assert g.outputs == ["sum"]
    assert g.params == 4 * 3 * 9 + 4 * 4 * 9
    passes.validate(g)


def test_cut_unknown_name_suggests_close_names() -> None:
    g = passes.run_all(small_graph())
    with pytest.raises(CompileError, match="no operator named 'pol'") as info:
        passes.cut(g, "pol")
    assert "did you mean pool" in str(info.value)
    assert len(g) == 7  # untouched


def test_prune_drops_dead_operators_but_keeps_inputs() -> None:
    g = small_graph()
    g.add(Node("y", "input", attrs={"shape": (1, 1)}))
    g.outputs = ["c3"]
    passes.prune(g)
    assert [n.name for n in g] == ["x", "c1", "r1", "c3", "y"]
    assert g.inputs == ["x", "y"]
    assert not g.nx.has_edge("r1", "c2")


def test_remove_and_replace_uses() -> None:
    g = small_graph()
    with pytest.raises(CompileError, match="cannot remove 'r1': it is still read"):
        g.remove("r1")
    g.add(Node("r1b", "relu", ["c1"]))
    g.replace_uses("r1", "r1b")
    assert g["c2"].inputs == ["r1b"] and g["sum"].inputs == ["c2", "r1b"]
    assert g.users("r1") == []
    g.remove("r1")
    assert "r1" not in g and len(g) == 7
    with pytest.raises(KeyError, match="no operator named 'r1'"):
        g["r1"]
