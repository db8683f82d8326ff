"""User factories: ``factory: "my_pkg.data:make_dataset"`` plus keyword arguments, in ``data`` or a task's ``head``.

The factory is imported and its signature checked when the config is loaded, so a typo fails
with the file, the line and the key, not minutes into a search:

    run.yaml:9: data.factory: module 'my_pkg.data' has no attribute 'make_datset'; did you mean 'make_dataset'?

The module must be importable (installed, or its folder on ``PYTHONPATH``). It is called when the
config is built (:func:`automtl.app.config.build_dataset` / ``build_model``).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Collection, Mapping
from typing import Any

from .coerce import check_keys, signature, value
from .errors import ConfigError, Ctx, KeyPath, clip, closest, dotted, kind_of, quote, said

__all__ = ["call_factory", "factory_arguments", "load_factory"]

_EXAMPLE = "'my_pkg.data:make_dataset'"


def load_factory(ctx: Ctx, path: KeyPath, ref: Any) -> Callable[..., Any]:
    """Import ``"module.path:attribute"`` (the key at ``path``) and return it; it must be callable."""
    at = dotted(path)
    if not isinstance(ref, str):
        raise ctx.error(path, f"{at}: expected a string 'module:function' such as {_EXAMPLE}, got {kind_of(ref)}")
    module_name, sep, attr = ref.partition(":")
    if not (sep and _dotted_name(module_name) and _dotted_name(attr)):
        raise ctx.error(path, f"{at}: expected 'module:function' such as {_EXAMPLE}, got {quote(ref)}")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise ctx.error(path, f"{at}: no module named {quote(exc.name)} (install it, or add its folder to "
                                  "PYTHONPATH)") from None
        raise ctx.error(path, f"{at}: importing {quote(module_name)} failed: {said(exc)}") from None
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - the user's module: any failure is one line
        raise ctx.error(path, f"{at}: importing {quote(module_name)} raised {type(exc).__name__}: "
                              f"{said(exc)}") from None
    obj: Any = module
    done: list[str] = []
    for part in attr.split("."):
        if not hasattr(obj, part):
            owner = f"module {quote(module_name)}" if not done else quote(f"{module_name}:{'.'.join(done)}")
            close = closest(part, [n for n in dir(obj) if not n.startswith("_")])
            hint = f"; did you mean {close!r}?" if close else ""
            raise ctx.error(path, f"{at}: {owner} has no attribute {quote(part)}{hint}")
        obj = getattr(obj, part)
        done.append(part)
    if not callable(obj):
        raise ctx.error(path, f"{at}: {quote(ref)} is {kind_of(obj)}, not a function or class to call")
    return obj


def _dotted_name(text: str) -> bool:
    return bool(text) and all(part.isidentifier() for part in text.split("."))


def factory_arguments(ctx: Ctx, path: KeyPath, factory: Callable[..., Any], section: Mapping[str, Any], *,
                      provided: Collection[str] = (), needed: Collection[str] = (),
                      reserved: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The keyword arguments in ``section`` (all keys but ``factory``), checked against ``factory``'s signature.

    ``provided`` names arguments automtl passes when the factory takes them; ``needed`` those it
    must take (or ``**kwargs``); ``reserved`` maps keys the file may not set to the reason.
    """
    ref = clip(section["factory"])
    params, any_kwargs = signature(factory)
    for name in needed:
        if name not in params and not any_kwargs:
            raise ctx.error(path + ("factory",), f"{dotted(path)}.factory: {ref} takes no argument {name!r}; it is "
                                                 f"called as {ref.rpartition(':')[2]}("
                                                 f"{', '.join(f'{n}=...' for n in needed)}, **options)")
    keys = {k: v for k, v in section.items() if k != "factory"}
    check_keys(ctx, {k: v for k, v in keys.items() if not (reserved and k in reserved)}, path,
               list(params) if not any_kwargs else list(keys), owner=f" (keyword arguments of {ref})")
    out: dict[str, Any] = {}
    for key in keys:
        if reserved and key in reserved:
            raise ctx.error(path + (key,), f"{dotted(path + (key,))}: {reserved[key]}")
        out[key] = value(ctx, section, path + (key,), params.get(key, Any), None)
    try:
        positional_only = [n for n, p in inspect.signature(factory).parameters.items()
                           if p.kind == p.POSITIONAL_ONLY and p.default is p.empty]
        missing = [n for n, p in inspect.signature(factory).parameters.items()
                   if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                   and n not in out and n not in provided and n not in needed]
    except (TypeError, ValueError):  # no signature to read: the call will tell
        positional_only, missing = [], []
    if positional_only:
        raise ctx.error(path + ("factory",), f"{dotted(path)}.factory: {ref} needs the positional-only argument "
                                             f"{positional_only[0]!r}; a factory is called with keywords only")
    if missing:
        raise ctx.error(path + ("factory",), f"{dotted(path)}.factory: {ref} needs the argument {missing[0]!r}: add "
                                             f"{missing[0]}: ... to {dotted(path)}")
    return out


def call_factory(ctx: Ctx, path: KeyPath, factory: Callable[..., Any], ref: str, kwargs: Mapping[str, Any]) -> Any:
    """``factory(**kwargs)``; anything it raises becomes one line at the ``factory`` key."""
    try:
        return factory(**kwargs)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's code: any failure is one line
        raise ctx.error(path + ("factory",), f"{dotted(path)}.factory: {clip(ref)}(...) raised "
                                             f"{type(exc).__name__}: {said(exc)}") from None
