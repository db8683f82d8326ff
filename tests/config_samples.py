"""Config texts the config tests share: ``TINY``, the smallest run config (a depth task on tiny_cnn)."""

TINY = """\
backbone:
  name: tiny_cnn
  input_shape: [3, 16, 16]
  trunk_output: block
tasks:
  depth: {kind: depth}
data:
  images: 8
device: cpu
"""
