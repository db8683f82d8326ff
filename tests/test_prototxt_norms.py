"""The prototxt frontend's normalisation layers: BatchNorm and Scale folded into one affine batch norm (or
not), and LRN across and within channels as Caffe defines them, checked on the cifar10_full deploy file."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from caffe_reference import caffe_pool
from prototxt_helpers import (
    compile_,
    error,
    fill_random,
    layer,
    net,
)

from automtl.compiler.codegen import codegen
from automtl.compiler.frontends.prototxt import from_text

# ----------------------------------------------------------------------------- normalisation
BN_SCALE = layer(
    "bn",
    "BatchNorm",
    "data",
    "data",
    "batch_norm_param { use_global_stats: true eps: 0.001 moving_average_fraction: 0.9 }",
) + layer("sc", "Scale", "data", "data", "scale_param { bias_term: true }")


def test_batch_norm_and_scale_fold_into_one_affine_batch_norm() -> None:
    g = compile_(net(BN_SCALE, (2, 3, 4, 4)))
    assert [n.kind for n in g] == ["input", "batch_norm"] and g.outputs == ["bn"]
    assert g["bn"].attrs == {"num_features": 3, "eps": 0.001, "momentum": 0.1, "affine": True}
    assert g["bn"].params == 6
    x = torch.randn(2, 3, 4, 4)
    gm = codegen(g).eval()
    fill_random(gm)
    bn = gm.bn
    want = (x - bn.running_mean.view(1, -1, 1, 1)) / torch.sqrt(bn.running_var.view(1, -1, 1, 1) + 0.001)
    want = want * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(gm(x), want)


def test_scale_without_bias_folds_with_a_zero_bias() -> None:
    text = net(layer("bn", "BatchNorm", "data", "b") + layer("sc", "Scale", "b", "c"))
    g = compile_(text)
    assert [n.kind for n in g] == ["input", "batch_norm"] and g["bn"].attrs["affine"]
    assert g["bn"].attrs["momentum"] == pytest.approx(0.001)
    assert torch.equal(codegen(g).bn.bias.detach(), torch.zeros(3))


def test_batch_norm_alone_is_not_affine_and_scale_alone_is_scale() -> None:
    g = compile_(
        net(
            layer("bn", "BatchNorm", "data", "b")
            + layer("r", "ReLU", "b", "r")
            + layer("sc", "Scale", "r", "s", "scale_param { bias_term: true }")
        )
    )
    assert g["bn"].attrs["affine"] is False and g["bn"].params == 0
    assert g["sc"].kind == "scale" and g["sc"].attrs == {"num_features": 3, "bias": True} and g["sc"].params == 6
    x = torch.randn(1, 3, 8, 8)
    gm = codegen(g).eval()
    fill_random(gm)
    with torch.no_grad():
        z = F.relu(gm.bn(x))
        torch.testing.assert_close(gm(x), z * gm.sc.weight.view(1, -1, 1, 1) + gm.sc.bias.view(1, -1, 1, 1))


def test_scale_is_not_folded_when_the_batch_norm_output_is_also_read_elsewhere() -> None:
    text = net(layer("bn", "BatchNorm", "data", "b") + layer("r", "ReLU", "b", "r") + layer("sc", "Scale", "b", "s"))
    g = compile_(text)
    assert g["bn"].attrs["affine"] is False and g["sc"].kind == "scale"


def test_lrn_matches_caffes_formula() -> None:
    g = compile_(
        net(layer("n", "LRN", "data", "n", "lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 k: 2 }"), (1, 5, 2, 2))
    )
    assert g["n"].attrs == {"size": 3, "alpha": 0.5, "beta": 0.75, "k": 2.0}
    x = torch.randn(1, 5, 2, 2, dtype=torch.float64)
    sq = F.pad(x * x, (0, 0, 0, 0, 1, 1))
    scale = 2 + 0.5 / 3 * (sq[:, :-2] + sq[:, 1:-1] + sq[:, 2:])
    gm = codegen(g).double()
    with torch.no_grad():
        torch.testing.assert_close(gm(x), x * scale**-0.75)


def caffe_lrn_within_channel(x: torch.Tensor, size: int, alpha: float, beta: float) -> torch.Tensor:
    """Caffe's LRN WITHIN_CHANNEL from its definition: each value divided by
    ``(1 + alpha / size^2 * sum of squares over the zero-padded size x size window) ^ beta``."""
    h, w = x.shape[2:]
    pad = (size - 1) // 2
    sq = F.pad(x * x, (pad, pad, pad, pad))
    total = torch.zeros_like(x)
    for dy in range(size):
        for dx in range(size):
            total += sq[:, :, dy : dy + h, dx : dx + w]
    return x / (1 + alpha / size**2 * total) ** beta


@pytest.mark.parametrize(
    ("size", "alpha", "beta", "k"), [(3, 5e-05, 0.75, ""), (5, 2.0, 0.5, "k: 3"), (1, 0.5, 1.0, "")]
)
def test_lrn_within_channel_matches_caffes_definition(size: int, alpha: float, beta: float, k: str) -> None:
    """BVLC cifar10_full's norm layers; Caffe ignores k in this region (its shift is 1)."""
    params = f"lrn_param {{ local_size: {size} alpha: {alpha} beta: {beta} norm_region: WITHIN_CHANNEL {k} }}"
    g = compile_(net(layer("norm1", "LRN", "data", "norm1", params), (2, 4, 7, 6)))
    assert g["norm1"].kind == "lrn_within_channel" and g["norm1"].shape == (2, 4, 7, 6)
    assert g["norm1"].attrs == {"size": size, "alpha": alpha, "beta": beta} and g["norm1"].params == 0
    x = torch.randn(2, 4, 7, 6, dtype=torch.float64) * 3
    gm = codegen(g).double()
    with torch.no_grad():
        torch.testing.assert_close(gm(x), caffe_lrn_within_channel(x, size, alpha, beta), rtol=1e-12, atol=1e-12)


