"""The demo end to end on a tiny budget: it searches, derives, compares and writes its run directory."""

from __future__ import annotations

import json

import torch

from automtl.app.cli import main
from automtl.model.derive import MultiTaskModel


def test_demo_writes_a_run_directory_with_three_rows(tmp_path, capsys) -> None:
    torch.set_num_threads(1)
    code = main(["demo", "--data", "synthetic_scenes", "--backbone", "tiny_cnn", "--trunk-output", "block",
                 "--size", "16", "--images", "48",
                 "--warmup-steps", "2", "--search-iterations", "2", "--finetune-steps", "2", "--out",
                 str(tmp_path), "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    for row in ("| independent |", "| all-shared |", "| searched |"):
        assert row in printed
    report = json.loads((tmp_path / "report.json").read_text())
    names = [r["name"] for r in report["rows"]]
    assert names == ["independent", "all-shared", "searched"]
    independent, shared, searched = report["rows"]
    # three separate models hold more parameters than one shared trunk with three heads
    assert independent["params"] > shared["params"]
    assert shared["params"] <= searched["params"] <= independent["params"]
    assert set(report["tasks"]) == {"segmentation", "depth", "normals"}
    model = MultiTaskModel.load(tmp_path / "model.pt")
    out = model.as_dict(torch.randn(2, 3, 16, 16))
    assert out["segmentation"].shape[-2:] == (16, 16) and set(out) == {"segmentation", "depth", "normals"}
    assert (tmp_path / "architecture.json").is_file() and (tmp_path / "report.md").read_text().startswith("# automtl")


def test_export_cli_writes_a_checked_onnx_file_and_a_state_dict(tmp_path, capsys) -> None:
    import onnx

    torch.set_num_threads(1)
    assert main(["demo", "--data", "synthetic_scenes", "--backbone", "tiny_cnn", "--trunk-output", "block",
                 "--size", "16", "--images", "32",
                 "--warmup-steps", "1", "--search-iterations", "1", "--finetune-steps", "1", "--out",
                 str(tmp_path), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["export", str(tmp_path), "--onnx"]) == 0
    assert "onnxruntime vs PyTorch" in capsys.readouterr().out
    proto = onnx.load(str(tmp_path / "model.onnx"))
    assert [o.name for o in proto.graph.output] == ["segmentation", "depth", "normals"]
    assert main(["export", str(tmp_path)]) == 0
    assert (tmp_path / "state_dict.pt").is_file()
    assert main(["export", str(tmp_path / "missing")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_the_default_demo_searches_colour_codes(tmp_path, capsys) -> None:
    torch.set_num_threads(1)
    assert main(["demo", "--images", "96", "--warmup-steps", "2", "--search-iterations", "2", "--finetune-steps",
                 "2", "--out", str(tmp_path), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "| independent |" in printed and "| searched |" in printed and "Searched architecture:" in printed
    report = json.loads((tmp_path / "report.json").read_text())
    assert set(report["tasks"]) == {"a", "b", "c", "d"}
    model = MultiTaskModel.load(tmp_path / "model.pt")
    assert model.as_dict(torch.randn(2, 3, 8, 8))["b"].shape == (2, 3, 8, 8)


def test_demo_never_writes_into_an_earlier_run(tmp_path) -> None:
    from automtl.app.demo import free_run_dir

    base = tmp_path / "runs" / "demo"
    assert free_run_dir(base) == base
    base.mkdir(parents=True)
    assert free_run_dir(base) == base  # empty: free
    (base / "report.md").write_text("earlier run")
    assert free_run_dir(base) == base.with_name("demo-2")
    (base.with_name("demo-2")).mkdir()
    (base.with_name("demo-2") / "x").write_text("")
    assert free_run_dir(base) == base.with_name("demo-3")
