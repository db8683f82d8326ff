"""torch.fx frontend: any traceable ``nn.Module`` -> IR :class:`Graph`.

Modules and functions the registry knows become typed operators carrying the module's weights;
anything else stays an *opaque* operator that calls the original code (always shared, listed in
one warning), so the compiled model still computes exactly what the source computes.
"""

from __future__ import annotations

import operator
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from ..errors import CompileError, Source
from ..ir import Graph, Node
from ..ops import Ref
from ..passes import prune, run_all


class OpaqueOperatorWarning(UserWarning):
    """Some calls were not recognised and are kept as opaque, always-shared operators."""


class Unsupported(Exception):
    """Internal: this call cannot become a typed operator (it becomes an opaque one)."""


class _Tracer(fx.Tracer):
    """A tracer that honours extra leaf modules and remembers which module it was inside."""

    def __init__(self, leaf_modules: Sequence[type[nn.Module] | str], autowrap: Sequence[Callable[..., Any]]) -> None:
        super().__init__(autowrap_functions=tuple(autowrap))
        self.leaf_types = tuple(t for t in leaf_modules if isinstance(t, type))
        self.leaf_names = {t for t in leaf_modules if isinstance(t, str)}
        self.stack: list[str] = []
        self.failed_at: str | None = None  # innermost submodule whose forward raised

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, self.leaf_types) or qualname in self.leaf_names:
            return True
        return super().is_leaf_module(m, qualname)

    def call_module(self, m: nn.Module, forward: Callable[..., Any], args: Any, kwargs: Any) -> Any:
        self.stack.append(self.path_of_module(m))
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_at is None:
                self.failed_at = self.stack[-1]
            raise
        finally:
            self.stack.pop()


def trace(
    module: nn.Module,
    leaf_modules: Sequence[type[nn.Module] | str] = (),
    wrap_functions: Sequence[Callable[..., Any]] = (),
) -> fx.GraphModule:
    """Symbolically trace ``module``; on failure raise a CompileError naming the submodule."""
    tracer = _Tracer(leaf_modules, wrap_functions)
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
    return fx.GraphModule(tracer.root, graph, type(module).__name__)


# --- converters: fx call -> (kind, attrs, input nodes, tensors) -------------------------------
Converted = tuple[str, dict[str, Any], list[fx.Node], dict[str, torch.Tensor]]


def _state(mod: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in mod.state_dict().items() if v is not None}


def _conv(mod: nn.Module) -> tuple[str, dict[str, Any]]:
    if mod.padding_mode != "zeros" or isinstance(mod.padding, str):
        raise Unsupported
    attrs = {
        "in_channels": mod.in_channels, "out_channels": mod.out_channels, "kernel_size": tuple(mod.kernel_size),
        "stride": tuple(mod.stride), "padding": tuple(mod.padding), "dilation": tuple(mod.dilation),
        "groups": mod.groups, "bias": mod.bias is not None,
    }
    if isinstance(mod, nn.ConvTranspose2d):
        attrs["output_padding"] = tuple(mod.output_padding)
        return "conv_transpose2d", attrs
    return "conv2d", attrs


def _bn(mod: nn.Module) -> tuple[str, dict[str, Any]]:
    if not mod.track_running_stats or mod.momentum is None:
        raise Unsupported
    return "batch_norm", {"num_features": mod.num_features, "eps": mod.eps, "momentum": mod.momentum,
                          "affine": mod.affine}


def _pool(mod: nn.Module) -> tuple[str, dict[str, Any]]:
    attrs = {"kernel_size": mod.kernel_size, "stride": mod.stride or mod.kernel_size, "padding": mod.padding,
             "ceil_mode": mod.ceil_mode}
    if isinstance(mod, nn.MaxPool2d):
        if mod.return_indices:
            raise Unsupported
        return "max_pool2d", {**attrs, "dilation": mod.dilation}
    if mod.divisor_override is not None:
        raise Unsupported
    return "avg_pool2d", {**attrs, "count_include_pad": mod.count_include_pad}


def _upsample(mod: nn.Module) -> tuple[str, dict[str, Any]]:
    if mod.recompute_scale_factor:
        raise Unsupported
    return "interpolate", {"size": mod.size, "scale_factor": mod.scale_factor, "mode": mod.mode,
                           "align_corners": bool(mod.align_corners)}


