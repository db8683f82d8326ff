"""Validation: parsed config data -> a :class:`RunConfig`, every key checked with its file and line.

Sections are checked against what consumes them: ``search`` against the chosen strategy's options
dataclass (:func:`automtl.app.config.strategies.strategy_options`), ``data`` and tasks against the
dataset's and task's constructor signatures (or a user factory's), then the dataset and each task
are constructed empty once so their own checks run, the splits are sized and the memory estimated
(:mod:`.resources`): whatever can be found wrong is found at load time.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ...train.tasks import TASKS, TaskInputError
from .coerce import check_keys, choice, int_value, required, section, signature, value
from .errors import ConfigError, Ctx, KeyPath, clip, dotted, kind_of, quote, said, suggest
from .factories import factory_arguments, load_factory
from .resources import check_fractions, check_memory, check_splits
from .settings import (
    AMP_MODES,
    BACKBONE_KEYS,
    BASELINES,
    BN_MODES,
    DATASETS,
    DEFAULT_IMAGES,
    FACTORY_HEAD,
    HEADS,
    RUN_FIELDS,
    SEED_LIMIT,
    TASK_KEYS,
    TOP_KEYS,
    BackboneConfig,
    DataConfig,
    RunConfig,
    TaskConfig,
    natural_head,
    resolve_device,
)
from .strategies import DEFAULT_STRATEGY, strategy_options

__all__ = ["from_dict"]

# suffixes that make a backbone name a file (as automtl.compile reads them)
_FILE_SUFFIXES = (".prototxt", ".pbtxt", ".txt", ".onnx")
_BUILTIN_KINDS = ("classification", "segmentation", "depth", "normals", "edges")
# the kind each built-in target needs
_TARGET_KINDS: dict[str, dict[str, str]] = {
    # shading: the Lambertian shading map, a one-channel regression like depth
    "synthetic_scenes": {**{t: t for t in DATASETS["synthetic_scenes"].TASKS}, "shading": "depth"},  # type: ignore[attr-defined]
    "multi_digits": {t: "classification" for t in DATASETS["multi_digits"].TASKS},  # type: ignore[attr-defined]
}
MAX_SIDE = 65536
"""Largest input height, width or channel count (larger images cannot fit a search anyway)."""
# arguments automtl passes a head factory (those it takes), and those it must take
HEAD_PROVIDED = ("in_channels", "out_channels", "scale_factor", "input_shape")
HEAD_NEEDED = ("in_channels", "out_channels")


def from_dict(data: Any, ctx: Ctx, source: Path | None, memory: bool = True) -> RunConfig:
    """Validate parsed config data (the file's layout) into a :class:`RunConfig`; raises :class:`ConfigError`.

    ``memory=False`` skips the memory estimate (for reading a finished run's config on a smaller machine).
    """
    if data is None:
        raise ctx.error((), "the config is empty; it needs at least a tasks section")
    if not isinstance(data, Mapping):
        raise ctx.error((), f"the top level must be a mapping of sections ({', '.join(TOP_KEYS)}), "
                            f"got {kind_of(data)}")
    check_keys(ctx, data, (), TOP_KEYS)
    seed = int_value(ctx, data, ("seed",), 0, low=0, high=SEED_LIMIT - 1)
    device = value(ctx, data, ("device",), str, "auto")
    try:
        resolved = resolve_device(device)
    except ConfigError as exc:
        detail = exc.detail.replace("device must be", "device: expected")
        raise ctx.error(("device",), detail) from None
    amp = value(ctx, data, ("amp",), str | None, None)
    if amp is not None:
        choice(ctx, ("amp",), amp, AMP_MODES, "amp mode")
        if amp == "fp16" and resolved == "cpu":
            raise ctx.error(("amp",), f"amp: fp16 needs CUDA and device {device!r} is the CPU here; use amp: bf16 "
                                      "or leave amp out")
    baselines = _baselines(ctx, data)
    checkpoint_every = int_value(ctx, data, ("checkpoint_every",), 200, low=0)
    backbone = _backbone(ctx, section(ctx, data, "backbone"))
    data_section = section(ctx, data, "data")
    factory = "factory" in data_section
    data_name = "" if factory else value(ctx, data_section, ("data", "name"), str, "synthetic_scenes")
    if not factory:
        choice(ctx, ("data", "name"), data_name, list(DATASETS), "dataset")
    tasks = _tasks(ctx, data, data_name)
    data_cfg = _data_factory(ctx, data_section) if factory else _data(ctx, data_section, data_name)
    strategy, search = _search(ctx, section(ctx, data, "search"), seed, resolved, amp)
    cfg = RunConfig(backbone, tasks, data_cfg, search, seed=seed, device=device, amp=amp, baselines=baselines,
                    checkpoint_every=checkpoint_every, strategy=strategy, source=source)
    cfg._ctx = ctx  # type: ignore[attr-defined] # lines for messages at build time (not a field)
    out_channels = {name: _check_task(ctx, cfg, name) for name in tasks}
    n_items = None if factory else cfg.data.options.get("n", DEFAULT_IMAGES)
    fractions = getattr(cfg.search, "split_fractions", None)
    if fractions is not None:
        check_fractions(ctx, fractions)
        if n_items is not None:
            check_splits(ctx, ctx.first(("data", "images"), ("search", "split_fractions"), ("data",)),
                         f"data.images: {n_items} image{'s' if n_items != 1 else ''}", n_items, fractions)
    if memory:
        check_memory(ctx, cfg, out_channels, n_items)
    if not factory:  # constructs the dataset empty: after the memory check (multi_digits makes its digit pool)
        _check_data(ctx, cfg, data_section)
    return cfg


def _baselines(ctx: Ctx, data: Mapping) -> tuple[str, ...]:
    v = data.get("baselines")
    if v is None:
        return ()
    if not isinstance(v, list | tuple):
        raise ctx.error(("baselines",), f"baselines: expected a list such as [{', '.join(BASELINES)}], "
                                        f"got {kind_of(v)}")
    out: list[str] = []
    for i, item in enumerate(v):
        choice(ctx, ("baselines", i), item, BASELINES, "baseline")
        if item in out:
            raise ctx.error(("baselines", i), f"baselines: {item!r} is listed twice")
        out.append(item)
    return tuple(out)


def _backbone(ctx: Ctx, sec: Mapping) -> BackboneConfig:
    path: KeyPath = ("backbone",)
    check_keys(ctx, sec, path, BACKBONE_KEYS)
    name = value(ctx, sec, ("backbone", "name"), str, "resnet18")
    if Path(name[:4096]).suffix.lower() in _FILE_SUFFIXES:
        file = Path(name).expanduser()
        relative = not file.is_absolute()
        if relative:
            file = ctx.base / file
        try:
            found = file.is_file()
        except (OSError, ValueError):  # a name too long for the file system, a NUL byte
            found = False
        if not found:
            where = " (a relative path starts from the config file's folder)" if relative else ""
            raise ctx.error(("backbone", "name"), f"backbone.name: no such backbone file {quote(str(file))}{where}")
        name = str(file.resolve())
    else:
        from ... import backbones

        zoo = backbones.names()
        if name not in zoo:
            raise ctx.error(("backbone", "name"), f"backbone.name: {quote(name)} is neither a zoo backbone nor a "
                                                  f".prototxt / .onnx file; {suggest(name, zoo, 'zoo')}")
    shape = sec.get("input_shape", [3, 32, 32])
    if not (isinstance(shape, list | tuple) and len(shape) == 3
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in shape)):
        raise ctx.error(("backbone", "input_shape"), f"backbone.input_shape: expected a list of 3 positive ints "
                                                     f"[C, H, W], got {kind_of(shape)}")
    if max(shape) > MAX_SIDE:
        raise ctx.error(("backbone", "input_shape"), f"backbone.input_shape: {quote(list(shape))} has a side over "
                                                     f"{MAX_SIDE}; images that large cannot be searched")
    trunk_output = value(ctx, sec, ("backbone", "trunk_output"), str | None, "layer2") or None
    bn = value(ctx, sec, ("backbone", "bn"), str, "follow")
    choice(ctx, ("backbone", "bn"), bn, BN_MODES, "bn mode")
    skip = value(ctx, sec, ("backbone", "skip"), bool, True)
    return BackboneConfig(name, tuple(shape), trunk_output, bn, skip)


def _targets(data_name: str) -> tuple[str, ...]:
    """Every target a built-in dataset can give (its default ones, then those given only when named)."""
    if not data_name:
        return ()
    cls = DATASETS[data_name]
    return (*getattr(cls, "TASKS", ()), *getattr(cls, "EXTRA_TASKS", ()))


def _tasks(ctx: Ctx, data: Mapping, data_name: str) -> dict[str, TaskConfig]:
    """The tasks section; with a user dataset (``data_name`` empty) names are not checked against targets."""
    available = _targets(data_name)
    kinds = _TARGET_KINDS.get(data_name, {})
    first = available[0] if available else "depth"
    example = f"tasks: {{{first}: {{kind: {kinds.get(first, first)}}}}}"
    if "tasks" not in data:
        raise ctx.error(("tasks",), f"no tasks: add a tasks section such as {example}")
    sec = data["tasks"]
    if sec is None or (isinstance(sec, Mapping) and not sec):
        raise ctx.error(("tasks",), f"tasks is empty; add at least one, such as {example}")
    if not isinstance(sec, Mapping):
        raise ctx.error(("tasks",), f"tasks must be a mapping of task name -> task, got {kind_of(sec)}")
    out: dict[str, TaskConfig] = {}
    for name, spec in sec.items():
        path: KeyPath = ("tasks", name)
        if not isinstance(name, str):
            raise ctx.error(("tasks",), f"task name {quote(name)} is not a string")
        if available and name not in available:
            raise ctx.error(path, f"task {quote(name)} is not a target of the {data_name} data; "
                                  f"{suggest(name, available, 'available')}")
        natural_kind = kinds.get(name, "...")
        if not isinstance(spec, Mapping):
            raise ctx.error(path, f"{dotted(path)} must be a mapping such as {{kind: {natural_kind}}}, "
                                  f"got {kind_of(spec)}")
        if "kind" not in spec:
            raise ctx.error(path, f"{dotted(path)} has no kind; " + (
                f"the {data_name} target {name!r} needs kind: {natural_kind}" if name in kinds else
                f"add kind: one of {', '.join(TASKS)}"))
        out[name] = _task(ctx, path, name, spec, kinds, data_name)
    return out


def _task(ctx: Ctx, path: KeyPath, name: str, spec: Mapping, kinds: Mapping[str, str], data_name: str) -> TaskConfig:
    at = dotted(path)
    kind = value(ctx, spec, path + ("kind",), str, None)
    choice(ctx, path + ("kind",), kind, list(TASKS), "task kind")
    if kind in _BUILTIN_KINDS and name in kinds and kind != kinds[name]:
        raise ctx.error(path + ("kind",), f"{at}.kind: the {data_name} target {name!r} needs kind "
                                          f"{kinds[name]}, not {kind}")
    params, any_kwargs = signature(TASKS[kind], exclude=("self", "name", "head"))
    if not any_kwargs:
        check_keys(ctx, spec, path, (*TASK_KEYS, *params))
    natural = natural_head(kind)
    head_spec = spec.get("head", "auto")
    head_factory, head_options = None, {}
    if isinstance(head_spec, Mapping):
        head_path = path + ("head",)
        if "factory" not in head_spec:
            raise ctx.error(head_path, f"{at}.head: a head mapping needs factory: 'module:function' (called with "
                                       f"in_channels, out_channels and its keyword arguments); or use "
                                       f"{', '.join(HEADS)}")
        function = load_factory(ctx, head_path + ("factory",), head_spec["factory"])
        reserved = {k: "set by automtl (the trunk output's channels, the task's outputs, the upsampling factor, "
                       "the input shape), not in the config" for k in HEAD_PROVIDED}
        head_options = factory_arguments(ctx, head_path, function, head_spec, provided=HEAD_PROVIDED,
                                         needed=HEAD_NEEDED, reserved=reserved)
        head, head_factory = FACTORY_HEAD, head_spec["factory"]
    else:
        head = value(ctx, spec, path + ("head",), str, "auto")
        choice(ctx, path + ("head",), head, HEADS, "head")
        if head not in ("auto", natural):
            raise ctx.error(path + ("head",), f"{at}.head: a {kind} task needs a {natural} head, not {head}")
    hidden = value(ctx, spec, path + ("hidden_channels",), int | None, None)
    if hidden is not None:
        if hidden < 1:
            raise ctx.error(path + ("hidden_channels",), f"{at}.hidden_channels: must be an int >= 1, got {hidden}")
        if natural != "dense" or head_factory is not None:
            raise ctx.error(path + ("hidden_channels",), f"{at}.hidden_channels: only dense heads have hidden "
                                                         "channels" + (" (give a factory head's options under head)"
                                                                       if head_factory else ""))
    options = {k: value(ctx, spec, path + (k,), params.get(k, Any), None) for k in spec if k not in TASK_KEYS}
    return TaskConfig(kind, head, hidden, options, head_factory, head_options)


def _data(ctx: Ctx, sec: Mapping, name: str) -> DataConfig:
    path: KeyPath = ("data",)
    params, any_kwargs = signature(DATASETS[name], exclude=("self", "n", "tasks"))
    special = {"n": "data.n: write the dataset size as images", "tasks": "data.tasks: the targets the data "
               "produces are the tasks section's tasks"}
    if not any_kwargs:
        check_keys(ctx, sec, path, ("name", "images", *params), special)
    images = int_value(ctx, sec, ("data", "images"), DEFAULT_IMAGES, low=1)
    options = {"n": images}
    for key in sec:
        if key not in ("name", "images"):
            options[key] = value(ctx, sec, path + (key,), params.get(key, Any), None)
    return DataConfig(name, options)


def _data_factory(ctx: Ctx, sec: Mapping) -> DataConfig:
    """``data: {factory: "pkg.mod:fn", **kwargs}``: imported and its keyword arguments checked now."""
    if "name" in sec:
        raise ctx.error(("data", "name"), "data: give either name (a built-in dataset) or factory, not both")
    function = load_factory(ctx, ("data", "factory"), sec["factory"])
    options = factory_arguments(ctx, ("data",), function, sec, provided=("seed", "tasks"))
    return DataConfig("", options, factory=sec["factory"])


def _search(ctx: Ctx, sec: Mapping, seed: int, device: str, amp: str | None) -> tuple[str, Any]:
    """The strategy's name and its options dataclass, filled from the search section."""
    path: KeyPath = ("search",)
    strategy = value(ctx, sec, ("search", "strategy"), str, DEFAULT_STRATEGY)
    try:
        cls = strategy_options(strategy)
    except ConfigError as exc:
        raise ctx.error(("search", "strategy"), f"search.strategy: {exc.detail}") from None
    fields = [f.name for f in dataclasses.fields(cls)]
    valid = ["strategy", *(f for f in fields if f not in RUN_FIELDS)]
    special = {k: f"search.{k}: set {k} at the top level of the config, not in search" for k in RUN_FIELDS}
    special["quiet"] = "search.quiet: quiet is a command-line flag, not a config key"
    check_keys(ctx, sec, path, valid, special)
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - unresolvable annotations only lose the type check
        hints = {}
    values = {k: value(ctx, sec, path + (k,), hints.get(k, Any), None) for k in sec if k != "strategy"}
    if "weighting" in fields:
        _check_weighting(ctx, values)
    run = {k: v for k, v in (("seed", seed), ("device", device), ("amp", amp)) if k in fields}
    try:
        return strategy, cls(**values, **run)
    except (ValueError, TypeError) as exc:
        m = re.match(rf"{re.escape(cls.__name__)}\.(\w+)", str(exc))
        key = m.group(1) if m else None
        if key in RUN_FIELDS:
            raise ctx.error((key,), f"{key}: {said(exc)}") from None
        where = ("search", key) if key in sec else path
        raise ctx.error(where, f"{dotted(where)}: {said(exc)}") from None


def _weightings() -> dict[str, Any]:
    """The loss weighting registry: name -> class."""
    from ...train import weighting

    return dict(weighting.WEIGHTINGS)


def _check_weighting(ctx: Ctx, values: Mapping[str, Any]) -> None:
    """An unknown weighting, or an option it does not take, fails now rather than when the search starts."""
    name = values.get("weighting")
    registry = _weightings()
    if name is not None:
        if not isinstance(name, str) or name.lower() not in registry:
            raise ctx.error(("search", "weighting"), f"search.weighting: unknown loss weighting {quote(name)}; "
                                                     f"{suggest(name, sorted(registry), 'known')}")
    kwargs = values.get("weighting_kwargs") or {}
    cls = registry.get((name or "equal").lower())
    if cls is None or not isinstance(kwargs, Mapping):
        return
    params, any_kwargs = signature(cls, exclude=("self", "task_names"))
    if not any_kwargs:
        check_keys(ctx, kwargs, ("search", "weighting_kwargs"), list(params),
                   owner=f" (options of the {(name or 'equal').lower()} weighting)")


def _check_data(ctx: Ctx, cfg: RunConfig, sec: Mapping) -> None:
    """Construct the built-in dataset empty (cheap) so its own checks run now, then compare image and input shapes."""
    from .build import dataset_kwargs, image_shape

    kwargs = dataset_kwargs(cfg)
    try:
        DATASETS[cfg.data.name](**{**kwargs, "n": 0})
    except (ValueError, TypeError) as exc:
        key, _, rest = str(exc).partition(" ")
        if key in sec:  # the dataset's messages start with the argument's name
            raise ctx.error(("data", key), f"data.{key}: {clip(rest, 300)}") from None
        raise ctx.error(("data",), f"data: {said(exc)}") from None
    want = image_shape(cfg.data.name, kwargs)
    shape = cfg.backbone.input_shape
    if want is not None and tuple(shape) != want:
        # point at what the file wrote: the input shape, else the backbone, else the data
        at = ctx.first(("backbone", "input_shape"), ("backbone",), ("data", "size"), ("data",))
        raise ctx.error(at, f"backbone.input_shape {list(shape)} does not match the {cfg.data.name} images "
                            f"{list(want)}: use input_shape: {list(want)} (or change the data's options)")


def _check_task(ctx: Ctx, cfg: RunConfig, name: str) -> int | None:
    """Construct the task once so its own checks run now; returns its output channels."""
    from .build import data_classes, make_task

    path: KeyPath = ("tasks", name)
    given = cfg.tasks[name].options.get("num_classes")
    have = data_classes(cfg, name)
    if given is not None and have is not None and given != have:
        raise ctx.error(path + ("num_classes",), f"{dotted(path)}.num_classes: {given} does not match the {have} "
                                                 f"classes of the {cfg.data.name} target {name!r}")
    kind = cfg.tasks[name].kind
    given_keys = set(cfg.tasks[name].options) | ({"num_classes"} if have is not None else set())
    missing = [p for p in required(TASKS[kind], exclude=("self", "name", "head")) if p not in given_keys]
    if missing:
        raise ctx.error(path, f"{dotted(path)}: a {kind} task needs {missing[0]}: add {missing[0]}: ... to "
                              f"{dotted(path)}")
    try:
        task = make_task(cfg, name)
    except TaskInputError as exc:
        text, prefix = str(exc), f"task '{exc.task}': {exc.field}: "
        text = text[len(prefix):] if text.startswith(prefix) else text
        raise ctx.error(path + (exc.field,), f"{dotted(path)}.{exc.field}: {clip(text, 300)}") from None
    except (ValueError, TypeError) as exc:
        raise ctx.error(path, f"{dotted(path)}: {said(exc)}") from None
    try:
        return int(task.out_channels)
    except (AttributeError, NotImplementedError, TypeError, ValueError):
        return None

