"""The prototxt frontend's layers: shapes, parameter counts and numerics of convolution, linear, pooling,
element-wise, structural and activation layers against direct computations, Caffe's formulas where they
differ from torch's defaults, and the layers and options of common forks (ShuffleChannel, pooling
ceil_mode). Normalisation layers are in test_prototxt_norms.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from caffe_reference import caffe_pool
from prototxt_helpers import (
    compile_,
    error,
    layer,
    net,
    run,
)

from automtl.compiler.codegen import codegen
from automtl.compiler.errors import CompileError
from automtl.proto import caffe_pb2


# ----------------------------------------------------------------------------- convolution and linear
def test_convolution_parameters() -> None:
    text = net(
        layer(
            "c1",
            "Convolution",
            "data",
            "c1",
            "convolution_param { num_output: 6 kernel_h: 3 kernel_w: 1 "
            "stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 0 group: 3 bias_term: false }",
        )
        + layer(
            "c2",
            "Convolution",
            "c1",
            "c2",
            "convolution_param { num_output: 4 kernel_size: 3 kernel_size: 2 pad: 2 dilation: 2 stride: 1 }",
        )
        + layer("d", "Deconvolution", "c2", "d", "convolution_param { num_output: 2 kernel_size: 4 stride: 2 pad: 1 }"),
        (1, 3, 9, 7),
    )
    g = compile_(text)
    a = g["c1"].attrs
    assert (a["in_channels"], a["out_channels"], a["kernel_size"], a["stride"], a["padding"]) == (
        3,
        6,
        (3, 1),
        (2, 1),
        (1, 0),
    )
    assert a["groups"] == 3 and a["bias"] is False and g["c1"].shape == (1, 6, 5, 7)
    assert g["c1"].params == 6 * 1 * 3 * 1
    b = g["c2"].attrs
    assert (b["kernel_size"], b["padding"], b["dilation"], b["bias"]) == ((3, 2), (2, 2), (2, 2), True)
    assert g["c2"].shape == (1, 4, 5, 9)
    assert g["d"].kind == "conv_transpose2d" and g["d"].shape == (1, 2, 10, 18)
    x = torch.randn(1, 3, 9, 7)
    gm = codegen(g)
    with torch.no_grad():
        y = F.conv2d(x, gm.c1.weight, None, (2, 1), (1, 0), 1, 3)
        y = F.conv2d(y, gm.c2.weight, gm.c2.bias, 1, 2, 2)
        y = F.conv_transpose2d(y, gm.d.weight, gm.d.bias, 2, 1)
        torch.testing.assert_close(gm(x), y)


def test_inner_product_flattens_and_counts_parameters() -> None:
    g = compile_(
        net(
            layer("fc", "InnerProduct", "data", "fc", "inner_product_param { num_output: 10 }")
            + layer("fc2", "InnerProduct", "fc", "fc2", "inner_product_param { num_output: 2 bias_term: false }"),
            (2, 3, 4, 4),
        )
    )
    assert [n.kind for n in g] == ["input", "flatten", "linear", "linear"]
    assert g["fc/flatten"].shape == (2, 48) and g["fc"].shape == (2, 10) and g["fc2"].shape == (2, 2)
    assert g["fc"].params == 48 * 10 + 10 and g["fc2"].params == 20
    x = torch.randn(2, 3, 4, 4)
    gm = codegen(g)
    with torch.no_grad():
        torch.testing.assert_close(gm(x), F.linear(F.linear(x.flatten(1), gm.fc.weight, gm.fc.bias), gm.fc2.weight))


# ----------------------------------------------------------------------------- pooling
@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize(
    ("size", "k", "s", "p"), [(7, 3, 2, 0), (8, 3, 2, 1), (6, 2, 2, 1), (10, 3, 3, 1), (5, 4, 3, 2)]
)
@pytest.mark.parametrize("round_mode", ["", "round_mode: FLOOR", "ceil_mode: false", "ceil_mode: true"])
def test_pooling_matches_caffe(method: str, size: int, k: int, s: int, p: int, round_mode: str) -> None:
    """BVLC's round_mode and the forks' ceil_mode (pull request 3057: false is FLOOR) round as Caffe does."""
    params = f"pooling_param {{ pool: {method} kernel_size: {k} stride: {s} pad: {p} {round_mode} }}"
    g = compile_(net(layer("pool", "Pooling", "data", "pool", params), (2, 3, size, size)))
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    ceil = round_mode in ("", "ceil_mode: true")
    want = caffe_pool(x.numpy(), k, s, p, method, ceil=ceil)
    assert g["pool"].shape == want.shape
    assert g["pool"].attrs["ceil_mode"] is ceil
    np.testing.assert_allclose(run(g, x).numpy(), want, rtol=1e-12)


def test_ceil_rounding_differs_from_floor() -> None:
    text = net(
        layer("pool", "Pooling", "data", "pool", "pooling_param { pool: MAX kernel_size: 3 stride: 2 }"),
        (1, 1, 112, 112),
    )
    assert compile_(text)["pool"].shape == (1, 1, 56, 56)
    assert compile_(text.replace("stride: 2", "stride: 2 round_mode: FLOOR"))["pool"].shape == (1, 1, 55, 55)


def test_densenet_caffe_ceil_mode_false_rounds_down() -> None:
    """DenseNet-Caffe's pool1 (kernel 3, stride 2, pad 1, ``ceil_mode: false``) on its 112x112 map."""
    params = "pooling_param {{ pool: MAX kernel_size: 3 stride: 2 pad: 1 {} }}"
    shape = (1, 64, 112, 112)
    assert compile_(net(layer("pool1", "Pooling", "data", "pool1", params.format("")), shape))["pool1"].shape == (
        1,
        64,
        57,
        57,
    )
    g = compile_(net(layer("pool1", "Pooling", "data", "pool1", params.format("ceil_mode: false")), shape))
    assert g["pool1"].shape == (1, 64, 56, 56) and g["pool1"].attrs["ceil_mode"] is False
    assert caffe_pb2.PoolingParameter.DESCRIPTOR.fields_by_name["ceil_mode"].number == 1013
    both = params.format("ceil_mode: false round_mode: FLOOR")
    msg = error(net(layer("pool1", "Pooling", "data", "pool1", both), shape))
    assert msg == "net.prototxt:7: Pooling 'pool1': give either round_mode or ceil_mode, not both"


