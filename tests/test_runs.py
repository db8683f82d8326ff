"""``automtl search CONFIG`` and the run directory: files, metrics, resume, the commands that read a
run (report, show, derive, export), bad input that must change nothing, and torchrun."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from automtl.app.cli import main
from automtl.model.derive import MultiTaskModel

CONFIG = """\
backbone:
  name: tiny_cnn
  input_shape: [3, 16, 16]
  trunk_output: block
  bn: follow
tasks:
  segmentation: {kind: segmentation, hidden_channels: 8}
  depth: {kind: depth, hidden_channels: 8}
data:
  name: synthetic_scenes
  images: 40
search:
  warmup_steps: 3
  search_iterations: 3
  finetune_steps: 2
  batch_size: 8
  eval_batch_size: 16
  tau_interval: 1
seed: 1
device: cpu
baselines: BASELINES
checkpoint_every: EVERY
"""


def write_config(folder: Path, baselines: str = "[all-shared]", every: int = 2, name: str = "run.yaml",
                 replace: dict[str, str] | None = None) -> Path:
    text = CONFIG.replace("BASELINES", baselines).replace("EVERY", str(every))
    for old, new in (replace or {}).items():
        assert old in text
        text = text.replace(old, new)
    path = folder / name
    path.write_text(text)
    return path


pytestmark = pytest.mark.usefixtures("deterministic")


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with its content hash."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished run with the all-shared baseline, made through the command line."""
    folder = tmp_path_factory.mktemp("finished")
    assert main(["search", str(write_config(folder)), "--out", str(folder / "run"), "--quiet"]) == 0
    return folder / "run"


def test_search_writes_the_whole_run_directory(finished: Path) -> None:
    for name in ("automtl-run.json", "config.yaml", "checkpoint.pt", "metrics.jsonl", "metrics.csv", "history.json",
                 "supermodel.pt", "architecture.json", "model.pt", "report.json", "report.md"):
        assert (finished / name).is_file(), name
    meta = json.loads((finished / "automtl-run.json").read_text())
    assert meta["format"] == "automtl.run" and meta["status"] == "done" and meta["steps"] == 3 + 3 * 2
    for name in ("config.yaml", "architecture.json", "model.pt", "supermodel.pt", "history.json", "report.json"):
        assert meta["files"][name]["sha256"] == hashlib.sha256((finished / name).read_bytes()).hexdigest(), name
    # checkpoints at steps 2, 4, 6 and 8: the last two are kept, each with its recorded hash
    assert [c["steps"] for c in meta["checkpoints"]] == [8, 6]
    for name, record in zip(("checkpoint.pt", "checkpoint.prev.pt"), meta["checkpoints"], strict=True):
        assert record["sha256"] == hashlib.sha256((finished / name).read_bytes()).hexdigest(), name
    assert not [p.name for p in finished.iterdir() if p.name.startswith(".")]  # no temporaries left
    report = json.loads((finished / "report.json").read_text())
    assert [r["name"] for r in report["rows"]] == ["all-shared", "searched"]
    assert set(report["tasks"]) == {"segmentation", "depth"} and report["processes"] == 1
    assert all(r["latency_ms"] > 0 and r["params"] > 0 for r in report["rows"])
    model = MultiTaskModel.load(finished / "model.pt")
    out = model.as_dict(torch.randn(2, 3, 16, 16))
    assert out["segmentation"].shape == (2, 4, 16, 16) and out["depth"].shape == (2, 1, 16, 16)
    md = (finished / "report.md").read_text()
    assert md.startswith("# automtl search") and "| searched |" in md and "![sharing](pictures/sharing.png)" in md


