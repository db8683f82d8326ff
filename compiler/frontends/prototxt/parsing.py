"""Prototxt text -> ``caffe_pb2.NetParameter`` plus the line of every top-level field.

A fast path parses the plain text-format subset every real prototxt uses (``protobuf``'s
pure-Python ``text_format`` takes ~35 ms for a ResNet-50 deploy file); anything it does not
handle exactly (unusual syntax, any error) goes to ``text_format.Parse``, which gives the
authoritative result or error.

Memory and time stay linear in the file size: the text is tokenized in chunks of whole lines
(never one list of every token), and the string pattern is written so that the regex engine does
not keep a backtracking frame per character (``"(?:[^"\\]|\\.)*"`` costs ~140 bytes a
character in Python's ``re``; ``"[^"\\]*(?:\\.[^"\\]*)*"`` costs nothing).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator
from itertools import chain
from typing import Any

from google.protobuf import text_format
from google.protobuf.descriptor import FieldDescriptor

from ....proto import caffe_pb2
from ...errors import CompileError, Source

# Tokens: words (names, numbers, enum values), punctuation, newlines (to count lines), strings,
# comments; the most frequent first, since that order is what makes findall fast. No token spans
# a newline, so the text can be tokenized a block of lines at a time.
_TOKEN = re.compile(
    r"""[^\s{}<>:\[\],;#"']+|[{}<>:\[\],;]|\n|"[^"\\\n]*(?:\\.[^"\\\n]*)*"|#[^\n]*|'[^'\\\n]*(?:\\.[^'\\\n]*)*'|\S"""
)
_CHUNK = 1 << 18  # characters per tokenized block (the block's token list is the only transient)
_INT = re.compile(r"-?(?:0|[1-9][0-9]*)\Z")
_FLOAT = re.compile(r"-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?[fF]?\Z")
_SPECIAL_FLOATS = {
    "inf": math.inf,
    "infinity": math.inf,
    "-inf": -math.inf,
    "-infinity": -math.inf,
    "nan": math.nan,
    "-nan": math.nan,
}
_BOOLS = {"true": True, "True": True, "t": True, "1": True, "false": False, "False": False, "f": False, "0": False}
_UNSIGNED = {
    FieldDescriptor.TYPE_UINT32,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_FIXED32,
    FieldDescriptor.TYPE_FIXED64,
}
_INT_TYPES = {
    FieldDescriptor.TYPE_INT32,
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_SINT32,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_SFIXED32,
    FieldDescriptor.TYPE_SFIXED64,
    *_UNSIGNED,
}
_FLOAT_TYPES = {FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE}
_REASON_CHARS = 300  # a parse error quotes at most this much of the offending text


class _Fallback(Exception):
    """Internal: the fast parser met something it does not handle; use text_format instead."""


_FIELD_TABLES: dict[str, dict[str, tuple[Any, ...]]] = {}


def is_repeated(fd: Any) -> bool:
    """``FieldDescriptor.is_repeated`` (protobuf >= 6.31) or ``label`` (removed in protobuf 7)."""
    flag = getattr(fd, "is_repeated", None)
    return bool(flag) if flag is not None else fd.label == FieldDescriptor.LABEL_REPEATED


def _fields(desc: Any) -> dict[str, tuple[Any, ...]]:
    """name -> (kind, repeated, conversion data) for a message descriptor, computed once."""
    table = _FIELD_TABLES.get(desc.full_name)
    if table is None:
        table = {}
        for f in desc.fields:
            repeated = is_repeated(f)
            if f.type == FieldDescriptor.TYPE_MESSAGE:
                table[f.name] = ("msg", repeated, f.message_type)
            elif f.type == FieldDescriptor.TYPE_ENUM:
                values = {v.name: v.number for v in f.enum_type.values}
                table[f.name] = ("enum", repeated, (values, set(values.values())))
            elif f.type in _INT_TYPES:
                table[f.name] = ("int", repeated, f.type in _UNSIGNED)
            elif f.type in _FLOAT_TYPES:
                table[f.name] = ("float", repeated, None)
            elif f.type == FieldDescriptor.TYPE_BOOL:
                table[f.name] = ("bool", repeated, None)
            elif f.type == FieldDescriptor.TYPE_STRING:
                table[f.name] = ("str", repeated, None)
            else:
                table[f.name] = ("other", repeated, None)
        _FIELD_TABLES[desc.full_name] = table
    return table


