"""The multi-task model: the supermodel and its choices, architectures, and derivation.

compile (``automtl.compiler``) -> rewrite + codegen -> :class:`SuperModel` -> :func:`derive` ->
:class:`MultiTaskModel`.
"""

from . import blocks  # noqa: F401 - registers the block choice kinds and operator, so saved models load
from .architecture import Architecture
from .derive import MultiTaskModel, derive
from .supermodel import SuperModel, build

__all__ = ["Architecture", "MultiTaskModel", "SuperModel", "build", "derive"]