def test_metrics_jsonl_csv_and_tensorboard_hold_every_record(finished: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    lines = [json.loads(x) for x in (finished / "metrics.jsonl").read_text().splitlines()]
    history = json.loads((finished / "history.json").read_text())
    # every record of warm-up, search and derivation is a line (fine-tune and validations too)
    assert len(lines) == sum(len(v) for v in history.values())
    stages = [x["stage"] for x in lines]
    assert stages.count("warmup") == 3 and stages.count("search") == 6 and stages.count("finetune") == 2
    policy = [x for x in lines if x.get("phase") == "policy"]
    assert len(policy) == 3 and all("tau" in x and "loss/segmentation" in x for x in policy)
    val = [x for x in lines if x["stage"] == "val"]
    assert [x["after"] for x in val] == ["warmup", "search", "finetune"]
    assert "metrics/segmentation/miou" in val[-1]
    csv_lines = (finished / "metrics.csv").read_text().splitlines()
    assert len(csv_lines) == len(lines) + 1 and csv_lines[0].startswith("stage,")
    events = EventAccumulator(str(finished / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert "search/policy/tau" in tags and "warmup/loss/depth" in tags
    assert len(events.Scalars("search/policy/tau")) == 3


def test_report_show_derive_and_export_read_the_run(finished: Path, tmp_path: Path, capsys) -> None:
    assert main(["report", str(finished)]) == 0
    printed = capsys.readouterr().out
    assert "| all-shared |" in printed and "| searched |" in printed and "depth:" in printed
    assert main(["report", str(finished), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"][-1]["name"] == "searched"

    assert main(["show", str(finished), "--out", str(tmp_path / "pics")]) == 0
    printed = capsys.readouterr().out
    for name in ("sharing", "similarity", "curves"):
        data = (tmp_path / "pics" / f"{name}.png").read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and f"{name}: " in printed

    assert main(["derive", str(finished), "--sample", "3", "--out", str(tmp_path / "a.json")]) == 0
    printed = capsys.readouterr().out
    assert "| argmax |" in printed and "wrote" in printed
    arch = json.loads((tmp_path / "a.json").read_text())
    assert set(arch["tasks"]) == {"segmentation", "depth"}
    before = (tmp_path / "a.json").read_bytes()
    assert main(["derive", str(finished), "--out", str(tmp_path / "a.json")]) == 2  # never overwrites
    assert "exists" in capsys.readouterr().err and (tmp_path / "a.json").read_bytes() == before

    assert main(["export", str(finished), "--out", str(tmp_path / "sd.pt")]) == 0
    assert (tmp_path / "sd.pt").is_file()


def test_stopped_and_resumed_run_equals_the_uninterrupted_one(finished: Path, tmp_path: Path, capsys) -> None:
    config = write_config(tmp_path)
    run = tmp_path / "run"
    assert main(["search", str(config), "--out", str(run), "--quiet", "--stop-after", "4"]) == 0
    assert "--resume" in capsys.readouterr().out
    meta = json.loads((run / "automtl-run.json").read_text())
    assert meta["status"] == "stopped" and meta["steps"] == 4 and not (run / "model.pt").exists()
    # a crash after the checkpoint leaves lines the resume must drop
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"stage": "warmup", "step": 99}\n')
    assert main(["search", str(config), "--out", str(run), "--quiet", "--resume"]) == 0
    a, b = MultiTaskModel.load(run / "model.pt").state_dict(), MultiTaskModel.load(finished / "model.pt").state_dict()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert (run / "architecture.json").read_text() == (finished / "architecture.json").read_text()
    assert (run / "metrics.jsonl").read_text() == (finished / "metrics.jsonl").read_text()


def test_bad_input_is_one_line_and_changes_nothing(finished: Path, tmp_path: Path, capsys) -> None:
    before = snapshot(finished)
    config = write_config(tmp_path)

    def fails(*argv: str, says: str) -> None:
        assert main(list(argv)) == 2
        err = capsys.readouterr().err
        assert err.startswith("automtl: error: ") and err.count("\n") == 1 and says in err, err

    fails("search", str(config), "--out", str(finished), "--quiet", says="already holds a run")
    fails("search", str(config), "--out", str(finished), "--quiet", "--resume", says="has finished")
    other = write_config(tmp_path, name="other.yaml", replace={"warmup_steps: 3": "warmup_steps: 4"})
    stopped = tmp_path / "stopped"
    assert main(["search", str(config), "--out", str(stopped), "--quiet", "--stop-after", "1"]) == 0
    capsys.readouterr()
    kept = snapshot(stopped)
    fails("search", str(other), "--out", str(stopped), "--quiet", "--resume",
          says="the config differs from the run's in search.warmup_steps (run: 3, now: 4)")
    assert snapshot(stopped) == kept
    meta = json.loads((stopped / "automtl-run.json").read_text())
    (stopped / "automtl-run.json").write_text(json.dumps({**meta, "version": 99}))
    fails("search", str(config), "--out", str(stopped), "--quiet", "--resume", says="run format 99")
    fails("report", str(stopped), says="run format 99")
    fails("report", str(tmp_path), says="not an automtl run directory")
    fails("search", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "x"), says="missing.yaml")
    typo = write_config(tmp_path, name="typo.yaml", replace={"warmup_steps: 3": "warmup_step: 3"})
    fails("search", str(typo), "--out", str(tmp_path / "y"), says="did you mean 'warmup_steps'")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    assert snapshot(finished) == before


def test_without_tensorboard_the_run_has_no_events(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    config = write_config(tmp_path, baselines="[]", every=0)
    assert main(["search", str(config), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    assert not (tmp_path / "run" / "tensorboard").exists() and (tmp_path / "run" / "metrics.jsonl").is_file()
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert [r["name"] for r in report["rows"]] == ["searched"] and report["delta_mtl"] is None


def test_torchrun_two_processes_write_one_run(tmp_path: Path) -> None:
    config = write_config(tmp_path, baselines="[]")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
               "automtl", "search", str(config), "--out", str(tmp_path / "run"), "--quiet"]
    stop = subprocess.run([*command, "--stop-after", "4"], capture_output=True, text=True, env=env, timeout=300)
    assert stop.returncode == 0, stop.stderr[-3000:]
    # process 0 checks the run and picks the checkpoint; every process resumes from it
    proc = subprocess.run([*command, "--resume"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = json.loads((tmp_path / "run" / "automtl-run.json").read_text())
    assert meta["status"] == "done" and [c["steps"] for c in meta["checkpoints"]] == [8, 6]
    assert not [p.name for p in (tmp_path / "run").iterdir() if p.name.startswith(".")]
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["processes"] == 2
    assert proc.stdout.count("| searched |") == 1  # only process 0 prints
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert sum(json.loads(x)["stage"] == "warmup" for x in lines) == 3  # one writer, not two
    # an occupied run directory: every process stops with the same one-line error (none waits forever)
    again = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode != 0 and again.stderr.count("already holds a run") == 2


def test_progress_bars_show_loss_tau_and_eta(tmp_path: Path, capsys, monkeypatch) -> None:
    import functools

    import tqdm.auto

    # draw every step of the short run (newer tqdm reads TQDM_MININTERVAL once, at import)
    monkeypatch.setattr(tqdm.auto, "tqdm", functools.partial(tqdm.auto.tqdm, mininterval=0))
    config = write_config(tmp_path, baselines="[]")
    assert main(["search", str(config), "--out", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    for stage in ("warm-up", "search", "fine-tune"):
        assert f"\r{stage}: " in err, stage
    assert "loss=" in err and "tau=" in err and "[00:00<" in err  # tqdm's elapsed<remaining (the ETA)
    assert main(["search", str(config), "--out", str(tmp_path / "quiet"), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and "| searched |" in captured.out


def test_interrupted_search_resumes_from_its_last_checkpoint(finished: Path, tmp_path: Path, monkeypatch,
                                                             capsys) -> None:
    from automtl.app import runs

    real = runs.MetricsWriter.__call__
    seen = []

    def interrupt_at_the_eighth_record(self, stage, record):  # after the checkpoint at step 6
        seen.append(stage)
        if len(seen) == 8:
            raise KeyboardInterrupt
        real(self, stage, record)

    monkeypatch.setattr(runs.MetricsWriter, "__call__", interrupt_at_the_eighth_record)
    config, run = write_config(tmp_path), tmp_path / "run"
    assert main(["search", str(config), "--out", str(run), "--quiet"]) == 130
    assert "--resume" in capsys.readouterr().err
    meta = json.loads((run / "automtl-run.json").read_text())
    assert meta["status"] == "stopped" and meta["error"] == "interrupted"
    monkeypatch.setattr(runs.MetricsWriter, "__call__", real)
    assert main(["search", str(config), "--out", str(run), "--quiet", "--resume"]) == 0
    a, b = MultiTaskModel.load(run / "model.pt").state_dict(), MultiTaskModel.load(finished / "model.pt").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (run / "metrics.jsonl").read_text() == (finished / "metrics.jsonl").read_text()