def test_global_pooling_and_pooling_errors() -> None:
    g = compile_(
        net(
            layer("gp", "Pooling", "data", "gp", "pooling_param { pool: AVE global_pooling: true }")
            + layer("gm", "Pooling", "data", "gm", "pooling_param { global_pooling: true }")
        )
    )
    assert g["gp"].kind == "adaptive_avg_pool2d" and g["gp"].shape == (1, 3, 1, 1)
    assert g["gm"].kind == "adaptive_max_pool2d" and g["gm"].attrs == {"output_size": (1, 1)}
    with pytest.raises(CompileError, match=r"net\.prototxt:\d+: Pooling 'p': STOCHASTIC pooling is not supported"):
        compile_(net(layer("p", "Pooling", "data", "p", "pooling_param { pool: STOCHASTIC kernel_size: 2 }")))
    with pytest.raises(CompileError, match="empty last window.*round_mode: FLOOR"):
        compile_(net(layer("p", "Pooling", "data", "p", "pooling_param { kernel_size: 1 stride: 2 }")))


# ----------------------------------------------------------------------------- element-wise and structure
def test_eltwise_sum_with_coefficients_prod_and_max() -> None:
    text = net(
        layer("a", "ReLU", "data", "a")
        + layer("b", "TanH", "data", "b")
        + layer(
            "sum",
            "Eltwise",
            ["data", "a", "b"],
            "sum",
            "eltwise_param { operation: SUM coeff: 1 coeff: -0.5 coeff: 2 }",
        )
        + layer("plain", "Eltwise", ["a", "b"], "plain", "eltwise_param { coeff: 1 coeff: 1 }")
        + layer("prod", "Eltwise", ["data", "a", "b"], "prod", "eltwise_param { operation: PROD }")
        + layer("max", "Eltwise", ["data", "b"], "max", "eltwise_param { operation: MAX }")
    )
    g = compile_(text)
    assert g["sum"].kind == "scaled_sum" and g["sum"].attrs == {"coeffs": [1.0, -0.5, 2.0]}
    assert (g["plain"].kind, g["prod"].kind, g["max"].kind) == ("add", "mul", "maximum")
    x = torch.randn(1, 3, 8, 8)
    a, b = x.relu(), x.tanh()
    s, plain, prod, mx = run(g, x)
    torch.testing.assert_close(s, x - 0.5 * a + 2 * b)
    torch.testing.assert_close(plain, a + b)
    torch.testing.assert_close(prod, x * a * b)
    torch.testing.assert_close(mx, torch.maximum(x, b))
    with pytest.raises(CompileError, match="coeff is only allowed with operation SUM"):
        compile_(
            net(layer("m", "Eltwise", ["data", "data"], "m", "eltwise_param { operation: MAX coeff: 1 coeff: 2 }"))
        )


