"""Checkpoints of a search, for an exact resume (``Searcher.save_checkpoint`` / ``Searcher.resume``).

>>> searcher.run(stop_after=300, checkpoint="search.pt")      # stops after 300 steps, saves
>>> Searcher.resume("search.pt", build(backbone, heads), tasks, data).run()   # goes on to the end

A checkpoint holds the supermodel's weights and buffers (lazily sized specific weights included),
the policy logits, both optimisers' states, the loss weighting's state, the step counters (τ
follows from the policy step), where :meth:`~automtl.search.searcher.Searcher.run` stands (stage and step
within it), the history, the data order (each stream's epoch, the batches consumed in the
current pass and its loader's generator state at the pass start) and the RNG states (torch CPU,
CUDA when initialised, python ``random``, numpy when imported). A resumed run is bit-identical to
an uninterrupted one on the same device under deterministic algorithms, provided every split is
a ``Dataset`` or a loader that shuffles with its own ``generator`` (or does not shuffle).

The config and the model must be those of the checkpoint: a differing config field, backbone or
task list raises ``ValueError`` naming it; so does a file of another format or version.
"""

from __future__ import annotations

import os
import random
import sys
import tempfile
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from ..model.architecture import Architecture

if TYPE_CHECKING:
    from .searcher import SearchConfig, Searcher

__all__ = ["FORMAT", "VERSION", "load", "load_searcher_state", "save", "saved_config", "searcher_state"]

FORMAT = "automtl.search-checkpoint"
VERSION = 1
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


def searcher_state(searcher: Searcher) -> dict[str, Any]:
    """The checkpoint of ``searcher`` as a dict of tensors and plain Python values (not copied)."""
    s = searcher
    return {
        "format": FORMAT,
        "version": VERSION,
        "config": _plain(s.config.to_dict()),
        "backbone_digest": s.model.backbone_digest,
        "task_names": list(s.names),
        "model": s.model.state_dict(),
        "weighting": s.weighting.state_dict(),
        "weight_opt": s.weight_opt.state_dict(),
        "policy_opt": s.policy_opt.state_dict(),
        "scalers": {k: v.state_dict() for k, v in s.scalers.items() if v is not None},
        "weight_step": s.weight_step,
        "policy_step": s.policy_step,
        "tau": s.tau(),
        "progress": dict(s.progress),
        "streams": {name: stream.state() for name, stream in s.streams.items()},
        "history": s.history,
        "architecture": s.architecture.to_dict() if s.architecture is not None else None,
        "rng": _rng_state(),
    }


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


def saved_config(state: Mapping[str, Any]) -> SearchConfig:
    """The :class:`~automtl.search.searcher.SearchConfig` a checkpoint was made with."""
    from .searcher import SearchConfig

    check(state)
    cfg = dict(state["config"])
    cfg["split_fractions"] = tuple(cfg["split_fractions"])
    return SearchConfig(**cfg)


def _check_compatible(searcher: Searcher, state: Mapping[str, Any]) -> None:
    saved, now = state["config"], _plain(searcher.config.to_dict())
    differ = [k for k in sorted(set(saved) | set(now)) if k not in FREE_FIELDS and saved.get(k) != now.get(k)]
    if differ:
        detail = ", ".join(f"{k}: checkpoint {saved.get(k)!r}, now {now.get(k)!r}" for k in differ)
        raise ValueError(f"checkpoint: the config differs in {differ} ({detail})")
    if state["backbone_digest"] != searcher.model.backbone_digest:
        raise ValueError(f"checkpoint: the backbone differs (digest {state['backbone_digest']!r} in the checkpoint, "
                         f"{searcher.model.backbone_digest!r} now)")
    if list(state["task_names"]) != list(searcher.names):
        raise ValueError(f"checkpoint: the task_names differ ({list(state['task_names'])} in the checkpoint, "
                         f"{searcher.names} now)")
    if set(state["streams"]) != set(searcher.streams):
        raise ValueError(f"checkpoint: the data streams differ ({sorted(state['streams'])} vs "
                         f"{sorted(searcher.streams)})")


def load_searcher_state(searcher: Searcher, state: Mapping[str, Any]) -> None:
    """Restore ``state`` (from :func:`searcher_state` or :func:`load`) into ``searcher``."""
    check(state)
    _check_compatible(searcher, state)
    s = searcher
    try:
        s.model.load_state_dict(state["model"])
        s.weighting.load_state_dict(state["weighting"])
        s.weight_opt.load_state_dict(state["weight_opt"])
        s.policy_opt.load_state_dict(state["policy_opt"])
        for name, scaler_state in state.get("scalers", {}).items():
            if s.scalers.get(name) is not None:
                s.scalers[name].load_state_dict(scaler_state)
    except (RuntimeError, KeyError, ValueError) as e:
        raise ValueError(f"checkpoint: the model or optimiser state does not fit this searcher: {e}") from e
    s.weight_step, s.policy_step = int(state["weight_step"]), int(state["policy_step"])
    s.progress = dict(state["progress"])
    s.history = {k: list(v) for k, v in state["history"].items()}
    arch = state.get("architecture")
    s.architecture = Architecture.from_dict(arch) if arch is not None else None
    s.derived = None
    for name, stream in s.streams.items():
        stream.restore(state["streams"][name])
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
