"""Entry points: a config file or parsed data -> a validated :class:`RunConfig`; the built-in demo's config."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import Ctx, KeyPath
from .parse import read_config_file
from .schema import from_dict
from .settings import BASELINES, RunConfig

__all__ = ["config_from_dict", "demo_config", "load_config"]


def load_config(path: str | os.PathLike, *, check_memory: bool = True) -> RunConfig:
    """Read, validate and resolve a ``.yaml`` / ``.yml`` / ``.toml`` run configuration.

    ``check_memory=False`` skips the memory estimate (:mod:`.resources`): for commands that only read
    a run made on a larger machine (its report, its pictures).
    """
    data, lines, label = read_config_file(path)
    p = Path(path)
    return from_dict(data, Ctx(label, lines, p.parent), p, memory=check_memory)


def config_from_dict(
    data: Mapping[str, Any],
    source: str | Path | None = None,
    lines: Mapping[KeyPath, int] | None = None,
    *,
    check_memory: bool = True,
) -> RunConfig:
    """Validate and resolve an already parsed configuration (the layout of the file, or of :meth:`RunConfig.to_dict`).

    ``source`` names the file in messages and is the folder relative backbone paths start from
    (the current directory without one). ``lines`` maps key paths such as ``("search",
    "warmup_steps")`` or ``("baselines", 0)`` to the 1-based line of the key, for messages.
    ``check_memory`` as for :func:`load_config`.
    """
    label = os.fspath(source) if source is not None else None
    src = Path(source) if source is not None else None
    ctx = Ctx(label, lines or {}, src.parent if src is not None else Path("."))
    return from_dict(data, ctx, src, memory=check_memory)


COLOUR_CODES = {"a": 0, "b": 1, "c": 2, "d": 0}  # the default demo's tasks and their codes (d copies a)


def colour_codes_config(
    *, images: int = 1280, warmup_steps: int = 200, search_iterations: int = 300, finetune_steps: int = 200,
    seed: int = 0,
) -> RunConfig:
    """The default demo (``automtl demo``): four tasks of :class:`~automtl.train.colour_codes.ColourCodes`
    on the shipped ColourCodeNet prototxt, where sharing everything costs accuracy, so the search has
    something to find (the heads are identities: the last convolution writes each task's logits)."""
    from ... import backbones

    proto = str(Path(backbones.__file__).resolve().parent / "colour_code_net.prototxt")
    head = {"factory": "torch.nn:Identity"}
    return config_from_dict({
        "backbone": {"name": proto, "input_shape": [3, 8, 8], "trunk_output": None, "bn": "follow", "skip": False},
        "tasks": {t: {"kind": "segmentation", "num_classes": 3, "head": head} for t in COLOUR_CODES},
        "data": {"factory": "automtl.train.colour_codes:ColourCodes", "n": images, "shifts": dict(COLOUR_CODES),
                 "size": 8},
        "search": {"warmup_steps": warmup_steps, "search_iterations": search_iterations,
                   "finetune_steps": finetune_steps, "batch_size": 32, "weight_lr": 3e-3},
        "seed": seed,
        "baselines": list(BASELINES),
    })


def demo_config(
    *,
    backbone: str = "resnet18",
    trunk_output: str = "layer2",
    size: int = 32,
    images: int = 500,
    warmup_steps: int = 60,
    search_iterations: int = 40,
    finetune_steps: int = 80,
    seed: int = 0,
) -> RunConfig:
    """The SyntheticScenes demo (``automtl demo --data synthetic_scenes``) as a run configuration; the
    keywords override its settings.

    Segmentation, depth and normals on SyntheticScenes with dense heads of 32 hidden channels on
    ``trunk_output``: the model :func:`build_model` makes is the one :mod:`automtl.app.demo` searches.
    """
    dense = {"head": "dense", "hidden_channels": 32}
    return config_from_dict({
        "backbone": {"name": backbone, "input_shape": [3, size, size], "trunk_output": trunk_output, "bn": "follow"},
        "tasks": {t: {"kind": t, **dense} for t in ("segmentation", "depth", "normals")},
        "data": {"name": "synthetic_scenes", "images": images, "size": size},
        "search": {"warmup_steps": warmup_steps, "search_iterations": search_iterations,
                   "finetune_steps": finetune_steps, "batch_size": 16, "eval_batch_size": 64, "tau_interval": 10},
        "seed": seed,
        "baselines": list(BASELINES),
    })
