"""Checking one value or one mapping of the config against a type hint, a signature or a list of keys.

Values are coerced as the type hint wants (an int where a float is wanted, a YAML 1.1 numeric
string such as ``1e-3``, a list where a tuple is); every int must fit 64 bits (Python's ints do
not, torch's and numpy's do). Every failure is a :class:`ConfigError` at the key's line.
"""

from __future__ import annotations

import inspect
import re
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from .errors import Ctx, KeyPath, closest, dotted, kind_of, quote, suggest, where

__all__ = ["INT_LIMIT", "check_keys", "choice", "coerce", "int_value", "section", "signature", "value"]

INT_LIMIT = 2**63
"""Ints must lie in ``[-INT_LIMIT, INT_LIMIT)``: what a C ``long long`` (torch, numpy) holds."""

_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|[+-]?(inf|nan)", re.IGNORECASE)


class Mismatch(Exception):
    """A value that does not fit the type hint; ``want`` says what would."""

    def __init__(self, want: str) -> None:
        self.want = want


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


def _check_ints(value: Any) -> Any:
    """``value`` itself, after checking every int in it fits 64 bits (an iterative walk)."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, int) and not isinstance(v, bool) and not -INT_LIMIT <= v < INT_LIMIT:
            raise Mismatch("an int in the 64-bit range (-2**63 to 2**63 - 1)")
        if isinstance(v, Mapping):
            stack.extend(v.values())
        elif isinstance(v, list | tuple):
            stack.extend(v)
    return value


def coerce(value: Any, hint: Any) -> Any:
    """``value`` as the type ``hint`` wants (ints and numeric strings become floats where floats are wanted).

    Raises :class:`Mismatch`. Types it does not know (a module, a device) are let through for
    the constructor to judge, once their ints are checked.
    """
    alts = _alternatives(hint)
    simple = (type(None), bool, int, float, str)
    for a in alts:
        origin = typing.get_origin(a) or a
        if a is Any or not (a in simple or origin in (tuple, list, dict, Sequence, Mapping)):
            return _check_ints(value)
    if value is None:
        if type(None) in alts:
            return None
    elif isinstance(value, bool):
        if bool in alts:
            return value
    elif isinstance(value, int):
        if int in alts:
            return _check_ints(value)
        if float in alts:
            try:
                return float(value)
            except OverflowError:
                raise Mismatch("a finite number") from None
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
                    return tuple(coerce(v, t) for v, t in zip(value, args, strict=True))
            elif origin is tuple:
                return tuple(coerce(v, args[0] if args else Any) for v in value)
            elif origin in (list, Sequence) or a in (list, Sequence):
                return [coerce(v, args[0] if args else Any) for v in value]
    elif isinstance(value, Mapping):
        if any((typing.get_origin(a) or a) in (dict, Mapping) for a in alts):
            if not all(isinstance(k, str) for k in value):
                raise Mismatch("a mapping with string keys")
            return _check_ints(dict(value))
    raise Mismatch(" or ".join(_describe(a) for a in alts))


def value(ctx: Ctx, mapping: Mapping, path: KeyPath, hint: Any, default: Any) -> Any:
    """``mapping[path[-1]]`` coerced to ``hint`` (``default`` when absent)."""
    key = path[-1]
    if key not in mapping:
        return default
    raw = mapping[key]
    try:
        return coerce(raw, hint)
    except Mismatch as m:
        raise ctx.error(path, f"{dotted(path)}: expected {m.want}, got {kind_of(raw)}") from None


def int_value(ctx: Ctx, mapping: Mapping, path: KeyPath, default: int, low: int, high: int | None = None) -> int:
    """An int in ``[low, high]`` (``high`` None: up to the 64-bit limit)."""
    v = value(ctx, mapping, path, int, default)
    if v < low or (high is not None and v > high):
        rule = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ctx.error(path, f"{dotted(path)}: must be an int {rule}, got {v}")
    return v


def choice(ctx: Ctx, path: KeyPath, v: Any, allowed: Sequence[str], what: str) -> None:
    """Refuse ``v`` unless it is one of ``allowed``, suggesting the closest."""
    if v not in allowed:
        raise ctx.error(path, f"{dotted(path)}: unknown {what} {quote(v)}; {suggest(v, allowed, 'known')}")


def check_keys(ctx: Ctx, mapping: Mapping, path: KeyPath, valid: Sequence[str],
               special: Mapping[str, str] | None = None, owner: str = "") -> None:
    """Refuse a key of ``mapping`` not in ``valid``; ``special`` gives some keys their own message.

    ``owner`` (``" (keyword arguments of pkg:fn)"``) says whose keys these are.
    """
    for key in mapping:
        if not isinstance(key, str):
            raise ctx.error(path, f"key {quote(key)} {where(path)} is not a string")
        if key in valid:
            continue
        if special and key in special:
            raise ctx.error(path + (key,), special[key])
        close = closest(key, valid)
        hint = f"did you mean {close!r}?" if close else f"valid keys: {', '.join(valid) or 'none'}"
        raise ctx.error(path + (key,), f"unknown key {quote(key)} {where(path)}{owner}; {hint}")


def section(ctx: Ctx, mapping: Mapping, key: str) -> Mapping:
    """The mapping under ``key`` (empty when absent or null)."""
    v = mapping.get(key)
    if v is None:
        return {}
    if not isinstance(v, Mapping):
        raise ctx.error((key,), f"{key} must be a mapping of keys, got {kind_of(v)}")
    return v


def signature(factory: Any, exclude: Sequence[str] = ()) -> tuple[dict[str, Any], bool]:
    """Keyword parameters of ``factory`` -> type hint (Any when unknown), and whether it takes ``**kwargs``.

    A callable whose signature cannot be read takes anything.
    """
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return {}, True
    try:
        hints = typing.get_type_hints(factory.__init__ if isinstance(factory, type) else factory)
    except Exception:  # noqa: BLE001 - unresolvable annotations only lose the type check
        hints = {}
    keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    out = {n: hints.get(n, Any) for n, p in params.items() if p.kind in keyword and n not in exclude}
    return out, any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params.values())


def required(factory: Any, exclude: Sequence[str] = ()) -> list[str]:
    """Parameters of ``factory`` that have no default (positional-only ones included), but ``exclude``."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return []
    plain = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    return [n for n, p in params.items()
            if p.default is inspect.Parameter.empty and p.kind not in plain and n not in exclude]

