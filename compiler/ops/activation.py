"""Operator kinds: element-wise activations (one entry each), PReLU and dropout."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import OpKind, _same, _unary, numel, register

# --- activations -------------------------------------------------------------------------------

# in place where codegen may (their in-place backward reads their output, never their input)
_unary("relu", F.relu, inplace=True)
# relu6 as the hardtanh it is (torch's own F.relu6 is about 3x slower out of place on CPU); never in
# place: the in-place hardtanh's backward reads its input, so autograd copies the input first
_unary("relu6", F.hardtanh, lambda n: {"min_val": 0.0, "max_val": 6.0})
_unary("leaky_relu", F.leaky_relu, lambda n: {"negative_slope": n.attrs["negative_slope"]}, inplace=True)
_unary("clip", torch.clamp, lambda n: {"min": n.attrs.get("min"), "max": n.attrs.get("max")})
_unary("sigmoid", torch.sigmoid)
_unary("tanh", torch.tanh)
_unary("hardswish", F.hardswish)
_unary("hardsigmoid", F.hardsigmoid)
_unary("silu", F.silu)
_unary("gelu", F.gelu)
_unary("elu", F.elu, lambda n: {"alpha": n.attrs.get("alpha", 1.0)})
_unary("softmax", F.softmax, lambda n: {"dim": n.attrs["dim"]})
_unary("log_softmax", F.log_softmax, lambda n: {"dim": n.attrs["dim"]})

register(
    OpKind(
        "prelu", _same,
        params=lambda n, s: n.attrs["num_parameters"],
        flops=lambda n, s, o: 2 * numel(o),
        module=lambda n, s: nn.PReLU(n.attrs["num_parameters"]),
        weights=("weight",),
    )
)
register(OpKind("dropout", _same, module=lambda n, s: nn.Dropout(n.attrs.get("p", 0.5))))

