"""automtl: turn any CNN backbone into an efficient multi-task model automatically."""

from .api import compile
from .compiler.errors import CompileError
from .compiler.ir import Graph, Node

__all__ = ["CompileError", "Graph", "Node", "compile"]
__version__ = "0.1.0"
