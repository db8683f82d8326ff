"""What every run command does around its work, whatever the method (AutoMTL, MPNAS, SlimDA).

Checkpoints go through the run directory (write, read back, replace); a failure leaves the
directory as it was before the first step, or marks it ``failed`` / ``stopped`` with the reason;
actions that only process 0 may take hand their result (or their one-line error) to every process.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .integrity import one_line, os_error_line
from .rundir import RunDir, RunError


def guard_checkpoints(searcher: Any, run: RunDir, rank: int) -> None:
    """Route the searcher's checkpoints through :meth:`RunDir.save_checkpoint` (process 0 writes):
    its own saving writes beside the current checkpoint, which is replaced once the new one reads back."""
    save = searcher.save_checkpoint

    def save_checkpoint(path: str | os.PathLike[str]) -> None:
        if rank == 0:
            run.save_checkpoint(save, searcher.steps_done())
        else:
            save(path)

    searcher.save_checkpoint = save_checkpoint  # type: ignore[method-assign]


def record_failure(run: RunDir, exc: BaseException, rank: int) -> BaseException:
    """Record a failure (process 0): before the command's first step the directory is put back as it
    was; after it, status ``failed`` (``stopped`` for Ctrl-C) with the reason. Returns what to raise:
    one ``RunError`` line for the causes a user can act on."""
    reason = os_error_line(exc) if isinstance(exc, OSError) else one_line(exc)
    where = ""
    if rank == 0:
        try:
            if not run.started:
                run.undo()
                where = f"nothing was written to {run.path}"
            else:
                interrupted = isinstance(exc, KeyboardInterrupt)
                run.write_meta(status="stopped" if interrupted else "failed", pid=None,
                               error="interrupted" if interrupted else reason)
                last = run.good_checkpoint()
                after = f" (after {last[1]} steps)" if last is not None else ""
                again = ("`automtl report` or --resume completes the report" if run.meta().get("searched")
                         else f"--resume goes on from the last checkpoint{after}")
                where = f"{run.path}: status '{run.meta()['status']}'; fix the cause, then {again}"
        except (OSError, ValueError):  # the directory itself is failing: the original error says more
            pass
        finally:
            run.release()
    return one_line_error(exc, reason, where)


def one_line_error(exc: BaseException, reason: str, where: str) -> BaseException:
    """A ``RunError`` line for the failures a user can act on (NaN loss, file system, memory); others
    (Ctrl-C, errors that already are one line, bugs) as they are."""
    if isinstance(exc, FloatingPointError | OSError | MemoryError | torch.OutOfMemoryError):
        return RunError(f"{reason}; {where}" if where else reason)
    return exc


def on_first_process(action: Callable[[], Any], rank: int, world: int) -> Any:
    """Run ``action`` in process 0 and hand its result to every process; the others raise the same
    ``RunError`` if it fails (none waits forever)."""
    error, value = None, None
    if rank == 0:
        try:
            value = action()
        except RunError as e:
            error = str(e)
    if world > 1:
        box = [(error, value)]
        torch.distributed.broadcast_object_list(box, src=0)
        error, value = box[0]
    if error is not None:
        raise RunError(error)
    return value


def claim(run: RunDir, cfg: Any, command: str, resume: bool, search_files: Sequence[str] = ()) -> dict[str, Any]:
    """Lock the run (making it when new) and say where to start: ``checkpoint`` (a path, or None), and
    ``searched`` (the search finished and left ``search_files`` intact: only its report is left to do)."""
    if not resume:
        run.create(cfg, command)
        return {"checkpoint": None, "searched": False}
    run.acquire()
    try:
        run.check_resume(cfg)
        searched = (bool(search_files) and bool(run.meta().get("searched"))
                    and not any(run.damaged(n) for n in search_files))
        checkpoint = None if searched else run.resume_checkpoint()
    except BaseException:
        run.release()
        raise
    return {"checkpoint": None if checkpoint is None else str(checkpoint), "searched": searched}
