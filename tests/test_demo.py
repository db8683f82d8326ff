"""The demo end to end on a tiny budget: it searches, derives, compares and writes its run directory."""

from __future__ import annotations

import json

import torch

from automtl.cli import main
from automtl.derive import MultiTaskModel


def test_demo_writes_a_run_directory_with_three_rows(tmp_path, capsys) -> None:
    torch.set_num_threads(1)
    code = main(["demo", "--backbone", "tiny_cnn", "--trunk-output", "block", "--size", "16", "--images", "48",
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
    assert set(report["tasks"]) == {"segmentation", "depth", "edges"}
    model = MultiTaskModel.load(tmp_path / "model.pt")
    out = model.as_dict(torch.randn(2, 3, 16, 16))
    assert out["segmentation"].shape[-2:] == (16, 16) and set(out) == {"segmentation", "depth", "edges"}
    assert (tmp_path / "architecture.json").is_file() and (tmp_path / "report.md").read_text().startswith("# automtl")