MODULES: dict[type[nn.Module], Callable[[nn.Module], tuple[str, dict[str, Any]]]] = {
    nn.Conv2d: _conv,
    nn.ConvTranspose2d: _conv,
    nn.Linear: lambda m: ("linear", {"in_features": m.in_features, "out_features": m.out_features,
                                     "bias": m.bias is not None}),
    nn.BatchNorm2d: _bn,
    nn.BatchNorm1d: _bn,
    nn.ReLU: lambda m: ("relu", {}),
    nn.ReLU6: lambda m: ("relu6", {}),
    nn.LeakyReLU: lambda m: ("leaky_relu", {"negative_slope": m.negative_slope}),
    nn.PReLU: lambda m: ("prelu", {"num_parameters": m.num_parameters}),
    nn.Sigmoid: lambda m: ("sigmoid", {}),
    nn.Tanh: lambda m: ("tanh", {}),
    nn.Hardswish: lambda m: ("hardswish", {}),
    nn.Hardsigmoid: lambda m: ("hardsigmoid", {}),
    nn.SiLU: lambda m: ("silu", {}),
    nn.GELU: lambda m: ("gelu", {}) if m.approximate == "none" else (_ for _ in ()).throw(Unsupported()),
    nn.ELU: lambda m: ("elu", {"alpha": m.alpha}),
    nn.Hardtanh: lambda m: ("clip", {"min": m.min_val, "max": m.max_val}),
    nn.Softmax: lambda m: ("softmax", {"dim": m.dim}),
    nn.LogSoftmax: lambda m: ("log_softmax", {"dim": m.dim}),
    nn.MaxPool2d: _pool,
    nn.AvgPool2d: _pool,
    nn.AdaptiveAvgPool2d: lambda m: ("adaptive_avg_pool2d", {"output_size": m.output_size}),
    nn.AdaptiveMaxPool2d: lambda m: ("adaptive_max_pool2d", {"output_size": m.output_size})
    if not m.return_indices else (_ for _ in ()).throw(Unsupported()),
    nn.Flatten: lambda m: ("flatten", {"start_dim": m.start_dim, "end_dim": m.end_dim}),
    nn.Dropout: lambda m: ("dropout", {"p": m.p}),
    nn.Dropout2d: lambda m: ("opaque", {}),
    nn.Identity: lambda m: ("identity", {}),
    nn.LocalResponseNorm: lambda m: ("lrn", {"size": m.size, "alpha": m.alpha, "beta": m.beta, "k": m.k}),
    nn.Upsample: _upsample,
}

UNARY_FUNCTIONS: dict[Any, str] = {
    F.relu: "relu", torch.relu: "relu", F.relu6: "relu6", torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid",
    torch.tanh: "tanh", F.tanh: "tanh", F.hardswish: "hardswish", F.hardsigmoid: "hardsigmoid", F.silu: "silu",
    F.gelu: "gelu",
}
UNARY_METHODS = {"relu": "relu", "sigmoid": "sigmoid", "tanh": "tanh"}
BINARY = {
    operator.add: "add", torch.add: "add", operator.iadd: "add",
    operator.mul: "mul", torch.mul: "mul", operator.imul: "mul",
    operator.sub: "sub", torch.sub: "sub", operator.truediv: "div", torch.div: "div",
}
BINARY_METHODS = {"add": "add", "add_": "add", "mul": "mul", "mul_": "mul", "sub": "sub", "div": "div"}


def _const(value: Any) -> Any:
    if isinstance(value, fx.Node):
        raise Unsupported
    return value


