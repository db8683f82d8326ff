"""Runs that cannot be silently corrupted: damaged, missing or torn files, two processes on one run,
a process killed while it writes, a read-only directory, a NaN loss, Ctrl-C. Each failure is one
line and leaves the run resumable (or, before the first step, as it was); a resumed run equals the
uninterrupted one."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from test_runs import snapshot, write_config

from automtl.app.cli import main
from automtl.model.derive import MultiTaskModel

pytestmark = pytest.mark.usefixtures("deterministic")

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


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


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run every interrupted one must end up equal to."""
    folder = tmp_path_factory.mktemp("reference")
    assert search(write_config(folder, baselines="[]"), folder / "run") == 0
    return folder / "run"


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


# --- two processes, and a process killed while it writes ---------------------------------------------------


def _create(path: str, cfg: object, start: multiprocessing.synchronize.Event, queue: multiprocessing.Queue) -> None:
    from automtl.app.runs import RunDir, RunError

    start.wait()
    try:
        RunDir(path).create(cfg, "search")
        queue.put("made")
    except RunError:
        queue.put("refused")
    except BaseException as e:  # noqa: BLE001 - anything else is the failure this test looks for
        queue.put(f"{type(e).__name__}: {e}")


def test_processes_creating_one_run_directory_never_both_succeed(tmp_path: Path) -> None:
    from automtl.app.config import load_config

    cfg = load_config(write_config(tmp_path))
    ctx = multiprocessing.get_context("fork")
    for i in range(30):  # four processes race for each directory
        start, queue = ctx.Event(), ctx.Queue()
        procs = [ctx.Process(target=_create, args=(str(tmp_path / f"r{i}"), cfg, start, queue)) for _ in range(4)]
        for p in procs:
            p.start()
        start.set()
        for p in procs:
            p.join(60)
        outcomes = sorted(queue.get(timeout=10) for _ in procs)
        assert outcomes == ["made", "refused", "refused", "refused"], (i, outcomes)
        assert json.loads((tmp_path / f"r{i}" / "automtl-run.json").read_text())["status"] == "running"


def _cli(*argv: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "automtl", *argv], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for_lock(proc: subprocess.Popen, lock: Path) -> None:
    """Until ``proc`` holds the run's lock (its pid is in the lock file)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if lock.is_file() and lock.read_text().strip() == str(proc.pid):
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError("the first process never took the lock")


def test_a_second_process_on_a_held_run_is_one_line_naming_the_holder(reference: Path, tmp_path: Path) -> None:
    config, run = write_config(tmp_path, baselines="[]"), tmp_path / "run"
    for first_args in (["--stop-after", "4"], ["--resume"]):  # a new run, then a resume
        first = _cli("search", str(config), "--out", str(run), "--quiet", *first_args)
        _wait_for_lock(first, run / "automtl-run.lock")
        os.kill(first.pid, signal.SIGSTOP)  # hold it there, lock held, while the second one tries
        try:
            second = subprocess.run([sys.executable, "-m", "automtl", "search", str(config), "--out", str(run),
                                     "--quiet", *first_args], env=ENV, capture_output=True, text=True, timeout=300)
        finally:
            os.kill(first.pid, signal.SIGCONT)
        assert second.returncode == 2 and second.stderr.count("\n") == 1, second.stderr
        assert f"in use by another automtl process (pid {first.pid}" in second.stderr
        out, err = first.communicate(timeout=300)
        assert first.returncode == 0, err
    assert_same_run(run, reference)


KILLER = """
import os, signal, sys
import torch
from automtl.app import runs
from automtl.app.cli import main

point, count = sys.argv[1], int(sys.argv[2])
seen = []

def die():
    os.kill(os.getpid(), signal.SIGKILL)

