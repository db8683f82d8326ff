"""The run directory: its files by name, its manifest, its lock, and the checks before a command
reads or writes it.

The manifest (``automtl-run.json``) records the run's status and, for every file the run depends
on (``config.yaml``, ``architecture.json``, ``model.pt``, ``supermodel.pt``, ``history.json``,
``result.json``, the checkpoints), the sha256 and size it was written with; a file read back is
checked against it, so a damaged file is reported by name instead of silently used. Checkpoints
are written beside the current one, checked, then put in its place; the one before is kept as
``checkpoint.prev.pt``. A command that writes holds ``automtl-run.lock`` (see
:mod:`automtl.app.integrity`).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from .config import RunConfig, dump_config, load_config
from .integrity import (
    TMP_PREFIX,
    DirLock,
    FileRecord,
    RunError,
    StagedFile,
    atomic_write_text,
    clean_temporaries,
    file_record,
    os_error_line,
)

__all__ = ["CHECKPOINT", "FORMAT", "LOCK", "META", "PREVIOUS", "VERSION", "NotWritable", "RunDir", "RunError"]

FORMAT = "automtl.run"
VERSION = 1
META = "automtl-run.json"
LOCK = "automtl-run.lock"
CHECKPOINT = "checkpoint.pt"
PREVIOUS = "checkpoint.prev.pt"


class NotWritable(RunError):
    """A run directory this process cannot write (nor lock)."""


def _load_back(path: Path) -> None:
    """Read a freshly written torch file back (what a resume or a load will do)."""
    torch.load(path, map_location="cpu", weights_only=False)


class RunDir:
    """A run directory: its files by name, its manifest, its lock and the checks before writing into it.

    ``started`` becomes true when the command in hand has changed the run (its first step or
    checkpoint); before that, :meth:`undo` puts the directory back as the command found it."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.lock: DirLock | None = None
        self.started = False
        self.start_changes: dict[str, Any] = {}  # manifest changes made with the first change of the run
        self._made: list[Path] = []  # folders this command created (a new run), top-most first
        # the records of checkpoint.pt and checkpoint.prev.pt as they are now (None: none, or unknown)
        self._current: tuple[dict[str, Any] | None, dict[str, Any] | None] = (None, None)
        self._new = False

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    # --- the manifest --------------------------------------------------------------------------------
    def meta(self) -> dict[str, Any]:
        """``automtl-run.json``, checked: ``RunError`` when missing or of another format or version."""
        file = self / META
        if not file.is_file():
            raise RunError(f"{self.path}: not an automtl run directory (no {META}); "
                           "`automtl search CONFIG --out DIR` makes one")
        try:
            meta = json.loads(file.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise RunError(f"{file}: unreadable ({e}); the run directory is damaged") from e
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            got = meta.get("format") if isinstance(meta, dict) else meta
            raise RunError(f"{file}: not an automtl run (format {got!r}, expected {FORMAT!r})")
        if meta.get("version") != VERSION:
            raise RunError(f"{self.path}: written by automtl {meta.get('automtl', '?')} in run format "
                           f"{meta.get('version')!r}; this automtl {__version__} reads format {VERSION}: "
                           "use that automtl version, or start a new run")
        return meta

    def write_meta(self, **changes: Any) -> None:
        """Update the manifest (``None`` removes a key), through a temporary file and a rename."""
        meta = self.meta() if (self / META).is_file() else {"format": FORMAT, "version": VERSION,
                                                             "created": _now()}
        meta.update(changes, automtl=__version__, updated=_now())
        meta = {k: v for k, v in meta.items() if v is not None}
        atomic_write_text(self / META, json.dumps(meta, indent=1) + "\n")

    def config(self) -> RunConfig:
        """The run's resolved config (``config.yaml``, checked against its recorded hash)."""
        self.meta()
        return load_config(self.verified("config.yaml"))

    # --- files and their hashes ----------------------------------------------------------------------
    def require(self, name: str, hint: str) -> Path:
        """The run's file ``name``, checked against its recorded hash; ``RunError`` with ``hint`` when missing."""
        file = self / name
        if not file.exists():
            if name != "slimda.pt" and (self / "slimda.pt").is_file():  # the one strategy with a folder of its own
                raise RunError(self.slimda_line(name))
            raise RunError(f"{self.path}: no {name}; {hint}")
        return self.verified(name)

    def slimda_line(self, missing: str) -> str:
        """What a SlimDA run (a bank of widths, no architecture or model of its own) says to a command
        that wants ``missing``: derive it with ``--budget``."""
        return (f"{self.path}: a SlimDA run (a bank of widths, slimda.pt) has no {missing}; "
                f"`automtl derive {self.path} --budget B` writes its network for a budget B "
                "(.pt, .onnx and a .json report)")

    def damaged(self, name: str) -> str | None:
        """Why the file ``name`` is not the one the run recorded (``None``: it is, or nothing is recorded)."""
        record = FileRecord.from_dict(self.meta().get("files", {}).get(name))
        file = self / name
        if record is None:
            return None
        if not file.is_file():
            return "missing" if not file.exists() else "not a file"
        found = file_record(file)
        if found == record:
            return None
        return (f"damaged: its content (sha256 {found.sha256[:12]}..., {found.bytes} bytes) is not what the run "
                f"wrote (sha256 {record.sha256[:12]}..., {record.bytes} bytes)")

    def verified(self, name: str) -> Path:
        """The path of ``name`` once its content matches the manifest; else one ``RunError`` line saying
        what to do (a resume makes every file after the last good checkpoint again)."""
        why = self.damaged(name)
        if why is not None:
            raise RunError(f"{self / name}: {why}; {self._remedy(name)}")
        return self / name

    def _remedy(self, name: str) -> str:
        if name == "config.yaml":
            return "put back the config the run was started with, or start anew with another --out"
        resume = f"`automtl search {self / 'config.yaml'} --out {self.path} --resume`"
        if name.startswith("report.") and self.meta().get("searched"):
            return f"{resume} writes it again (without searching again)"
        good = self.good_checkpoint()
        if good is None:
            return f"no intact checkpoint is left: start the run anew (another --out, or delete {self.path})"
        where, steps = good
        if where.name == CHECKPOINT:
            return f"{resume} makes it again from the last good checkpoint ({where}, after {steps} steps)"
        return (f"the last good checkpoint is {where} (after {steps} steps): `mv {where} {self / CHECKPOINT}`, "
                f"then {resume}")

    def put(self, name: str, write: Callable[[Path], Any], check: Callable[[Path], Any] | None = None) -> FileRecord:
        """Write the file ``name`` by ``write(path)`` beside its place, check it, record its hash, move it in."""
        with StagedFile(self / name) as staged:
            write(staged.path)
            record = staged.seal(check)
            staged.commit()
        self.write_meta(files={**self.meta().get("files", {}), name: record.to_dict()})
        return record

    def put_torch(self, name: str, obj: Any) -> FileRecord:
        return self.put(name, lambda p: torch.save(obj, p), _load_back)

    def put_text(self, name: str, text: str) -> FileRecord:
        return self.put(name, lambda p: p.write_text(text, encoding="utf-8"))

    # --- checkpoints ---------------------------------------------------------------------------------
    def checkpoints(self) -> list[dict[str, Any]]:
        """The recorded checkpoints, newest first: ``{"sha256", "bytes", "steps"}`` each."""
        return [c for c in self.meta().get("checkpoints", []) if FileRecord.from_dict(c) is not None]

    def _recorded(self, file: Path) -> dict[str, Any] | None:
        if not file.is_file():
            return None
        found = file_record(file)
        return next((c for c in self.checkpoints() if FileRecord.from_dict(c) == found), None)

    def good_checkpoint(self) -> tuple[Path, int] | None:
        """The newest checkpoint file whose content is one the run recorded, and its steps."""
        for file in (self / CHECKPOINT, self / PREVIOUS):
            found = self._recorded(file)
            if found is not None:
                return file, int(found["steps"])
        return None

    def save_checkpoint(self, write: Callable[[Path], Any], steps: int) -> None:
        """Write a checkpoint with ``write(path)`` (the searcher's own saving) beside ``checkpoint.pt``,
        read it back, record its hash, then make it ``checkpoint.pt`` and the one before it
        ``checkpoint.prev.pt``. At every moment each checkpoint file is whole and recorded."""
        self.mark_started()
        current, previous = self._current
        with StagedFile(self / CHECKPOINT) as staged:
            write(staged.path)
            new = {**staged.seal(_load_back).to_dict(), "steps": int(steps)}
            # during the switch every file on disk is recorded; the new one as pending until it is in place
            self.write_meta(checkpoints=[c for c in ({**new, "pending": True}, current, previous) if c])
            staged.commit(keep=self / PREVIOUS)
        self.write_meta(checkpoints=[c for c in (new, current) if c])
        self._current = (new, current)

    def resume_checkpoint(self) -> Path | None:
        """The checkpoint to resume from (``None``: the run never saved one), checked against the manifest.

        A damaged, missing or misplaced checkpoint of a run that recorded one is one ``RunError``
        line offering the last good checkpoint: never a silent restart from step 0."""
        file, records = self / CHECKPOINT, self.checkpoints()
        saved = [c for c in records if not c.get("pending")]  # a pending one may never have been put in place
        if file.exists() and not file.is_file():
            raise RunError(f"{file}: is a directory, not a checkpoint; {self._checkpoint_remedy(file)}")
        if file.is_file():
            found = self._recorded(file)
            if found is not None:
                previous = self._recorded(self / PREVIOUS)
                self._current = (_settled(found), _settled(previous))
                return file
            if not records:
                return file  # a run from before checkpoints were recorded
            raise RunError(f"{file}: damaged: its content is none of the checkpoints the run wrote (the last after "
                           f"{records[0]['steps']} steps); resuming from it would continue another model; "
                           + self._checkpoint_remedy(file))
        steps = saved[0]["steps"] if saved else int(self.meta().get("steps") or 0)  # a run before records: its steps
        if saved or steps:
            raise RunError(f"{self.path}: no {CHECKPOINT}, though the run saved one after {steps} steps; "
                           "resuming now would silently start again from step 0; " + self._checkpoint_remedy(file))
        return None

    def _checkpoint_remedy(self, file: Path) -> str:
        prev = self / PREVIOUS
        found = self._recorded(prev)
        if found is not None:
            move = f"`rm -r {file} && mv {prev} {file}`" if file.is_dir() else f"`mv {prev} {file}`"
            return (f"the last good checkpoint is {prev} (after {found['steps']} steps): {move}, then resume again")
        return (f"no intact checkpoint is left: put the checkpoint back, or start anew (another --out, "
                f"or delete {self.path})")

    # --- claiming the directory ----------------------------------------------------------------------
    def check_free(self) -> None:
        """Refuse, changing nothing, a directory that a new run cannot use."""
        if self.path.exists() and not self.path.is_dir():
            raise RunError(f"{self.path}: exists and is not a directory; choose another --out")
        if self.path.is_dir() and self._holds_files():
            holder = DirLock.holder(self / LOCK)
            if holder is not None:
                raise RunError(f"{self.path}: in use by another automtl process ({holder}, see {LOCK}); "
                               "wait for it to end, or stop it, then try again")
            what = "a run" if (self / META).is_file() else "files"
            raise RunError(f"{self.path}: already holds {what}; nothing was changed. Pass --resume to continue a "
                           "stopped run there, or choose another --out")

    def _holds_files(self) -> bool:
        """Whether the directory holds anything but a lock file and temporaries (what a killed creation leaves)."""
        return any(p.name != LOCK and not p.name.startswith(TMP_PREFIX) for p in self.path.iterdir())

    def create(self, cfg: RunConfig, command: str) -> None:
        """Start a new run here and hold its lock: the folder is made (or an empty one is claimed) by
        one process only; a directory that holds files is refused and left as it is."""
        self.check_free()
        try:
            self._made = _make_folders(self.path)
            self.lock = DirLock.acquire(self / LOCK, str(self.path))
        except OSError as e:
            self._remove_made()
            raise RunError(f"{self.path}: cannot make the run directory ({os_error_line(e)}); choose another --out "
                           "or fix the permissions") from None
        except RunError:
            self._remove_made()
            raise
        if self._holds_files():  # another process made a run here first
            self.lock.release(remove=self.lock.created)
            self.lock = None
            self.check_free()
        self._new = True
        clean_temporaries(self.path)
        try:
            self.write_meta(status="running", command=command, pid=os.getpid())
            with StagedFile(self / "config.yaml") as staged:
                dump_config(cfg, staged.path)
                record = staged.seal()
                staged.commit()
            self.write_meta(files={"config.yaml": record.to_dict()})
        except OSError as e:
            self.undo()
            raise RunError(f"{self.path}: cannot write the run directory ({os_error_line(e)}); choose another --out "
                           "or fix the permissions") from None

    def acquire(self) -> None:
        """Hold the lock of an existing run (to resume it, complete its report, or derive from it) and
        remove the temporaries a killed process left there."""
        self.meta()
        try:
            self.lock = DirLock.acquire(self / LOCK, str(self.path))
            clean_temporaries(self.path)
        except OSError as e:
            raise NotWritable(f"{self.path}: not writable ({os_error_line(e)}); a run directory must be writable: "
                           "fix its permissions, or copy it elsewhere and use the copy") from None

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def mark_started(self) -> None:
        """The command in hand now changes the run: from here on a failure leaves status ``failed``."""
        if not self.started:
            self.started = True
            self.write_meta(status="running", pid=os.getpid(), error=None, **self.start_changes)

    def undo(self) -> None:
        """Put the directory back as this command found it (a new run: absent, or empty as it was)."""
        if not self._new:
            self.release()
            return
        for entry in self.path.iterdir():
            if entry.name != LOCK:
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        if self.lock is not None:
            self.lock.release(remove=True)
            self.lock = None
        self._remove_made()

    def _remove_made(self) -> None:
        for folder in reversed(self._made):
            try:
                folder.rmdir()
            except OSError:
                break
        self._made = []

    def check_resume(self, cfg: RunConfig) -> None:
        """Allow a resume: same format, not finished (or finished with a damaged file to make again), the
        same resolved config."""
        meta = self.meta()
        if meta.get("status") == "done" and not any(self.damaged(n) for n in meta.get("files", {})):
            raise RunError(f"{self.path}: this run has finished; nothing to resume (`automtl report {self.path}`)")
        saved = load_config(self.verified("config.yaml")).to_dict()
        diff = _first_difference(saved, cfg.to_dict())
        if diff is not None:
            key, was, now = diff
            raise RunError(f"{self.path}: the config differs from the run's in {key} (run: {was!r}, now: {now!r}); "
                           "resume with the run's config.yaml, or start a new run with another --out")


def _settled(record: dict[str, Any] | None) -> dict[str, Any] | None:
    """A checkpoint record without its pending mark."""
    return None if record is None else {k: record[k] for k in ("sha256", "bytes", "steps")}


def _make_folders(path: Path) -> list[Path]:
    """``mkdir -p path``; returns the folders it made, top-most first."""
    missing = []
    p = path
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    made = []
    for folder in reversed(missing):
        try:
            folder.mkdir()
            made.append(folder)
        except FileExistsError:
            pass
    return made


def _first_difference(a: Any, b: Any, where: str = "") -> tuple[str, Any, Any] | None:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        for k in list(a) + [k for k in b if k not in a]:
            found = _first_difference(a.get(k), b.get(k), f"{where}.{k}" if where else str(k))
            if found is not None:
                return found
        return None
    return None if a == b else (where or "the config", a, b)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
