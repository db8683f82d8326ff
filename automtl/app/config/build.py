"""Building: a validated :class:`RunConfig` -> the tasks, the dataset and the supermodel a search takes.

Errors found only now (the backbone's operators, what a user factory returns) still name the
config file, the line and the key.
"""

from __future__ import annotations

import difflib
import inspect
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...model.supermodel import SuperModel, build
from ...train.data import MultiDigits, SyntheticScenes
from ...train.tasks import TASKS, Task, classification_head, dense_head
from .coerce import signature
from .errors import ConfigError, Ctx, KeyPath, clip, dotted, kind_of, quote, said, suggest
from .factories import call_factory, load_factory
from .resources import check_index_memory, check_splits
from .settings import DATASETS, DEFAULT_IMAGES, RunConfig, natural_head

__all__ = ["build_dataset", "build_model", "build_tasks"]


def ctx_of(cfg: RunConfig) -> Ctx:
    """The file and lines ``cfg`` was loaded from (an empty context for a hand-made config)."""
    ctx = getattr(cfg, "_ctx", None)
    if ctx is not None:
        return ctx
    return Ctx(os.fspath(cfg.source) if cfg.source is not None else None, {}, Path("."))


# tasks -----------------------------------------------------------------------------------------


def data_classes(cfg: RunConfig, task: str) -> int | None:
    """The number of classes the data has for ``task``, or None where it has none (or is a user dataset)."""
    if cfg.data.factory is not None:
        return None
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
        classes = data_classes(cfg, name)
        if classes is not None:
            kwargs.setdefault("num_classes", classes)
    return kwargs


def make_task(cfg: RunConfig, name: str) -> Task:
    """The task ``name`` of ``cfg`` (``num_classes`` from the data unless given)."""
    kind = cfg.tasks[name].kind
    if kind not in TASKS:
        raise ctx_of(cfg).error(("tasks", name, "kind"), f"{dotted(('tasks', name))}.kind: unknown task kind "
                                                         f"{quote(kind)}; {suggest(kind, list(TASKS), 'known')}")
    return TASKS[kind](name, **_task_kwargs(cfg, name))


def build_tasks(cfg: RunConfig) -> dict[str, Task]:
    """The configured tasks (``num_classes`` from the data unless given), in the file's order."""
    out: dict[str, Task] = {}
    for name in cfg.tasks:
        try:
            out[name] = make_task(cfg, name)
        except ConfigError:
            raise
        except (ValueError, TypeError) as exc:
            raise ctx_of(cfg).error(("tasks", name), f"{dotted(('tasks', name))}: {said(exc)}") from None
    return out


# data ------------------------------------------------------------------------------------------


def dataset_kwargs(cfg: RunConfig) -> dict[str, Any]:
    """The built-in dataset constructor's arguments: the options plus defaults that follow the rest of the config."""
    name = cfg.data.name
    if name not in DATASETS:
        raise ctx_of(cfg).error(("data", "name"), f"data.name: unknown dataset {quote(name)}; "
                                                  f"{suggest(name, list(DATASETS), 'known')}")
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
    defaults = getattr(cls, "TASKS", ())
    chosen = tuple(t for t in (*defaults, *getattr(cls, "EXTRA_TASKS", ())) if t in cfg.tasks)
    if chosen and chosen != defaults and "tasks" in params:
        kwargs["tasks"] = chosen
    return kwargs


def image_shape(name: str, kwargs: Mapping[str, Any]) -> tuple[int, int, int] | None:
    """The (C, H, W) of the built-in dataset ``name``'s images for these arguments."""
    defaults = {k: p.default for k, p in inspect.signature(DATASETS[name]).parameters.items()}
    size = kwargs.get("size", defaults.get("size"))
    if name == "synthetic_scenes":
        return (3, size, size)
    if name == "multi_digits":
        return (kwargs.get("channels", defaults.get("channels")), size, 2 * size)
    return None


