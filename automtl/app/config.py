"""The run configuration of ``automtl search CONFIG``: a YAML or TOML file, parsed, validated and built.

A run configuration names a backbone, the tasks, the data, the search hyper-parameters and a few
run settings. Everything is checked when the file is loaded, so a typo fails in a second with
the file, the line and a suggestion, instead of minutes into a search::

    run.yaml:7: unknown key 'warmup_step' in search; did you mean 'warmup_steps'?

The format (``.yaml`` / ``.yml``; every key but ``tasks`` may be left out, defaults as shown):

```yaml
backbone:
  name: resnet18            # a zoo name (automtl.backbones.names()), or a .prototxt / .onnx path,
                            # relative to the config file's folder
  input_shape: [3, 32, 32]  # [C, H, W]; must match the data's images
  trunk_output: layer2      # the operator or submodule the heads read (null: the backbone's output)
  bn: follow                # specific | follow
  skip: true                # offer the "skip" branch for every searchable operator
tasks:                      # name -> task; the name is a target of the data
  segmentation: {kind: segmentation}
  depth: {kind: depth, weight: 1.0}
  normals: {kind: normals, head: dense, hidden_channels: 32}
data:
  name: synthetic_scenes    # synthetic_scenes | multi_digits
  images: 500               # dataset size (the constructor's ``n``)
  size: 32                  # other keys: the dataset constructor's own keyword arguments
search:                     # any automtl.search.searcher.SearchConfig field but seed, device, amp, quiet
  warmup_steps: 60
  search_iterations: 40
  finetune_steps: 80
  tau_interval: 10
seed: 0                     # also the search's and (by default) the dataset's seed
device: auto                # auto | cpu | cuda | cuda:N
amp: null                   # null | bf16 | fp16 (fp16 needs CUDA)
baselines: [independent, all-shared]   # models trained for comparison in the report
checkpoint_every: 200       # search steps between checkpoints (0: only at the end)
```

Tasks: ``kind`` is one of :data:`automtl.train.tasks.TASKS` (classification, segmentation, depth,
normals, edges) and must fit the target (a ``synthetic_scenes`` target's kind is its name, every
``multi_digits`` target is a classification). ``head`` is ``auto`` (``dense`` for per-pixel
tasks, ``classification`` for classification), ``dense`` (:func:`automtl.train.tasks.dense_head`, with
``hidden_channels``) or ``classification`` (:func:`automtl.train.tasks.classification_head`). Any other
key is a keyword argument of the task's constructor (``weight``, ``num_classes``, ``ignore_index``,
``pos_weight``...); ``num_classes`` defaults to the data's.

Data: ``synthetic_scenes`` (:class:`automtl.train.data.SyntheticScenes`, images ``(3, size, size)``,
targets segmentation, depth, normals, edges) or ``multi_digits`` (:class:`automtl.train.data.MultiDigits`,
images ``(channels, size, 2 * size)``, targets left, right, sum_parity, larger). Keys other than
``name`` and ``images`` are the constructor's keyword arguments; ``seed`` defaults to the top-level
seed, ``size`` to the input shape's (``channels`` too, for multi_digits), and only the configured
tasks' targets are produced.

TOML (``.toml``) has the same structure, with ``[backbone]``, ``[tasks.segmentation]``, ``[data]``,
``[search]`` tables and the top-level keys before the first table. TOML has no null: leave the key
out for the default, or write ``trunk_output = ""`` for the backbone's own output.

PyYAML reads YAML 1.1, where ``1e-3`` is a string (``1.0e-3`` is a float): a string that reads as a
number is accepted wherever a float is expected.

:func:`load_config` returns a :class:`RunConfig`; :func:`build_tasks`, :func:`build_dataset` and
:func:`build_model` turn it into what :class:`automtl.Searcher` takes. :func:`dump_config` writes
the resolved configuration (every field, every search hyper-parameter) back as YAML.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from torch.utils.data import Dataset

from ..model.supermodel import SuperModel, build
from ..search.searcher import SearchConfig
from ..train.data import MultiDigits, SyntheticScenes
from ..train.tasks import TASKS, Classification, Task, TaskInputError, classification_head, dense_head

__all__ = [
    "BASELINES",
    "DATASETS",
    "BackboneConfig",
    "ConfigError",
    "DataConfig",
    "RunConfig",
    "TaskConfig",
    "build_dataset",
    "build_model",
    "build_tasks",
    "config_from_dict",
    "demo_config",
    "dump_config",
    "load_config",
    "resolve_device",
]

BASELINES = ("independent", "all-shared")
"""The comparison models a run can train: one model per task, and every operator shared."""

DATASETS: dict[str, type[Dataset]] = {"synthetic_scenes": SyntheticScenes, "multi_digits": MultiDigits}
"""Data names -> dataset classes."""

DEFAULT_IMAGES = 500
HEADS = ("auto", "dense", "classification")
BN_MODES = ("specific", "follow")
AMP_MODES = ("bf16", "fp16")
TOP_KEYS = ("backbone", "tasks", "data", "search", "seed", "device", "amp", "baselines", "checkpoint_every")
BACKBONE_KEYS = ("name", "input_shape", "trunk_output", "bn", "skip")
TASK_KEYS = ("kind", "head", "hidden_channels")
# SearchConfig fields that are not set in the search section
_NOT_IN_SEARCH = ("seed", "device", "amp", "quiet")
# suffixes that make a backbone name a file (as automtl.compile reads them)
_FILE_SUFFIXES = (".prototxt", ".pbtxt", ".txt", ".onnx")
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|[+-]?(inf|nan)", re.IGNORECASE)
_BUILTIN_KINDS = ("classification", "segmentation", "depth", "normals", "edges")
# the kind each built-in target needs
_TARGET_KINDS: dict[str, dict[str, str]] = {
    "synthetic_scenes": {t: t for t in SyntheticScenes.TASKS},
    "multi_digits": {t: "classification" for t in MultiDigits.TASKS},
}

_KeyPath = tuple[str | int, ...]
"""A key path in the config: ``("search", "warmup_steps")``, ``("baselines", 0)``."""


class ConfigError(ValueError):
    """A configuration that cannot be used; one line, starting with ``<file>:<line>: `` where known.

    ``file`` and ``line`` (1-based) say where, ``detail`` is the message without them.
    """

    def __init__(self, message: str, file: str | None = None, line: int | None = None) -> None:
        self.detail = re.sub(r"\s*\n\s*", " ", str(message)).strip()
        self.file = file
        self.line = line
        if file is not None:
            prefix = f"{file}:{line}: " if line is not None else f"{file}: "
        else:
            prefix = f"line {line}: " if line is not None else ""
        super().__init__(prefix + self.detail)


# the configuration -----------------------------------------------------------------------------


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
    """One task: its kind, its head and the task constructor's keyword arguments (``options``)."""

    kind: str
    head: str = "auto"
    hidden_channels: int | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataConfig:
    """The dataset: its name and the constructor's keyword arguments (``n`` is the file's ``images``)."""

    name: str = "synthetic_scenes"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunConfig:
    """A whole run. ``search`` mirrors ``seed``, ``amp`` and the resolved ``device`` (kept in sync on creation).

    ``device`` keeps the value as written (``auto``); ``search.device`` is what it resolves to on
    this machine. ``source`` (the file it came from) is not compared and not part of :meth:`to_dict`.
    """

    backbone: BackboneConfig
    tasks: dict[str, TaskConfig]
    data: DataConfig
    search: SearchConfig
    seed: int = 0
    device: str = "auto"
    amp: str | None = None
    baselines: tuple[str, ...] = ()
    checkpoint_every: int = 200
    source: Path | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        self.baselines = tuple(self.baselines)
        self.search = dataclasses.replace(
            self.search, seed=self.seed, device=resolve_device(self.device), amp=self.amp
        )

    def to_dict(self) -> dict[str, Any]:
        """The resolved configuration in plain JSON types, in the file's layout (loads back to an equal config)."""
        b = self.backbone
        data = dict(self.data.options)
        images = data.pop("n", DEFAULT_IMAGES)
        return {
            "backbone": {"name": b.name, "input_shape": list(b.input_shape), "trunk_output": b.trunk_output,
                         "bn": b.bn, "skip": b.skip},
            "tasks": {name: {"kind": t.kind, "head": t.head, "hidden_channels": t.hidden_channels,
                             **_plain(t.options)} for name, t in self.tasks.items()},
            "data": {"name": self.data.name, "images": images, **_plain(data)},
            "search": {f.name: _plain(getattr(self.search, f.name))
                       for f in dataclasses.fields(SearchConfig) if f.name not in _NOT_IN_SEARCH},
            "seed": self.seed,
            "device": self.device,
            "amp": self.amp,
            "baselines": list(self.baselines),
            "checkpoint_every": self.checkpoint_every,
        }


