"""Checkpoints of any loop, for an exact resume (``Loop.save_checkpoint`` / ``Searcher.resume``).

>>> searcher.run(stop_after=300, checkpoint="search.pt")      # stops after 300 steps, saves
>>> Searcher.resume("search.pt", build(backbone, heads), tasks, data).run()   # goes on to the end

A checkpoint holds what the loop registered (:meth:`~automtl.search.loop.Loop.register`: for the
AutoMTL search the supermodel with its policy, both optimisers, the loss weighting, the step
counters, the chosen architecture and the data streams: each stream's epoch, the batches consumed
in the current pass and its loader's generator state at the pass start), the grad scalers, where
:meth:`~automtl.search.loop.Loop.run_stages` stands (stage and step within it), the history, the
config, the loop's identity (backbone digest, task names) and the RNG states (torch CPU,
CUDA when initialised, python ``random``, numpy when imported). A resumed run is bit-identical to
an uninterrupted one on the same device under deterministic algorithms, provided every split is
a ``Dataset`` or a loader that shuffles with its own ``generator`` (or does not shuffle).

The config and the model must be those of the checkpoint: a differing config field, backbone or
task list raises ``ValueError`` naming it; so does a file of another format or version.
"""

from __future__ import annotations

import dataclasses
import os
import random
import sys
import tempfile
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from .streams import Stream

if TYPE_CHECKING:
    from .loop import Loop, TrainConfig

__all__ = ["FORMAT", "VERSION", "load", "load_loop_state", "loop_state", "save", "saved_config"]

FORMAT = "automtl.search-checkpoint"
VERSION = 2  # 2: the loop's registered state (version 1 files came from the searcher before the loop)
#: config fields that may differ between the checkpoint and the resumed run
FREE_FIELDS = ("quiet", "device", "num_workers")


def _plain(value: Any) -> Any:
    """Tuples as lists, recursively, so configs compare equal however they were stored."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate(), "cuda": None,
                             "numpy": None}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    np = sys.modules.get("numpy")
    if np is not None:
        name, keys, pos, has_gauss, cached = np.random.get_state()
        state["numpy"] = (name, torch.from_numpy(keys.astype("int64")), int(pos), int(has_gauss), float(cached))
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if state.get("numpy") is not None:
        import numpy as np

        name, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))


def _state_of(obj: Any) -> Any:
    return obj.state() if isinstance(obj, Stream) else obj.state_dict()


def loop_state(loop: Loop) -> dict[str, Any]:
    """The checkpoint of ``loop`` as a dict of tensors and plain Python values (not copied): what every
    loop has, its :meth:`~automtl.search.loop.Loop.identity`, and each registered object's state."""
    state = {
        "format": FORMAT,
        "version": VERSION,
        "config": _plain(loop.config.to_dict()),
        "identity": loop.identity(),
        "progress": dict(loop.progress),
        "history": loop.history,
        "scalers": {k: v.state_dict() for k, v in loop.scalers.items() if v is not None},
        "rng": _rng_state(),
    }
    for name, obj in loop._state.items():
        state[name] = _state_of(obj)
    return state


def check(state: Any) -> None:
    """``ValueError`` unless ``state`` is a checkpoint of this format and version."""
    if not isinstance(state, Mapping) or "format" not in state:
        raise ValueError(f"not an automtl search checkpoint (format {FORMAT!r}): got {type(state).__name__}"
                         + (f" with keys {sorted(map(str, state))[:8]}" if isinstance(state, Mapping) else ""))
    if state["format"] != FORMAT:
        raise ValueError(f"unknown checkpoint format {state['format']!r}; expected {FORMAT!r}")
    if state.get("version") != VERSION:
        raise ValueError(f"unsupported {FORMAT} version {state.get('version')!r}; this automtl reads version "
                         f"{VERSION}")


def saved_config(state: Mapping[str, Any], cls: type[TrainConfig]) -> TrainConfig:
    """The config (a ``cls``, e.g. :class:`~automtl.search.SearchConfig`) a checkpoint was made with."""
    check(state)
    cfg = dict(state["config"])
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ValueError(f"checkpoint: its config has fields {unknown} that {cls.__name__} does not know "
                         "(made by another method or version?)")
    for f in dataclasses.fields(cls):
        if isinstance(f.default, tuple) and isinstance(cfg.get(f.name), list):
            cfg[f.name] = tuple(cfg[f.name])
    return cls(**cfg)


def _check_compatible(loop: Loop, state: Mapping[str, Any]) -> None:
    saved, now = state["config"], _plain(loop.config.to_dict())
    differ = [k for k in sorted(set(saved) | set(now)) if k not in FREE_FIELDS and saved.get(k) != now.get(k)]
    if differ:
        detail = ", ".join(f"{k}: checkpoint {saved.get(k)!r}, now {now.get(k)!r}" for k in differ)
        raise ValueError(f"checkpoint: the config differs in {differ} ({detail})")
    for key, value in loop.identity().items():
        if _plain(state["identity"].get(key)) != _plain(value):
            raise ValueError(f"checkpoint: the {key} differs ({state['identity'].get(key)!r} in the checkpoint, "
                             f"{value!r} now)")
    missing = sorted(set(loop._state) - set(state))
    if missing:
        raise ValueError(f"checkpoint: it holds no state for {missing} (made by another method?)")


def load_loop_state(loop: Loop, state: Mapping[str, Any]) -> None:
    """Restore ``state`` (from :func:`loop_state` or :func:`load`) into ``loop``."""
    check(state)
    _check_compatible(loop, state)
    streams = {n: o for n, o in loop._state.items() if isinstance(o, Stream)}
    try:
        for name, obj in loop._state.items():
            if name not in streams:
                obj.load_state_dict(state[name])
        for name, scaler_state in state.get("scalers", {}).items():
            if loop.scalers.get(name) is not None:
                loop.scalers[name].load_state_dict(scaler_state)
    except (RuntimeError, KeyError, ValueError, TypeError) as e:
        raise ValueError(f"checkpoint: the model or optimiser state does not fit this run: {e}") from e
    loop.progress = dict(state["progress"])
    loop.history = {k: list(v) for k, v in state["history"].items()}
    for name, stream in streams.items():
        stream.restore(state[name])
    _set_rng_state(state["rng"])  # last: re-opening a loader may have drawn from the global RNG


def save(state: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """Write a checkpoint to ``path`` through a temporary file, so a crash never leaves half a file."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".automtl-ckpt-", suffix=".pt")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(dict(state), f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check a checkpoint written by :func:`save` (``weights_only``: no code is unpickled)."""
    try:
        state = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001 - any unreadable file is reported the same way
        raise ValueError(f"{os.fspath(path)}: not a readable automtl search checkpoint ({type(e).__name__}: "
                         f"{e})") from e
    check(state)
    return state
