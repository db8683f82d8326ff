"""automtl: turn any CNN backbone into an efficient multi-task model automatically."""

from .api import compile
from .compiler.errors import CompileError
from .compiler.ir import Graph, Node
from .model.architecture import Architecture
from .model.derive import MultiTaskModel
from .model.supermodel import SuperModel, build
from .search.searcher import SearchConfig, Searcher, SearchResult

__all__ = [
    "Architecture", "CompileError", "Graph", "MultiTaskModel", "Node", "SearchConfig", "SearchResult", "Searcher",
    "SuperModel", "build", "compile",
]
__version__ = "0.1.0"