def _scalar(kind: str, data: Any, tok: str) -> Any:
    if kind == "int":
        if not _INT.match(tok) or (data and tok[0] == "-"):
            raise _Fallback
        return int(tok)
    if kind == "float":
        if _FLOAT.match(tok):
            return float(tok.rstrip("fF"))
        special = _SPECIAL_FLOATS.get(tok.lower())
        if special is None:
            raise _Fallback
        return special
    if kind == "str":
        if len(tok) < 2 or tok[0] not in "\"'" or tok[-1] != tok[0] or "\\" in tok:
            raise _Fallback
        return tok[1:-1]
    if kind == "bool":
        value = _BOOLS.get(tok)
        if value is None:
            raise _Fallback
        return value
    if kind == "enum":
        names, numbers = data
        if tok in names:
            return names[tok]
        if _INT.match(tok) and int(tok) in numbers:
            return int(tok)
        raise _Fallback
    raise _Fallback


def _blocks(text: str) -> Iterator[Iterable[str]]:
    """The tokens of ``text``, one list per block of whole lines of about ``_CHUNK`` characters
    (a line much longer than that, a whole file on one line, is streamed token by token)."""
    start, n = 0, len(text)
    while start < n:
        end = text.find("\n", start + _CHUNK)
        end = n if end < 0 else end + 1
        if end - start > 4 * _CHUNK:
            yield map(re.Match.group, _TOKEN.finditer(text, start, end))
        else:
            yield _TOKEN.findall(text, start, end)
        start = end


def _fast_parse(text: str, net: Any) -> dict[str, list[int]]:
    """Fill ``net`` from ``text``; return the line of every top-level field, by field name.

    Raises :class:`_Fallback` for anything outside the plain subset (``<>`` delimiters, escapes,
    string concatenation, extensions, lists of messages, non-decimal integers) and for any error.
    """
    nxt = chain.from_iterable(_blocks(text)).__next__
    lines: dict[str, list[int]] = {}
    stack = [(net, _fields(net.DESCRIPTOR))]
    msg, table = stack[-1]
    line = 1
    try:
        while True:
            try:
                tok = nxt()
            except StopIteration:
                break
            c = tok[0]
            if c == "\n":
                line += 1
                continue
            if c == "#" or c == "," or c == ";":
                continue
            if c == "}":
                if len(stack) == 1:
                    raise _Fallback
                stack.pop()
                msg, table = stack[-1]
                continue
            spec = table.get(tok)
            if spec is None:
                raise _Fallback
            if len(stack) == 1:
                lines.setdefault(tok, []).append(line)
            kind, repeated, data = spec
            sep = nxt()
            while sep == "\n":
                line += 1
                sep = nxt()
            if kind == "msg":
                if sep == ":":
                    sep = nxt()
                    while sep == "\n":
                        line += 1
                        sep = nxt()
                if sep != "{":
                    raise _Fallback
                if repeated:
                    sub = getattr(msg, tok).add()
                else:
                    if msg.HasField(tok):
                        raise _Fallback
                    sub = getattr(msg, tok)
                    sub.SetInParent()
                stack.append((sub, _fields(data)))
                msg, table = stack[-1]
                continue
            if sep != ":":
                raise _Fallback
            value = nxt()
            while value == "\n":
                line += 1
                value = nxt()
            if value == "[":
                if not repeated:
                    raise _Fallback
                target = getattr(msg, tok)
                expect_value = True
                while True:
                    v = nxt()
                    if v == "\n":
                        line += 1
                    elif v == "]" and (not expect_value or len(target) == 0):
                        break
                    elif expect_value:
                        target.append(_scalar(kind, data, v))
                        expect_value = False
                    elif v == ",":
                        expect_value = True
                    else:
                        raise _Fallback
                continue
            if repeated:
                getattr(msg, tok).append(_scalar(kind, data, value))
            else:
                if msg.HasField(tok):
                    raise _Fallback
                setattr(msg, tok, _scalar(kind, data, value))
    except (StopIteration, IndexError, ValueError, TypeError, AttributeError, OverflowError) as exc:
        raise _Fallback from exc
    if len(stack) != 1:
        raise _Fallback
    return lines


