"""Architectures: which branch each task takes at each choice node, as a small JSON document."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..compiler.ir import Graph
from ..compiler.mtl import MTLOptions

FORMAT = "automtl.architecture/1"


def digest(graph: Graph) -> str:
    """A stable fingerprint of a backbone's structure: kinds, attributes, wiring and shapes."""
    h = hashlib.sha256()
    for node in graph:
        attrs = {k: v for k, v in sorted(node.attrs.items()) if isinstance(v, (int, float, str, bool, tuple, list))}
        h.update(repr((node.name, node.kind, node.inputs, attrs, node.shape)).encode())
    h.update(repr(graph.outputs).encode())
    return h.hexdigest()[:16]


@dataclass
class Architecture:
    """For each choice node (by operator name), the option each task takes."""

    backbone: str
    tasks: list[str]
    options: dict[str, Any]
    choices: dict[str, dict[str, str]]
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "backbone": self.backbone, "tasks": list(self.tasks), "options": self.options,
            "choices": self.choices, "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<dict>") -> Architecture:
        if data.get("format") != FORMAT:
            raise ValueError(f"{source}: not an automtl architecture (format {data.get('format')!r}, want {FORMAT!r})")
        try:
            backbone, tasks, options, choices = data["backbone"], data["tasks"], data["options"], data["choices"]
        except KeyError as exc:
            raise ValueError(f"{source}: architecture lacks the field {exc.args[0]!r}") from None
        # files written before choice kinds existed lack options["choice"]: they mean "branches"
        options = MTLOptions.from_dict(dict(options)).to_dict()
        return cls(backbone, list(tasks), options, dict(choices), dict(data.get("meta", {})))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=False)

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> Architecture:
        try:
            data = json.loads(Path(path).read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from None
        return cls.from_dict(data, str(path))

    def branch(self, node: str, task: str) -> str:
        return self.choices[node][task]

    def check(self, model: Any) -> None:
        """Fail with a clear message unless this architecture fits ``model`` (a SuperModel)."""
        if self.backbone != model.backbone_digest:
            raise ValueError(
                f"architecture was made for backbone {self.backbone}, this model's backbone is "
                f"{model.backbone_digest}: derive it again from this model"
            )
        if list(self.tasks) != list(model.task_names):
            raise ValueError(f"architecture is for tasks {self.tasks}, the model has tasks {model.task_names}")
        if self.options != model.options.to_dict():
            raise ValueError(f"architecture options {self.options} differ from the model's {model.options.to_dict()}")
        nodes = {c.node: c for c in model.choices}
        for name in nodes:
            if name not in self.choices:
                raise ValueError(f"architecture has no entry for choice node {name!r}")
        for name, per_task in self.choices.items():
            if name not in nodes:
                raise ValueError(f"architecture names {name!r}, which is not a choice node of this model")
            for task in model.task_names:
                b = per_task.get(task)
                if b is None:
                    raise ValueError(f"architecture gives no branch for task {task!r} at node {name!r}")
                if b not in nodes[name].branches:
                    offered = ", ".join(nodes[name].branches)
                    raise ValueError(f"node {name!r}, task {task!r}: branch {b!r} is not offered here; "
                                     f"its branches are {offered}")

    def shared_fraction(self) -> float:
        """Share of (node, task) choices that take the shared branch."""
        total = sum(len(v) for v in self.choices.values())
        return sum(b == "shared" for v in self.choices.values() for b in v.values()) / max(total, 1)

    def trivial(self) -> str | None:
        """``"all-shared"`` or ``"all-specific"`` when every (node, task) takes that option, else None."""
        values = {b for per in self.choices.values() for b in per.values()}
        return f"all-{values.pop()}" if len(values) == 1 and values <= {"shared", "specific"} else None

    def describe(self) -> str:
        """Where the tasks branch, in words (a trivial architecture is said to be one)."""
        trivial = self.trivial()
        if trivial is not None:
            return f"{trivial}: every task takes the {trivial[4:]} option at all {len(self.choices)} choice nodes"
        split = [f"{node} ({', '.join(f'{t}: {b}' for t, b in per.items() if b != 'shared')})"
                 for node, per in self.choices.items() if set(per.values()) != {"shared"}]
        return (f"shares {100 * self.shared_fraction():.0f}% of its (operator, task) choices; tasks leave the "
                f"shared option at {len(split)} of {len(self.choices)} nodes: " + "; ".join(split))

