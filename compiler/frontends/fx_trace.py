"""torch.fx tracing with static shapes.

Input shapes are fixed at compile time, so while tracing every value's shape is known (each call
is replayed on ``meta`` tensors: no data, no side effects). A traced tensor then answers
``x.shape``, ``x.size(i)`` and ``x.dim()`` with Python ints, except for the batch axis, which
stays symbolic (``x.size(0)`` is a graph node). Code that computes with sizes (dynamic "same"
padding, ``view(b, g, c // g, h, w)``, ``interpolate(size=x.shape[-2:])``) therefore traces to
plain calls with constant arguments, and a ``split`` / ``chunk`` yields a real tuple one can loop
over. Where a value cannot be replayed, its proxy behaves as plain torch.fx's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from ..errors import CompileError, Source
from ..ir import Node
from ..ops import get

# (root module, fx node) -> the call's typed operator (kind, attrs, input nodes, tensors), or None
Typer = Callable[[nn.Module, fx.Node], tuple[str, dict[str, Any], list[fx.Node], dict[str, torch.Tensor]] | None]

VALUE = "automtl_value"  # node.meta key: the value replayed on meta tensors
BATCHED = "automtl_batched"  # node.meta key: the value depends on a graph input (its axis 0 is the batch)
_SPLITS = {"split", "chunk", "tensor_split", "unbind"}


def static_value(node: Any) -> Any:
    """The replayed value of an fx node (a meta tensor, a tuple of them, a Python value) or None."""
    return node.meta.get(VALUE) if isinstance(node, fx.Node) else None


def static_shape(node: Any) -> tuple[int, ...] | None:
    """The shape of a tensor-valued fx node (axis 0 as at compile time), or None when unknown."""
    value = static_value(node)
    return tuple(value.shape) if isinstance(value, torch.Tensor) else None


def is_batched(node: Any) -> bool:
    """True when the fx node's value depends on a graph input (so its axis 0 is the batch)."""
    return isinstance(node, fx.Node) and bool(node.meta.get(BATCHED, False))


class StaticProxy(fx.Proxy):
    """A proxy whose sizes are Python ints wherever they are fixed (all axes but the batch)."""

    def _known(self) -> torch.Tensor | None:
        value = self.node.meta.get(VALUE)
        return value if isinstance(value, torch.Tensor) else None

    def __getattr__(self, k: str) -> Any:
        value = self._known() if k in ("shape", "ndim") else None
        if value is None:
            return super().__getattr__(k)
        return self.tracer.sizes(self) if k == "shape" else value.dim()  # type: ignore[attr-defined]

    def size(self, dim: int | None = None) -> Any:
        value = self._known()
        if value is None:
            args = (self,) if dim is None else (self, dim)
            return self.tracer.create_proxy("call_method", "size", args, {})
        sizes = self.tracer.sizes(self)  # type: ignore[attr-defined]
        return sizes if dim is None else sizes[dim]

    def dim(self) -> Any:
        value = self._known()
        return value.dim() if value is not None else self.tracer.create_proxy("call_method", "dim", (self,), {})


