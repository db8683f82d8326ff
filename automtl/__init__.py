"""automtl: turn any CNN backbone into an efficient multi-task model automatically."""

from .api import compile
from .architecture import Architecture
from .compiler.errors import CompileError
from .compiler.ir import Graph, Node
from .derive import MultiTaskModel
from .search import SearchConfig, Searcher, SearchResult
from .supermodel import SuperModel, build

__all__ = [
    "Architecture", "CompileError", "Graph", "MultiTaskModel", "Node", "SearchConfig", "SearchResult", "Searcher",
    "SuperModel", "build", "compile",
]
__version__ = "0.1.0"
