"""The multi-task supermodel: ``automtl.build(backbone, tasks)``.

``build`` compiles the backbone, rewrites every searchable operator into a choice
(:mod:`automtl.compiler.mtl`), and emits the trunk with the one codegen. Per-task policy logits
live in :class:`Policy`, apart from the weights, so two optimisers can own them.
"""

from __future__ import annotations

import keyword
from collections.abc import Mapping
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from ..compiler.codegen import build_module, codegen, node_modules
from ..compiler.errors import CompileError
from ..compiler.ir import Graph
from ..compiler.mtl import MTLOptions, rewrite
from ..compiler.passes import cut
from .architecture import Architecture, digest
from .checks import check_heads as check_heads_fit
from .checks import check_untyped
from .choices import choose, get_choice_kind
from .mixing import BATCHING, MixedOp, TaskBatchNorm
from .policies import GumbelPolicy, make_policy
from .slices import pass_slices

Policy = GumbelPolicy  # the name earlier code imported from here


def _module_factory(node: Any, shapes: list[Any]) -> nn.Module:
    """Codegen's modules: the choice kind's for choice nodes, the compiler's for every other operator."""
    if node.kind == "mtl_batch_norm":
        return TaskBatchNorm(node, shapes[0])
    if node.kind.startswith("mtl_"):
        return get_choice_kind(node.attrs["choice_kind"]).module(node, shapes[0])
    return build_module(node, shapes)


def _on_cuda(out: Mapping[str, torch.Tensor]) -> bool:
    return any(o.is_cuda for o in out.values())


def _check_tasks(tasks: Mapping[str, nn.Module]) -> list[str]:
    if not isinstance(tasks, Mapping) or not tasks:
        raise ValueError("tasks must be a non-empty mapping of task name -> head module")
    names = list(tasks)
    for name in names:
        if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
            raise ValueError(f"task name {name!r} is not a Python identifier; use letters, digits and '_'")
        if not isinstance(tasks[name], nn.Module):
            raise ValueError(f"the head of task {name!r} must be an nn.Module, not {type(tasks[name]).__name__}")
    return names


