"""Reading a config file: YAML or TOML into plain data and the line of every key.

Guards against files that would hang or crash the reader before any checking can say why:

* nesting deeper than :data:`MAX_DEPTH` levels (PyYAML's composer and ``tomllib`` recurse, so a
  file of 5,000 ``[`` would end in a ``RecursionError``);
* YAML whose aliases expand to more than :data:`MAX_VALUES` values ("billion laughs": nine
  anchors of nine aliases each are 387 million values; a run config has a few hundred), or an
  alias inside its own anchor (a value that contains itself).

Both are refused with one line naming the file and the line.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError, KeyPath, quote, where

__all__ = ["MAX_DEPTH", "MAX_VALUES", "SUFFIXES", "read_config_file"]

MAX_DEPTH = 64
"""Deepest nesting of lists and mappings a config may have."""

MAX_VALUES = 100_000
"""Most values (keys, scalars, lists, mappings) a config may expand to, aliases counted at every use."""

SUFFIXES = (".yaml", ".yml", ".toml")


def read_config_file(path: str | os.PathLike) -> tuple[Any, dict[KeyPath, int], str]:
    """Read ``path``: its data, the 1-based line of every key path, and the label messages use (the path as given)."""
    label = os.fspath(path)
    p = Path(path)
    if not p.exists():
        raise ConfigError("no such config file", label)
    if p.is_dir():
        raise ConfigError("is a directory, not a config file", label)
    suffix = p.suffix.lower()
    if suffix not in SUFFIXES:
        raise ConfigError(f"unsupported config format {suffix or '(no suffix)'!r}: use .yaml, .yml or .toml", label)
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError("not UTF-8 text", label) from None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror or exc}", label) from None
    data, lines = parse_toml(text, label) if suffix == ".toml" else parse_yaml(text, label)
    return data, lines, label


# YAML ------------------------------------------------------------------------------------------


class _TooDeep(Exception):
    def __init__(self, mark: Any) -> None:
        self.mark = mark


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing to compose nodes deeper than :data:`MAX_DEPTH`."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:  # noqa: D102
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise _TooDeep(self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def parse_yaml(text: str, label: str) -> tuple[Any, dict[KeyPath, int]]:
    """Parse once into data and the line of every key (YAML marks are 0-based)."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is not None:
            _check_expansion(node, label)
        data = loader.construct_document(node) if node is not None else None
    except _TooDeep as exc:
        raise ConfigError(f"nesting deeper than {MAX_DEPTH} levels; a run config needs a few", label,
                          exc.mark.line + 1) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        if mark is exc.problem_mark and exc.context_mark is not None and mark.index >= len(text):
            mark = exc.context_mark  # "found <stream end>": where the unfinished thing started says more
        what = ", ".join(str(s) for s in (exc.context, exc.problem) if s)
        raise ConfigError(f"invalid YAML: {what}", label, mark.line + 1 if mark else None) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}", label) from None
    except RecursionError:  # a guard above missed a way to nest; still one line
        raise ConfigError("nesting too deep to read", label) from None
    finally:
        loader.dispose()
    lines: dict[KeyPath, int] = {}
    if node is not None:
        lines[()] = node.start_mark.line + 1
        _yaml_lines(node, (), lines, label)
    return data, lines


def _check_expansion(root: yaml.Node, label: str) -> None:
    """Refuse a node graph that expands to more than :data:`MAX_VALUES` values, or contains itself.

    Aliased nodes are shared in the graph, so sizes are memoised per node: the check costs the
    file's size, not the expansion's.
    """
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise ConfigError("a YAML alias refers to the anchor it is inside (a value that contains itself)",
                              label, node.start_mark.line + 1)
        open_nodes.add(key)
        total = 1
        if isinstance(node, yaml.MappingNode):
            total += sum(size(k) + size(v) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            total += sum(size(v) for v in node.value)
        open_nodes.discard(key)
        if total > MAX_VALUES:
            raise ConfigError(f"this value expands to more than {MAX_VALUES} values (YAML aliases repeat what their "
                              "anchor holds); a run config needs a few hundred: write it out without aliases",
                              label, node.start_mark.line + 1)
        sizes[key] = total
        return total

    size(root)


def _yaml_lines(node: yaml.Node, path: KeyPath, lines: dict[KeyPath, int], label: str) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            if key.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults` brings keys in at this level
                for part in value.value if isinstance(value, yaml.SequenceNode) else [value]:
                    _yaml_lines(part, path, lines, label)
                continue
            if not isinstance(key, yaml.ScalarNode):
                continue
            if key.value in seen:
                raise ConfigError(f"duplicate key {quote(key.value)} {where(path)}", label, key.start_mark.line + 1)
            seen.add(key.value)
            lines[path + (key.value,)] = key.start_mark.line + 1
            _yaml_lines(value, path + (key.value,), lines, label)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines.setdefault(path + (i,), item.start_mark.line + 1)
            _yaml_lines(item, path + (i,), lines, label)


# TOML ------------------------------------------------------------------------------------------


def parse_toml(text: str, label: str) -> tuple[Any, dict[KeyPath, int]]:
    """Parse with ``tomllib``; lines come from a scan of the text (``tomllib`` gives no positions)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        m = re.search(r"\s*\(at line (\d+), column (\d+)\)$", message)
        line = int(m.group(1)) if m else None
        if m:
            message = f"{message[: m.start()]} (column {m.group(2)})"
        raise ConfigError(f"invalid TOML: {message}", label, line) from None
    except RecursionError:
        raise ConfigError(f"nesting deeper than {MAX_DEPTH} levels; a run config needs a few", label,
                          _deep_line(text)) from None
    if _depth(data) > MAX_DEPTH:
        raise ConfigError(f"nesting deeper than {MAX_DEPTH} levels; a run config needs a few", label,
                          _deep_line(text))
    return data, _toml_lines(text)


def _depth(data: Any) -> int:
    """How deep lists and mappings nest in ``data`` (iterative: the data may be deep)."""
    deepest, stack = 0, [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict | list):
            deepest = max(deepest, depth)
            if depth <= MAX_DEPTH:
                stack.extend((v, depth + 1) for v in (value.values() if isinstance(value, dict) else value))
    return deepest


def _deep_line(text: str) -> int | None:
    """The first line where brackets (or a dotted key / table header) nest beyond :data:`MAX_DEPTH` (best effort)."""
    depth = 0
    for number, raw in enumerate(text.splitlines(), 1):
        if raw.count(".") > MAX_DEPTH:
            return number
        for ch in raw:
            depth += (ch in "[{") - (ch in "]}")
            if depth > MAX_DEPTH:
                return number
    return None


_TOML_KEY_PART = r"(?:[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*')"
_TOML_KEY = rf"{_TOML_KEY_PART}(?:\s*\.\s*{_TOML_KEY_PART})*"


def _toml_key(text: str) -> KeyPath:
    return tuple(a or b or c for a, b, c in re.findall(r"\"([^\"]*)\"|'([^']*)'|([A-Za-z0-9_-]+)", text))


def _toml_lines(text: str) -> dict[KeyPath, int]:
    """The line of every table header and key, by a line scan (best effort)."""
    lines: dict[KeyPath, int] = {}
    table: KeyPath = ()
    arrays: dict[KeyPath, int] = {}
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
