"""Protocol buffer schemas and their generated Python bindings.

``caffe_pb2`` is generated from ``caffe.proto`` (BVLC Caffe's ``NetParameter`` plus AutoMTL's
dialect fields) by ``python proto/generate.py``; it imports under protobuf 5.26.1 through 7.x.
"""

from . import caffe_pb2

__all__ = ["caffe_pb2"]