def _plain(value: Any) -> Any:
    """Tuples -> lists, mappings -> dicts, paths -> strings, recursively."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


# loading ---------------------------------------------------------------------------------------


def load_config(path: str | os.PathLike) -> RunConfig:
    """Read, validate and resolve a ``.yaml`` / ``.yml`` / ``.toml`` run configuration."""
    label = os.fspath(path)
    p = Path(path)
    if not p.exists():
        raise ConfigError("no such config file", label)
    if p.is_dir():
        raise ConfigError("is a directory, not a config file", label)
    suffix = p.suffix.lower()
    if suffix not in (".yaml", ".yml", ".toml"):
        raise ConfigError(f"unsupported config format {suffix or '(no suffix)'!r}: use .yaml, .yml or .toml", label)
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError("not UTF-8 text", label) from None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror or exc}", label) from None
    data, lines = _parse_toml(text, label) if suffix == ".toml" else _parse_yaml(text, label)
    return _from_dict(data, _Ctx(label, lines, p.parent), p)


def config_from_dict(
    data: Mapping[str, Any],
    source: str | Path | None = None,
    lines: Mapping[tuple[str | int, ...], int] | None = None,
) -> RunConfig:
    """Validate and resolve an already parsed configuration (the layout of the file, or of :meth:`RunConfig.to_dict`).

    ``source`` names the file in messages and is the folder relative backbone paths start from
    (the current directory without one). ``lines`` maps key paths such as ``("search",
    "warmup_steps")`` or ``("baselines", 0)`` to the 1-based line of the key, for messages.
    """
    label = os.fspath(source) if source is not None else None
    src = Path(source) if source is not None else None
    return _from_dict(data, _Ctx(label, lines or {}, src.parent if src is not None else Path(".")), src)


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
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")
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


# parsing ---------------------------------------------------------------------------------------


def _parse_yaml(text: str, label: str) -> tuple[Any, dict[_KeyPath, int]]:
    """Parse once into data and the line of every key (YAML marks are 0-based)."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        if mark is exc.problem_mark and exc.context_mark is not None and mark.index >= len(text):
            mark = exc.context_mark  # "found <stream end>": where the unfinished thing started says more
        what = ", ".join(str(s) for s in (exc.context, exc.problem) if s)
        raise ConfigError(f"invalid YAML: {what}", label, mark.line + 1 if mark else None) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}", label) from None
    finally:
        loader.dispose()
    lines: dict[_KeyPath, int] = {}
    if node is not None:
        lines[()] = node.start_mark.line + 1
        _yaml_lines(node, (), lines, label, frozenset())
    return data, lines


