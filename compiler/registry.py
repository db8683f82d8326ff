"""One registry class for every kind of named thing: operator kinds, choice kinds, strategies, weightings.

A registry is a dict (so ``sorted(REGISTRY)``, ``in`` and iteration work as on any mapping) whose
entries are added once by name, and whose lookups fail with one line that lists the known names.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(dict[str, T], Generic[T]):
    """Named entries of one kind of thing (``what``: "operator kind", "search strategy", ...).

    ``error`` is the exception an unknown name raises; with ``fold_case`` names are looked up
    and stored in lower case.
    """

    def __init__(self, what: str, error: type[Exception] = ValueError, fold_case: bool = False) -> None:
        super().__init__()
        self.what, self.error, self.fold_case = what, error, fold_case

    def key(self, name: str) -> str:
        return name.lower() if self.fold_case else name

    def add(self, name: str, entry: T, same: Callable[[T, T], bool] | None = None) -> T:
        """Register ``entry`` under ``name``; a second entry under one name is an error (unless ``same``
        says the two are one thing, e.g. a class defined again when its module is reloaded)."""
        key = self.key(name)
        if key in self and not (same is not None and same(self[key], entry)):
            raise ValueError(f"{self.what} {key!r} is registered twice")
        self[key] = entry
        return entry

    def find(self, name: str) -> T:
        """The entry named ``name``, or one error line listing the known names."""
        key = self.key(name) if isinstance(name, str) else None
        if key is None or key not in self:
            raise self.error(f"unknown {self.what} {name!r}; known: {', '.join(sorted(self))}")
        return self[key]
