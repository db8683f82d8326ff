"""File integrity for run directories: content hashes, write-verify-replace, and the directory lock.

A run lives for hours and is resumed from its files, so no file may be trusted blindly:

* every file a run depends on is written under a private temporary name next to its place
  (:class:`StagedFile`), hashed (sha256) and checked, and only then moved into place with
  ``os.replace``: a crash leaves the old file or the new one, never half of one; the hash goes
  into the run's manifest and is compared when the file is read back (:func:`file_record`);
* the directory is held by an OS file lock (:class:`DirLock`, ``fcntl.flock`` on a lock file that
  names its holder's pid) for as long as a command writes into it, so two processes never
  write one run;
* temporaries left by a killed process all start with :data:`TMP_PREFIX` and are removed by the
  next holder of the lock (:func:`clean_temporaries`).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["TMP_PREFIX", "DirLock", "FileRecord", "RunError", "StagedFile", "atomic_write_text",
           "clean_temporaries", "elide", "file_record", "one_line", "os_error_line"]

#: every temporary file or folder a run directory may hold starts with this
TMP_PREFIX = ".automtl-tmp-"
#: the longest reason quoted from elsewhere in an error line (cut to fit)
MAX_LINE = 400
#: the longest error line of a run directory
MAX_ERROR = 1200
#: the longest path quoted in an error line
MAX_PATH = 200
_CHUNK = 1 << 20


class RunError(ValueError):
    """A run directory that cannot be used as asked (one line: the directory and what to do).

    A message longer than :data:`MAX_ERROR` (a path or a quoted reason of any length) keeps its
    start and its end, where the advice is, and loses the middle."""

    def __init__(self, message: str) -> None:
        super().__init__(elide(" ".join(message.split("\n")), MAX_ERROR))


def elide(text: str, limit: int) -> str:
    """``text`` when at most ``limit`` characters, else its start and end around `` ... ``."""
    if len(text) <= limit:
        return text
    half = (limit - 5) // 2
    return f"{text[:half]} ... {text[-half:]}"


def one_line(exc: BaseException | str, limit: int = MAX_LINE) -> str:
    """An exception (or text) as one line of at most ``limit`` characters."""
    text = exc if isinstance(exc, str) else (str(exc) or type(exc).__name__)
    text = " ".join(part.strip() for part in text.splitlines() if part.strip())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def os_error_line(exc: OSError) -> str:
    """``PATH: reason`` for an ``OSError`` (the file it concerns first, when known)."""
    reason = exc.strerror or one_line(exc)
    if exc.filename is None:
        return reason
    where = elide(str(os.fspath(exc.filename)), MAX_PATH)
    if getattr(exc, "filename2", None) is not None:
        where += f" -> {elide(str(os.fspath(exc.filename2)), MAX_PATH)}"
    return f"{where}: {reason}"


# --- content hashes ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileRecord:
    """A file's content hash (sha256, hex) and size in bytes, as the manifest records them."""

    sha256: str
    bytes: int

    def to_dict(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "bytes": self.bytes}

    @classmethod
    def from_dict(cls, data: Any) -> FileRecord | None:
        """The record in a manifest entry, or ``None`` when the entry holds none."""
        if isinstance(data, dict) and isinstance(data.get("sha256"), str) and isinstance(data.get("bytes"), int):
            return cls(data["sha256"], data["bytes"])
        return None


def file_record(path: str | os.PathLike[str]) -> FileRecord:
    """The :class:`FileRecord` of the file at ``path`` (read once, in chunks)."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return FileRecord(digest.hexdigest(), size)


# --- writing --------------------------------------------------------------------------------------------


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> FileRecord:
    """Write ``text`` to ``path`` through a uniquely named temporary file and ``os.replace``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        record = file_record(tmp)
        _replace(tmp, path)
        return record
    finally:
        if os.path.lexists(tmp):
            os.remove(tmp)


def _replace(src: str | os.PathLike[str], dest: Path) -> None:
    if dest.is_dir() and not dest.is_symlink():
        raise RunError(f"{dest}: is a directory where a file belongs; remove it (nothing of the run is in it)")
    os.replace(src, dest)


