"""The weighting interface, its registry and the per-task backward shared by gradient-level methods.

See the package docstring (:mod:`automtl.train.weighting`) for the calling contract of a training step.
"""

from __future__ import annotations

import difflib
import inspect
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar, Protocol

import torch
from torch import Tensor, nn

from ...compiler.registry import Registry

Reduce = Callable[[Tensor], Tensor]
"""Averages a tensor over the data-parallel processes (identity in one process)."""


class Scaler(Protocol):
    """What a weighting needs of a gradient scaler (``torch.amp.GradScaler`` has it)."""

    def scale(self, outputs: Tensor) -> Tensor: ...


class Weighting(nn.Module):
    """Base class: validates task names and the per-step loss dictionaries; owns the backward.

    Subclasses define :meth:`combine` (a loss-level method) or override :meth:`backward` (a
    gradient-level one, see :class:`GradientWeighting`). ``needs_post_step_losses`` tells the loop
    that :meth:`after_step` wants the batch's losses re-evaluated after the optimiser step.
    """

    name: ClassVar[str] = "base"
    needs_post_step_losses: ClassVar[bool] = False

    def __init__(self, task_names: Iterable[str]) -> None:
        super().__init__()
        if isinstance(task_names, str):
            raise ValueError(f"task_names must be an iterable of task names, not the string {task_names!r}")
        names = list(task_names)
        if not names:
            raise ValueError(f"{self.name} weighting: no task names given")
        for n in names:
            if not isinstance(n, str) or not n:
                raise ValueError(f"{self.name} weighting: task names must be non-empty strings, got {n!r}")
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"{self.name} weighting: duplicate task names {dupes}")
        self.task_names: tuple[str, ...] = tuple(names)
        self._index = {n: i for i, n in enumerate(names)}

    def _present(self, losses: Mapping[str, Tensor | None]) -> list[tuple[int, str, Tensor]]:
        """(index, name, loss) of the tasks with a loss this step, in ``task_names`` order."""
        self._check_known(losses)
        out = []
        for n in self.task_names:
            value = losses.get(n)
            if value is None:
                continue
            if not isinstance(value, Tensor) or value.numel() != 1:
                shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise ValueError(f"{self.name} weighting: task '{n}': loss must be a scalar tensor, got {shape}")
            out.append((self._index[n], n, value.reshape(())))
        if not out:
            raise ValueError(f"{self.name} weighting: no task has a loss this step (all targets missing)")
        return out

    def _check_known(self, losses: Mapping[str, Any]) -> None:
        unknown = [n for n in losses if n not in self._index]
        if unknown:
            raise ValueError(
                f"{self.name} weighting: loss for unknown task(s) {unknown}; known: {list(self.task_names)}"
            )

    def _values(self, losses: Mapping[str, Tensor | float | None], what: str) -> dict[int, float]:
        """{task index: finite float} of the tasks given a value (tensors are detached)."""
        self._check_known(losses)
        out = {}
        for n in self.task_names:
            value = losses.get(n)
            if value is None:
                continue
            if isinstance(value, Tensor):
                if value.numel() != 1:
                    raise ValueError(f"{self.name} weighting: task '{n}': {what} must be a scalar, "
                                     f"got shape {tuple(value.shape)}")
                value = float(value.detach())
            elif isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{self.name} weighting: task '{n}': {what} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"{self.name} weighting: task '{n}': {what} {value} is not finite")
            out[self._index[n]] = float(value)
        return out

    def combine(
        self, losses: Mapping[str, Tensor | None], step: int | None = None, epoch: int | None = None
    ) -> Tensor:
        """The total loss of the tasks present in ``losses``."""
        raise NotImplementedError

    def forward(
        self, losses: Mapping[str, Tensor | None], step: int | None = None, epoch: int | None = None
    ) -> Tensor:
        return self.combine(losses, step=step, epoch=epoch)

    def backward(
        self,
        losses: Mapping[str, Tensor | None],
        shared: Iterable[nn.Parameter] = (),
        scaler: Scaler | None = None,
        reduce: Reduce | None = None,
        step: int | None = None,
    ) -> Tensor:
        """Backpropagate the tasks' losses: gradients accumulate into ``.grad`` of every parameter.

        The default is ``combine(losses).backward()`` (through ``scaler.scale`` when a gradient
        scaler is given); ``shared`` and ``reduce`` matter to gradient-level methods only. Returns
        the combined loss, detached and unscaled, for logging.
        """
        total = self._total_to_backward(losses, reduce, step)
        (scaler.scale(total) if scaler is not None else total).backward()
        return total.detach()

    def _total_to_backward(self, losses: Mapping[str, Tensor | None], reduce: Reduce | None,
                           step: int | None) -> Tensor:
        """What the default :meth:`backward` backpropagates: ``combine`` unless a method needs ``reduce``."""
        return self.combine(losses, step=step)

    def after_step(
        self, losses: Mapping[str, Tensor | float | None], before: Mapping[str, Tensor | float | None] | None = None
    ) -> None:
        """Called once after every optimiser step; a no-op unless the method adapts per step."""

    def weights(self) -> dict[str, float]:
        """The current weight of each task (what multiplies its loss)."""
        raise NotImplementedError

    def epoch_end(self, avg_losses: Mapping[str, float] | None = None) -> None:
        """Called once at the end of every training epoch; a no-op unless the strategy needs it."""

    def extra_repr(self) -> str:
        return f"tasks={list(self.task_names)}"


def shared_parameters(owner: str, shared: Iterable[nn.Parameter]) -> list[nn.Parameter]:
    """The distinct leaf tensors of ``shared`` that require a gradient, in order."""
    if isinstance(shared, Tensor):
        shared = [shared]
    out, seen = [], set()
    for i, p in enumerate(shared):
        if not isinstance(p, Tensor):
            raise ValueError(f"{owner} weighting: shared[{i}] is a {type(p).__name__}, not a parameter")
        if not p.is_leaf:
            raise ValueError(f"{owner} weighting: shared[{i}] is not a leaf tensor (pass model parameters)")
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    if not out:
        raise ValueError(f"{owner} weighting: no shared parameter that requires a gradient; pass the parameters "
                         "every task's loss flows through (the backbone's)")
    return out


def per_task_backward(terms: Sequence[Tensor], shared: Sequence[nn.Parameter]) -> tuple[Tensor, list[bool]]:
    """Backward each term in turn; return the (K, n) matrix of its flat gradients on ``shared``.

    Every other parameter accumulates the ordinary gradient of the terms' sum in ``.grad``; the
    ``.grad`` of ``shared`` is left as it was before the call (the caller writes the combination).
    Also returns, per shared parameter, whether any term reached it. K backward passes in all.
    """
    saved = [p.grad for p in shared]
    for p in shared:
        p.grad = None
    last = max((k for k, t in enumerate(terms) if t.requires_grad), default=-1)
    rows, touched = [], [False] * len(shared)
    try:
        for k, term in enumerate(terms):
            if term.requires_grad:
                term.backward(retain_graph=k < last)
            parts = []
            for j, p in enumerate(shared):
                if p.grad is None:
                    parts.append(torch.zeros(p.numel(), dtype=p.dtype, device=p.device))
                else:
                    touched[j] = True
                    parts.append(p.grad.reshape(-1))
                    p.grad = None
            rows.append(torch.cat(parts))
    finally:
        for p, g in zip(shared, saved, strict=True):
            p.grad = g
    return torch.stack(rows), touched


def write_shared_gradient(shared: Sequence[nn.Parameter], flat: Tensor, touched: Sequence[bool]) -> None:
    """Add the flat combined gradient to ``.grad`` of the shared parameters some task reached."""
    offset = 0
    for p, hit in zip(shared, touched, strict=True):
        n = p.numel()
        if hit:
            g = flat[offset:offset + n].view_as(p).to(p.dtype)
            p.grad = g.clone() if p.grad is None else p.grad + g
        offset += n


def task_gradients(losses: Mapping[str, Tensor | None], shared: Iterable[nn.Parameter]) -> dict[str, Tensor]:
    """Each task's flat gradient on ``shared`` (``.grad`` untouched, the graph kept for a later backward).

    For inspection (inter-task affinity, logging); tasks whose loss is ``None`` are left out.
    """
    params = shared_parameters("task_gradients", shared)
    out = {}
    for name, loss in losses.items():
        if loss is None:
            continue
        if not loss.requires_grad:
            out[name] = torch.cat([torch.zeros(p.numel(), dtype=p.dtype, device=p.device) for p in params])
            continue
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        out[name] = torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1)
                               for p, g in zip(params, grads, strict=True)])
    return out


