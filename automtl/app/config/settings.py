"""The validated run configuration: plain dataclasses, their file layout, and the device they resolve to."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch.utils.data import Dataset

from ...train.data import MultiDigits, SyntheticScenes
from ...train.tasks import TASKS, Classification
from .errors import ConfigError, quote
from .strategies import DEFAULT_STRATEGY, strategy_options

__all__ = [
    "BASELINES",
    "DATASETS",
    "BackboneConfig",
    "DataConfig",
    "RunConfig",
    "TaskConfig",
    "dump_config",
    "resolve_device",
]

BASELINES = ("independent", "all-shared")
"""The comparison models a run can train: one model per task, and every operator shared."""

DATASETS: dict[str, type[Dataset]] = {"synthetic_scenes": SyntheticScenes, "multi_digits": MultiDigits}
"""Data names -> dataset classes."""

DEFAULT_IMAGES = 500
HEADS = ("auto", "dense", "classification")
FACTORY_HEAD = "factory"
"""``TaskConfig.head`` of a task whose head comes from a user factory (``head_factory``)."""
BN_MODES = ("specific", "follow")
AMP_MODES = ("bf16", "fp16")
TOP_KEYS = ("backbone", "tasks", "data", "search", "seed", "device", "amp", "baselines", "checkpoint_every")
BACKBONE_KEYS = ("name", "input_shape", "trunk_output", "bn", "skip")
TASK_KEYS = ("kind", "head", "hidden_channels")
RUN_FIELDS = ("seed", "device", "amp", "quiet")
"""Strategy option fields that are set at the top level (or on the command line), not in ``search``."""
SEED_LIMIT = 2**32
"""Seeds lie in ``[0, 2**32)``: the search derives per-stage seeds from it and torch takes at most 64 bits."""
_DEVICE = re.compile(r"auto|cpu|cuda(:\d{1,4})?")


@dataclass
class BackboneConfig:
    """What to compile and where the heads attach. ``name`` is a zoo name or an absolute file path."""

    name: str = "resnet18"
    input_shape: tuple[int, int, int] = (3, 32, 32)
    trunk_output: str | None = "layer2"
    bn: str = "follow"
    skip: bool = True


@dataclass
class TaskConfig:
    """One task: its kind, its head and the task constructor's keyword arguments (``options``).

    A head from a user factory has ``head == "factory"``, ``head_factory`` (``"pkg.mod:fn"``) and
    the factory's keyword arguments in ``head_options``.
    """

    kind: str
    head: str = "auto"
    hidden_channels: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    head_factory: str | None = None
    head_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataConfig:
    """The dataset: a built-in ``name`` or a user ``factory`` (``"pkg.mod:fn"``), and its keyword arguments.

    For a built-in dataset ``options["n"]`` is the file's ``images``.
    """

    name: str = "synthetic_scenes"
    options: dict[str, Any] = field(default_factory=dict)
    factory: str | None = None


@dataclass
class RunConfig:
    """A whole run. ``search`` mirrors ``seed``, ``amp`` and the resolved ``device`` (kept in sync on creation).

    ``search`` holds the options of the search ``strategy`` (for ``automtl``, a
    :class:`automtl.search.SearchConfig`). ``device`` keeps the value as written (``auto``);
    ``search.device`` is what it resolves to on this machine. ``source`` (the file it came from) is
    not compared and not part of :meth:`to_dict`.
    """

    backbone: BackboneConfig
    tasks: dict[str, TaskConfig]
    data: DataConfig
    search: Any
    seed: int = 0
    device: str = "auto"
    amp: str | None = None
    baselines: tuple[str, ...] = ()
    checkpoint_every: int = 200
    strategy: str = DEFAULT_STRATEGY
    source: Path | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        self.baselines = tuple(self.baselines)
        options = strategy_options(self.strategy)
        if not isinstance(self.search, options):
            raise ConfigError(f"search: the {self.strategy} strategy takes {options.__name__} options, "
                              f"not {type(self.search).__name__}")
        names = {f.name for f in dataclasses.fields(self.search)}
        mirror = {"seed": self.seed, "device": resolve_device(self.device), "amp": self.amp}
        self.search = dataclasses.replace(self.search, **{k: v for k, v in mirror.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        """The resolved configuration in plain JSON types, in the file's layout (loads back to an equal config)."""
        b = self.backbone
        if self.data.factory is not None:
            data = {"factory": self.data.factory, **plain(self.data.options)}
        else:
            options = dict(self.data.options)
            images = options.pop("n", DEFAULT_IMAGES)
            data = {"name": self.data.name, "images": images, **plain(options)}
        return {
            "backbone": {"name": b.name, "input_shape": list(b.input_shape), "trunk_output": b.trunk_output,
                         "bn": b.bn, "skip": b.skip},
            "tasks": {name: _task_dict(t) for name, t in self.tasks.items()},
            "data": data,
            "search": {"strategy": self.strategy, **{f.name: plain(getattr(self.search, f.name))
                                                     for f in dataclasses.fields(self.search)
                                                     if f.name not in RUN_FIELDS}},
            "seed": self.seed,
            "device": self.device,
            "amp": self.amp,
            "baselines": list(self.baselines),
            "checkpoint_every": self.checkpoint_every,
        }


def _task_dict(t: TaskConfig) -> dict[str, Any]:
    head: Any = t.head
    if t.head_factory is not None:
        head = {"factory": t.head_factory, **plain(t.head_options)}
    return {"kind": t.kind, "head": head, "hidden_channels": t.hidden_channels, **plain(t.options)}


def natural_head(kind: str) -> str:
    """The built-in head a task kind gets with ``head: auto``: ``classification`` or ``dense``."""
    factory = TASKS.get(kind)
    is_cls = kind == "classification" or (isinstance(factory, type) and issubclass(factory, Classification))
    return "classification" if is_cls else "dense"


def plain(value: Any) -> Any:
    """Tuples -> lists, mappings -> dicts, paths -> strings, recursively."""
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def dump_config(cfg: RunConfig, path: str | os.PathLike) -> None:
    """Write ``cfg.to_dict()`` as YAML (lists in flow style); :func:`load_config` reads back an equal config."""
    text = yaml.dump(cfg.to_dict(), Dumper=_Dumper, sort_keys=False, allow_unicode=True)
    Path(path).write_text("# automtl run configuration (resolved)\n" + text, encoding="utf-8")


class _Dumper(yaml.SafeDumper):
    """Block mappings, flow lists: ``input_shape: [3, 32, 32]``."""

    def represent_list(self, data: Any) -> yaml.Node:  # noqa: D102
        return self.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True)


_Dumper.add_representer(list, _Dumper.represent_list)
_Dumper.add_representer(tuple, _Dumper.represent_list)


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when CUDA is available, else ``cpu``; ``cuda`` / ``cuda:N`` only where CUDA is."""
    if not isinstance(device, str) or not _DEVICE.fullmatch(device):
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {quote(device)}")
    if device == "cpu":
        return "cpu"
    available = torch.cuda.is_available()
    if device == "auto":
        return "cuda" if available else "cpu"
    if not available:
        raise ConfigError(f"device {device!r}: CUDA is not available on this machine; use device: cpu or device: auto")
    if ":" in device:
        index, count = int(device.split(":")[1]), torch.cuda.device_count()
        if index >= count:
            raise ConfigError(f"device {device!r}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    return device