class StagedFile:
    """A file written under a private temporary folder next to ``dest``, then put in its place.

    ``with StagedFile(dest) as staged: write(staged.path); record = staged.seal(check); staged.commit()``.
    Whatever the writer leaves next to ``staged.path`` (its own temporaries) stays inside the
    folder, which is removed on exit; a killed process leaves only a :data:`TMP_PREFIX` folder.
    """

    def __init__(self, dest: str | os.PathLike[str]) -> None:
        self.dest = Path(dest)
        self.folder = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{self.dest.name}.", dir=self.dest.parent))
        self.path = self.folder / self.dest.name
        self.record: FileRecord | None = None

    def __enter__(self) -> StagedFile:
        return self

    def __exit__(self, *exc: Any) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def seal(self, check: Callable[[Path], Any] | None = None) -> FileRecord:
        """Flush the written file to disk, hash it and run ``check(path)`` on it (e.g. load it back)."""
        if not self.path.is_file():
            raise RunError(f"{self.dest}: the writer left no file to put there")
        _fsync(self.path)
        self.record = file_record(self.path)
        if check is not None:
            try:
                check(self.path)
            except Exception as e:  # noqa: BLE001 - any failure to read back means the file is bad
                raise RunError(f"{self.dest}: the file just written does not read back ({one_line(e, 200)}); "
                               "the previous one is kept") from e
        return self.record

    def commit(self, keep: str | os.PathLike[str] | None = None) -> None:
        """Move the sealed file to ``dest``; first, with ``keep``, the current ``dest`` becomes ``keep``
        (by a hard link, or a copy where links are not supported), so one of them always exists."""
        if self.record is None:
            raise RuntimeError("StagedFile.commit before seal")
        if keep is not None and self.dest.is_file():
            keep = Path(keep)
            link = self.folder / f"keep-{keep.name}"
            try:
                os.link(self.dest, link)
            except OSError:
                shutil.copyfile(self.dest, link)
            _replace(link, keep)
        _replace(self.path, self.dest)


def clean_temporaries(folder: str | os.PathLike[str]) -> list[str]:
    """Remove what a killed writer left in ``folder`` (names starting with :data:`TMP_PREFIX`)."""
    removed = []
    for entry in Path(folder).iterdir():
        if entry.name.startswith(TMP_PREFIX):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry.name)
    return removed


# --- the lock -------------------------------------------------------------------------------------------


def _holder(fd: int) -> str:
    """The pid the holder wrote into the lock file (it writes it right after locking)."""
    for _ in range(40):
        try:
            text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
        except OSError:
            text = ""
        if text.isdigit():
            return f"pid {text}"
        time.sleep(0.05)
    return "pid unknown"


class DirLock:
    """An exclusive ``fcntl.flock`` on ``file``, held until :meth:`release` (or the process ends).

    The lock file holds the holder's pid, so that a second process can say who holds it. A lock
    file is never removed while others may wait on it, except by :meth:`release` ``(remove=True)``
    of a holder that created it; a process that then finds its locked file unlinked tries again.
    """

    def __init__(self, file: Path, fd: int, created: bool) -> None:
        self.file, self._fd, self.created = file, fd, created

    @classmethod
    def acquire(cls, file: str | os.PathLike[str], what: str) -> DirLock:
        """Lock ``file`` (created when missing); ``RunError`` naming the holder's pid when it is held.

        ``what`` names the locked thing in the error (the run directory)."""
        file = Path(file)
        for _ in range(10):
            created = False
            try:
                fd = os.open(file, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
                created = True
            except FileExistsError:
                try:
                    fd = os.open(file, os.O_RDWR | os.O_CLOEXEC)
                except FileNotFoundError:  # its creator gave up and removed it: try again
                    continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                holder = _holder(fd)
                os.close(fd)
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                raise RunError(f"{what}: in use by another automtl process ({holder}, see {file.name}); "
                               "wait for it to end, or stop it, then try again") from None
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(file))
            except FileNotFoundError:
                same = False
            if not same:  # unlinked while we waited for it: lock the file that is there now
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            return cls(file, fd, created)
        raise RunError(f"{file}: could not be locked (it keeps being replaced); try again")

    @staticmethod
    def holder(file: str | os.PathLike[str]) -> str | None:
        """``"pid N"`` when another process holds ``file`` locked, else ``None`` (nothing is changed)."""
        try:
            fd = os.open(file, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return _holder(fd)
        finally:
            os.close(fd)  # closing lets go of the probe's own lock
        return None

    @property
    def held(self) -> bool:
        return self._fd >= 0

    def release(self, remove: bool = False) -> None:
        """Let go of the lock; ``remove=True`` removes the lock file first (a creation that is undone)."""
        if self._fd < 0:
            return
        if remove:
            self.file.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = -1
