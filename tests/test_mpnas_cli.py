"""MPNAS through the command line: `automtl search` with strategy mpnas writes a run directory that
`report`, `show` and `export --onnx` read; stop / resume, refusals and the failed state."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

from automtl.app.cli import main

CONFIG = """\
backbone: {name: resnet18, input_shape: [3, 16, 16], trunk_output: layer1}
tasks:
  digits: {kind: classification, num_classes: 10}
  glyphs: {kind: classification, num_classes: 8}
data: {factory: 'automtl.train.domains:suite_splits', size: 16, n_train: 24, n_val: 8}
search: {strategy: mpnas, search_steps: 4, train_steps: 2, batch_size: 4, recalibrate_batches: 2}
checkpoint_every: 2
baselines: [independent, all-shared]
"""


def _config(tmp_path: Path, baselines: str = "[independent, all-shared]") -> Path:
    """CONFIG written to ``tmp_path``, training these ``baselines`` (a YAML list)."""
    path = tmp_path / "mpnas.yaml"
    path.write_text(CONFIG.replace("baselines: [independent, all-shared]", f"baselines: {baselines}"))
    return path


def _disk_full(*args, **kwargs) -> None:
    """Stands in for a step that writes to a full disk."""
    raise OSError(errno.ENOSPC, "No space left on device")


def _failed_search(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, baselines: str, owner: object,
                   step: str) -> tuple[Path, Path]:
    """(config, run folder) of a search whose ``owner.step`` found the disk full: it exits 2 (the step is
    restored afterwards)."""
    config, run = _config(tmp_path, baselines), tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(owner, step, _disk_full)
        assert main(["search", str(config), "--out", str(run), "--quiet"]) == 2
    return config, run


def _meta(run: Path) -> dict:
    return json.loads((run / "automtl-run.json").read_text())


def test_search_writes_an_mpnas_run_that_report_show_and_export_read(tmp_path: Path, capsys) -> None:
    import onnx

    config, run = _config(tmp_path), tmp_path / "run"
    assert main(["search", str(config), "--out", str(run), "--quiet"]) == 0
    assert _meta(run)["status"] == "done"
    report = json.loads((run / "report.json").read_text())
    assert report["strategy"] == "mpnas" and [r["name"] for r in report["rows"]] == ["independent", "all-shared",
                                                                                     "searched"]
    assert report["baseline_steps"] == 2  # every baseline trained as long as the derived model
    rows = {r["name"]: r for r in report["rows"]}
    assert rows["independent"]["params"] > rows["searched"]["params"]
    paths = report["paths"]
    assert set(paths) == {"digits", "glyphs"} and set(report["blocks"]) == {"layer1.0", "layer1.1"}
    a, b = set(paths["digits"]), set(paths["glyphs"])
    want = len(a & b) / len(a | b) if a | b else 1.0
    assert report["jaccard"]["digits"]["glyphs"] == pytest.approx(want) and report["jaccard"]["digits"]["digits"] == 1
    for block, status in report["blocks"].items():
        users = sum(block in p for p in paths.values())
        assert status == ("shared" if users > 1 else "specific" if users else "dropped")
    result = json.loads((run / "result.json").read_text())
    assert result["paths"] == paths and result["params_ratio"] < 1
    markdown = (run / "report.md").read_text()
    assert "## Domain paths" in markdown and "Jaccard similarity" in markdown and "| searched |" in markdown
    capsys.readouterr()

    assert main(["report", str(run)]) == 0
    out = capsys.readouterr().out
    assert "| searched |" in out and "| independent |" in out and "Jaccard similarity:" in out
    assert main(["show", str(run), "--out", str(tmp_path / "pictures")]) == 0
    assert all((tmp_path / "pictures" / f).stat().st_size > 1000 for f in ("paths.png", "jaccard.png"))
    assert main(["export", str(run), "--onnx", "--out", str(tmp_path / "m.onnx")]) == 0
    assert "inputs x_digits, x_glyphs; outputs digits, glyphs" in capsys.readouterr().out
    proto = onnx.load(str(tmp_path / "m.onnx"))
    assert [i.name for i in proto.graph.input] == ["x_digits", "x_glyphs"]
    assert [o.name for o in proto.graph.output] == ["digits", "glyphs"]

    before = (run / "report.json").read_bytes()
    assert main(["search", str(config), "--out", str(run), "--quiet"]) == 2  # no overwrite
    assert "already holds a run" in capsys.readouterr().err and (run / "report.json").read_bytes() == before
    assert main(["derive", str(run)]) == 2
    assert "a mpnas run" in capsys.readouterr().err


def test_a_stopped_mpnas_run_resumes_to_the_uninterrupted_result(tmp_path: Path, capsys, deterministic: None) -> None:
    config = _config(tmp_path, "[]")
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert main(["search", str(config), "--out", str(whole), "--quiet"]) == 0
    assert main(["search", str(config), "--out", str(cut), "--quiet", "--stop-after", "2"]) == 0
    assert _meta(cut)["status"] == "stopped" and not (cut / "model.pt").exists()
    assert main(["search", str(config), "--out", str(cut), "--quiet"]) == 2  # a new run never writes there
    assert main(["search", str(config), "--out", str(cut), "--quiet", "--resume"]) == 0
    assert _meta(cut)["status"] == "done"
    for name in ("architecture.json", "result.json"):
        assert json.loads((cut / name).read_text()) == json.loads((whole / name).read_text()), name
    capsys.readouterr()
    assert main(["search", str(config), "--out", str(cut), "--quiet", "--resume"]) == 2  # finished: nothing to do
    assert "this run has finished" in capsys.readouterr().err


def test_a_failure_after_the_search_started_leaves_status_failed_and_resume_completes_it(
        tmp_path: Path, capsys, monkeypatch) -> None:
    from automtl.search.mpnas import MPNASSearcher

    config, run = _failed_search(tmp_path, monkeypatch, "[]", MPNASSearcher, "train_derived")
    err = capsys.readouterr().err
    assert "No space left on device" in err and "status 'failed'" in err and "--resume" in err
    meta = _meta(run)
    assert meta["status"] == "failed" and "No space left" in meta["error"] and not (run / "model.pt").exists()
    assert main(["search", str(config), "--out", str(run), "--quiet", "--resume"]) == 0
    assert _meta(run)["status"] == "done" and (run / "model.pt").is_file() and (run / "report.md").is_file()


def test_a_report_that_failed_is_completed_by_automtl_report_without_searching_again(
        tmp_path: Path, capsys, monkeypatch) -> None:
    from automtl.app import pictures
    from automtl.search.mpnas import MPNASSearcher

    _, run = _failed_search(tmp_path, monkeypatch, "[all-shared]", pictures, "render_all")
    assert "automtl report" in capsys.readouterr().err
    assert _meta(run)["status"] == "failed" and _meta(run)["searched"] is True and not (run / "report.json").exists()

    def never(*args, **kwargs):
        raise AssertionError("the search ran again")

    monkeypatch.setattr(MPNASSearcher, "run", never)
    assert main(["report", str(run)]) == 0
    out = capsys.readouterr().out
    assert "| all-shared |" in out and "| searched |" in out and "paths over layer1.0, layer1.1" in out
    assert _meta(run)["status"] == "done" and (run / "pictures" / "paths.png").is_file()


def test_a_config_without_the_domains_data_is_one_error_line_and_writes_nothing(tmp_path: Path, capsys) -> None:
    config, run = _config(tmp_path), tmp_path / "run"
    config.write_text(CONFIG.replace("data: {factory: 'automtl.train.domains:suite_splits', size: 16, n_train: 24, "
                                     "n_val: 8}\n", ""))
    assert main(["search", str(config), "--out", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("automtl: error: ") and err.count("\n") == 1 and "task 'digits'" in err  # file and line
    assert "mpnas.yaml:3" in err and not run.exists()
