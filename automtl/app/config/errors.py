"""Config errors: one line that names the file, the line and the key, and never echoes much user input.

Every message of the config package is built here: :class:`ConfigError` (the one exception),
:class:`Ctx` (which file and which line a key path is on), and the helpers that quote user values
(:func:`quote`, capped at :data:`MAX_ECHO` characters, so a 10 MB backbone name is not printed back
whole) and suggest the closest valid word (:func:`suggest`).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["MAX_ECHO", "MAX_MESSAGE", "ConfigError", "Ctx", "KeyPath", "quote", "said", "suggest"]

MAX_ECHO = 200
"""At most this many characters of one user value appear in a message."""

MAX_MESSAGE = 1000
"""A message longer than this is cut (a last guard; the quoted values are capped already)."""

KeyPath = tuple[str | int, ...]
"""A key path in the config: ``("search", "warmup_steps")``, ``("baselines", 0)``."""


class ConfigError(ValueError):
    """A configuration that cannot be used; one line, starting with ``<file>:<line>: `` where known.

    ``file`` and ``line`` (1-based) say where, ``detail`` is the message without them.
    """

    def __init__(self, message: str, file: str | None = None, line: int | None = None) -> None:
        detail = re.sub(r"\s*\n\s*", " ", str(message)).strip()
        if len(detail) > MAX_MESSAGE:
            detail = detail[: MAX_MESSAGE - 4] + " ..."
        self.detail = detail
        self.file = file
        self.line = line
        if file is not None:
            prefix = f"{clip(file)}:{line}: " if line is not None else f"{clip(file)}: "
        else:
            prefix = f"line {line}: " if line is not None else ""
        super().__init__(prefix + self.detail)


@dataclass
class Ctx:
    """Where messages point: the file as given, key lines, and the folder relative paths start from."""

    file: str | None
    lines: Mapping[KeyPath, int]
    base: Path

    def line(self, path: KeyPath) -> int | None:
        """The line of ``path``, else of its nearest ancestor that has one."""
        if not path:
            return self.lines.get(())
        for k in range(len(path), 0, -1):
            line = self.lines.get(tuple(path[:k]))
            if line is not None:
                return line
        return None

    def error(self, path: KeyPath, message: str) -> ConfigError:
        """A :class:`ConfigError` at the line of ``path``."""
        return ConfigError(message, self.file, self.line(path))

    def first(self, *paths: KeyPath) -> KeyPath:
        """The first of ``paths`` the file wrote (else the first): where to point at a derived value."""
        return next((p for p in paths if p in self.lines), paths[0])


def clip(text: str, limit: int = MAX_ECHO) -> str:
    """``text`` cut to ``limit`` characters, saying how long it was."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def said(exc: BaseException, limit: int = 300) -> str:
    """What an exception from other code (a constructor, a user factory) says, on one line and capped."""
    return clip(" ".join(str(exc).split()), limit)


def quote(value: Any, limit: int = MAX_ECHO) -> str:
    """``repr(value)`` with at most ``limit`` characters of it (long strings are cut before repr)."""
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]!r}... ({len(value)} characters)"
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def dotted(path: KeyPath) -> str:
    """``search.warmup_steps``; each part capped."""
    return ".".join(clip(str(p), 60) for p in path)


def where(path: KeyPath) -> str:
    """``in search`` or ``at the top level``."""
    return f"in {dotted(path)}" if path else "at the top level"


def kind_of(value: Any) -> str:
    """``a string 'x'``, ``an int 3``, ``a mapping``: what the file wrote, for 'expected ..., got ...'."""
    names = {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "an int",
             float: "a number", type(None): "null"}
    kind = next((n for t, n in names.items() if isinstance(value, t)), type(value).__name__)
    return kind if value is None or isinstance(value, Mapping) else f"{kind} {quote(value, 60)}"


def closest(word: Any, choices: Sequence[str]) -> str | None:
    """The choice closest to ``word`` (difflib, else one that starts with it: 'trunk' -> 'trunk_output')."""
    word = str(word)[:MAX_ECHO]
    close = difflib.get_close_matches(word, list(choices), n=1)
    if not close and len(word) >= 3:
        close = [c for c in choices if c.startswith(word)]
    return close[0] if close else None


def suggest(word: Any, choices: Sequence[str], what: str) -> str:
    """``did you mean 'x'? <what>: a, b, c`` (the question only when something is close)."""
    close = closest(word, choices)
    ask = f"did you mean {close!r}? " if close else ""
    return f"{ask}{what}: {', '.join(choices)}"
