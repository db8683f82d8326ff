"""The one registry of operator kinds.

Each :class:`OpKind` says, in one place, how its output shape follows from its inputs, what it
costs (learnable parameters and FLOPs; a multiply-add counts as 2 FLOPs), whether the
multi-task rewrite may search over it, and how codegen emits it (a ``torch.nn`` module or a
function). Frontends map their own spellings onto these kinds; adding a kind is one entry in the
module of its family:

- ``base``: :class:`OpKind`, ``REGISTRY``, ``register``/``get``, :class:`ShapeError`, shape helpers
- ``conv``: inputs, identity, convolutions, linear · ``norm``: batch norm, scale, LRN
- ``activation``: element-wise activations, PReLU, dropout · ``pool``: pooling, mean
- ``elementwise``: add/mul/max/sub/div, scaled sum, concat · ``shape``: flatten, reshape, crop, pad, ...
- ``opaque``: calls the compiler does not know, getitem
- ``fx_kinds``, ``caffe_kinds``, ``onnx_kinds``: the kinds one frontend maps onto

Every name is importable from here, as it was when the registry was one file.
"""

# The family modules register their kinds when imported; this order is the registration order.
# isort: off
from . import base, conv, norm, activation, pool, elementwise, shape, opaque, fx_kinds, caffe_kinds, onnx_kinds  # noqa: F401
# isort: on
from .base import (
    REGISTRY,
    OpKind,
    ShapeError,
    get,
    numel,
    register,
)
from .base import _channels as _channels
from .base import _fail as _fail
from .base import _need_rank as _need_rank
from .base import _pair as _pair
from .base import _same as _same
from .base import _spatial as _spatial
from .base import _unary as _unary
from .caffe_kinds import channel_shuffle, lrn_within_channel
from .conv import identity
from .elementwise import add_n, maximum_n, mul_n, scaled_sum
from .fx_kinds import Constant, expand_keep_batch, slice_axes
from .norm import ChannelAffine
from .onnx_kinds import take_along, to_dtype
from .opaque import Ref, Value, fill_refs
from .opaque import _shape_of as _shape_of
from .shape import crop_like, reshape_keep_batch

__all__ = [
    "REGISTRY", "ChannelAffine", "Constant", "OpKind", "Ref", "ShapeError", "Value", "add_n", "channel_shuffle",
    "crop_like", "expand_keep_batch", "fill_refs", "get", "identity", "lrn_within_channel", "maximum_n", "mul_n",
    "numel", "register", "reshape_keep_batch", "scaled_sum", "slice_axes", "take_along", "to_dtype",
]
