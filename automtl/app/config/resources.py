"""Sizes a config implies, checked before anything is allocated: the data splits and the memory of the search.

**Splits.** The search cuts one dataset into (weights, policy, val) by ``split_fractions`` as
:func:`automtl.train.data.split_dataset` does (cumulative fractions rounded half up); every split
needs at least one item (a split of at least one item yields at least one batch: the loaders drop a
last partial batch only when there is a full one).

**Memory.** :func:`check_memory` refuses a config whose search needs more memory than the machine
has, with the estimate. The estimate is simple and meant as a rough lower bound, so it only refuses
configs that cannot run; passing it does not promise a config fits. It adds, in bytes:

* *parameters*: the supermodel keeps a shared and a per-task bank at every choice, about
  ``(1 + T) x`` the trunk's parameters (``T`` tasks; counted on the compiled graph cut at
  ``trunk_output``), plus each built-in head's (dense: ``C*h*9 + 2h + h*K + K`` for ``C`` trunk
  channels, ``h`` hidden channels, ``K`` outputs). Training holds weights, gradients and Adam's
  two moments: 4 copies of 4 bytes (3 with SGD);
* *activations* of one training step: the values every trunk operator outputs for one image
  (from the compiled graph's shapes) x ``T`` (the search runs each task's path and keeps it for
  the backward pass) x the batch (``batch_size``, at most the 'weights' split) x 4 bytes (2 with
  ``amp``), plus the dense heads' feature maps;
* the *data index*: the built-in datasets render items lazily, but the split keeps a permutation
  of all indices, :data:`BYTES_PER_INDEX` bytes an item (an int64 tensor, a list of Python ints,
  the subsets' lists); ``multi_digits`` also keeps its digits upscaled to the image size.

Parameters and activations are compared with the search device's memory (the GPU's for CUDA),
the data index with the host's (``os.sysconf``, else ``/proc/meminfo``, lowered by a cgroup v2
``memory.max``); on the CPU all three with the host's. A part that cannot be estimated yet (a user
dataset or head, a backbone that does not compile: building says why) counts 0.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError, Ctx, KeyPath, dotted
from .settings import natural_head

__all__ = [
    "BYTES_PER_INDEX", "check_fractions", "check_index_memory", "check_memory", "check_splits", "host_memory",
    "split_sizes",
]

BYTES_PER_INDEX = 56
"""Host bytes the (weights, policy, val) split keeps per dataset item."""

DIGITS = 1797
"""Images in scikit-learn's digits, the source of ``multi_digits``."""

SPLIT_NAMES = ("weights", "policy", "val")


# splits ----------------------------------------------------------------------------------------


def split_sizes(n: int, fractions: Sequence[float]) -> list[int]:
    """The sizes of the splits of ``n`` items, cut as :func:`automtl.train.data.split_dataset` cuts them."""
    bounds, acc = [0], 0.0
    for f in fractions:
        acc += float(f)
        bounds.append(n if abs(acc - 1.0) <= 1e-9 else min(n, math.floor(acc * n + 0.5)))
    return [hi - lo for lo, hi in zip(bounds, bounds[1:], strict=False)]


def check_fractions(ctx: Ctx, fractions: Sequence[float]) -> list[float]:
    """The split fractions as floats, each in (0, 1] and summing to at most 1 (as the split requires)."""
    frs = [float(f) for f in fractions]
    where = ctx.first(("search", "split_fractions"), ("search",))
    for name, f in zip(_names(len(frs)), frs, strict=True):
        if not (math.isfinite(f) and 0.0 < f <= 1.0):
            raise ctx.error(where, f"search.split_fractions: the '{name}' fraction must be in (0, 1], got {f}")
    if sum(frs) > 1.0 + 1e-9:
        raise ctx.error(where, f"search.split_fractions: {frs} sum to {sum(frs):.6g}, more than 1")
    return frs


def _names(k: int) -> tuple[str, ...]:
    return SPLIT_NAMES if k == 3 else tuple(f"split {i}" for i in range(k))


def check_splits(ctx: Ctx, at: KeyPath, what: str, n: int, fractions: Sequence[float]) -> None:
    """Refuse ``n`` items (described by ``what``) that leave a split empty, saying how many are needed."""
    frs = check_fractions(ctx, fractions)
    sizes = split_sizes(n, frs)
    if min(sizes, default=1) >= 1:
        return
    empty = _names(len(frs))[sizes.index(0)]
    # the smallest size that fills every split, looked for a bounded while (a tiny fraction needs ~1/f items)
    need = next((f"at least {m}" for m in range(n + 1, n + 100_001) if min(split_sizes(m, frs)) >= 1),
                f"about {1 / min(frs):.3g}")
    raise ctx.error(at, f"{what} split by search.split_fractions {frs} leave{'s' if n == 1 else ''} the '{empty}' "
                        f"split empty; it needs {need} items")


