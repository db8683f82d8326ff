"""The backbone zoo: torch definitions of common CNNs and matching Caffe deploy files.

>>> from automtl import backbones
>>> model = backbones.get("resnet18")
>>> backbones.input_shape("resnet18")
(3, 224, 224)
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from .mnasnet import MNASNet, mnasnet
from .mobilenet import MobileNetV2, mobilenet_v2
from .resnet import ResNet, deeplab_resnet34, resnet18, resnet34, resnet50
from .tiny import TinyCNN, tiny_cnn

__all__ = [
    "MNASNet",
    "MobileNetV2",
    "ResNet",
    "TinyCNN",
    "UnknownBackboneError",
    "deeplab_resnet34",
    "get",
    "input_shape",
    "mnasnet",
    "mobilenet_v2",
    "names",
    "prototxt_path",
    "resnet18",
    "resnet34",
    "resnet50",
    "tiny_cnn",
]

_IMAGENET = (3, 224, 224)

# name -> (constructor, default (C, H, W) input)
_ZOO: dict[str, tuple[Callable[..., nn.Module], tuple[int, int, int]]] = {
    "resnet18": (resnet18, _IMAGENET),
    "resnet34": (resnet34, _IMAGENET),
    "resnet50": (resnet50, _IMAGENET),
    "mobilenet_v2": (mobilenet_v2, _IMAGENET),
    "mnasnet": (mnasnet, _IMAGENET),
    "deeplab_resnet34": (deeplab_resnet34, _IMAGENET),
    "tiny_cnn": (tiny_cnn, (3, 32, 32)),
}

_DIR = Path(__file__).resolve().parent


class UnknownBackboneError(KeyError, ValueError):
    """Raised for a name that is not in the zoo; catchable as ``KeyError`` or ``ValueError``."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def _lookup(name: str) -> tuple[Callable[..., nn.Module], tuple[int, int, int]]:
    try:
        return _ZOO[name]
    except (KeyError, TypeError):
        pass
    close = difflib.get_close_matches(str(name).lower(), _ZOO, n=1, cutoff=0.5)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise UnknownBackboneError(f"unknown backbone {name!r}{hint}; known backbones: {', '.join(_ZOO)}")


def names() -> list[str]:
    """The zoo's backbone names."""
    return list(_ZOO)


def get(name: str, **kwargs: Any) -> nn.Module:
    """Build the named backbone, freshly initialised; ``kwargs`` (``num_classes``) go to its constructor."""
    return _lookup(name)[0](**kwargs)


def input_shape(name: str) -> tuple[int, int, int]:
    """The backbone's default input shape ``(C, H, W)``, as declared in its prototxt."""
    return _lookup(name)[1]


def prototxt_path(name: str) -> Path:
    """Path of the backbone's Caffe deploy file (``<name>.prototxt`` next to this module)."""
    _lookup(name)
    return _DIR / f"{name}.prototxt"