def test_concat_axis_and_concat_dim() -> None:
    g = compile_(
        net(
            layer("a", "ReLU", "data", "a")
            + layer("c", "Concat", ["data", "a"], "c")
            + layer("h", "Concat", ["data", "a"], "h", "concat_param { axis: -2 }")
            + layer("w", "Concat", ["data", "a"], "w", "concat_param { concat_dim: 3 }")
        )
    )
    assert (g["c"].shape, g["h"].shape, g["w"].shape) == ((1, 6, 8, 8), (1, 3, 16, 8), (1, 3, 8, 16))
    assert g["h"].attrs == {"dim": 2}


def test_crop_offsets() -> None:
    text = layer(
        "in",
        "Input",
        [],
        ["x", "ref"],
        "input_param { shape { dim: 1 dim: 2 dim: 9 dim: 9 } shape { dim: 1 dim: 2 dim: 4 dim: 5 } }",
    )
    g = compile_(
        text
        + layer("c", "Crop", ["x", "ref"], "c", "crop_param { offset: 3 offset: 2 }")
        + layer("d", "Crop", ["x", "ref"], "d", "crop_param { axis: 1 offset: 0 offset: 1 offset: 3 }")
        + layer("e", "Crop", ["x", "ref"], "e", "crop_param { offset: 4 }")
    )
    assert g["c"].attrs == {"axis": 2, "offsets": [3, 2]} and g["c"].shape == (1, 2, 4, 5)
    assert g["e"].attrs["offsets"] == [4, 4]
    x, ref = torch.randn(1, 2, 9, 9), torch.randn(1, 2, 4, 5)
    c, d, e = run(g, x, ref)
    assert torch.equal(c, x[:, :, 3:7, 2:7]) and torch.equal(d, x[:, :, 1:5, 3:8]) and torch.equal(e, x[:, :, 4:8, 4:9])


# ----------------------------------------------------------------------------- activations and the rest
def test_activations_and_shape_layers() -> None:
    text = net(
        layer("leaky", "ReLU", "data", "l", "relu_param { negative_slope: 0.1 }")
        + layer("pr", "PReLU", "l", "pr")
        + layer("prs", "PReLU", "pr", "prs", "prelu_param { channel_shared: true }")
        + layer("elu", "ELU", "prs", "elu", "elu_param { alpha: 0.5 }")
        + layer("sw", "Swish", "elu", "sw")
        + layer("r6", "ReLU6", "sw", "r6")
        + layer("cl6", "Clip", "r6", "cl6", "clip_param { min: 0 max: 6 }")
        + layer("cl", "Clip", "cl6", "cl", "clip_param { min: -1 max: 0.5 }")
        + layer("sm", "Softmax", "cl", "sm", "softmax_param { axis: 2 }")
        + layer("fl", "Flatten", "sm", "fl", "flatten_param { axis: 2 }")
        + layer("pw", "Power", "fl", "pw", "power_param { scale: 2 shift: -1 }")
        + layer("rs", "Reshape", "pw", "rs", "reshape_param { shape { dim: 0 dim: -1 dim: 4 } }"),
        (2, 3, 4, 4),
    )
    g = compile_(text)
    kinds = {n.name: n.kind for n in g}
    assert kinds == {
        "data": "input",
        "leaky": "leaky_relu",
        "pr": "prelu",
        "prs": "prelu",
        "elu": "elu",
        "sw": "silu",
        "r6": "relu6",
        "cl6": "relu6",
        "cl": "clip",
        "sm": "softmax",
        "fl": "flatten",
        "pw/scale": "mul",
        "pw": "add",
        "rs": "reshape",
    }
    assert g["leaky"].attrs == {"negative_slope": 0.1} and g["pr"].params == 3 and g["prs"].params == 1
    assert g["cl"].attrs == {"min": -1.0, "max": 0.5} and g["sm"].attrs == {"dim": 2}
    assert g["fl"].shape == (2, 3, 16) and g["rs"].shape == (2, 12, 4)
    x = torch.randn(2, 3, 4, 4)
    gm = codegen(g)
    with torch.no_grad():
        y = F.prelu(F.prelu(F.leaky_relu(x, 0.1), gm.pr.weight), gm.prs.weight)
        y = F.silu(F.elu(y, 0.5))
        y = F.softmax(y.clamp(0, 6).clamp(-1, 0.5), 2).flatten(2) * 2 - 1
        torch.testing.assert_close(gm(x), y.reshape(2, 12, 4))