def _yaml_lines(node: yaml.Node, path: _KeyPath, lines: dict[_KeyPath, int], label: str, stack: frozenset[int]) -> None:
    if id(node) in stack:  # a recursive alias
        return
    stack = stack | {id(node)}
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            if key.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults` brings keys in at this level
                for part in value.value if isinstance(value, yaml.SequenceNode) else [value]:
                    _yaml_lines(part, path, lines, label, stack)
                continue
            if not isinstance(key, yaml.ScalarNode):
                continue
            if key.value in seen:
                raise ConfigError(f"duplicate key {key.value!r} {_where(path)}", label, key.start_mark.line + 1)
            seen.add(key.value)
            lines[path + (key.value,)] = key.start_mark.line + 1
            _yaml_lines(value, path + (key.value,), lines, label, stack)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines.setdefault(path + (i,), item.start_mark.line + 1)
            _yaml_lines(item, path + (i,), lines, label, stack)


def _parse_toml(text: str, label: str) -> tuple[Any, dict[_KeyPath, int]]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        m = re.search(r"\s*\(at line (\d+), column (\d+)\)$", message)
        line = int(m.group(1)) if m else None
        if m:
            message = f"{message[: m.start()]} (column {m.group(2)})"
        raise ConfigError(f"invalid TOML: {message}", label, line) from None
    return data, _toml_lines(text)


_TOML_KEY_PART = r"(?:[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*')"
_TOML_KEY = rf"{_TOML_KEY_PART}(?:\s*\.\s*{_TOML_KEY_PART})*"


def _toml_key(text: str) -> _KeyPath:
    return tuple(a or b or c for a, b, c in re.findall(r"\"([^\"]*)\"|'([^']*)'|([A-Za-z0-9_-]+)", text))


def _toml_lines(text: str) -> dict[_KeyPath, int]:
    """The line of every table header and key, by a line scan (tomllib gives no positions; best effort)."""
    lines: dict[_KeyPath, int] = {}
    table: _KeyPath = ()
    arrays: dict[_KeyPath, int] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        s = raw.strip()
        if m := re.match(rf"\[\[\s*({_TOML_KEY})\s*\]\]", s):
            key = _toml_key(m.group(1))
            index = arrays[key] = arrays.get(key, -1) + 1
            table = key + (index,)
            for k in range(1, len(table) + 1):
                lines.setdefault(table[:k], number)
        elif m := re.match(rf"\[\s*({_TOML_KEY})\s*\]", s):
            table = _toml_key(m.group(1))
            for k in range(1, len(table) + 1):
                lines.setdefault(table[:k], number)
        elif m := re.match(rf"({_TOML_KEY})\s*=(.*)$", s):
            key = table + _toml_key(m.group(1))
            for k in range(len(table) + 1, len(key) + 1):
                lines.setdefault(key[:k], number)
            for inner in re.finditer(rf"[{{,]\s*({_TOML_KEY})\s*=", m.group(2)):  # an inline table's keys
                lines.setdefault(key + _toml_key(inner.group(1)), number)
    return lines


# validation ------------------------------------------------------------------------------------


@dataclass
class _Ctx:
    """Where messages point: the file as given, key lines, and the folder relative paths start from."""

    file: str | None
    lines: Mapping[_KeyPath, int]
    base: Path

    def line(self, path: _KeyPath) -> int | None:
        """The line of ``path``, else of its nearest ancestor that has one."""
        if not path:
            return self.lines.get(())
        for k in range(len(path), 0, -1):
            line = self.lines.get(tuple(path[:k]))
            if line is not None:
                return line
        return None

    def error(self, path: _KeyPath, message: str) -> ConfigError:
        return ConfigError(message, self.file, self.line(path))


class _Mismatch(Exception):
    def __init__(self, want: str) -> None:
        self.want = want


def _dotted(path: _KeyPath) -> str:
    return ".".join(str(p) for p in path)


def _where(path: _KeyPath) -> str:
    return f"in {_dotted(path)}" if path else "at the top level"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _kind_of(value: Any) -> str:
    names = {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "an int",
             float: "a number", type(None): "null"}
    kind = next((n for t, n in names.items() if isinstance(value, t)), type(value).__name__)
    return kind if value is None or isinstance(value, Mapping) else f"{kind} {_short(value)}"


def _closest(word: Any, choices: Sequence[str]) -> str | None:
    """The choice closest to ``word`` (difflib, else one that starts with it: 'trunk' -> 'trunk_output')."""
    word = str(word)
    close = difflib.get_close_matches(word, list(choices), n=1)
    if not close and len(word) >= 3:
        close = [c for c in choices if c.startswith(word)]
    return close[0] if close else None


def _suggest(word: Any, choices: Sequence[str], what: str) -> str:
    """``did you mean 'x'? <what>: a, b, c`` (the question only when something is close)."""
    close = _closest(word, choices)
    ask = f"did you mean {close!r}? " if close else ""
    return f"{ask}{what}: {', '.join(choices)}"


def _check_keys(ctx: _Ctx, mapping: Mapping, path: _KeyPath, valid: Sequence[str],
                special: Mapping[str, str] | None = None) -> None:
    for key in mapping:
        if not isinstance(key, str):
            raise ctx.error(path, f"key {key!r} {_where(path)} is not a string")
        if key in valid:
            continue
        if special and key in special:
            raise ctx.error(path + (key,), special[key])
        close = _closest(key, valid)
        hint = f"did you mean {close!r}?" if close else f"valid keys: {', '.join(valid)}"
        raise ctx.error(path + (key,), f"unknown key {key!r} {_where(path)}; {hint}")


def _section(ctx: _Ctx, mapping: Mapping, key: str) -> Mapping:
    value = mapping.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ctx.error((key,), f"{key} must be a mapping of keys, got {_kind_of(value)}")
    return value


def _alternatives(hint: Any) -> list[Any]:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return [a for arg in typing.get_args(hint) for a in _alternatives(arg)]
    return [hint]


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_describe(args[0]).split(' ', 1)[-1]}s"
        return f"a list of {len(args)} {_describe(args[0]).split(' ', 1)[-1]}s"
    if origin in (list, Sequence) or hint in (list, Sequence):
        return "a list"
    if origin in (dict, Mapping) or hint in (dict, Mapping):
        return "a mapping"
    names = {type(None): "null", bool: "true or false", int: "an int", float: "a number", str: "a string"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def _coerce(value: Any, hint: Any) -> Any:
    """``value`` as the type ``hint`` wants (ints and numeric strings become floats where floats are wanted).

    Raises :class:`_Mismatch`. Types it does not know (a module, a device) are let through for
    the constructor to judge.
    """
    alts = _alternatives(hint)
    simple = (type(None), bool, int, float, str)
    for a in alts:
        origin = typing.get_origin(a) or a
        if a is Any or not (a in simple or origin in (tuple, list, dict, Sequence, Mapping)):
            return value
    if value is None:
        if type(None) in alts:
            return None
    elif isinstance(value, bool):
        if bool in alts:
            return value
    elif isinstance(value, int):
        if int in alts:
            return value
        if float in alts:
            return float(value)
    elif isinstance(value, float):
        if float in alts:
            return value
    elif isinstance(value, str):
        if str in alts:
            return value
        if float in alts and _NUMBER.fullmatch(value.strip()):
            return float(value)
    elif isinstance(value, list | tuple):
        for a in alts:
            origin, args = typing.get_origin(a), typing.get_args(a)
            if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
                if len(value) == len(args):
                    return tuple(_coerce(v, t) for v, t in zip(value, args, strict=True))
            elif origin is tuple:
                return tuple(_coerce(v, args[0] if args else Any) for v in value)
            elif origin in (list, Sequence) or a in (list, Sequence):
                return [_coerce(v, args[0] if args else Any) for v in value]
    elif isinstance(value, Mapping):
        if any((typing.get_origin(a) or a) in (dict, Mapping) for a in alts):
            if not all(isinstance(k, str) for k in value):
                raise _Mismatch("a mapping with string keys")
            return dict(value)
    raise _Mismatch(" or ".join(_describe(a) for a in alts))


def _value(ctx: _Ctx, mapping: Mapping, path: _KeyPath, hint: Any, default: Any) -> Any:
    key = path[-1]
    if key not in mapping:
        return default
    value = mapping[key]
    try:
        return _coerce(value, hint)
    except _Mismatch as m:
        raise ctx.error(path, f"{_dotted(path)}: expected {m.want}, got {_kind_of(value)}") from None


def _int(ctx: _Ctx, mapping: Mapping, path: _KeyPath, default: int, low: int) -> int:
    value = _value(ctx, mapping, path, int, default)
    if value < low:
        raise ctx.error(path, f"{_dotted(path)}: must be an int >= {low}, got {value}")
    return value


def _choice(ctx: _Ctx, path: _KeyPath, value: Any, allowed: Sequence[str], what: str) -> None:
    if value not in allowed:
        raise ctx.error(path, f"{_dotted(path)}: unknown {what} {value!r}; {_suggest(value, allowed, 'known')}")


def _signature(factory: Any, exclude: Sequence[str]) -> tuple[dict[str, Any], bool]:
    """Keyword parameters of ``factory`` -> type hint (Any when unknown), and whether it takes ``**kwargs``."""
    params = inspect.signature(factory).parameters
    try:
        hints = typing.get_type_hints(factory.__init__ if isinstance(factory, type) else factory)
    except Exception:  # noqa: BLE001 - unresolvable annotations only lose the type check
        hints = {}
    keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    out = {n: hints.get(n, Any) for n, p in params.items() if p.kind in keyword and n not in exclude}
    return out, any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params.values())


def _natural_head(kind: str) -> str:
    factory = TASKS.get(kind)
    is_cls = kind == "classification" or (isinstance(factory, type) and issubclass(factory, Classification))
    return "classification" if is_cls else "dense"


def _from_dict(data: Any, ctx: _Ctx, source: Path | None) -> RunConfig:
    if data is None:
        raise ctx.error((), "the config is empty; it needs at least a tasks section")
    if not isinstance(data, Mapping):
        raise ctx.error((), f"the top level must be a mapping of sections ({', '.join(TOP_KEYS)}), "
                            f"got {_kind_of(data)}")
    _check_keys(ctx, data, (), TOP_KEYS)
    seed = _int(ctx, data, ("seed",), 0, low=0)
    device = _value(ctx, data, ("device",), str, "auto")
    if not _DEVICE.fullmatch(device):
        raise ctx.error(("device",), f"device: expected auto, cpu, cuda or cuda:N, got {device!r}")
    try:
        resolved = resolve_device(device)
    except ConfigError as exc:
        raise ctx.error(("device",), exc.detail) from None
    amp = _value(ctx, data, ("amp",), str | None, None)
    if amp is not None:
        _choice(ctx, ("amp",), amp, AMP_MODES, "amp mode")
        if amp == "fp16" and resolved == "cpu":
            raise ctx.error(("amp",), f"amp: fp16 needs CUDA and device {device!r} is the CPU here; use amp: bf16 "
                                      "or leave amp out")
    baselines = _baselines(ctx, data)
    checkpoint_every = _int(ctx, data, ("checkpoint_every",), 200, low=0)
    backbone = _backbone(ctx, _section(ctx, data, "backbone"))
    data_section = _section(ctx, data, "data")
    data_name = _value(ctx, data_section, ("data", "name"), str, "synthetic_scenes")
    _choice(ctx, ("data", "name"), data_name, list(DATASETS), "dataset")
    tasks = _tasks(ctx, data, data_name)
    data_cfg = _data(ctx, data_section, data_name)
    search = _search(ctx, _section(ctx, data, "search"), seed, resolved, amp)
    cfg = RunConfig(backbone, tasks, data_cfg, search, seed=seed, device=device, amp=amp, baselines=baselines,
                    checkpoint_every=checkpoint_every, source=source)
    cfg._ctx = ctx  # type: ignore[attr-defined] # lines for messages at build time (not a field)
    _check_data(ctx, cfg, data_section)
    for name in tasks:
        _check_task(ctx, cfg, name)
    return cfg


def _baselines(ctx: _Ctx, data: Mapping) -> tuple[str, ...]:
    value = data.get("baselines")
    if value is None:
        return ()
    if not isinstance(value, list | tuple):
        raise ctx.error(("baselines",), f"baselines: expected a list such as [{', '.join(BASELINES)}], "
                                        f"got {_kind_of(value)}")
    out: list[str] = []
    for i, item in enumerate(value):
        _choice(ctx, ("baselines", i), item, BASELINES, "baseline")
        if item in out:
            raise ctx.error(("baselines", i), f"baselines: {item!r} is listed twice")
        out.append(item)
    return tuple(out)


def _backbone(ctx: _Ctx, section: Mapping) -> BackboneConfig:
    path: _KeyPath = ("backbone",)
    _check_keys(ctx, section, path, BACKBONE_KEYS)
    name = _value(ctx, section, ("backbone", "name"), str, "resnet18")
    if Path(name).suffix.lower() in _FILE_SUFFIXES:
        file = Path(name).expanduser()
        relative = not file.is_absolute()
        if relative:
            file = ctx.base / file
        if not file.is_file():
            where = " (a relative path starts from the config file's folder)" if relative else ""
            raise ctx.error(("backbone", "name"), f"backbone.name: no such backbone file {str(file)!r}{where}")
        name = str(file.resolve())
    else:
        from .. import backbones

        zoo = backbones.names()
        if name not in zoo:
            raise ctx.error(("backbone", "name"), f"backbone.name: {name!r} is neither a zoo backbone nor a "
                                                  f".prototxt / .onnx file; {_suggest(name, zoo, 'zoo')}")
    shape = section.get("input_shape", [3, 32, 32])
    if not (isinstance(shape, list | tuple) and len(shape) == 3
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in shape)):
        raise ctx.error(("backbone", "input_shape"), f"backbone.input_shape: expected a list of 3 positive ints "
                                                     f"[C, H, W], got {_kind_of(shape)}")
    trunk_output = _value(ctx, section, ("backbone", "trunk_output"), str | None, "layer2") or None
    bn = _value(ctx, section, ("backbone", "bn"), str, "follow")
    _choice(ctx, ("backbone", "bn"), bn, BN_MODES, "bn mode")
    skip = _value(ctx, section, ("backbone", "skip"), bool, True)
    return BackboneConfig(name, tuple(shape), trunk_output, bn, skip)


def _tasks(ctx: _Ctx, data: Mapping, data_name: str) -> dict[str, TaskConfig]:
    available = DATASETS[data_name].TASKS
    kinds = _TARGET_KINDS.get(data_name, {})
    example = f"tasks: {{{available[0]}: {{kind: {kinds.get(available[0], available[0])}}}}}"
    if "tasks" not in data:
        raise ctx.error(("tasks",), f"no tasks: add a tasks section such as {example}")
    section = data["tasks"]
    if section is None or (isinstance(section, Mapping) and not section):
        raise ctx.error(("tasks",), f"tasks is empty; add at least one, such as {example}")
    if not isinstance(section, Mapping):
        raise ctx.error(("tasks",), f"tasks must be a mapping of task name -> task, got {_kind_of(section)}")
    out: dict[str, TaskConfig] = {}
    for name, spec in section.items():
        path: _KeyPath = ("tasks", name)
        if not isinstance(name, str):
            raise ctx.error(("tasks",), f"task name {name!r} is not a string")
        if name not in available:
            raise ctx.error(path, f"task {name!r} is not a target of the {data_name} data; "
                                  f"{_suggest(name, available, 'available')}")
        natural_kind = kinds.get(name, "...")
        if not isinstance(spec, Mapping):
            raise ctx.error(path, f"tasks.{name} must be a mapping such as {{kind: {natural_kind}}}, "
                                  f"got {_kind_of(spec)}")
        if "kind" not in spec:
            raise ctx.error(path, f"tasks.{name} has no kind; the {data_name} target {name!r} "
                                  f"needs kind: {natural_kind}")
        kind = _value(ctx, spec, path + ("kind",), str, None)
        _choice(ctx, path + ("kind",), kind, list(TASKS), "task kind")
        if kind in _BUILTIN_KINDS and name in kinds and kind != kinds[name]:
            raise ctx.error(path + ("kind",), f"tasks.{name}.kind: the {data_name} target {name!r} needs kind "
                                              f"{kinds[name]}, not {kind}")
        params, any_kwargs = _signature(TASKS[kind], exclude=("self", "name", "head"))
        if not any_kwargs:
            _check_keys(ctx, spec, path, (*TASK_KEYS, *params))
        head = _value(ctx, spec, path + ("head",), str, "auto")
        _choice(ctx, path + ("head",), head, HEADS, "head")
        natural = _natural_head(kind)
        if head not in ("auto", natural):
            raise ctx.error(path + ("head",), f"tasks.{name}.head: a {kind} task needs a {natural} head, not {head}")
        hidden = _value(ctx, spec, path + ("hidden_channels",), int | None, None)
        if hidden is not None:
            if hidden < 1:
                raise ctx.error(path + ("hidden_channels",),
                                f"tasks.{name}.hidden_channels: must be an int >= 1, got {hidden}")
            if natural != "dense":
                raise ctx.error(path + ("hidden_channels",),
                                f"tasks.{name}.hidden_channels: only dense heads have hidden channels")
        options = {k: _value(ctx, spec, path + (k,), params.get(k, Any), None)
                   for k in spec if k not in TASK_KEYS}
        out[name] = TaskConfig(kind, head, hidden, options)
    return out


def _data(ctx: _Ctx, section: Mapping, name: str) -> DataConfig:
    path: _KeyPath = ("data",)
    params, any_kwargs = _signature(DATASETS[name], exclude=("self", "n", "tasks"))
    special = {"n": "data.n: write the dataset size as images", "tasks": "data.tasks: the targets the data "
               "produces are the tasks section's tasks"}
    if not any_kwargs:
        _check_keys(ctx, section, path, ("name", "images", *params), special)
    images = _int(ctx, section, ("data", "images"), DEFAULT_IMAGES, low=1)
    options = {"n": images}
    for key in section:
        if key not in ("name", "images"):
            options[key] = _value(ctx, section, path + (key,), params.get(key, Any), None)
    return DataConfig(name, options)


def _search(ctx: _Ctx, section: Mapping, seed: int, device: str, amp: str | None) -> SearchConfig:
    path: _KeyPath = ("search",)
    valid = [f.name for f in dataclasses.fields(SearchConfig) if f.name not in _NOT_IN_SEARCH]
    special = {k: f"search.{k}: set {k} at the top level of the config, not in search" for k in _NOT_IN_SEARCH}
    special["quiet"] = "search.quiet: quiet is a command-line flag, not a config key"
    _check_keys(ctx, section, path, valid, special)
    try:
        hints = typing.get_type_hints(SearchConfig)
    except Exception:  # noqa: BLE001 - unresolvable annotations only lose the type check
        hints = {}
    values = {k: _value(ctx, section, path + (k,), hints.get(k, Any), None) for k in section}
    try:
        return SearchConfig(**values, seed=seed, device=device, amp=amp)
    except (ValueError, TypeError) as exc:
        m = re.match(r"SearchConfig\.(\w+)", str(exc))
        key = m.group(1) if m else None
        if key in _NOT_IN_SEARCH:
            raise ctx.error((key,), f"{key}: {exc}") from None
        where = ("search", key) if key in section else path
        raise ctx.error(where, f"{_dotted(where)}: {exc}") from None


def _check_data(ctx: _Ctx, cfg: RunConfig, section: Mapping) -> None:
    """Construct the dataset empty (cheap) so its own checks run now, then compare image and input shapes."""
    kwargs = _dataset_kwargs(cfg)
    try:
        DATASETS[cfg.data.name](**{**kwargs, "n": 0})
    except (ValueError, TypeError) as exc:
        key, _, rest = str(exc).partition(" ")
        if key in section:  # the dataset's messages start with the argument's name
            raise ctx.error(("data", key), f"data.{key}: {rest}") from None
        raise ctx.error(("data",), f"data: {exc}") from None
    want = _image_shape(cfg.data.name, kwargs)
    shape = cfg.backbone.input_shape
    if want is not None and tuple(shape) != want:
        # point at what the file wrote: the input shape, else the backbone, else the data
        candidates: list[_KeyPath] = [("backbone", "input_shape"), ("backbone",), ("data", "size"), ("data",)]
        at = next((p for p in candidates if p in ctx.lines), candidates[0])
        raise ctx.error(at,
                        f"backbone.input_shape {list(shape)} does not match the {cfg.data.name} images "
                        f"{list(want)}: use input_shape: {list(want)} (or change the data's options)")


def _check_task(ctx: _Ctx, cfg: RunConfig, name: str) -> None:
    """Construct the task once so its own checks run now, and check ``num_classes`` against the data."""
    path: _KeyPath = ("tasks", name)
    given = cfg.tasks[name].options.get("num_classes")
    have = _data_classes(cfg, name)
    if given is not None and have is not None and given != have:
        raise ctx.error(path + ("num_classes",), f"tasks.{name}.num_classes: {given} does not match the {have} "
                                                 f"classes of the {cfg.data.name} target {name!r}")
    try:
        _make_task(cfg, name)
    except TaskInputError as exc:
        text, prefix = str(exc), f"task '{exc.task}': {exc.field}: "
        text = text[len(prefix):] if text.startswith(prefix) else text
        raise ctx.error(path + (exc.field,), f"tasks.{name}.{exc.field}: {text}") from None
    except (ValueError, TypeError) as exc:
        raise ctx.error(path, f"tasks.{name}: {exc}") from None


# building --------------------------------------------------------------------------------------


def _ctx_of(cfg: RunConfig) -> _Ctx:
    ctx = getattr(cfg, "_ctx", None)
    if ctx is not None:
        return ctx
    return _Ctx(os.fspath(cfg.source) if cfg.source is not None else None, {}, Path("."))


def _data_classes(cfg: RunConfig, task: str) -> int | None:
    """The number of classes the data has for ``task``, or None where it has none."""
    if cfg.data.name == "multi_digits":
        return MultiDigits.NUM_CLASSES.get(task)
    if cfg.data.name == "synthetic_scenes" and task == "segmentation":
        default = inspect.signature(SyntheticScenes).parameters["num_classes"].default
        return cfg.data.options.get("num_classes", default)
    return None


def _task_kwargs(cfg: RunConfig, name: str) -> dict[str, Any]:
    t = cfg.tasks[name]
    kwargs = dict(t.options)
    if t.kind in TASKS and "num_classes" in inspect.signature(TASKS[t.kind]).parameters:
        classes = _data_classes(cfg, name)
        if classes is not None:
            kwargs.setdefault("num_classes", classes)
    return kwargs


def _make_task(cfg: RunConfig, name: str) -> Task:
    kind = cfg.tasks[name].kind
    if kind not in TASKS:
        raise _ctx_of(cfg).error(("tasks", name, "kind"), f"tasks.{name}.kind: unknown task kind {kind!r}; "
                                                          f"{_suggest(kind, list(TASKS), 'known')}")
    return TASKS[kind](name, **_task_kwargs(cfg, name))


def _dataset_kwargs(cfg: RunConfig) -> dict[str, Any]:
    """The dataset constructor's arguments: the options plus the defaults that follow the rest of the config."""
    name = cfg.data.name
    if name not in DATASETS:
        raise _ctx_of(cfg).error(("data", "name"), f"data.name: unknown dataset {name!r}; "
                                                   f"{_suggest(name, list(DATASETS), 'known')}")
    cls = DATASETS[name]
    params = inspect.signature(cls).parameters
    kwargs = dict(cfg.data.options)
    kwargs.setdefault("n", DEFAULT_IMAGES)
    if "seed" in params:
        kwargs.setdefault("seed", cfg.seed)
    c, h, w = cfg.backbone.input_shape
    if name == "synthetic_scenes":
        kwargs.setdefault("size", w)
    elif name == "multi_digits":
        kwargs.setdefault("size", h)
        if c in (1, 3):
            kwargs.setdefault("channels", c)
    targets = getattr(cls, "TASKS", ())
    chosen = tuple(t for t in targets if t in cfg.tasks)
    if chosen and len(chosen) < len(targets) and "tasks" in params:
        kwargs["tasks"] = chosen
    return kwargs


def _image_shape(name: str, kwargs: Mapping[str, Any]) -> tuple[int, int, int] | None:
    defaults = {k: p.default for k, p in inspect.signature(DATASETS[name]).parameters.items()}
    size = kwargs.get("size", defaults.get("size"))
    if name == "synthetic_scenes":
        return (3, size, size)
    if name == "multi_digits":
        return (kwargs.get("channels", defaults.get("channels")), size, 2 * size)
    return None


def build_tasks(cfg: RunConfig) -> dict[str, Task]:
    """The configured tasks (``num_classes`` from the data unless given), in the file's order."""
    out: dict[str, Task] = {}
    for name in cfg.tasks:
        try:
            out[name] = _make_task(cfg, name)
        except ConfigError:
            raise
        except (ValueError, TypeError) as exc:
            raise _ctx_of(cfg).error(("tasks", name), f"tasks.{name}: {exc}") from None
    return out


def build_dataset(cfg: RunConfig) -> Dataset:
    """The configured dataset, producing only the configured tasks' targets."""
    kwargs = _dataset_kwargs(cfg)
    try:
        return DATASETS[cfg.data.name](**kwargs)
    except (ValueError, TypeError) as exc:
        raise _ctx_of(cfg).error(("data",), f"data: {exc}") from None


def build_model(cfg: RunConfig, task_names: Sequence[str] | None = None) -> SuperModel:
    """The supermodel for ``task_names`` (default: all tasks; a subset for the baselines).

    The backbone is compiled once, a probe build gives the trunk output's shape, and the heads are
    made for it. Weights are initialised under ``torch.manual_seed(cfg.seed)`` inside a forked RNG,
    so a config always builds the same initial model and the global RNG is left alone.
    """
    from ..api import compile as compile_backbone

    ctx = _ctx_of(cfg)
    names = list(cfg.tasks) if task_names is None else list(task_names)
    unknown = [t for t in names if t not in cfg.tasks]
    if unknown or not names:
        raise ctx.error((), f"build_model: unknown or no tasks {unknown or names}; the config's tasks: "
                            f"{', '.join(cfg.tasks)}")
    b = cfg.backbone
    tasks = build_tasks(cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        try:
            graph = compile_backbone(b.name, tuple(b.input_shape))
        except (ValueError, TypeError, OSError) as exc:
            raise ctx.error(("backbone", "name"), f"backbone {b.name}: {exc}") from None
        if b.trunk_output is not None:
            ops = [n.name for n in graph]
            if b.trunk_output not in graph and not any(op.startswith(b.trunk_output + ".") for op in ops):
                parts = {".".join(op.split(".")[:k]) for op in ops for k in range(1, op.count(".") + 2)}
                close = difflib.get_close_matches(b.trunk_output, sorted(parts), n=3)
                hint = f"did you mean {' or '.join(repr(c) for c in close)}?" if close else \
                    f"operators: {', '.join(ops[:30])}{' ...' if len(ops) > 30 else ''}"
                raise ctx.error(("backbone", "trunk_output"), f"backbone.trunk_output: {b.trunk_output!r} is not an "
                                                              f"operator or submodule of {b.name}; {hint}")
        probe = build(graph, {t: nn.Identity() for t in names}, trunk_output=b.trunk_output, check_heads=False)
        shape = tuple(probe.graph[probe.graph.outputs[0]].shape)
        if len(shape) != 4:
            raise ctx.error(("backbone", "trunk_output"), f"backbone.trunk_output: the trunk output "
                                                          f"{b.trunk_output or '(the backbone output)'} has shape "
                                                          f"{list(shape)}; heads need a (N, C, H, W) feature map")
        heads: dict[str, nn.Module] = {}
        for t in names:
            tc, task = cfg.tasks[t], tasks[t]
            if (_natural_head(tc.kind) if tc.head == "auto" else tc.head) == "classification":
                heads[t] = classification_head(shape[1], task.out_channels)
            else:
                scale = b.input_shape[1] // shape[2]
                heads[t] = dense_head(shape[1], task.out_channels, scale_factor=scale,
                                      hidden_channels=tc.hidden_channels)
        try:
            return build(graph, heads, trunk_output=b.trunk_output, bn=b.bn, skip=b.skip)
        except ValueError as exc:
            raise ctx.error(("backbone",), str(exc)) from None


# the demo --------------------------------------------------------------------------------------


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
    """The built-in demo (``automtl demo``) as a run configuration; the keywords override its settings.

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