def cifar10_full_text() -> str:
    """BVLC's examples/cifar10 cifar10_full deploy network (WITHIN_CHANNEL LRN after two poolings)."""
    conv = "convolution_param {{ num_output: {} pad: 2 kernel_size: 5 stride: 1 }}"
    pool = "pooling_param {{ pool: {} kernel_size: 3 stride: 2 }}"
    norm = "lrn_param { local_size: 3 alpha: 5e-05 beta: 0.75 norm_region: WITHIN_CHANNEL }"
    return (
        'name: "CIFAR10_full_deploy"\n'
        + layer("data", "Input", [], "data", "input_param { shape: { dim: 1 dim: 3 dim: 32 dim: 32 } }")
        + layer("conv1", "Convolution", "data", "conv1", conv.format(32))
        + layer("pool1", "Pooling", "conv1", "pool1", pool.format("MAX"))
        + layer("relu1", "ReLU", "pool1", "pool1")
        + layer("norm1", "LRN", "pool1", "norm1", norm)
        + layer("conv2", "Convolution", "norm1", "conv2", conv.format(32))
        + layer("relu2", "ReLU", "conv2", "conv2")
        + layer("pool2", "Pooling", "conv2", "pool2", pool.format("AVE"))
        + layer("norm2", "LRN", "pool2", "norm2", norm)
        + layer("conv3", "Convolution", "norm2", "conv3", conv.format(64))
        + layer("relu3", "ReLU", "conv3", "conv3")
        + layer("pool3", "Pooling", "conv3", "pool3", pool.format("AVE"))
        + layer("ip1", "InnerProduct", "pool3", "ip1", "inner_product_param { num_output: 10 }")
        + layer("prob", "Softmax", "ip1", "prob")
    )


def test_cifar10_full_deploy_file_equals_caffes_definitions() -> None:
    g = from_text(cifar10_full_text(), "cifar10_full.prototxt")
    assert g.params == 89_578 and g.outputs == ["prob"]
    assert (g["norm1"].shape, g["norm2"].shape, g["pool3"].shape) == ((1, 32, 16, 16), (1, 32, 8, 8), (1, 64, 4, 4))
    gm = codegen(g).double().eval()
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64)

    def pool(y: torch.Tensor, method: str) -> torch.Tensor:
        return torch.from_numpy(caffe_pool(y.numpy(), 3, 2, 0, method, ceil=True))

    with torch.no_grad():
        y = pool(F.conv2d(x, gm.conv1.weight, gm.conv1.bias, padding=2), "MAX").relu()
        y = caffe_lrn_within_channel(y, 3, 5e-05, 0.75)
        y = pool(F.conv2d(y, gm.conv2.weight, gm.conv2.bias, padding=2).relu(), "AVE")
        y = caffe_lrn_within_channel(y, 3, 5e-05, 0.75)
        y = pool(F.conv2d(y, gm.conv3.weight, gm.conv3.bias, padding=2).relu(), "AVE")
        want = F.linear(y.flatten(1), gm.ip1.weight, gm.ip1.bias).softmax(1)
        torch.testing.assert_close(gm(x), want, rtol=1e-12, atol=1e-12)


def test_lrn_refuses_even_windows_and_non_image_inputs() -> None:
    for region in ("ACROSS_CHANNELS", "WITHIN_CHANNEL"):
        msg = error(net(layer("n", "LRN", "data", "n", f"lrn_param {{ local_size: 4 norm_region: {region} }}")))
        assert msg.startswith("net.prototxt:7: LRN 'n': LRN local_size must be odd, got 4")
    flat = layer("fc", "InnerProduct", "data", "fc", "inner_product_param { num_output: 4 }")
    msg = error(net(flat + layer("n", "LRN", "fc", "n", "lrn_param { norm_region: WITHIN_CHANNEL }")))
    assert msg.startswith("net.prototxt:14: LRN 'n': LRN expects a 4-d N,C,H,W input, got shape [1, 4]")