if point == "checkpoint":  # half of a torch file written, then killed
    real_save = torch.save
    def save(obj, f, *args, **kwargs):
        seen.append(1)
        if len(seen) == count:
            import io
            buf = io.BytesIO()
            real_save(obj, buf, *args, **kwargs)
            data = buf.getvalue()[: len(buf.getvalue()) // 2]
            if hasattr(f, "write"):
                f.write(data); f.flush()
            else:
                open(f, "wb").write(data)
            die()
        return real_save(obj, f, *args, **kwargs)
    torch.save = save
elif point in ("swap", "manifest"):  # killed just before a file is put in its place in the run directory
    name = "checkpoint.pt" if point == "swap" else "automtl-run.json"
    real_replace = os.replace
    def replace(src, dst, *args, **kwargs):
        dst = os.fspath(dst)
        if os.path.basename(dst) == name and os.path.basename(os.path.dirname(dst)) == "run":
            seen.append(1)
            if len(seen) == count:
                die()
        return real_replace(src, dst, *args, **kwargs)
    os.replace = replace
elif point == "metrics":  # half a line written, then killed
    real_call = runs.MetricsWriter.__call__
    def call(self, stage, record):
        seen.append(1)
        if len(seen) == count:
            with open(self.file, "a") as f:
                f.write('{"stage": "' + stage + '", "st')
            die()
        return real_call(self, stage, record)
    runs.MetricsWriter.__call__ = call
sys.exit(main(sys.argv[3:]))
"""


@pytest.mark.parametrize("point,count", [("checkpoint", 2), ("swap", 2), ("metrics", 6), ("manifest", 2),
                                         ("manifest", 5)])
def test_a_run_killed_while_writing_resumes_to_the_same_result(reference: Path, tmp_path: Path, capsys, point: str,
                                                                count: int) -> None:
    config, run = write_config(tmp_path, baselines="[]"), tmp_path / "run"
    killer = tmp_path / "killer.py"
    killer.write_text(KILLER)
    proc = subprocess.run([sys.executable, str(killer), point, str(count), "search", str(config), "--out", str(run),
                           "--quiet"], env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert search(config, run, "--resume") == 0
    err = capsys.readouterr().err
    if point == "metrics":
        assert "dropped a torn last line" in err, err
    assert_same_run(run, reference)
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]


def test_derive_and_resume_are_refused_while_another_process_holds_the_run(tmp_path: Path, capsys) -> None:
    import fcntl

    config, run = write_config(tmp_path, baselines="[]"), tmp_path / "run"
    assert search(config, run) == 0
    capsys.readouterr()
    held = os.open(run / "automtl-run.lock", os.O_RDWR | os.O_CREAT)  # another open file: flock sees another holder
    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.ftruncate(held, 0)
    os.write(held, f"{os.getpid()}\n".encode())
    try:
        fails(capsys, ["derive", str(run), "--out", str(tmp_path / "a.json")],
              f"{run}: in use by another automtl process (pid {os.getpid()}")
        fails(capsys, ["search", str(config), "--out", str(run), "--quiet", "--resume"],
              f"{run}: in use by another automtl process (pid {os.getpid()}")
    finally:
        os.close(held)
    assert not (tmp_path / "a.json").exists()
    assert main(["derive", str(run), "--out", str(tmp_path / "a.json")]) == 0 and (tmp_path / "a.json").is_file()


def test_an_impossible_run_directory_name_is_one_short_line(tmp_path: Path, capsys) -> None:
    config = write_config(tmp_path, baselines="[]")
    for out in (tmp_path / ("x" * 100_000), tmp_path / ("y" * 300) / "run"):
        err = fails(capsys, ["search", str(config), "--out", str(out), "--quiet"], "File name too long", " ... ")
        assert len(err) < 600, len(err)  # the name is shown by its start and end, not echoed whole
    assert list(tmp_path.iterdir()) == [config]


# --- the integrity module on its own ------------------------------------------------------------------------


def test_a_staged_file_that_does_not_read_back_leaves_the_old_one_and_no_temporaries(tmp_path: Path) -> None:
    from automtl.app.integrity import RunError, StagedFile, file_record

    dest = tmp_path / "f.json"
    dest.write_text('{"old": 1}')

    def check(path: Path) -> None:
        json.loads(path.read_text())

    with pytest.raises(RunError, match="does not read back"), StagedFile(dest) as staged:
        staged.path.write_text('{"new": ')
        staged.seal(check)
        staged.commit()
    assert dest.read_text() == '{"old": 1}' and sorted(p.name for p in tmp_path.iterdir()) == ["f.json"]
    with StagedFile(dest) as staged:
        staged.path.write_text('{"new": 2}')
        record = staged.seal(check)
        staged.commit(keep=tmp_path / "f.prev.json")
    assert record == file_record(dest) and (tmp_path / "f.prev.json").read_text() == '{"old": 1}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.json", "f.prev.json"]


def test_a_dir_lock_names_its_holder_and_is_free_once_released(tmp_path: Path) -> None:
    from automtl.app.integrity import DirLock, RunError

    file = tmp_path / "run.lock"
    lock = DirLock.acquire(file, "the run")
    assert lock.created and DirLock.holder(file) == f"pid {os.getpid()}"
    with pytest.raises(RunError, match=f"the run: in use by another automtl process \\(pid {os.getpid()}"):
        DirLock.acquire(file, "the run")  # another open file of the same process is another holder
    lock.release()
    assert DirLock.holder(file) is None
    again = DirLock.acquire(file, "the run")
    assert not again.created
    again.release(remove=True)
    assert not file.exists()
