"""Caffe prototxt frontend: a deploy / train_val ``NetParameter`` text file -> IR :class:`Graph`.

The text is parsed against ``proto/caffe.proto`` (BVLC Caffe's schema, AutoMTL's dialect fields
and the fields of common forks) into a ``caffe_pb2.NetParameter`` (:mod:`.parsing`); each layer
then becomes one or more IR operators whose shapes are inferred as they are created, a
convolution needs its input's channel count (:mod:`.net`, converters in :mod:`.vision` and
:mod:`.common`). Blob names are rebound as layers write them, so in-place layers
(``top == bottom``) chain naturally.

Decisions worth knowing:

* ``BatchNorm`` + ``Scale`` fold into one affine ``batch_norm`` (see :mod:`.common`).
* Train-only layers (those excluded by the net's state, TEST by default; losses, ``Accuracy``,
  ``Silence``) are skipped: a train_val file compiles to its test-phase network up to the loss.
  Data layers become graph inputs (their label tops may only feed skipped layers).
* V1 files (``layers { type: CONVOLUTION }``) are converted layer by layer to the current format.
* Fields that would change a shape or a value and that the frontend does not implement are
  rejected with the file, line and layer; learning-only fields (``param``, fillers, ``engine``,
  ``loss_weight``, ``propagate_down``) are ignored. Sizes are checked as Caffe checks them
  (``num_output``, kernels, strides, groups positive; groups dividing the channels).
* Forks: ``Interp`` (DeepLab / PSPNet), ``ShuffleChannel`` (ShuffleNet v1/v2) and pooling's
  ``ceil_mode`` (BVLC pull request 3057, DenseNet-Caffe) are read; ``LRN`` takes both regions.
* The AutoMTL dialect (``input: "blob1"`` while the first layer reads ``data``, ``inplace``,
  torch-style ``batch_norm_param``) binds the lone input to the first layer's unknown bottom,
  makes a lone ``BatchNorm`` affine (torch's BatchNorm2d) and rounds pooling down by default.
* Hostile files: parse time and memory are linear in the file size, so is conversion in the
  number of layers; names longer than ``MAX_NAME`` characters are refused, and messages show
  names escaped and cut short.
"""

from __future__ import annotations

from .net import (
    CONVERTERS,
    DATA_TYPES,
    DIALECTS,
    MAX_NAME,
    SKIPPED_TYPES,
    SUPPORTED_TYPES,
    from_prototxt,
    from_text,
)
from .parsing import parse

__all__ = [
    "CONVERTERS",
    "DATA_TYPES",
    "DIALECTS",
    "MAX_NAME",
    "SKIPPED_TYPES",
    "SUPPORTED_TYPES",
    "from_prototxt",
    "from_text",
    "parse",
]