def build_dataset(cfg: RunConfig) -> Any:
    """The configured dataset, producing only the configured tasks' targets.

    A user factory's result is checked: a dataset (split by the search) or a (weights, policy,
    val) sequence of datasets, no split empty, images of ``backbone.input_shape``.
    """
    if cfg.data.factory is not None:
        return _factory_dataset(cfg)
    kwargs = dataset_kwargs(cfg)
    try:
        return DATASETS[cfg.data.name](**kwargs)
    except (ValueError, TypeError) as exc:
        raise ctx_of(cfg).error(("data",), f"data: {said(exc)}") from None


def call_data_factory(cfg: RunConfig) -> Any:
    """What the config's ``data.factory`` returns, called with its options (plus the run's ``seed`` and
    task names where it takes them); a failure to import or call it is one error line."""
    ctx, ref = ctx_of(cfg), cfg.data.factory
    assert ref is not None
    function = load_factory(ctx, ("data", "factory"), ref)
    params, _ = signature(function)
    kwargs = dict(cfg.data.options)
    if "seed" in params:
        kwargs.setdefault("seed", cfg.seed)
    if "tasks" in params:
        kwargs.setdefault("tasks", tuple(cfg.tasks))
    return call_factory(ctx, ("data",), function, ref, kwargs)


def _factory_dataset(cfg: RunConfig) -> Any:
    ctx, ref = ctx_of(cfg), cfg.data.factory
    assert ref is not None
    at: KeyPath = ("data", "factory")
    result = call_data_factory(cfg)
    what = f"data.factory: {clip(ref)}"
    if isinstance(result, list | tuple) and len(result) == 3 and all(_is_dataset(p) for p in result):
        for name, part in zip(("weights", "policy", "val"), result, strict=True):
            if len(part) == 0:
                raise ctx.error(at, f"{what} returned an empty '{name}' split")
        first = result[0]
    elif _is_dataset(result):
        n = len(result)
        check_index_memory(ctx, at, what, n)
        fractions = getattr(cfg.search, "split_fractions", None)
        if fractions is not None:
            check_splits(ctx, at, f"{what} returned {n} item{'s' if n != 1 else ''}, which", n, fractions)
        first = result
    else:
        raise ctx.error(at, f"{what} returned {kind_of(result)}; a dataset factory returns a dataset (with "
                            "__len__ and __getitem__) or a (weights, policy, val) list of them")
    _check_item(ctx, cfg, first, what)
    return result


def _is_dataset(obj: Any) -> bool:
    return hasattr(obj, "__len__") and hasattr(obj, "__getitem__") and not isinstance(obj, str | bytes | Mapping)


def _check_item(ctx: Ctx, cfg: RunConfig, data: Any, what: str) -> None:
    """The first item must be ``(image, {task: target})`` with an image of ``backbone.input_shape``."""
    at: KeyPath = ("data", "factory")
    try:
        item = data[0]
    except Exception as exc:  # noqa: BLE001 - the user's dataset: any failure is one line
        raise ctx.error(at, f"{what}: reading item 0 raised {type(exc).__name__}: {said(exc)}") from None
    if not (isinstance(item, list | tuple) and len(item) == 2 and isinstance(item[1], Mapping)):
        raise ctx.error(at, f"{what}: item 0 is {kind_of(item)}; items must be (image, {{task: target}}) pairs")
    x = item[0]
    shape = tuple(x.shape) if isinstance(x, torch.Tensor) else None
    want = tuple(cfg.backbone.input_shape)
    if shape != want:
        got = list(shape) if shape is not None else kind_of(x)
        raise ctx.error(ctx.first(("backbone", "input_shape"), at), f"backbone.input_shape {list(want)} does not match "
                                                                    f"the images of {what}: {got}")


# the model -------------------------------------------------------------------------------------