def _norm_kwargs(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    from torch.fx.operator_schemas import normalize_function

    out = normalize_function(fn, args, kwargs, normalize_to_only_use_kwargs=True)
    if out is None:
        raise Unsupported
    return dict(out.kwargs)


def _is_batch_size(value: Any, x: fx.Node) -> bool:
    """True for ``x.size(0)``, ``x.shape[0]`` as traced by fx."""
    if not isinstance(value, fx.Node):
        return False
    if value.op == "call_method" and value.target == "size" and value.args[0] is x:
        return len(value.args) > 1 and value.args[1] == 0
    if value.op == "call_function" and value.target is operator.getitem and value.args[1] == 0:
        src = value.args[0]
        return isinstance(src, fx.Node) and src.op == "call_function" and src.target is getattr and \
            src.args == (x, "shape")
    return False


def _function(node: fx.Node) -> tuple[str, dict[str, Any], list[fx.Node]]:
    t, args, kwargs = node.target, node.args, node.kwargs
    if t in UNARY_FUNCTIONS:
        if len(args) > 1 or any(k not in ("inplace", "input") for k in kwargs):
            raise Unsupported
        return UNARY_FUNCTIONS[t], {}, [args[0]]
    if t in BINARY:
        if kwargs:
            raise Unsupported
        return _binary(BINARY[t], args[0], args[1])
    if t in (torch.cat, torch.concat):
        kw = {"tensors": args[0], "dim": args[1] if len(args) > 1 else kwargs.get("dim", 0)}
        tensors = list(kw["tensors"])
        if not all(isinstance(a, fx.Node) for a in tensors) or kw["dim"] == 0:
            raise Unsupported  # the IR keeps the batch axis: concatenating along it stays opaque
        return "concat", {"dim": _const(kw["dim"])}, tensors
    if t is torch.flatten:
        kw = _norm_kwargs(t, args, kwargs)
        if kw.get("start_dim", 0) == 0:
            raise Unsupported  # flattens the batch axis too: stays opaque
        return "flatten", {"start_dim": _const(kw.get("start_dim", 0)), "end_dim": _const(kw.get("end_dim", -1))}, \
            [kw["input"]]
    if t in (F.max_pool2d, F.avg_pool2d):
        kw = _norm_kwargs(t, args, kwargs)
        kernel = _const(kw["kernel_size"])
        attrs = {"kernel_size": kernel, "stride": _const(kw.get("stride")) or kernel,
                 "padding": _const(kw.get("padding", 0)), "ceil_mode": _const(kw.get("ceil_mode", False))}
        if t is F.max_pool2d:
            if kw.get("return_indices"):
                raise Unsupported
            return "max_pool2d", {**attrs, "dilation": _const(kw.get("dilation", 1))}, [kw["input"]]
        if kw.get("divisor_override") is not None:
            raise Unsupported
        return "avg_pool2d", {**attrs, "count_include_pad": _const(kw.get("count_include_pad", True))}, [kw["input"]]
    if t in (F.adaptive_avg_pool2d, F.adaptive_max_pool2d):
        kw = _norm_kwargs(t, args, kwargs)
        if kw.get("return_indices"):
            raise Unsupported
        return t.__name__, {"output_size": _const(kw["output_size"])}, [kw["input"]]
    if t is F.interpolate:
        kw = _norm_kwargs(t, args, kwargs)
        if kw.get("recompute_scale_factor") or kw.get("antialias"):
            raise Unsupported
        return "interpolate", {"size": _const(kw.get("size")), "scale_factor": _const(kw.get("scale_factor")),
                               "mode": _const(kw.get("mode", "nearest")),
                               "align_corners": bool(_const(kw.get("align_corners")))}, [kw["input"]]
    if t is F.leaky_relu:
        kw = _norm_kwargs(t, args, kwargs)
        return "leaky_relu", {"negative_slope": _const(kw.get("negative_slope", 0.01))}, [kw["input"]]
    if t is F.hardtanh:
        kw = _norm_kwargs(t, args, kwargs)
        return "clip", {"min": _const(kw.get("min_val", -1.0)), "max": _const(kw.get("max_val", 1.0))}, [kw["input"]]
    if t is F.dropout:
        kw = _norm_kwargs(t, args, kwargs)
        return "dropout", {"p": _const(kw.get("p", 0.5))}, [kw["input"]]
    if t in (F.softmax, torch.softmax):
        if len(args) < 2 and "dim" not in kwargs:
            raise Unsupported
        dim = args[1] if len(args) > 1 else kwargs["dim"]
        return "softmax", {"dim": _const(dim)}, [args[0]]
    if t is torch.mean:
        dim = args[1] if len(args) > 1 else kwargs.get("dim")
        keep = args[2] if len(args) > 2 else kwargs.get("keepdim", False)
        if dim is None:
            raise Unsupported
        return "mean", {"dim": list(_const(dim)) if isinstance(dim, (list, tuple)) else [dim], "keepdim": keep}, \
            [args[0]]
    if t is torch.maximum:
        return "maximum", {}, [args[0], args[1]]
    raise Unsupported


def _is_size(value: Any) -> bool:
    """True for values fx traced from sizes (``x.size(1)``, ``x.shape[2] * 4``): Python ints, not tensors."""
    if not isinstance(value, fx.Node):
        return False
    if value.op == "call_method" and value.target in ("size", "dim", "numel"):
        return True
    if value.op == "call_function" and value.target is getattr:
        return value.args[1] == "shape"
    if value.op == "call_function" and (value.target is operator.getitem or value.target in BINARY):
        return any(_is_size(a) for a in value.args)
    return False


def _binary(kind: str, a: Any, b: Any) -> tuple[str, dict[str, Any], list[fx.Node]]:
    if _is_size(a) or _is_size(b):
        raise Unsupported  # arithmetic on sizes: kept as an opaque call that computes the int
    if isinstance(a, fx.Node) and isinstance(b, fx.Node):
        return kind, {}, [a, b]
    if isinstance(a, fx.Node) and isinstance(b, (int, float)):
        return kind, {"scalar": b}, [a]
    if isinstance(b, fx.Node) and isinstance(a, (int, float)):
        return kind, {"scalar": a, "scalar_first": True}, [b]
    raise Unsupported


def _method(node: fx.Node) -> tuple[str, dict[str, Any], list[fx.Node]]:
    t, args, kwargs = node.target, node.args, node.kwargs
    x = args[0]
    if t in UNARY_METHODS and len(args) == 1 and not kwargs:
        return UNARY_METHODS[t], {}, [x]
    if t in ("relu_", "sigmoid_") and len(args) == 1:
        return t[:-1], {}, [x]
    if t in BINARY_METHODS and len(args) == 2 and not kwargs:
        return _binary(BINARY_METHODS[t], x, args[1])
    if t in ("view", "reshape") and not kwargs:
        shape = list(args[1]) if len(args) == 2 and isinstance(args[1], (list, tuple)) else list(args[1:])
        if shape and _is_batch_size(shape[0], x):
            rest = [_const(d) for d in shape[1:]]
            if rest == [-1]:
                return "flatten", {"start_dim": 1, "end_dim": -1}, [x]
            return "reshape", {"shape": rest}, [x]
        raise Unsupported
    if t == "flatten":
        start = args[1] if len(args) > 1 else kwargs.get("start_dim", 0)
        end = args[2] if len(args) > 2 else kwargs.get("end_dim", -1)
        if start == 0:
            raise Unsupported  # flattens the batch axis too: stays opaque
        return "flatten", {"start_dim": _const(start), "end_dim": _const(end)}, [x]
    if t == "mean":
        dim = args[1] if len(args) > 1 else kwargs.get("dim")
        keep = args[2] if len(args) > 2 else kwargs.get("keepdim", False)
        if dim is None:
            raise Unsupported
        return "mean", {"dim": list(_const(dim)) if isinstance(dim, (list, tuple)) else [dim], "keepdim": keep}, [x]
    if t == "softmax":
        dim = args[1] if len(args) > 1 else kwargs.get("dim")
        if dim is None:
            raise Unsupported
        return "softmax", {"dim": _const(dim)}, [x]
    raise Unsupported


class _Constant(nn.Module):
    """Holds a tensor an fx ``get_attr`` read, so opaque code can use it."""

    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        if isinstance(value, nn.Parameter):
            self.value = value
        else:
            self.register_buffer("value", value)

    def forward(self) -> torch.Tensor:
        return self.value


def _template(value: Any, refs: dict[fx.Node, int], order: list[fx.Node]) -> Any:
    """Args with every fx Node replaced by a Ref to the opaque node's i-th input."""
    if isinstance(value, fx.Node):
        if value not in refs:
            refs[value] = len(order)
            order.append(value)
        return Ref(refs[value])
    if isinstance(value, (list, tuple)):
        return type(value)(_template(v, refs, order) for v in value)
    if isinstance(value, dict):
        return {k: _template(v, refs, order) for k, v in value.items()}
    return value


def _shapes(module_name: str, input_shape: Any, n_inputs: int) -> list[tuple[int, ...]]:
    if input_shape is None:
        raise CompileError(f"compiling {module_name} needs input_shape=(C, H, W) (or one per input)")
    shapes = [input_shape] if isinstance(input_shape[0], int) else list(input_shape)
    if len(shapes) != n_inputs:
        raise CompileError(f"{module_name}.forward takes {n_inputs} inputs but {len(shapes)} input shapes were given")
    return [tuple(int(d) for d in (s if len(s) == 4 or len(s) == 2 else (1, *s))) for s in shapes]


def from_module(
    module: nn.Module,
    input_shape: Any = None,
    leaf_modules: Iterable[type[nn.Module] | str] = (),
    wrap_functions: Iterable[Callable[..., Any]] = (),
) -> Graph:
    """Trace ``module`` and convert its fx graph into the IR, with weights, shapes and costs.

    ``input_shape`` is ``(C, H, W)`` (batch 1) or ``(N, C, H, W)``, or a list with one per input.
    """
    name = type(module).__name__
    gm = trace(module, tuple(leaf_modules), tuple(wrap_functions))
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    shapes = _shapes(name, input_shape, len(placeholders))
    graph = Graph(name, file=name)
    ir_name: dict[fx.Node, str] = {}
    opaque: list[str] = []
    for node in gm.graph.nodes:
        src = Source(file=name, layer=str(node.target) if node.op == "call_module" else node.name, layer_type=None)
        if node.op == "placeholder":
            ir_name[node] = graph.add(Node(node.name, "input", attrs={"shape": shapes[len(graph.inputs)]},
                                           source=src)).name
            continue
        if node.op == "output":
            outs = node.args[0]
            outs = list(outs) if isinstance(outs, (list, tuple)) else [outs]
            if not all(isinstance(o, fx.Node) for o in outs):
                raise CompileError(f"{name}.forward must return a tensor or a tuple of tensors", src)
            graph.outputs = [ir_name[o] for o in outs]
            continue
        ir = _convert(gm, node, src)
        if ir.kind == "opaque":
            refs: dict[fx.Node, int] = {}
            order: list[fx.Node] = []
            ir.attrs["args"] = _template(tuple(node.args), refs, order)
            ir.attrs["kwargs"] = _template(dict(node.kwargs), refs, order)
            ir.inputs = [ir_name[n] for n in order]
            opaque.append(ir.name)
        else:
            ir.inputs = [ir_name[n] for n in ir.inputs]  # type: ignore[index]
        ir_name[node] = graph.add(ir).name
    prune(graph)
    kept = [n for n in opaque if n in graph]
    if kept:
        warnings.warn(
            f"{name}: {len(kept)} operator(s) are not in the registry and stay opaque (always shared): "
            + ", ".join(kept),
            OpaqueOperatorWarning,
            stacklevel=2,
        )
    return run_all(graph)


def _convert(gm: fx.GraphModule, node: fx.Node, src: Source) -> Node:
    """One fx node -> one IR node (inputs still as fx nodes; opaque when unrecognised)."""
    name = str(node.target) if node.op == "call_module" else node.name
    if node.op == "get_attr":
        value = gm.get_parameter(node.target) if _has_param(gm, node.target) else _fetch(gm, node.target)
        return Node(node.name, "opaque", attrs={"target": _Constant(value)}, source=src)
    try:
        if node.op == "call_module":
            mod = gm.get_submodule(node.target)
            conv = MODULES.get(type(mod))
            if conv is None:
                raise Unsupported
            kind, attrs = conv(mod)
            if kind == "opaque" or len(node.args) != 1 or node.kwargs:
                raise Unsupported
            src = Source(file=src.file, layer=name, layer_type=type(mod).__name__)
            return Node(name, kind, inputs=list(node.args), attrs=attrs, source=src, tensors=_state(mod))
        if node.op == "call_function":
            kind, attrs, inputs = _function(node)
        elif node.op == "call_method":
            kind, attrs, inputs = _method(node)
        else:
            raise Unsupported
        if not all(isinstance(i, fx.Node) for i in inputs):
            raise Unsupported
        return Node(name, kind, inputs=inputs, attrs=attrs, source=src)
    except (Unsupported, KeyError, TypeError, IndexError):
        if node.op == "call_module":
            return Node(name, "opaque", attrs={"target": gm.get_submodule(node.target)}, source=src)
        if node.op == "call_method":
            return Node(name, "opaque", attrs={"method": node.target}, source=src)
        return Node(name, "opaque", attrs={"target": node.target}, source=src)


def _has_param(gm: fx.GraphModule, target: str) -> bool:
    try:
        gm.get_parameter(target)
        return True
    except AttributeError:
        return False


def _fetch(gm: fx.GraphModule, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj
