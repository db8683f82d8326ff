"""The Caffe schema and its Python bindings: field numbers and enums as in BVLC Caffe, every field of
caffe.proto in caffe_pb2, and bindings that pin no protobuf runtime version."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prototxt_helpers import PROTO

from automtl.proto import caffe_pb2

# ----------------------------------------------------------------------------- schema and bindings
BVLC_NUMBERS = {
    "NetParameter": {
        "name": 1,
        "input": 3,
        "input_shape": 8,
        "input_dim": 4,
        "force_backward": 5,
        "state": 6,
        "layer": 100,
        "layers": 2,
    },
    "LayerParameter": {
        "name": 1,
        "type": 2,
        "bottom": 3,
        "top": 4,
        "phase": 10,
        "loss_weight": 5,
        "param": 6,
        "blobs": 7,
        "include": 8,
        "exclude": 9,
        "convolution_param": 106,
        "pooling_param": 121,
        "batch_norm_param": 139,
        "scale_param": 142,
        "eltwise_param": 110,
        "concat_param": 104,
        "slice_param": 126,
        "crop_param": 144,
        "inner_product_param": 117,
        "relu_param": 123,
        "prelu_param": 131,
        "dropout_param": 108,
        "lrn_param": 118,
        "softmax_param": 125,
        "flatten_param": 135,
        "input_param": 143,
        "clip_param": 148,
        "bias_param": 141,
        "power_param": 122,
        "reshape_param": 133,
    },
    "ConvolutionParameter": {
        "num_output": 1,
        "bias_term": 2,
        "pad": 3,
        "kernel_size": 4,
        "group": 5,
        "stride": 6,
        "pad_h": 9,
        "pad_w": 10,
        "kernel_h": 11,
        "kernel_w": 12,
        "stride_h": 13,
        "stride_w": 14,
        "axis": 16,
        "dilation": 18,
    },
    "PoolingParameter": {"pool": 1, "kernel_size": 2, "stride": 3, "pad": 4, "global_pooling": 12, "round_mode": 13},
    "BatchNormParameter": {"use_global_stats": 1, "moving_average_fraction": 2, "eps": 3},
    "V1LayerParameter": {"bottom": 2, "top": 3, "name": 4, "type": 5, "convolution_param": 10},
}


@pytest.mark.parametrize("message", sorted(BVLC_NUMBERS))
def test_field_numbers_match_bvlc(message: str) -> None:
    fields = getattr(caffe_pb2, message).DESCRIPTOR.fields_by_name
    assert {name: fields[name].number for name in BVLC_NUMBERS[message]} == BVLC_NUMBERS[message]


def test_enums_match_bvlc() -> None:
    assert caffe_pb2.PoolingParameter.RoundMode.items() == [("CEIL", 0), ("FLOOR", 1)]
    assert caffe_pb2.PoolingParameter.PoolMethod.items() == [("MAX", 0), ("AVE", 1), ("STOCHASTIC", 2)]
    assert caffe_pb2.EltwiseParameter.EltwiseOp.items() == [("PROD", 0), ("SUM", 1), ("MAX", 2)]
    assert caffe_pb2.V1LayerParameter.CONVOLUTION == 4 and caffe_pb2.V1LayerParameter.SOFTMAX_LOSS == 21
    assert caffe_pb2.PoolingParameter().round_mode == caffe_pb2.PoolingParameter.CEIL


def test_bindings_match_the_schema_file() -> None:
    """Every field declared in caffe.proto is in caffe_pb2 with the same number (bindings up to date)."""
    declared: dict[str, dict[str, int]] = {}
    stack: list[str] = []
    for raw in PROTO.read_text().splitlines():
        line = raw.split("//")[0].strip()
        if m := re.match(r"(message|enum) (\w+) \{", line):
            stack.append(m.group(2) if m.group(1) == "message" else "")
        elif line == "}":
            stack.pop()
        elif (m := re.match(r"(?:optional|repeated|required) [\w.]+ (\w+) = (\d+)", line)) and stack[-1]:
            declared.setdefault(stack[-1], {})[m.group(1)] = int(m.group(2))
    assert len(declared) > 40
    for message, fields in declared.items():
        desc = caffe_pb2.DESCRIPTOR.message_types_by_name[message]
        assert {f.name: f.number for f in desc.fields} == fields, message


def test_bindings_have_no_runtime_version_pin() -> None:
    source = Path(caffe_pb2.__file__).read_text()
    assert "ValidateProtobufRuntimeVersion" not in source
    assert "Protobuf Python Version: 5.26.1" in source
