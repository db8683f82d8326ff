"""The ``automtl`` command line: ``main(argv)`` with capsys, and one run of the installed console script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import automtl
from automtl.app.cli import COMMANDS, main, parse_shape
from automtl.compiler.errors import CompileError

TOY = """\
name: "toy"
input: "data"
input_shape { dim: 1 dim: 3 dim: 16 dim: 16 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool" type: "Pooling" bottom: "conv1" top: "pool"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
"""


@pytest.fixture
def toy(tmp_path: Path) -> Path:
    path = tmp_path / "toy.prototxt"
    path.write_text(TOY)
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_compile_zoo_name_prints_table_and_totals(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "compile", "tiny_cnn")
    assert code == 0 and err == ""
    graph = automtl.compile("tiny_cnn")
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["name", "kind"]
    assert any(line.split()[:3] == ["conv1", "conv2d", "1x8x32x32"] for line in lines)
    assert f"params:  {graph.params:,}" in lines
    assert f"FLOPs:   {graph.flops:,}" in lines
    assert "outputs: fc 1x10" in lines
    assert "inputs:  x 1x3x32x32" in lines
    assert out.startswith(graph.table())


def test_compile_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "compile", "resnet18", "--input-shape", "3,64,64", "--json")
    assert code == 0
    doc = json.loads(out)  # exactly one JSON document
    graph = automtl.compile("resnet18", (3, 64, 64))
    assert isinstance(doc["params"], int) and doc["params"] == graph.params == 11_689_512
    assert isinstance(doc["flops"], int) and doc["flops"] == graph.flops
    assert doc["outputs"] == {"fc": [1, 1000]}
    assert doc["inputs"] == {"x": [1, 3, 64, 64]}
    assert len(doc["ops"]) == len(graph)
    conv1 = doc["ops"][1]
    assert conv1 == {"name": "conv1", "kind": "conv2d", "shape": [1, 64, 32, 32], "params": 9408,
                     "flops": graph["conv1"].flops, "inputs": ["x"]}


def test_compile_prototxt_with_batch_in_input_shape(capsys: pytest.CaptureFixture[str], toy: Path) -> None:
    code, out, _ = run(capsys, "compile", str(toy), "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["outputs"] == {"pool": [1, 4, 8, 8]}
    assert doc["params"] == 4 * 3 * 9 + 4
    assert [op["kind"] for op in doc["ops"]] == ["input", "conv2d", "relu", "max_pool2d"]
    code, out, _ = run(capsys, "compile", str(toy), "--json", "--input-shape", "2,3,32,32")
    assert json.loads(out)["outputs"] == {"pool": [2, 4, 16, 16]}


def test_compile_onnx(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((5, 3, 3, 3), np.float32), "w")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=[w],
    )
    path = tmp_path / "net.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    code, out, err = run(capsys, "compile", str(path), "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["params"] == 5 * 3 * 9
    assert list(doc["outputs"].values()) == [[1, 5, 4, 4]]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["compile", "resnet5"], "'resnet5' is neither a .prototxt / .onnx file nor a zoo backbone"),
        (["compile", "missing.prototxt"], "missing.prototxt: no such file"),
        (["compile", "tiny_cnn", "--input-shape", "4,32,32"], "expects 3 input channels"),
    ],
)
def test_errors_print_one_line_and_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str],
                                          message: str) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("automtl: error: ")
    assert message in err


def test_prototxt_error_names_layer_and_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "bad.prototxt"
    path.write_text(TOY + 'layer { name: "warp" type: "Warp" bottom: "pool" top: "warp" }\n')
    code, _, err = run(capsys, "compile", str(path))
    assert code == 2 and err.count("\n") == 1
    assert "bad.prototxt:9" in err and "'warp'" in err and "Warp" in err


def test_shape_error_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "big.prototxt"
    path.write_text(TOY.replace("kernel_size: 3 pad: 1", "kernel_size: 7"))
    code, out, err = run(capsys, "compile", str(path), "--input-shape", "3,4,4")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "'conv1'" in err and "output would be empty: input size 4 with kernel 7" in err


@pytest.mark.parametrize("where", ["after", "before"])
def test_debug_reraises(where: str) -> None:
    argv = ["compile", "resnet5", "--debug"] if where == "after" else ["--debug", "compile", "resnet5"]
    with pytest.raises(CompileError, match="resnet5"):
        main(argv)


def test_bad_input_shape_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "compile", "tiny_cnn", "--input-shape", "3,a")
    assert code == 2 and out == ""
    assert "usage: automtl compile" in err and "'3,a' is not a shape" in err


def test_parse_shape() -> None:
    assert parse_shape("3,224,224") == (3, 224, 224)
    assert parse_shape("2x3x8x8") == (2, 3, 8, 8)
    assert parse_shape("3,8,8;1,8,8") == [(3, 8, 8), (1, 8, 8)]
    for bad in ("3,8", "3,0,8", "", "1,2,3,4,5"):
        with pytest.raises(Exception, match="not a shape"):
            parse_shape(bad)


def test_help_for_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "usage: automtl" in out
    for name in COMMANDS:
        assert name in out
        code, out_cmd, _ = run(capsys, name, "--help")
        assert code == 0 and f"usage: automtl {name}" in out_cmd and "--debug" in out_cmd
    code, out, _ = run(capsys, "compile", "--help")
    assert "tiny_cnn" in out and "--input-shape" in out and "--json" in out


def test_no_command_and_unknown_command(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys)
    assert code == 2 and "required" in err
    code, _, err = run(capsys, "frobnicate")
    assert code == 2 and "invalid choice" in err
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.strip() == f"automtl {automtl.__version__}"


def test_installed_console_script() -> None:
    script = Path(sys.executable).with_name("automtl")
    assert script.is_file(), f"console script not installed next to {sys.executable}"
    ok = subprocess.run([str(script), "compile", "tiny_cnn", "--json"], capture_output=True, text=True,
                        timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["params"] == 6258
    bad = subprocess.run([str(script), "compile", "no_such_net"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.startswith("automtl: error: ") and bad.stderr.count("\n") == 1