class SuperModel(nn.Module):
    """A backbone rewritten into per-task choices, with one head per task.

    ``model(x)`` runs one input through all tasks; ``model({task: x_t})`` runs one input per
    task (multi-domain, equal batch sizes). Both return ``{task: output}``.
    """

    def __init__(
        self, graph: Graph, heads: Mapping[str, nn.Module], options: MTLOptions, batching: str = "dense",
        policy: str = "gumbel",
    ) -> None:
        super().__init__()
        self.task_names = _check_tasks(heads)
        if len(graph.outputs) != 1:
            raise CompileError(
                f"the backbone {graph.name!r} has {len(graph.outputs)} outputs {graph.outputs}; "
                "heads need one", hint="pass trunk_output=<operator name> to build()",
            )
        self.graph = graph
        self.options = options
        self.backbone_digest = digest(graph)
        self.mtl_graph, self.choices = rewrite(graph, self.task_names, options, choose(options))
        self.trunk = codegen(self.mtl_graph, _module_factory, class_name="Trunk")
        self._multi_domain: fx.GraphModule | None = None
        self.heads = nn.ModuleDict(dict(heads))
        # the default policy, for ``model(x, mode=..., tau=...)``; any policy's gates can be passed instead
        self.policy = make_policy(policy, len(self.task_names), self.choices)
        self.set_batching(batching)
        self.output_stacked = self.mtl_graph.stacked[graph.outputs[0]]
        pass_slices(self.trunk, self.mtl_graph)

    # --- parameters -----------------------------------------------------------------------------
    def policy_parameters(self) -> list[nn.Parameter]:
        """The architecture logits (for the policy optimiser)."""
        return [self.policy.logits]

    def weight_parameters(self) -> list[nn.Parameter]:
        """Every parameter but the logits (for the weight optimiser)."""
        skip = {id(self.policy.logits)}
        return [p for p in self.parameters() if id(p) not in skip]

    def mixed_modules(self) -> list[MixedOp]:
        return [m for m in self.trunk.modules() if isinstance(m, MixedOp)]

    def materialize(self) -> SuperModel:
        """Initialise every weight build only allocated (done on first forward otherwise)."""
        for m in self.mixed_modules():
            m.materialize()
        return self

    def fill_specific(self) -> SuperModel:
        """Copy the shared weights into every task's specific branch (the end of warm-up)."""
        for m in self.trunk.modules():
            if isinstance(m, (MixedOp, TaskBatchNorm)):
                m.fill_specific()
        return self

    def set_batching(self, batching: str) -> None:
        """How per-task convolutions run on stacked values: T ``dense`` calls or one ``grouped``."""
        if batching not in BATCHING:
            raise ValueError(f"batching must be one of {BATCHING}, not {batching!r}")
        self.batching = batching
        for m in self.mixed_modules():
            m.batching = batching

    def tune_batching(self, x: torch.Tensor | Mapping[str, torch.Tensor], rounds: int = 3) -> dict[str, float]:
        """Time a forward+backward step with each batching on ``x`` and keep the faster one.

        The step runs in ``warmup`` mode (no random noise) and every buffer (BN statistics) and
        gradient is restored afterwards, so tuning leaves the model as it was. Returns the median
        seconds per batching. On this project's 2-core CPU, ``dense`` wins (the default).
        """
        import time

        buffers = {k: v.clone() for k, v in self.state_dict().items() if k in dict(self.named_buffers())}
        grads = {id(p): (p.grad.clone() if p.grad is not None else None) for p in self.parameters()}
        timings: dict[str, float] = {}
        for batching in BATCHING:
            self.set_batching(batching)
            times = []
            for _ in range(rounds + 1):
                start = time.perf_counter()
                out = self(x, mode="warmup")
                sum(o.float().mean() for o in out.values()).backward()
                if _on_cuda(out):
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - start)
            timings[batching] = sorted(times[1:])[len(times[1:]) // 2]
        for p in self.parameters():
            p.grad = grads[id(p)]
        self.load_state_dict({**self.state_dict(), **buffers})
        self.set_batching(min(timings, key=timings.__getitem__))
        return timings

    # --- forward --------------------------------------------------------------------------------
    def forward(
        self,
        x: torch.Tensor | Mapping[str, torch.Tensor],
        mode: str = "soft",
        tau: float = 1.0,
        architecture: Architecture | None = None,
        noise: torch.Tensor | None = None,
        gates: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """``{task: output}``. The option weights ``(T, V, K)`` are ``gates`` when given (from any
        policy), else the one-hot of ``architecture``, else the default policy's for ``mode`` and ``tau``."""
        T = len(self.task_names)
        if gates is None:
            if architecture is not None:
                gates = self.policy.one_hot(self.architecture_tensor(architecture))
            else:
                gates = self.policy.gates(mode, tau, None, noise)
        batch = next(iter(x.values())) if isinstance(x, Mapping) and x else x
        if isinstance(batch, torch.Tensor) and batch.shape[0] == 0:
            return self._empty(x, gates)
        if isinstance(x, Mapping):
            feats = self._multi_domain_trunk()(self._stack(x), gates)
            stacked = True
        else:
            feats = self.trunk(x, gates)
            stacked = self.output_stacked
        parts = feats.chunk(T) if stacked else [feats] * T
        return {t: self.heads[t](parts[i]) for i, t in enumerate(self.task_names)}

    def _empty(self, x: torch.Tensor | Mapping[str, torch.Tensor], gates: torch.Tensor) -> dict[str, torch.Tensor]:
        """A batch of 0: empty outputs of the right shape (one sample runs in eval mode, no state changes)."""
        one = ({t: v.new_zeros((1, *v.shape[1:])) for t, v in x.items()} if isinstance(x, Mapping)
               else x.new_zeros((1, *x.shape[1:])))
        was = self.training
        self.eval()
        try:
            with torch.no_grad():
                out = self(one, gates=gates.detach())
        finally:
            self.train(was)
        return {t: o[:0] for t, o in out.items()}

    def _stack(self, xs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        missing = [t for t in self.task_names if t not in xs]
        extra = [t for t in xs if t not in self.task_names]
        if missing or extra:
            raise ValueError(
                f"multi-domain input must have one batch per task {self.task_names}; "
                f"missing {missing}, unknown {extra}"
            )
        shapes = {t: tuple(xs[t].shape) for t in self.task_names}
        if len(set(shapes.values())) != 1:
            raise ValueError(f"every task's batch must have the same shape; got {shapes}")
        return torch.cat([xs[t] for t in self.task_names])

    def _multi_domain_trunk(self) -> fx.GraphModule:
        """The trunk for per-task inputs: the same modules, every value stacked."""
        if self._multi_domain is None:
            graph, _ = rewrite(self.graph, self.task_names, self.options, choose(self.options), multi_domain=True)
            modules = node_modules(self.trunk)
            gm = codegen(graph, lambda node, shapes: modules[node.name], "Trunk")
            pass_slices(gm, graph)
            check_untyped(self, gm, graph)  # every value is stacked here, the input too
            object.__setattr__(self, "_multi_domain", gm)  # not a submodule: it holds no new state
        return self._multi_domain

    # --- architectures --------------------------------------------------------------------------
    def architecture_tensor(self, arch: Architecture) -> torch.Tensor:
        """Branch index per task per choice node, ``(T, V)`` long."""
        arch.check(self)
        idx = torch.zeros(len(self.task_names), max(len(self.choices), 1), dtype=torch.long)
        for c in self.choices:
            for t, task in enumerate(self.task_names):
                idx[t, c.index] = c.position(arch.choices[c.node][task])
        return idx

    def architecture(self, sample: bool = False, generator: torch.Generator | None = None) -> Architecture:
        """The architecture of the current policy: argmax of the logits, or one sample."""
        with torch.no_grad():
            probs = self.policy.probabilities()
            if sample:
                flat = probs.reshape(-1, probs.shape[-1])
                pick = torch.multinomial(flat, 1, generator=generator).view(probs.shape[:-1])
            else:
                pick = probs.argmax(-1)
        return self.architecture_from_indices(pick)

    def architecture_from_indices(self, pick: torch.Tensor) -> Architecture:
        choices = {
            c.node: {t: c.options[int(pick[i, c.index])].name for i, t in enumerate(self.task_names)}
            for c in self.choices
        }
        return Architecture(self.backbone_digest, list(self.task_names), self.options.to_dict(), choices)

    def uniform_architecture(self, branch: str) -> Architecture:
        """Every task takes ``branch`` at every choice node (where it is offered, else shared)."""
        choices = {
            c.node: {t: branch if branch in c.branches else "shared" for t in self.task_names} for c in self.choices
        }
        return Architecture(self.backbone_digest, list(self.task_names), self.options.to_dict(), choices)

    def derive(self, architecture: Architecture) -> Any:
        """The compact multi-task model for ``architecture`` (see :mod:`automtl.model.derive`)."""
        from .derive import derive

        return derive(self, architecture)


def build(
    backbone: Any,
    tasks: Mapping[str, nn.Module],
    *,
    input_shape: Any = None,
    trunk_output: str | None = None,
    searchable: tuple[str, ...] | list[str] = ("conv2d",),
    bn: str = "follow",
    skip: bool = True,
    choice: str = "branches",
    batching: str = "dense",
    check_heads: bool = True,
    **compile_options: Any,
) -> SuperModel:
    """Build the multi-task supermodel of ``backbone`` for ``tasks`` (name -> head module).

    ``backbone`` is anything :func:`automtl.compile` takes, or a compiled :class:`Graph`.
    ``trunk_output`` names the operator the heads read (``"layer4"`` takes the output of that
    submodule); by default the backbone's single output. ``searchable`` lists the operator
    kinds that become choices; ``bn`` is ``"specific"`` (a BN per task) or ``"follow"`` (BN
    shares as its producer does, so shared computation stays shared). ``choice`` names the choice
    kind searchable operators become (:mod:`automtl.model.choices`; AutoMTL's ``branches`` by default).
    """
    from ..api import compile as compile_backbone

    _check_tasks(tasks)
    get_choice_kind(choice)  # an unknown kind fails here, with the registered names
    options = MTLOptions(tuple(searchable), bn, skip, choice)
    graph = backbone if isinstance(backbone, Graph) else compile_backbone(backbone, input_shape, **compile_options)
    if trunk_output is not None:
        graph = cut(graph.copy(), _resolve(graph, trunk_output))
    model = SuperModel(graph, tasks, options, batching)
    if check_heads:
        check_heads_fit(model)
    check_untyped(model)
    return model


def _resolve(graph: Graph, name: str) -> str:
    """An operator name, or a submodule path whose last operator is meant."""
    if name in graph:
        return name
    inside = [n.name for n in graph if n.name.startswith(name + ".")]
    return inside[-1] if inside else name
