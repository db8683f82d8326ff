"""Runs that cannot be silently corrupted: damaged, missing or torn files, a failed report, a NaN
loss, a read-only directory, Ctrl-C, impossible names. Each failure is one line and leaves the run
resumable (or, before the first step, as it was); a resumed run equals the uninterrupted one.
Several processes (racing, holding, killed) are in ``test_reliability_processes.py``."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from test_runs import snapshot, write_config

from automtl.app.cli import main
from automtl.model.derive import MultiTaskModel

pytestmark = pytest.mark.usefixtures("deterministic")


def search(config: Path, run: Path, *extra: str) -> int:
    return main(["search", str(config), "--out", str(run), "--quiet", *extra])


def fails(capsys: pytest.CaptureFixture[str], argv: list[str], *says: str, code: int = 2) -> str:
    """Run the CLI: exit ``code`` and exactly one error line that holds every one of ``says``."""
    assert main(argv) == code
    err = capsys.readouterr().err
    assert err.startswith("automtl: ") and err.count("\n") == 1, err
    for text in says:
        assert text in err, (text, err)
    return err


def meta(run: Path) -> dict:
    return json.loads((run / "automtl-run.json").read_text())


def files(run: Path) -> dict[str, str]:
    """Every file of a run with its hash, but the lock (it holds the last holder's pid)."""
    return {k: v for k, v in snapshot(run).items() if k != "automtl-run.lock"}


def flip_bit(file: Path, at: float = 0.5) -> None:
    data = bytearray(file.read_bytes())
    data[int(len(data) * at)] ^= 0x10
    file.write_bytes(bytes(data))


def assert_same_run(run: Path, reference: Path) -> None:
    """The resumed run's model, architecture and records are the uninterrupted run's, bit for bit."""
    a, b = MultiTaskModel.load(run / "model.pt").state_dict(), MultiTaskModel.load(reference / "model.pt").state_dict()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert (run / "architecture.json").read_text() == (reference / "architecture.json").read_text()
    assert (run / "metrics.jsonl").read_text() == (reference / "metrics.jsonl").read_text()
    assert meta(run)["status"] == "done" and (run / "report.json").is_file()
    assert sorted(p.name for p in run.iterdir()) == sorted(p.name for p in reference.iterdir())  # nothing left over
    records = meta(run)["checkpoints"]  # the last two checkpoints, each file with its recorded hash
    assert [c["steps"] for c in records] == [8, 6] and not any("pending" in c for c in records)
    for name, record in zip(("checkpoint.pt", "checkpoint.prev.pt"), records, strict=True):
        assert snapshot(run)[name] == record["sha256"], name


def uninterrupted_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run every interrupted one must end up equal to."""
    folder = tmp_path_factory.mktemp("reference")
    assert search(write_config(folder, baselines="[]"), folder / "run") == 0
    return folder / "run"


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return uninterrupted_run(tmp_path_factory)


def stopped(folder: Path, after: int = 4) -> tuple[Path, Path]:
    """A run stopped after ``after`` steps (checkpoints every 2: after 4 there is a previous one)."""
    config, run = write_config(folder, baselines="[]"), folder / "run"
    assert search(config, run, "--stop-after", str(after)) == 0
    return config, run


# --- damaged and missing files ----------------------------------------------------------------------------


def test_a_flipped_bit_in_the_checkpoint_is_refused_and_the_previous_one_resumes(reference: Path, tmp_path: Path,
                                                                                  capsys) -> None:
    config, run = stopped(tmp_path)
    capsys.readouterr()
    flip_bit(run / "checkpoint.pt")
    before = files(run)
    fails(capsys, ["search", str(config), "--out", str(run), "--quiet", "--resume"],
          f"{run / 'checkpoint.pt'}: damaged", f"{run / 'checkpoint.prev.pt'} (after 2 steps)", "mv ")
    assert files(run) == before  # nothing resumed, nothing changed
    (run / "checkpoint.prev.pt").replace(run / "checkpoint.pt")  # what the message says to do
    assert search(config, run, "--resume") == 0
    assert_same_run(run, reference)


def test_a_damaged_result_file_is_named_and_a_resume_makes_it_again(reference: Path, tmp_path: Path,
                                                                     capsys) -> None:
    config, run = write_config(tmp_path, baselines="[]"), tmp_path / "run"
    assert search(config, run) == 0
    capsys.readouterr()
    flip_bit(run / "model.pt", 0.9)
    fails(capsys, ["export", str(run), "--out", str(tmp_path / "sd.pt")], f"{run / 'model.pt'}: damaged", "--resume")
    flip_bit(run / "supermodel.pt", 0.9)
    fails(capsys, ["derive", str(run), "--out", str(tmp_path / "a.json")], f"{run / 'supermodel.pt'}: damaged")
    (run / "architecture.json").write_text((run / "architecture.json").read_text().replace("shared", "skip", 1))
    fails(capsys, ["show", str(run), "--out", str(tmp_path / "pics")], f"{run / 'architecture.json'}: damaged")
    assert not (tmp_path / "sd.pt").exists() and not (tmp_path / "a.json").exists()
    assert search(config, run, "--resume") == 0  # made again from the last good checkpoint
    assert_same_run(run, reference)
    assert main(["export", str(run), "--out", str(tmp_path / "sd.pt")]) == 0


def test_a_missing_or_misplaced_checkpoint_never_restarts_from_step_zero(reference: Path, tmp_path: Path,
                                                                          capsys) -> None:
    config, run = stopped(tmp_path)
    capsys.readouterr()
    resume = ["search", str(config), "--out", str(run), "--quiet", "--resume"]
    (run / "checkpoint.pt").unlink()
    before = files(run)
    fails(capsys, resume, f"{run}: no checkpoint.pt, though the run saved one after 4 steps",
          f"{run / 'checkpoint.prev.pt'} (after 2 steps)")
    (run / "checkpoint.pt").mkdir()
    fails(capsys, resume, f"{run / 'checkpoint.pt'}: is a directory", "rm -r")
    (run / "checkpoint.pt").rmdir()
    assert files(run) == before
    (run / "checkpoint.prev.pt").replace(run / "checkpoint.pt")
    assert search(config, run, "--resume") == 0
    assert_same_run(run, reference)


def test_a_checkpoint_that_does_not_read_back_never_replaces_the_good_one(reference: Path, tmp_path: Path, capsys,
                                                                          monkeypatch) -> None:
    real, calls = torch.save, []

    def save(obj, f, *args, **kwargs):  # the checkpoint after 4 steps comes out unreadable (a bad disk, say)
        calls.append(1)
        if len(calls) != 2:
            return real(obj, f, *args, **kwargs)
        if hasattr(f, "write"):
            f.write(b"not a checkpoint")
        else:
            Path(f).write_bytes(b"not a checkpoint")

    monkeypatch.setattr(torch, "save", save)
    config, run = write_config(tmp_path, baselines="[]"), tmp_path / "run"
    fails(capsys, ["search", str(config), "--out", str(run), "--quiet"],
          f"{run / 'checkpoint.pt'}: the file just written does not read back", "the previous one is kept")
    m = meta(run)
    assert m["status"] == "failed" and [c["steps"] for c in m["checkpoints"]] == [2]
    assert snapshot(run)["checkpoint.pt"] == m["checkpoints"][0]["sha256"]
    monkeypatch.undo()
    assert search(config, run, "--resume") == 0
    assert_same_run(run, reference)


# --- records ------------------------------------------------------------------------------------------------


def test_a_metrics_file_cut_mid_line_is_repaired_on_resume(reference: Path, tmp_path: Path, capsys) -> None:
    config, run = stopped(tmp_path)
    lines = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
    assert len(lines) >= 4
    (run / "metrics.jsonl").write_text("".join(lines[:2]) + lines[2][:10])  # cut inside the third record
    capsys.readouterr()
    assert search(config, run, "--resume") == 0
    err = capsys.readouterr().err
    assert "dropped a torn last line" in err and f"holds 2 of the {len(lines)} records" in err, err
    got = (run / "metrics.jsonl").read_text().splitlines()
    want = (reference / "metrics.jsonl").read_text().splitlines()
    assert got == want[:2] + want[len(lines):]  # the lost records are said lost; every line after is whole
    assert json.loads((run / "report.json").read_text())["rows"][-1]["name"] == "searched"


def test_a_deleted_metrics_file_is_said_to_have_lost_records(tmp_path: Path, capsys) -> None:
    config, run = stopped(tmp_path)
    kept = len((run / "metrics.jsonl").read_text().splitlines())
    (run / "metrics.jsonl").unlink()
    capsys.readouterr()
    assert search(config, run, "--resume") == 0
    assert f"metrics.jsonl: missing; the {kept} records logged up to the checkpoint are lost" in capsys.readouterr().err


def test_a_failed_report_is_completed_without_searching_again(tmp_path: Path, capsys, monkeypatch) -> None:
    from automtl.app import pictures, runs
    from automtl.search.searcher import Searcher

    real = pictures.render_all

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "run" / "pictures"))

    monkeypatch.setattr(pictures, "render_all", disk_full)
    config, run = write_config(tmp_path), tmp_path / "run"
    fails(capsys, ["search", str(config), "--out", str(run), "--quiet"], "No space left on device",
          "status 'failed'", "automtl report")
    m = meta(run)
    assert m["status"] == "failed" and "No space left" in m["error"] and m["searched"] is True
    assert not (run / "report.json").exists()
    model = (run / "model.pt").read_bytes()

    def never(*args, **kwargs):
        raise AssertionError("the search (or a baseline) ran again")

    monkeypatch.setattr(pictures, "render_all", real)
    monkeypatch.setattr(Searcher, "run", never)
    monkeypatch.setattr(runs, "_train_baseline", never)  # the all-shared baseline was kept in the manifest
    (run / "metrics.jsonl").unlink()
    assert main(["report", str(run)]) == 0
    captured = capsys.readouterr()
    assert "| all-shared |" in captured.out and "| searched |" in captured.out
    assert "completing the report" in captured.err and "metrics.jsonl: missing; its records are lost" in captured.err
    assert meta(run)["status"] == "done" and (run / "pictures" / "sharing.png").is_file()
    assert (run / "model.pt").read_bytes() == model
    assert main(["report", str(run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"][0]["name"] == "all-shared"
    flip_bit(run / "report.json", 0.5)
    fails(capsys, ["report", str(run)], f"{run / 'report.json'}: damaged", "--resume` writes it again")
    assert search(config, run, "--resume") == 0 and meta(run)["status"] == "done"  # still nothing trained again
    assert main(["report", str(run)]) == 0 and "| searched |" in capsys.readouterr().out


# --- failures: one line; before the first step nothing is left, after it status failed -------------------


def nan_after(monkeypatch: pytest.MonkeyPatch, calls: int) -> None:
    """The depth loss is NaN from its ``calls``-th computation on."""
    from automtl.train import tasks

    real, seen = tasks.Depth.loss, []

    def loss(self, *args, **kwargs):
        seen.append(1)
        out = real(self, *args, **kwargs)
        return out * float("nan") if len(seen) >= calls and out is not None else out

    monkeypatch.setattr(tasks.Depth, "loss", loss)


def test_a_nan_loss_is_one_line_status_failed_and_resumable(reference: Path, tmp_path: Path, capsys,
                                                            monkeypatch) -> None:
    config, run = write_config(tmp_path, baselines="[]"), tmp_path / "run"
    nan_after(monkeypatch, 7)
    fails(capsys, ["search", str(config), "--out", str(run), "--quiet"], "task 'depth': loss is nan",
          "status 'failed'", "--resume goes on from the last checkpoint (after")
    m = meta(run)
    assert m["status"] == "failed" and "loss is nan" in m["error"]
    before = files(run)
    nan_after(monkeypatch, 1)  # a resume failing at its first step changes nothing
    fails(capsys, ["search", str(config), "--out", str(run), "--quiet", "--resume"], "loss is nan",
          f"nothing was written to {run}")
    assert files(run) == before
    monkeypatch.undo()
    assert search(config, run, "--resume") == 0
    assert_same_run(run, reference)


def test_a_failure_before_the_first_step_leaves_the_directory_as_it_was(tmp_path: Path, capsys,
                                                                        monkeypatch) -> None:
    config = write_config(tmp_path, baselines="[]")
    nan_after(monkeypatch, 1)
    fails(capsys, ["search", str(config), "--out", str(tmp_path / "a" / "b" / "run"), "--quiet"],
          "loss is nan", "nothing was written")
    assert not (tmp_path / "a").exists()  # the folders made for it went too
    (tmp_path / "empty").mkdir()
    fails(capsys, ["search", str(config), "--out", str(tmp_path / "empty"), "--quiet"], "loss is nan")
    assert list((tmp_path / "empty").iterdir()) == []
    monkeypatch.undo()
    # a late config error (a split with no images) is found after the directory is claimed
    tiny = write_config(tmp_path, baselines="[]", name="tiny.yaml", replace={"images: 40": "images: 2"})
    assert main(["search", str(tiny), "--out", str(tmp_path / "tiny"), "--quiet"]) == 2
    assert "automtl: error: " in capsys.readouterr().err and not (tmp_path / "tiny").exists()
    assert search(config, tmp_path / "empty") == 0  # nothing half-made blocks the run


def test_ctrl_c_before_the_run_directory_exists_is_one_line(tmp_path: Path, capsys, monkeypatch) -> None:
    from automtl.app import config as config_module
    from automtl.app import runs

    config, run = write_config(tmp_path, baselines="[]"), tmp_path / "run"

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runs, "build_model", interrupt)
    assert main(["search", str(config), "--out", str(run), "--quiet"]) == 130
    assert capsys.readouterr().err == f"automtl: interrupted; nothing was written to {run}\n"
    assert not run.exists()
    monkeypatch.setattr(config_module, "load_config", interrupt)
    assert main(["search", str(config), "--out", str(run), "--quiet"]) == 130
    assert capsys.readouterr().err == "automtl: interrupted\n" and not run.exists()


@contextlib.contextmanager
def permission_bits_apply() -> Iterator[None]:
    """Make permission bits apply to this thread even as root (which ignores them): drop the
    capabilities that override them from the effective set, and restore them afterwards."""
    if os.geteuid() != 0:
        yield
        return

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                    ("inheritable", ctypes.c_uint32)]

    libc = ctypes.CDLL(None, use_errno=True)
    header, data = Header(0x20080522, 0), (Data * 2)()  # _LINUX_CAPABILITY_VERSION_3
    assert libc.capget(ctypes.byref(header), data) == 0
    saved = data[0].effective
    data[0].effective &= ~((1 << 1) | (1 << 2) | (1 << 3))  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER
    assert libc.capset(ctypes.byref(header), data) == 0, ctypes.get_errno()
    try:
        yield
    finally:
        data[0].effective = saved
        assert libc.capset(ctypes.byref(header), data) == 0


def test_a_read_only_run_directory_is_one_line_and_stays_as_it_is(tmp_path: Path, capsys) -> None:
    config, run = write_config(tmp_path, baselines="[]"), tmp_path / "run"
    assert search(config, run) == 0
    flip_bit(run / "model.pt", 0.9)  # damaged: a resume would be allowed, were the directory writable
    capsys.readouterr()
    before = snapshot(run)
    paths = [run, *run.rglob("*")]
    for p in paths:
        p.chmod(0o555 if p.is_dir() else 0o444)
    try:
        with permission_bits_apply():
            fails(capsys, ["search", str(config), "--out", str(run), "--quiet", "--resume"],
                  f"{run}: not writable", "Permission denied")
            fails(capsys, ["search", str(config), "--out", str(run / "new"), "--quiet"],
                  f"{run / 'new'}: cannot make the run directory", "Permission denied")
            fails(capsys, ["show", str(run)], f"{run / 'pictures'}", "Permission denied")
            # deriving from a read-only run into another folder needs no write there
            assert main(["derive", str(run), "--out", str(tmp_path / "derived" / "a.json")]) == 0
    finally:
        for p in paths:
            p.chmod(0o755 if p.is_dir() else 0o644)
    assert snapshot(run) == before and meta(run)["status"] == "done"
    assert (tmp_path / "derived" / "a.json").is_file()


def test_an_impossible_run_directory_name_is_one_short_line(tmp_path: Path, capsys) -> None:
    config = write_config(tmp_path, baselines="[]")
    for out in (tmp_path / ("x" * 100_000), tmp_path / ("y" * 300) / "run"):
        err = fails(capsys, ["search", str(config), "--out", str(out), "--quiet"], "File name too long", " ... ")
        assert len(err) < 600, len(err)  # the name is shown by its start and end, not echoed whole
    assert list(tmp_path.iterdir()) == [config]
