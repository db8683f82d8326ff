"""Helpers of the torch.fx frontend tests: compile without opaque operators, the kinds of a graph, parameter
counts, and the residual block several of them compile."""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from automtl.compiler.frontends.fx import OpaqueOperatorWarning, from_module
from automtl.compiler.ir import Graph


def kinds(graph: Graph) -> list[str]:
    return [n.kind for n in graph]


def compile_quietly(module: nn.Module, shape: tuple[int, ...], **kwargs: object) -> Graph:
    """Compile and fail if any OpaqueOperatorWarning is raised (the module should be fully typed)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", OpaqueOperatorWarning)
        return from_module(module, shape, **kwargs)


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += x
        return torch.relu(out + x)