# machine memory --------------------------------------------------------------------------------


def host_memory() -> tuple[int, str] | None:
    """This machine's memory in bytes and where it was read, or None where it cannot be read."""
    total, source = None, ""
    try:
        total, source = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "os.sysconf"
    except (AttributeError, ValueError, OSError):
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemTotal:"):
                    total, source = int(line.split()[1]) * 1024, "/proc/meminfo"
        except (OSError, ValueError, IndexError):
            pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit.isdigit() and (total is None or int(limit) < total):
            total, source = int(limit), "the cgroup's memory.max"
    except OSError:
        pass
    return (total, source) if total else None


def device_memory(device: str) -> tuple[int, str] | None:
    """The memory of the search device: the GPU's for ``cuda[:N]``, else the host's."""
    if device.startswith("cuda"):
        import torch

        try:
            index = int(device.split(":")[1]) if ":" in device else torch.cuda.current_device()
            props = torch.cuda.get_device_properties(index)
            return int(props.total_memory), f"{device}, {props.name}"
        except (RuntimeError, AssertionError, ValueError):
            return None
    return host_memory()


def gib(n: float) -> str:
    """Bytes as ``12.3 GiB`` (``45 MiB`` below a GiB)."""
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


# the estimate ----------------------------------------------------------------------------------


@dataclass
class Part:
    """One part of the estimate: what, how many bytes, which key to point at, what to change, where it lives."""

    label: str
    bytes: int
    at: KeyPath
    hint: str
    on_device: bool = True


@functools.lru_cache(maxsize=16)
def _trunk(name: str, shape: tuple[int, ...], trunk_output: str | None, stamp: float) -> tuple[int, int, Any] | None:
    """(parameters, activation values per image, output shape) of the compiled trunk; None if it does not compile.

    ``stamp`` (a backbone file's modification time) keys the cache.
    """
    from ...api import compile as compile_backbone
    from ...compiler.passes import cut

    try:
        graph = compile_backbone(name, shape)
        if trunk_output is not None:
            op = trunk_output if trunk_output in graph else \
                next((n.name for n in reversed(list(graph)) if n.name.startswith(trunk_output + ".")), None)
            if op is None:
                return None
            graph = cut(graph.copy(), op)
        values = sum(_numel(n.shape) for n in graph)
        return int(graph.params), values, graph[graph.outputs[0]].shape
    except Exception:  # noqa: BLE001 - building reports why the backbone does not compile
        return None


def _numel(shape: Any) -> int:
    """Values per image of an operator's output shape (batch dimension first; a list of shapes adds up)."""
    if isinstance(shape, list | tuple) and shape and all(isinstance(d, int) for d in shape):
        return math.prod(shape[1:])
    if isinstance(shape, list | tuple):
        return sum(_numel(s) for s in shape)
    return 0


