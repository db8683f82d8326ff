"""Supermodel modules that mix weights, not outputs (DESIGN §4).

A convolution is linear in its weight, so a task's gated mixture of the shared, specific and
skip branches is ONE convolution with the mixed weight ``g_sh*W_sh + g_sp*W_sp[t] + g_sk*K[t]``,
where the skip ``K`` is a centre tap: a delta (identity) or a 1x1 projection (stride as the
op). A search step therefore costs about one backbone step per task, whatever the mode.

Values are *shared* ``(N, ...)`` (computed once for all tasks) or *stacked* ``(T*N, ...)``,
task-major. Every module here takes ``(x, gates, shared_input)``; ``gates`` is ``(T, V, 3)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..compiler.ir import Node
from ..compiler.ops import _pair

BATCHING = ("dense", "grouped")

# A stacked value may travel between a choice convolution and a task batch norm as its T task
# slices (a tuple), which saves joining and re-splitting the activation at every layer.
Value = torch.Tensor | tuple[torch.Tensor, ...]


def joined(x: Value) -> torch.Tensor:
    """A value as one tensor (task slices joined along the batch)."""
    return torch.cat(x) if isinstance(x, tuple) else x


def _empty_like_param(shape: tuple[int, ...]) -> nn.Parameter:
    return nn.Parameter(torch.empty(shape))


class _MixBanks(torch.autograd.Function):
    """``w (T, N) = sum_k g[:, k] * banks[k]``, each bank one row (shared by every task) or ``T`` rows.

    The values autograd would compute from the broadcast products, with a lighter backward: one
    pass per bank and gate (a matrix-vector product for a shared bank, a row-wise dot for a per-task
    one), where autograd's product rule makes a ``T x N`` temporary and a reduction for each.
    """

    @staticmethod
    def forward(ctx: Any, g: torch.Tensor, *banks: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(g, *banks)
        return _mixture(g, banks)

    @staticmethod
    def backward(ctx: Any, dw: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        g, *banks = ctx.saved_tensors
        dw = dw.contiguous()
        dg = torch.empty_like(g) if ctx.needs_input_grad[0] else None
        grads: list[torch.Tensor | None] = []
        with torch.autocast(dw.device.type, enabled=False):  # gradients of fp32 weights stay fp32
            for k, bank in enumerate(banks):
                shared = bank.shape[0] == 1
                if dg is not None:  # a row-wise dot per task: BLAS dots (a batched matmul is ~20x slower on CPU)
                    dg[:, k] = dw @ bank[0] if shared else torch.stack([torch.dot(dw[t], bank[t])
                                                                        for t in range(dw.shape[0])])
                if not ctx.needs_input_grad[k + 1]:
                    grads.append(None)
                else:
                    grads.append((g[:, k] @ dw).unsqueeze(0) if shared else dw * g[:, k : k + 1])
        return (dg, *grads)


MIX_BANKS_MIN = 1 << 19  # T * N from which the lighter backward wins (2-thread CPU steps, measured)


def mix_banks(g: torch.Tensor, banks: list[torch.Tensor]) -> torch.Tensor:
    """Per-task mixture ``(T, N)`` of weight banks (``(1, N)`` or ``(T, N)``) with gates ``g (T, K)``."""
    if g.shape[0] * banks[0].shape[-1] >= MIX_BANKS_MIN:
        return _MixBanks.apply(g, *banks)
    return _mixture(g, banks)  # smaller banks: autograd through torch's own ops (cheaper to call)


def _mixture(g: torch.Tensor, banks: Sequence[torch.Tensor]) -> torch.Tensor:
    """The mixture itself. A shared bank enters as an outer product: under autograd its backward is
    two matrix-vector products instead of a temporary and a reduction per input."""
    w: torch.Tensor | None = None
    with torch.autocast(g.device.type, enabled=False):  # weights are mixed in their own precision
        for k, bank in enumerate(banks):
            if bank.shape[0] == 1:
                w = torch.outer(g[:, k], bank[0]) if w is None else torch.addr(w, g[:, k], bank[0])
            else:
                w = g[:, k : k + 1] * bank if w is None else torch.addcmul(w, g[:, k : k + 1], bank)
    assert w is not None
    return w


class MixedOp(nn.Module):
    """A searchable ``conv2d`` or ``linear`` with shared / specific / skip branches per task."""

    def __init__(self, node: Node, in_shape: tuple[int, ...]) -> None:
        super().__init__()
        a = node.attrs
        self.kind = a["base_kind"]
        self.index, self.tasks, self.skip = a["index"], a["tasks"], a["skip"]
        self.n_branches = len(a["branches"])
        if self.kind == "conv2d":
            k = _pair(a["kernel_size"])
            self.stride, self.padding = _pair(a["stride"]), _pair(a["padding"])
            self.dilation, self.groups = _pair(a["dilation"]), a["groups"]
            shape: tuple[int, ...] = (a["out_channels"], a["in_channels"] // a["groups"], *k)
            has_bias = a["bias"]
        else:
            shape = (a["out_features"], a["in_features"])
            has_bias = a["bias"]
            self.groups = 1
        self.weight_shape = shape
        # Big tensors are allocated, not initialised: `materialize` fills them on first use, and the
        # per-task copies (specific weights, skip projections) exist only once `fill_specific` is
        # called: until then every task reads one shared copy.
        src = node.tensors
        self.weight = nn.Parameter(src["weight"].detach() if "weight" in src else torch.empty(shape))
        self.bias = None
        if has_bias:
            self.bias = nn.Parameter(src["bias"].detach() if "bias" in src else torch.empty(shape[0]))
        self.specific_weight = nn.Parameter(torch.empty(0))
        self.specific_bias = nn.Parameter(torch.empty(0)) if has_bias else None
        self.projection = None
        if self.skip == "projection":
            self.projection = _empty_like_param((1, shape[0], shape[1]))  # (T, ...) once filled
        if self.skip == "identity":
            # flat positions of the identity's ones: W[o, o % (in/groups), centre]; no dense delta is stored
            inner = math.prod(shape[2:])
            centre = sum(((s - 1) // 2) * math.prod(shape[3 + i:]) for i, s in enumerate(shape[2:]))
            o = torch.arange(shape[0])
            self.register_buffer("identity_index", o * shape[1] * inner + (o % shape[1]) * inner + centre,
                                 persistent=False)
        self.register_buffer("filled", torch.tensor(False))
        self._owns_weight = "weight" not in src
        self._initialised = False
        self.batching = "dense"
        # set by the supermodel (automtl.model.slices) when every reader takes task slices
        self.slices = False

    # --- lifecycle ----------------------------------------------------------------------------
    @torch.no_grad()
    def materialize(self) -> None:
        """Initialise what build only allocated; copy weights that came from the source model."""
        if self._initialised:
            return
        fan_in = math.prod(self.weight_shape[1:])
        if self._owns_weight:
            nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
            if self.bias is not None:
                bound = 1 / math.sqrt(fan_in)
                nn.init.uniform_(self.bias, -bound, bound)
        else:  # do not train the user's own tensors in place
            self.weight.data = self.weight.data.clone()
            if self.bias is not None:
                self.bias.data = self.bias.data.clone()
        if self.projection is not None:
            bound = 1 / math.sqrt(self.weight_shape[1])
            nn.init.uniform_(self.projection, -bound, bound)
        self._initialised = True

    @torch.no_grad()
    def fill_specific(self) -> None:
        """Give every task its own copy of the shared weight and skip projection."""
        self.materialize()
        T = self.tasks
        if self.projection is not None and self.projection.shape[0] == 1:
            self.projection.data = self.projection.detach().repeat(T, 1, 1)
        self.specific_weight.data = self.weight.detach().unsqueeze(0).repeat(T, *([1] * self.weight.dim()))
        if self.bias is not None:
            self.specific_bias.data = self.bias.detach().unsqueeze(0).repeat(T, 1)
        self.filled.fill_(True)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        for name in ("specific_weight", "specific_bias", "projection"):
            value = state_dict.get(prefix + name)
            param = getattr(self, name)
            if value is not None and param is not None and value.shape != param.shape:
                param.data = torch.empty_like(value)
        self._initialised = True
        super()._load_from_state_dict(state_dict, prefix, *args)

    # --- weights --------------------------------------------------------------------------------
    def projection_kernel(self) -> torch.Tensor:
        """The projection skip as a (T, numel) kernel (1 row before ``fill_specific``): the 1x1 projection
        at the kernel centre."""
        assert self.projection is not None
        p = self.projection
        if self.kind == "conv2d":
            kh, kw = self.weight_shape[2:]
            p = F.pad(p.unsqueeze(-1).unsqueeze(-1), ((kw - 1) // 2, (kw - 1) // 2, (kh - 1) // 2, (kh - 1) // 2))
        return p.reshape(p.shape[0], -1)

    def mixed(self, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-task weight ``(T, *W.shape)`` and bias ``(T, out)`` for branch weights ``g (T, B)``."""
        T = self.tasks
        flat = self.weight.reshape(1, -1)
        if bool(self.filled):
            gates, banks = g[:, :2], [flat, self.specific_weight.reshape(T, -1)]
        else:  # before warm-up ends, the specific branch reads the shared weight
            gates, banks = g[:, 0:1] + g[:, 1:2], [flat]
        if self.skip == "projection":
            gates, banks = torch.cat([gates, g[:, 2:3]], 1), [*banks, self.projection_kernel()]
        w = mix_banks(gates, banks)
        if self.skip == "identity":  # + g_skip at the identity's positions
            idx = self.identity_index
            # in place: w is a fresh intermediate that no backward formula reads
            w = w.index_add_(1, idx, g[:, 2:3].to(w.dtype).expand(T, idx.numel()))
        b = None
        if self.bias is not None:
            if bool(self.filled):
                b = torch.addcmul(g[:, 0:1] * self.bias.unsqueeze(0), g[:, 1:2], self.specific_bias)
            else:
                b = (g[:, 0:1] + g[:, 1:2]) * self.bias.unsqueeze(0)
        return w.view(T, *self.weight_shape), b

    # --- forward --------------------------------------------------------------------------------
    def forward(self, x: Value, gates: torch.Tensor, shared_input: bool) -> Value:
        """The mixed operator on a shared or stacked value (a stacked one may come as its task slices)."""
        if not self._initialised:
            self.materialize()
        T = self.tasks
        w, b = self.mixed(gates[:, self.index, : self.n_branches])
        if self.kind == "linear":
            return self._linear(joined(x), w, b, shared_input)
        conv = dict(stride=self.stride, padding=self.padding, dilation=self.dilation)
        if shared_input:  # one call: all tasks' kernels stacked along the output channels
            g = self.groups
            if g > 1:  # group-major, so each group's convolution sees its own input channels: (g, T, C/g)
                w = w.view(T, g, -1, *w.shape[2:]).transpose(0, 1)
                b = None if b is None else b.view(T, g, -1).transpose(0, 1)
            y = F.conv2d(x, w.flatten(0, 2) if g > 1 else w.flatten(0, 1),
                         None if b is None else b.flatten(), groups=g, **conv)
            n, _, h, wd = y.shape
            if g > 1:
                y = y.view(n, g, T, -1, h, wd).permute(2, 0, 1, 3, 4, 5)
            else:
                y = y.view(n, T, -1, h, wd).transpose(0, 1)
            return y.reshape(T * n, -1, h, wd).chunk(T) if self.slices else y.reshape(T * n, -1, h, wd)
        if self.batching == "grouped":
            x = joined(x)
            n = x.shape[0] // T
            xg = x.view(T, n, *x.shape[1:]).transpose(0, 1).reshape(n, -1, *x.shape[2:])
            y = F.conv2d(xg, w.flatten(0, 1), None if b is None else b.flatten(), groups=T * self.groups, **conv)
            y = y.view(n, T, -1, *y.shape[2:]).transpose(0, 1).reshape(T * n, -1, *y.shape[2:])
            return y.chunk(T) if self.slices else y
        # unbind, not w[t]: its backward stacks the T gradients once instead of T full-size zero fills
        xs, ws = (x if isinstance(x, tuple) else x.chunk(T)), w.unbind(0)
        bs = [None] * T if b is None else b.unbind(0)
        outs = tuple(F.conv2d(xs[t], ws[t], bs[t], groups=self.groups, **conv) for t in range(T))
        return outs if self.slices else torch.cat(outs)

    def _linear(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, shared_input: bool) -> torch.Tensor:
        T = self.tasks
        if shared_input:
            y = F.linear(x, w.flatten(0, 1), None if b is None else b.flatten())
            y = y.view(*x.shape[:-1], T, -1).movedim(-2, 0)
            return y.reshape(T * x.shape[0], *y.shape[2:])
        xt = x.reshape(T, -1, x.shape[-1])
        y = torch.bmm(xt, w.transpose(1, 2))
        if b is not None:
            y = y + b.unsqueeze(1)
        return y.reshape(*x.shape[:-1], -1)

    def extra_repr(self) -> str:
        return f"{self.kind}, shape={self.weight_shape}, tasks={self.tasks}, skip={self.skip}, choice={self.index}"