class Tracer(fx.Tracer):
    """Honours extra leaf modules, remembers which module it was inside, and replays shapes."""

    def __init__(
        self,
        leaf_modules: Sequence[type[nn.Module] | str],
        autowrap: Sequence[Callable[..., Any]],
        input_shapes: Sequence[tuple[int, ...]] | None = None,
        typer: Typer | None = None,
    ) -> None:
        super().__init__(autowrap_functions=tuple(autowrap))
        self.typer = typer
        self.leaf_types = tuple(t for t in leaf_modules if isinstance(t, type))
        self.leaf_names = {t for t in leaf_modules if isinstance(t, str)}
        self.stack: list[str] = []
        self.failed_at: str | None = None  # innermost submodule whose forward raised
        self.input_shapes = list(input_shapes) if input_shapes is not None else None
        self._placeholders = 0
        self._meta_state: dict[int, dict[str, torch.Tensor]] = {}
        self._batch_size: fx.Proxy | None = None
        self.quiet = 0  # > 0 while replaying a call: module calls and attribute reads are not traced

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, self.leaf_types) or qualname in self.leaf_names:
            return True
        return super().is_leaf_module(m, qualname)

    def call_module(self, m: nn.Module, forward: Callable[..., Any], args: Any, kwargs: Any) -> Any:
        if self.quiet:
            return forward(*args, **kwargs)
        self.stack.append(self.path_of_module(m))
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_at is None:
                self.failed_at = self.stack[-1]
            raise
        finally:
            self.stack.pop()

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict[str, Any]) -> Any:
        return attr_val if self.quiet else super().getattr(attr, attr_val, parameter_proxy_cache)

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return StaticProxy(node, self)

    def create_proxy(self, kind: str, target: Any, args: Any, kwargs: Any, name: str | None = None,
                     type_expr: Any = None, proxy_factory_fn: Callable[[fx.Node], fx.Proxy] | None = None) -> Any:
        proxy = super().create_proxy(kind, target, args, kwargs, name, type_expr, proxy_factory_fn)
        if self.input_shapes is not None and isinstance(proxy, fx.Proxy):
            self._replay(proxy.node)
            value = proxy.node.meta.get(VALUE)
            if kind in ("call_function", "call_method") and _name(target) in _SPLITS and isinstance(value, tuple):
                return tuple(proxy[i] for i in range(len(value)))  # a static number of pieces: a real tuple
        return proxy

    def sizes(self, proxy: fx.Proxy) -> tuple[Any, ...]:
        """``x.shape`` with Python ints, axis 0 a graph node when ``x`` carries the batch."""
        node = proxy.node
        dims: list[Any] = list(node.meta[VALUE].shape)
        if node.meta.get(BATCHED) and dims:
            if self._batch_size is None:  # one proxy for all: `x.shape == y.shape` compares it by identity
                self._batch_size = self.create_proxy("call_method", "size", (proxy, 0), {})
            dims[0] = self._batch_size
        return tuple(dims)

    # --- replaying each call on meta tensors ------------------------------------------------------
    def _replay(self, node: fx.Node) -> None:
        try:
            self.quiet += 1  # modules run and read their weights as themselves, not as the tracer's proxies
            shape = self._typed_shape(node)
            if shape is not None:
                value: Any = torch.empty(shape, device="meta")
                batched = any(n.meta.get(BATCHED, False) for n in node.all_input_nodes)
            else:
                value, batched = self._evaluate(node)
        except Exception:  # noqa: BLE001 - a call that cannot run on meta tensors keeps an unknown shape
            return
        finally:
            self.quiet -= 1
        node.meta[VALUE] = value
        node.meta[BATCHED] = batched

    def _typed_shape(self, node: fx.Node) -> tuple[int, ...] | None:
        """The output shape by the operator registry's rule when the call is a typed operator (fast: meta
        kernels of many torch ops run Python decompositions), else None."""
        if self.typer is None or node.op not in ("call_module", "call_function", "call_method"):
            return None
        typed = self.typer(self.root, node)
        if typed is None:
            return None
        kind, attrs, inputs, _ = typed
        shapes = [static_shape(i) for i in inputs]
        if kind == "getitem" or any(s is None for s in shapes):
            return None
        try:
            out = get(kind).infer(Node(node.name, kind, attrs=attrs), shapes)  # type: ignore[arg-type]
        except CompileError:
            return None  # the compile reports it with the operator's name
        return tuple(out) if isinstance(out, tuple) and all(isinstance(d, int) for d in out) else None

    def _evaluate(self, node: fx.Node) -> tuple[Any, bool]:
        if node.op == "placeholder":
            i = self._placeholders
            self._placeholders += 1
            return torch.empty(self.input_shapes[i], device="meta"), True  # type: ignore[index]
        if node.op == "get_attr":
            value = _fetch(self.root, str(node.target))
            return (value.detach().to("meta") if isinstance(value, torch.Tensor) else value), False
        missing: list[fx.Node] = []

        def value_of(n: fx.Node) -> Any:
            if VALUE not in n.meta and n.op == "get_attr":  # tensors torch.fx's create_arg turned into nodes
                self._replay(n)
            if VALUE not in n.meta:
                missing.append(n)
            return n.meta.get(VALUE)

        args = fx.node.map_arg(node.args, value_of)
        kwargs = fx.node.map_arg(node.kwargs, value_of)
        if missing:
            raise LookupError("an input has no replayed value")
        batched = any(n.meta.get(BATCHED, False) for n in node.all_input_nodes)
        with torch.no_grad():
            if node.op == "call_function":
                return node.target(*args, **kwargs), batched  # type: ignore[operator]
            if node.op == "call_method":
                return getattr(args[0], str(node.target))(*args[1:], **kwargs), batched
            if node.op == "call_module":
                mod = self.root.get_submodule(str(node.target))
                return torch.func.functional_call(mod, self._meta_of(mod), tuple(args), dict(kwargs)), batched
        raise LookupError(node.op)

    def _meta_of(self, mod: nn.Module) -> dict[str, torch.Tensor]:
        if id(mod) not in self._meta_state:
            self._meta_state[id(mod)] = {
                k: v.detach().to("meta") for k, v in (*mod.named_parameters(), *mod.named_buffers())
            }
        return self._meta_state[id(mod)]


def _name(target: Any) -> str:
    return target if isinstance(target, str) else getattr(target, "__name__", "")


def _fetch(root: nn.Module, target: str) -> Any:
    obj: Any = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def trace(
    module: nn.Module,
    leaf_modules: Sequence[type[nn.Module] | str] = (),
    wrap_functions: Sequence[Callable[..., Any]] = (),
    input_shapes: Sequence[tuple[int, ...]] | None = None,
    typer: Typer | None = None,
) -> fx.GraphModule:
    """Symbolically trace ``module`` (with static shapes when ``input_shapes`` is given).

    On failure raise a CompileError naming the innermost submodule and the escape hatch to use.
    """
    tracer = Tracer(leaf_modules, wrap_functions, input_shapes, typer)
    # tracing runs the forward's Python code on real buffers (a train-mode `num_batches_tracked.add_(1)`):
    # put them back so compiling never changes the user's module
    saved = [(b, b.clone()) for b in module.buffers()]
    try:
        graph = tracer.trace(module)
    except Exception as exc:  # noqa: BLE001 - tracing runs arbitrary user code
        where = tracer.failed_at or "<root>"
        cls = type(module.get_submodule(where)).__name__ if where != "<root>" else type(module).__name__
        hint = (
            f"pass leaf_modules=[{cls}] to keep it as one opaque operator"
            if where != "<root>"
            else "move the untraceable code into a submodule and pass it in leaf_modules=, "
            "or pass the function in wrap_functions="
        )
        raise CompileError(
            f"torch.fx cannot trace module {where!r} ({cls}): {type(exc).__name__}: {exc}",
            Source(file=type(module).__name__, layer=where, layer_type=cls),
            hint,
        ) from exc
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)
    return fx.GraphModule(tracer.root, graph, type(module).__name__)
