"""Errors of the prototxt frontend: one message naming the file, line and layer for malformed text, unknown
layer types, missing bottoms, mismatched shapes and unsupported fields; reading paths and text."""

from __future__ import annotations

from pathlib import Path

import pytest
from prototxt_helpers import error, layer, net

from automtl.compiler.errors import CompileError
from automtl.compiler.frontends.prototxt import from_prototxt


# ----------------------------------------------------------------------------- errors
def test_malformed_text_names_file_line_column_and_layer() -> None:
    text = net(layer("ok", "ReLU", "data", "a") + 'layer {\n  name: "broken"\n  type: "ReLU"\n  bottom "a"\n}\n')
    msg = error(text)
    assert msg.startswith("net.prototxt:16: ReLU 'broken': cannot parse the prototxt (column 10)")
    unknown = error(net(layer("c", "Convolution", "data", "c", "convolution_param { num_outputs: 3 }")))
    assert unknown.startswith("net.prototxt:12: Convolution 'c'") and 'no field named "num_outputs"' in unknown


def test_unknown_layer_type_suggests_the_closest() -> None:
    msg = error(net(layer("bn", "BatchNorm", "data", "b") + layer("x", "Convolutoin", "b", "c")))
    assert msg.startswith("net.prototxt:13: Convolutoin 'x': unsupported layer type 'Convolutoin'")
    assert "did you mean 'Convolution'?" in msg
    msg = error(net(layer("x", "Zorg", "data", "c")))
    assert "supported: Accuracy, BatchNorm," in msg


def test_missing_and_out_of_order_bottoms() -> None:
    msg = error(net(layer("a", "ReLU", "dat", "a")))
    assert msg.startswith("net.prototxt:7: ReLU 'a': missing bottom 'dat'") and "did you mean 'data'?" in msg
    msg = error(net(layer("a", "ReLU", "b", "a") + layer("b", "ReLU", "a", "b")))
    assert msg.startswith("net.prototxt:7: ReLU 'a': bottom 'b' is only produced by a later layer, ReLU 'b' (line 13)")
    assert "out of order or form a cycle" in msg


def test_mismatched_shapes_name_the_layer() -> None:
    text = net(
        layer("c", "Convolution", "data", "c", "convolution_param { num_output: 4 kernel_size: 1 }")
        + layer("sum", "Eltwise", ["data", "c"], "sum")
    )
    msg = error(text)
    assert msg.startswith("net.prototxt:14: Eltwise 'sum':") and "[1, 3, 8, 8], [1, 4, 8, 8]" in msg
    msg = error(
        net(
            layer("p", "Pooling", "data", "p", "pooling_param { kernel_size: 2 stride: 2 }")
            + layer("cat", "Concat", ["data", "p"], "cat")
        )
    )
    assert msg.startswith("net.prototxt:14: Concat 'cat':") and "differ outside the concatenation axis" in msg


def test_empty_convolution_output_and_wrong_input_size() -> None:
    conv = layer("c", "Convolution", "data", "c", "convolution_param { num_output: 4 kernel_size: 5 }")
    msg = error(net(conv, (1, 3, 4, 4)))
    assert msg.startswith("net.prototxt:7: Convolution 'c': output would be empty: input size 4 with kernel 5")
    msg = error(net(conv), input_shape=(3, 3, 3))
    assert msg.startswith("net.prototxt:7: Convolution 'c': output would be empty")
    msg = error(net(conv), input_shape=(3, 0, 9))
    assert "non-positive dimension" in msg and msg.startswith("net.prototxt:2: input 'data'")
    msg = error(
        net(
            layer("fc", "InnerProduct", "data", "fc", "inner_product_param { num_output: 2 }")
            + layer("c", "Convolution", "fc", "c", "convolution_param { num_output: 4 kernel_size: 1 }")
        )
    )
    assert msg.startswith("net.prototxt:14: Convolution 'c': Convolution expects a 4-d N,C,H,W input")


def test_unsupported_fields_are_rejected_not_ignored() -> None:
    msg = error(
        net(layer("c", "Convolution", "data", "c", "convolution_param { num_output: 4 kernel_size: 1 axis: 2 }"))
    )
    assert msg.startswith("net.prototxt:7: Convolution 'c': convolution_param.axis 2 is not supported")
    msg = error(net(layer("s", "Scale", "data", "s", "scale_param { num_axes: 2 }")))
    assert msg.startswith("net.prototxt:7: Scale 's': only a per-channel Scale")
    msg = error(net(layer("p", "Power", "data", "p", "power_param { power: 2 }")))
    assert "Power with power 2" in msg
    msg = error(net(layer("c", "ReLU", "data", "c", "blobs { data: 1 }")))
    assert "weights stored in the prototxt" in msg


def test_from_prototxt_reads_paths_and_text(tmp_path: Path) -> None:
    path = tmp_path / "small.prototxt"
    path.write_text(net(layer("r", "ReLU", "data", "r")))
    g = from_prototxt(path)
    assert g["r"].source.file == str(path) and g.name == "t"
    assert from_prototxt(str(path)).outputs == ["r"]
    assert from_prototxt(net(layer("r", "ReLU", "data", "r")))["r"].source.file == "<string>"
    with pytest.raises(CompileError, match="no such file"):
        from_prototxt(tmp_path / "missing.prototxt")
    path.write_text("\ufeff" + net(layer("r", "ReLU", "data", "r")), encoding="utf-8")  # a byte-order mark
    assert from_prototxt(path).outputs == ["r"]
