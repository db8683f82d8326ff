"""SlimDA's run directory through the CLI: manifest, stop and exact resume, no overwrite, damaged bank, lock."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from automtl.app.cli import main
from automtl.app.integrity import DirLock

CONFIG = (
    "backbone: {name: tiny_cnn, input_shape: [3, 16, 16], trunk_output: block}\n"
    "tasks: {digit: {kind: classification, num_classes: 10}}\n"
    "data: {factory: 'automtl.train.domain_shift:domain_shift_digits', n_source: 40, size: 16, channels: 3}\n"
    "search: {strategy: slimda, steps: 4, batch_size: 8, calibration_batches: 1, budget_candidates: 4}\n"
    "device: cpu\ncheckpoint_every: 2\n"
)


def _config(tmp_path: Path, text: str = CONFIG, name: str = "run.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _meta(run: Path) -> dict:
    return json.loads((run / "automtl-run.json").read_text())


def _bank_weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "slimda.pt", weights_only=False)["state_dict"]


def test_search_stop_resume_and_derive_a_slimda_run_from_the_cli(tmp_path, capsys, deterministic) -> None:  # noqa: ANN001
    config = _config(tmp_path)
    straight = tmp_path / "straight"
    assert main(["search", config, "--out", str(straight), "--quiet"]) == 0
    said = capsys.readouterr().out
    assert "target accuracy" in said and "--budget" in said
    meta = _meta(straight)
    assert meta["status"] == "done" and meta["steps"] == 4
    assert {"config.yaml", "history.json", "slimda.pt", "result.json"} <= set(meta["files"])
    assert DirLock.holder(straight / "automtl-run.lock") is None  # released when the command ended
    result = json.loads((straight / "result.json").read_text())
    assert result["networks"]["smallest"]["flops"] < result["networks"]["largest"]["flops"]

    # stopped after 2 steps, then resumed: the same bank as the straight run, bit for bit
    out = tmp_path / "r"
    assert main(["search", config, "--out", str(out), "--quiet", "--stop-after", "2"]) == 0
    assert "Go on with --resume" in capsys.readouterr().out
    meta = _meta(out)
    assert meta["status"] == "stopped" and meta["checkpoints"][0]["steps"] == 2 and not (out / "slimda.pt").exists()
    assert main(["search", config, "--out", str(out)]) == 2  # a used folder is refused, nothing changed
    assert "already holds a run" in capsys.readouterr().err and _meta(out)["status"] == "stopped"
    assert main(["search", config, "--out", str(out), "--quiet", "--resume"]) == 0
    assert _meta(out)["status"] == "done"
    for name, weight in _bank_weights(straight).items():
        assert torch.equal(weight, _bank_weights(out)[name]), name
    assert main(["search", config, "--out", str(out), "--resume"]) == 2
    assert "has finished; nothing to resume" in capsys.readouterr().err

    # derive --budget writes the compact network, never over existing files
    assert main(["derive", str(out), "--budget", "0.25"]) == 0
    assert "UPEM" in capsys.readouterr().out
    record = json.loads((out / "derived" / "slim-0.25.json").read_text())
    assert record["flops_ratio"] <= 0.25 and (out / "derived" / "slim-0.25.onnx").is_file()
    compact = torch.load(out / "derived" / "slim-0.25.pt", weights_only=False)
    assert compact(torch.rand(2, 3, 16, 16)).shape == (2, 10)
    assert main(["derive", str(out), "--budget", "0.25"]) == 2
    assert "exists; nothing was changed" in capsys.readouterr().err
    assert DirLock.holder(out / "automtl-run.lock") is None


def test_a_resume_with_another_config_and_a_damaged_bank_are_refused(tmp_path, capsys) -> None:  # noqa: ANN001
    config = _config(tmp_path)
    out = tmp_path / "r"
    assert main(["search", config, "--out", str(out), "--quiet", "--stop-after", "2"]) == 0
    other = _config(tmp_path, CONFIG.replace("steps: 4", "steps: 5"), "other.yaml")
    assert main(["search", other, "--out", str(out), "--resume"]) == 2
    assert "the config differs from the run's in search.steps" in capsys.readouterr().err
    assert main(["search", config, "--out", str(out), "--quiet", "--resume"]) == 0
    with open(out / "slimda.pt", "ab") as f:  # damage the bank
        f.write(b"x")
    assert main(["derive", str(out), "--budget", "0.5"]) == 2
    err = capsys.readouterr().err
    assert "slimda.pt: damaged" in err and not (out / "derived" / "slim-0.5.pt").exists()


def test_derive_waits_for_the_lock_and_a_failed_claim_leaves_nothing(tmp_path, capsys) -> None:  # noqa: ANN001
    from automtl.app.rundir import RunDir

    config = _config(tmp_path)
    out = tmp_path / "r"
    assert main(["search", config, "--out", str(out), "--quiet"]) == 0
    holder = RunDir(out)
    holder.acquire()  # another command writing the run
    try:
        assert main(["derive", str(out), "--budget", "0.5"]) == 2
        assert "in use" in capsys.readouterr().err and not (out / "derived").exists()
    finally:
        holder.release()
    # a config whose model cannot be built fails before the run directory is made
    bad = _config(tmp_path, CONFIG.replace("trunk_output: block", "trunk_output: nowhere"), "bad.yaml")
    assert main(["search", bad, "--out", str(tmp_path / "new")]) == 2
    assert "nowhere" in capsys.readouterr().err and not (tmp_path / "new").exists()

    # a budget below the smallest network is refused, the lock released, nothing written
    assert main(["derive", str(out), "--budget", "0.0001"]) == 2
    assert "the smallest network" in capsys.readouterr().err
    assert DirLock.holder(out / "automtl-run.lock") is None and not list((out / "derived").glob("slim-*"))


def test_quiet_draws_no_bar_and_the_other_commands_say_how_a_slimda_run_is_derived(tmp_path, capsys) -> None:  # noqa: ANN001
    out = tmp_path / "run"
    assert main(["search", _config(tmp_path), "--out", str(out), "--quiet"]) == 0
    said = capsys.readouterr()
    assert "it/s" not in said.err and "%|" not in said.err  # --quiet: no progress bar
    before = sorted(p.name for p in out.iterdir())
    for command in (["report", str(out)], ["show", str(out)], ["export", str(out), "--onnx"], ["derive", str(out)]):
        assert main(command) == 2, command
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "a SlimDA run" in err[0] and f"automtl derive {out} --budget B" in err[0], command
    assert sorted(p.name for p in out.iterdir()) == before  # nothing written