def estimate(ctx: Ctx, cfg: Any, out_channels: Mapping[str, int], n_items: int | None) -> list[Part]:
    """The parts of the memory estimate (see the module's docstring)."""
    b, s = cfg.backbone, cfg.search
    parts: list[Part] = []
    if n_items is not None:
        parts.append(Part(f"data index of {n_items} items", n_items * BYTES_PER_INDEX, ctx.first(("data", "images"),
                          ("data",)), f"lower data.images ({n_items})", on_device=False))
        parts += _digit_pool(ctx, cfg, n_items)
    name = b.name
    stamp = Path(name).stat().st_mtime if Path(name).is_file() else 0.0
    trunk = _trunk(name, tuple(b.input_shape), b.trunk_output, stamp)
    if trunk is None:
        return parts
    params, values, out = trunk
    tasks = len(cfg.tasks)
    split = split_sizes(n_items, getattr(s, "split_fractions", (1.0,)))[0] if n_items is not None else None
    batch = getattr(s, "batch_size", 1) if split is None else min(getattr(s, "batch_size", 1), max(split, 1))
    copies = 3 if getattr(s, "weight_optimizer", "adam") == "sgd" else 4
    act_bytes = 2 if getattr(s, "amp", None) else 4
    parts.append(Part(f"trunk parameters x (1 + {tasks} tasks)", (1 + tasks) * params * 4 * copies,
                      ctx.first(("backbone", "name"), ("backbone",)), "use a smaller backbone or fewer tasks"))
    shape_key = ctx.first(("backbone", "input_shape"), ("search", "batch_size"), ("backbone",))
    parts.append(Part(f"trunk activations of a batch of {batch}", values * tasks * batch * act_bytes, shape_key,
                      f"lower backbone.input_shape {list(b.input_shape)} or search.batch_size "
                      f"({getattr(s, 'batch_size', batch)})"))
    if not (isinstance(out, list | tuple) and len(out) == 4 and all(isinstance(d, int) for d in out)):
        return parts
    c, h, w = out[1:]
    for t, tc in cfg.tasks.items():
        k = out_channels.get(t)
        if k is None or tc.head_factory is not None:
            continue
        if (natural_head(tc.kind) if tc.head == "auto" else tc.head) == "classification":
            p, a = c * k + k, c + k
        else:
            hidden = tc.hidden_channels or min(c, 256)
            p = c * hidden * 9 + 2 * hidden + hidden * k + k
            a = 2 * hidden * h * w + k * h * w + k * b.input_shape[1] * b.input_shape[2]
        at = ctx.first(("tasks", t, "hidden_channels"), ("tasks", t))
        fix = (f"lower {dotted(at)} ({tc.hidden_channels})" if at[-1] == "hidden_channels"
               else f"a smaller head for {dotted((t,))}")
        parts.append(Part(f"{dotted(('tasks', t))} head parameters", p * 4 * copies, at, fix))
        parts.append(Part(f"{dotted(('tasks', t))} head activations", a * batch * act_bytes, at, fix))
    return parts


def _digit_pool(ctx: Ctx, cfg: Any, n_items: int) -> list[Part]:
    """``multi_digits`` keeps its split of the 1,797 scikit-learn digits upscaled to ``size`` x ``size`` (float32)
    and two int64 pair indices an item; made when the dataset is, so estimated before the config constructs it."""
    if cfg.data.factory is not None or cfg.data.name != "multi_digits":
        return []
    from .build import dataset_kwargs

    kwargs = dataset_kwargs(cfg)
    size, test = kwargs.get("size", 32), kwargs.get("test_fraction", 0.25)
    if not (isinstance(size, int) and isinstance(test, float) and 0 < test < 1):
        return []  # constructing the dataset names what is wrong
    share = test if kwargs.get("split", "train") == "test" else 1 - test
    images = round(share * DIGITS)
    at = ctx.first(("data", "size"), ("backbone", "input_shape"), ("data",))
    return [Part(f"digit pool of {images} images of {size}x{size}", images * size * size * 4 + n_items * 16, at,
                 f"lower the image size ({size})", on_device=False)]


def check_memory(ctx: Ctx, cfg: Any, out_channels: Mapping[str, int], n_items: int | None) -> None:
    """Refuse the config when the estimate exceeds the memory it would live in (one line, with the estimate)."""
    parts = estimate(ctx, cfg, out_channels, n_items)
    device = getattr(cfg.search, "device", "cpu")
    device = device if isinstance(device, str) else str(device)
    if device.startswith("cuda"):
        groups = [([p for p in parts if p.on_device], device_memory(device), "GPU memory"),
                  ([p for p in parts if not p.on_device], host_memory(), "memory")]
    else:
        groups = [(parts, host_memory(), "memory")]
    for group, limit, kind in groups:
        need = sum(p.bytes for p in group)
        if limit is None or not group or need <= limit[0]:
            continue
        top = max(group, key=lambda p: p.bytes)
        shown = "; ".join(f"{p.label}: {gib(p.bytes)}" for p in sorted(group, key=lambda p: -p.bytes)[:4])
        raise ctx.error(top.at, f"the search would need about {gib(need)} of {kind} ({shown}) but this machine has "
                                f"{gib(limit[0])} ({limit[1]}); {top.hint}")


def check_index_memory(ctx: Ctx, at: KeyPath, what: str, n: int) -> None:
    """Refuse a dataset of ``n`` items whose split index alone exceeds the host's memory."""
    limit = host_memory()
    need = n * BYTES_PER_INDEX
    if limit is not None and need > limit[0]:
        raise ConfigError(f"{what}: splitting {n} items needs about {gib(need)} of memory for the index "
                          f"({BYTES_PER_INDEX} bytes an item) but this machine has {gib(limit[0])} ({limit[1]})",
                          ctx.file, ctx.line(at))