class TaskBatchNorm(nn.Module):
    """Batch norm whose statistics are per task, with per-branch (or per-task) parameters.

    ``branches`` is ``("shared",)`` (one set, statistics still per task), ``("specific",)``
    (one set per task, ``bn="specific"``) or the branches of the choice it follows
    (``bn="follow"``), mixed by that choice's gates. In training every task is normalised by
    its own batch statistics; running statistics of each branch are updated from the tasks
    that use it, in proportion to their (detached) gate.
    """

    def __init__(self, node: Node, in_shape: tuple[int, ...]) -> None:
        super().__init__()
        a = node.attrs
        self.tasks, self.branches, self.gate = a["tasks"], tuple(a["branches"]), a["gate"]
        self.eps, self.momentum = a.get("eps", 1e-5), a.get("momentum", 0.1)
        self.affine = a.get("affine", True)
        C = a["num_features"]
        src = node.tensors

        def init(key: str, default: float, per_task: bool) -> torch.Tensor:
            v = src[key].detach().float() if key in src else torch.full((C,), default)
            return v.unsqueeze(0).repeat(self.tasks, 1) if per_task else v.clone()

        for b in self.branches:
            per_task = b != "shared"
            pre = "" if b == "shared" else f"{b}_"
            if self.affine:
                self.register_parameter(f"{pre}weight", nn.Parameter(init("weight", 1.0, per_task)))
                self.register_parameter(f"{pre}bias", nn.Parameter(init("bias", 0.0, per_task)))
            self.register_buffer(f"{pre}running_mean", init("running_mean", 0.0, per_task))
            self.register_buffer(f"{pre}running_var", init("running_var", 1.0, per_task))
        # set by the supermodel (automtl.model.slices): the element-wise activation that was this
        # node's only reader, as (function, kwargs); and whether every reader takes task slices
        self.activation: tuple[Any, dict[str, Any]] | None = None
        self.slices = False

    def bank_key(self, branch: str, task: int) -> tuple[str, int] | None:
        """Whose parameters a task following ``branch`` uses: the one shared set, or its own."""
        return None if branch == "shared" else ("task", task)

    def _bank(self, b: str, what: str) -> torch.Tensor:
        return getattr(self, what if b == "shared" else f"{b}_{what}")

    def _mix(self, g: torch.Tensor, what: str) -> torch.Tensor:
        """Per-task ``(T, C)`` mixture of one parameter or buffer over the branches."""
        out = None
        for i, b in enumerate(self.branches):
            v = self._bank(b, what)
            term = g[:, i : i + 1] * (v.unsqueeze(0) if v.dim() == 1 else v)
            out = term if out is None else out + term
        return out

    def _gates(self, gates: torch.Tensor) -> torch.Tensor:
        if self.gate is None:
            return gates.new_ones(self.tasks, 1)
        return gates[:, self.gate, : len(self.branches)]

    def forward(self, x: Value, gates: torch.Tensor, shared_input: bool) -> Value:
        """Normalise a shared or stacked value (a stacked one may come as its task slices), then
        apply the fused activation; a stacked result goes on as task slices where every reader takes them."""
        if isinstance(x, tuple) and self.training:
            y = self._slices(x, gates)
        else:
            y = self._norm(joined(x), gates, shared_input)
        act = self.activation
        if isinstance(y, list):
            if act is not None:
                y = [act[0](part, **act[1]) for part in y]
            return tuple(y) if self.slices else torch.cat(y)
        if act is not None:
            y = act[0](y, **act[1])
        stacked = not (shared_input and self.branches == ("shared",))
        return y.chunk(self.tasks) if self.slices and stacked else y

    def _norm(self, x: torch.Tensor, gates: torch.Tensor, shared_input: bool) -> torch.Tensor | list[torch.Tensor]:
        """Batch norm of one tensor: a tensor, or (training, stacked) the normalised task slices."""
        T, C = self.tasks, x.shape[1]
        single_shared = self.branches == ("shared",)
        g = self._gates(gates)
        ones = x.new_ones(T, C)
        weight = self._mix(g, "weight") if self.affine else ones
        bias = self._mix(g, "bias") if self.affine else torch.zeros_like(ones)
        n = x.shape[0] if shared_input else x.shape[0] // T
        groups = 1 if shared_input else T
        xv = x.reshape(groups, n, C, -1)
        count = xv.shape[1] * xv.shape[3]  # samples per statistic
        if self.training:
            if single_shared and shared_input:
                y, mean, var = self._normalise(x, weight[0], bias[0])
                self._update(g, mean.expand(T, C), self._unbiased(var, count).expand(T, C))
                return y
            if shared_input:  # the same statistics for every task: normalise once, then T affine maps
                xhat, mean, var = self._normalise(x, None, None)
                self._update(g, mean.expand(T, C), self._unbiased(var, count).expand(T, C))
                y = torch.addcmul(bias.view(T, 1, C, 1), xhat.reshape(1, n, C, -1), weight.view(T, 1, C, 1))
                return y.reshape(T * n, *x.shape[1:])
            return self._slices(x.chunk(T), gates, g, weight, bias)
        # evaluation: one affine map per task from each branch's running statistics
        scale = None
        shift = None
        for i, b in enumerate(self.branches):
            rm, rv = self._bank(b, "running_mean"), self._bank(b, "running_var")
            w = self._bank(b, "weight") if self.affine else torch.ones_like(rm)
            bb = self._bank(b, "bias") if self.affine else torch.zeros_like(rm)
            s = w * torch.rsqrt(rv + self.eps)
            sh = bb - rm * s
            s, sh = (s.expand(T, C), sh.expand(T, C)) if s.dim() == 1 else (s, sh)
            gi = g[:, i : i + 1]
            scale = gi * s if scale is None else scale + gi * s
            shift = gi * sh if shift is None else shift + gi * sh
        if single_shared and shared_input:
            return x * scale[0].view(1, C, *([1] * (x.dim() - 2))) + shift[0].view(1, C, *([1] * (x.dim() - 2)))
        y = torch.addcmul(shift.view(T, 1, C, 1), xv, scale.view(T, 1, C, 1))
        return y.reshape(T * n, *x.shape[1:])

    def _slices(self, xs: tuple[torch.Tensor, ...], gates: torch.Tensor, g: torch.Tensor | None = None,
                weight: torch.Tensor | None = None, bias: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Training on a stacked value's task slices: every task by its own batch statistics, with
        torch's fused batch norm per task."""
        T, C = self.tasks, xs[0].shape[1]
        if g is None:
            g = self._gates(gates)
            ones = xs[0].new_ones(T, C)
            weight = self._mix(g, "weight") if self.affine else ones
            bias = self._mix(g, "bias") if self.affine else torch.zeros_like(ones)
        ws, bs = weight.unbind(0), bias.unbind(0)
        if self.branches == ("specific",):  # statistics per task: torch updates them in place
            rm, rv = self.specific_running_mean, self.specific_running_var
            return [F.batch_norm(xs[t], rm[t], rv[t], ws[t], bs[t], True, self.momentum, self.eps)
                    for t in range(T)]
        parts = [self._normalise(xs[t], ws[t], bs[t]) for t in range(T)]
        count = xs[0].numel() // C
        self._update(g, torch.stack([p[1] for p in parts]), self._unbiased(torch.stack([p[2] for p in parts]), count))
        return [p[0] for p in parts]

    def _normalise(self, x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Batch-normalise ``x`` by its own statistics with torch's fused kernel, which also returns
        them: ``(y, mean, biased variance)`` (detached), with no second pass over ``x``."""
        if x.dtype in (torch.float32, torch.float64) and not torch.is_autocast_enabled(x.device.type):
            y, mean, invstd = torch.native_batch_norm(x, weight, bias, None, None, True, 0.0, self.eps)
            with torch.no_grad():
                return y, mean.detach(), (invstd.detach() ** -2 - self.eps).clamp_min(0)
        with torch.no_grad():
            var, mean = torch.var_mean(x.transpose(0, 1).reshape(x.shape[1], -1).float(), dim=1, unbiased=False)
        return F.batch_norm(x, None, None, weight, bias, True, 0.0, self.eps), mean, var

    @staticmethod
    def _unbiased(var: torch.Tensor, count: int) -> torch.Tensor:
        return var * count / max(count - 1, 1)

    @torch.no_grad()
    def _update(self, g: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> None:
        m = self.momentum
        w = g.detach()
        for i, b in enumerate(self.branches):
            wi = w[:, i]
            rm, rv = self._bank(b, "running_mean"), self._bank(b, "running_var")
            if b == "shared":
                total = float(wi.sum())
                if total <= 0:
                    continue
                mu = (wi[:, None] * mean).sum(0) / total
                vr = (wi[:, None] * var).sum(0) / total
                rate = m * min(total, 1.0)
                rm.lerp_(mu, rate)
                rv.lerp_(vr, rate)
            else:
                rate = (m * wi)[:, None]
                rm.add_(rate * (mean - rm))
                rv.add_(rate * (var - rv))

    @torch.no_grad()
    def fill_specific(self) -> None:
        """Copy the shared parameters and statistics into the per-task ``specific`` bank."""
        if "shared" not in self.branches or "specific" not in self.branches:
            return
        for what in ("weight", "bias", "running_mean", "running_var"):
            if what in ("weight", "bias") and not self.affine:
                continue
            self._bank("specific", what).copy_(self._bank("shared", what).unsqueeze(0).expand(self.tasks, -1))

    def extra_repr(self) -> str:
        return f"branches={self.branches}, tasks={self.tasks}, follows={self.gate}"