def _head(cfg: RunConfig, name: str, task: Task, shape: Sequence[int]) -> nn.Module:
    """The head of task ``name`` for a trunk output of ``shape`` (N, C, H, W)."""
    b, tc, ctx = cfg.backbone, cfg.tasks[name], ctx_of(cfg)
    scale = b.input_shape[1] // shape[2]
    if tc.head_factory is not None:
        path: KeyPath = ("tasks", name, "head")
        function = load_factory(ctx, path + ("factory",), tc.head_factory)
        params, any_kwargs = signature(function)
        given = {"in_channels": shape[1], "out_channels": task.out_channels, "scale_factor": scale,
                 "input_shape": tuple(b.input_shape)}
        kwargs = {k: v for k, v in given.items() if k in params or any_kwargs}
        head = call_factory(ctx, path, function, tc.head_factory, {**tc.head_options, **kwargs})
        if not isinstance(head, nn.Module):
            raise ctx.error(path + ("factory",), f"{dotted(path)}.factory: {clip(tc.head_factory)} returned "
                                                 f"{kind_of(head)}, not an nn.Module")
        return head
    if (natural_head(tc.kind) if tc.head == "auto" else tc.head) == "classification":
        return classification_head(shape[1], task.out_channels)
    return dense_head(shape[1], task.out_channels, scale_factor=scale, hidden_channels=tc.hidden_channels)


def _check_trunk_output(ctx: Ctx, graph: Any, cfg: RunConfig) -> None:
    b = cfg.backbone
    if b.trunk_output is None:
        return
    ops = [n.name for n in graph]
    if b.trunk_output not in graph and not any(op.startswith(b.trunk_output + ".") for op in ops):
        parts = {".".join(op.split(".")[:k]) for op in ops for k in range(1, op.count(".") + 2)}
        close = difflib.get_close_matches(b.trunk_output[:200], sorted(parts), n=3)
        hint = f"did you mean {' or '.join(repr(c) for c in close)}?" if close else \
            f"operators: {', '.join(ops[:30])}{' ...' if len(ops) > 30 else ''}"
        raise ctx.error(("backbone", "trunk_output"), f"backbone.trunk_output: {quote(b.trunk_output)} is not an "
                                                      f"operator or submodule of {b.name}; {hint}")


def build_model(cfg: RunConfig, task_names: Sequence[str] | None = None) -> SuperModel:
    """The supermodel for ``task_names`` (default: all tasks; a subset for the baselines).

    The backbone is compiled once, a probe build gives the trunk output's shape, and the heads are
    made for it. Weights are initialised under ``torch.manual_seed(cfg.seed)`` inside a forked RNG,
    so a config always builds the same initial model and the global RNG is left alone.
    """
    from ...api import compile as compile_backbone

    ctx = ctx_of(cfg)
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
            raise ctx.error(("backbone", "name"), f"backbone {clip(b.name)}: {said(exc)}") from None
        _check_trunk_output(ctx, graph, cfg)
        probe = build(graph, {t: nn.Identity() for t in names}, trunk_output=b.trunk_output, check_heads=False)
        shape = tuple(probe.graph[probe.graph.outputs[0]].shape)
        if len(shape) != 4:
            raise ctx.error(("backbone", "trunk_output"), f"backbone.trunk_output: the trunk output "
                                                          f"{b.trunk_output or '(the backbone output)'} has shape "
                                                          f"{list(shape)}; heads need a (N, C, H, W) feature map")
        heads = {t: _head(cfg, t, tasks[t], shape) for t in names}
        try:
            return build(graph, heads, trunk_output=b.trunk_output, bn=b.bn, skip=b.skip)
        except ValueError as exc:
            factory = next((t for t in names if cfg.tasks[t].head_factory and f"'{t}'" in str(exc)), None)
            at: KeyPath = ("tasks", factory, "head", "factory") if factory else ("backbone",)
            raise ctx.error(at, said(exc, 600)) from None