def _scan_top_level(text: str) -> Iterator[tuple[str, int, int]]:
    """(field name, line, offset) of every top-level field, skipping comments and strings."""
    depth, line, expect_name = 0, 1, True
    for m in _TOKEN.finditer(text):
        tok = m.group()
        c = tok[0]
        if c == "\n":
            line += 1
        elif c in "{<":
            depth += 1
            expect_name = True
        elif c in "}>":
            depth -= 1
            expect_name = True
        elif c in "#,;[]":
            continue
        elif c == ":":
            expect_name = False
        elif depth == 0 and expect_name and (c.isalpha() or c == "_"):
            yield tok, line, m.start()
        else:
            expect_name = True


def shown(name: str, limit: int = 120) -> str:
    """``name`` as an error message shows it: control characters escaped, a long one cut short."""
    size = len(name)
    if not name.isprintable():
        name = name[:limit].encode("unicode_escape").decode("ascii")
    if size > limit or len(name) > limit:
        name = f"{name[: limit - 24]}... ({size:,} characters)"
    return name


def quoted(name: str, limit: int = 120) -> str:
    """``repr(name)`` (control characters escaped, quotes added), a long name cut short first."""
    if len(name) > limit:
        name = f"{name[: limit - 24]}... ({len(name):,} characters)"
    return repr(name)


def parse(text: str, file: str = "<string>") -> tuple[Any, dict[str, list[int]]]:
    """Parse prototxt ``text`` into a ``caffe_pb2.NetParameter``.

    Returns the message and the line of each top-level field occurrence (``lines["layer"][i]``
    is where ``layer[i]`` starts). Syntax and schema errors raise a :class:`CompileError` with
    the file, line and column, and the enclosing layer when there is one.
    """
    net = caffe_pb2.NetParameter()
    try:
        return net, _fast_parse(text, net)
    except _Fallback:
        pass
    net = caffe_pb2.NetParameter()
    try:
        text_format.Parse(text, net)
    except (text_format.ParseError, ValueError) as exc:
        line = exc.GetLine() if isinstance(exc, text_format.ParseError) else None
        col = exc.GetColumn() if isinstance(exc, text_format.ParseError) else None
        reason = re.sub(r"^\d+:\d+ : ", "", str(exc))
        reason = shown(" ".join(reason.split()), _REASON_CHARS)
        layer = _enclosing_layer(text, line)
        where = f" (column {col})" if col is not None else ""
        raise CompileError(
            f"cannot parse the prototxt{where}: {reason}",
            Source(file=file, line=line, layer=layer[0] if layer else None, layer_type=layer[1] if layer else None),
        ) from None
    lines: dict[str, list[int]] = {}
    for name, line, _ in _scan_top_level(text):
        lines.setdefault(name, []).append(line)
    return net, lines


def _enclosing_layer(text: str, line: int | None) -> tuple[str, str] | None:
    """Name and type of the top-level layer whose text contains ``line`` (for syntax errors)."""
    if line is None:
        return None
    start = None
    for name, l0, off in _scan_top_level(text):
        if l0 > line:
            break
        start = off if name in ("layer", "layers") else None
    if start is None:
        return None
    chunk = text[start : start + 2000]
    nm = re.search(r"""\bname\s*:\s*["']([^"'\n]*)["']""", chunk)
    ty = re.search(r"""\btype\s*:\s*["']?([A-Za-z0-9_]+)""", chunk)
    return (shown(nm.group(1)) if nm else "?", shown(ty.group(1)) if ty else "layer")
