"""Runs under several processes: two processes racing to create one run directory, a second process on
a run another one holds, a process killed (SIGKILL) while it writes, and the integrity module's
write-verify-replace and lock on their own. Each failure is one line naming the holder; a killed
run resumes to the uninterrupted one."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_reliability import assert_same_run, fails, search, uninterrupted_run
from test_runs import write_config

from automtl.app.cli import main

pytestmark = pytest.mark.usefixtures("deterministic")

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread per subprocess: CI machines are small


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return uninterrupted_run(tmp_path_factory)

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