class GradientWeighting(Weighting):
    """Base of gradient-level methods: per-task gradients of the shared parameters are combined.

    :meth:`backward` runs one backward per task present; the shared parameters receive
    :meth:`combine_gradients` of the (K, n) per-task gradient matrix, every other parameter the
    ordinary gradient of the plain sum of the losses. :meth:`combine` is that plain sum (what a
    caller that does not hand over the backward gets).
    """

    def combine(
        self, losses: Mapping[str, Tensor | None], step: int | None = None, epoch: int | None = None
    ) -> Tensor:
        return torch.stack([loss for _, _, loss in self._present(losses)]).sum()

    def combine_gradients(self, grads: Tensor, tasks: Sequence[int]) -> Tensor:
        """The shared parameters' gradient from the per-task rows ``grads`` of tasks ``tasks``."""
        raise NotImplementedError

    def backward(
        self,
        losses: Mapping[str, Tensor | None],
        shared: Iterable[nn.Parameter] = (),
        scaler: Scaler | None = None,
        reduce: Reduce | None = None,
        step: int | None = None,
    ) -> Tensor:
        """Per-task backward, combined gradient on ``shared`` (see the class docstring).

        With ``reduce`` (an average over data-parallel processes), the per-task gradient matrix
        (a zero row for a task without a loss in this process) is averaged before it is combined,
        so the combination is that of the whole batch and the same in every process.
        """
        present = self._present(losses)
        params = shared_parameters(self.name, shared)
        terms = [scaler.scale(loss) if scaler is not None else loss for _, _, loss in present]
        grads, touched = per_task_backward(terms, params)
        tasks = [i for i, _, _ in present]
        if reduce is not None:  # every task has a row (zero where absent here): the same shape everywhere
            full = grads.new_zeros(len(self.task_names), grads.shape[1])
            full[tasks] = grads
            grads, tasks = reduce(full), list(range(len(self.task_names)))
            hit = torch.tensor(touched, dtype=grads.dtype, device=grads.device)
            touched = (reduce(hit) > 0).tolist()  # a parameter reached in any process gets a gradient in all
        combined = self.combine_gradients(grads, tasks)
        write_shared_gradient(params, combined, touched)
        return torch.stack([loss.detach() for _, _, loss in present]).sum()

    def weights(self) -> dict[str, float]:
        return dict.fromkeys(self.task_names, 1.0)


WEIGHTINGS: Registry[type[Weighting]] = Registry("loss weighting", fold_case=True)


def _same_class(a: type, b: type) -> bool:
    return (a.__module__, a.__qualname__) == (b.__module__, b.__qualname__)  # one class, its module reloaded


def register_weighting(cls: type[Weighting]) -> type[Weighting]:
    """Class decorator: make ``cls`` available to :func:`get_weighting` under ``cls.name``."""
    return WEIGHTINGS.add(cls.name, cls, same=_same_class)


def weighting_options(name: str) -> dict[str, Any]:
    """The keyword options of weighting ``name`` and their defaults (``inspect.Parameter.empty``: required)."""
    cls = _lookup(name)
    params = list(inspect.signature(cls.__init__).parameters.values())[2:]  # self, task_names
    return {p.name: p.default for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def _takes_any_option(name: str) -> bool:
    params = inspect.signature(_lookup(name).__init__).parameters.values()
    return any(p.kind == p.VAR_KEYWORD for p in params)


def check_weighting_options(name: str, kwargs: Mapping[str, Any]) -> None:
    """Raise one line naming the weighting and the key when ``kwargs`` holds an unknown option."""
    options = weighting_options(name)
    if _takes_any_option(name):  # a user's class with **kwargs validates its own options
        return
    for key in kwargs:
        if key not in options:
            close = difflib.get_close_matches(str(key), list(options), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            valid = ", ".join(options) if options else "none"
            raise ValueError(f"{name.lower()} weighting: unknown option {key!r}{hint}; options: {valid}")


def _lookup(name: str) -> type[Weighting]:
    return WEIGHTINGS.find(name)


def get_weighting(name: str, task_names: Iterable[str], **kwargs: Any) -> Weighting:
    """Build the registered weighting ``name`` (see ``WEIGHTINGS``) for these tasks, options checked."""
    cls = _lookup(name)
    check_weighting_options(name, kwargs)
    return cls(task_names, **kwargs)


def check_number(owner: str, key: str, value: Any, low: float = -math.inf, high: float = math.inf,
                 low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a float when it is a finite number in the range, else one error line naming the key."""
    ok = not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)
    if ok:
        ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        lo = "(" if low_open else "["
        hi = ")" if high_open else "]"
        raise ValueError(f"{owner} weighting: {key} must be a finite number in {lo}{low}, {high}{hi}, got {value!r}")
    return float(value)