def test_interp_matches_deeplab_sizes() -> None:
    g = compile_(
        net(
            layer("up", "Interp", "data", "up", "interp_param { zoom_factor: 4 }")
            + layer("dn", "Interp", "data", "dn", "interp_param { shrink_factor: 2 }")
            + layer("hw", "Interp", "data", "hw", "interp_param { height: 5 width: 3 }"),
            (1, 3, 9, 9),
        )
    )
    assert (g["up"].shape, g["dn"].shape, g["hw"].shape) == ((1, 3, 33, 33), (1, 3, 5, 5), (1, 3, 5, 3))
    x = torch.randn(1, 3, 9, 9)
    up = run(g, x)[0]
    torch.testing.assert_close(up, F.interpolate(x, size=(33, 33), mode="bilinear", align_corners=True))
    torch.testing.assert_close(up[..., ::4, ::4], x)  # corners aligned: every 4th output is an input pixel


def caffe_shuffle_channel(x: torch.Tensor, group: int) -> torch.Tensor:
    """The ShuffleNet forks' ShuffleChannel from its definition: a (group, C / group) grid of
    channels read out transposed, so input channel ``g * (C / group) + i`` becomes ``i * group + g``."""
    per = x.shape[1] // group
    out = torch.empty_like(x)
    for g in range(group):
        for i in range(per):
            out[:, i * group + g] = x[:, g * per + i]
    return out


@pytest.mark.parametrize("group", [1, 2, 3, 6])
def test_shuffle_channel_matches_the_forks(group: int) -> None:
    params = f"shuffle_channel_param {{ group: {group} }}"
    g = compile_(net(layer("shuffle", "ShuffleChannel", "data", "shuffle", params), (2, 6, 3, 4)))
    assert g["shuffle"].kind == "channel_shuffle" and g["shuffle"].attrs == {"groups": group}
    assert g["shuffle"].shape == (2, 6, 3, 4) and g["shuffle"].params == 0
    x = torch.randn(2, 6, 3, 4)
    torch.testing.assert_close(run(g, x), caffe_shuffle_channel(x, group), rtol=0, atol=0)


def test_shufflenet_v2_unit_compiles_and_runs() -> None:
    """A ShuffleNet v2 unit as the forks write it: split the channels, convolve one half, concatenate,
    shuffle with group 2; the field is the forks' number 164 and the default group 1 is the identity."""
    conv = "convolution_param {{ num_output: 4 kernel_size: {} pad: {} group: {} bias_term: false }}"
    text = net(
        layer("split", "Slice", "data", ["left", "right"], "slice_param { slice_point: 4 }")
        + layer("pw", "Convolution", "right", "pw", conv.format(1, 0, 1))
        + layer("dw", "Convolution", "pw", "dw", conv.format(3, 1, 4))
        + layer("cat", "Concat", ["left", "dw"], "cat")
        + layer("shuffle", "ShuffleChannel", "cat", "shuffle", "shuffle_channel_param { group: 2 }")
        + layer("same", "ShuffleChannel", "shuffle", "same"),
        (1, 8, 5, 5),
    )
    g = compile_(text)
    assert g.outputs == ["same"] and g["same"].attrs == {"groups": 1}
    x = torch.randn(1, 8, 5, 5)
    gm = codegen(g).eval()
    with torch.no_grad():
        right = F.conv2d(F.conv2d(x[:, 4:], gm.pw.weight), gm.dw.weight, padding=1, groups=4)
        torch.testing.assert_close(gm(x), caffe_shuffle_channel(torch.cat([x[:, :4], right], 1), 2))
    assert caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name["shuffle_channel_param"].number == 164
    for bad, want in [
        ("group: 0", "shuffle_channel_param.group is 0; it must be positive"),
        ("group: 4", "shuffle_channel_param.group 4 does not divide the 6 input channels"),
    ]:
        msg = error(net(layer("s", "ShuffleChannel", "data", "s", f"shuffle_channel_param {{ {bad} }}"), (1, 6, 2, 2)))
        assert msg == f"net.prototxt:7: ShuffleChannel 's': {want}"
    msg = error(net(layer("s", "ShuffleChannel", "data", "s", "shuffle_channel_param { groups: 2 }")))
    assert msg.startswith("net.prototxt:12: ShuffleChannel 's': cannot parse") and 'no field named "groups"' in msg
