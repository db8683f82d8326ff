"""The run configuration of ``automtl search CONFIG``: a YAML or TOML file, parsed, validated and built.

A run configuration names a backbone, the tasks, the data, the search strategy and its options, and
a few run settings. Everything is checked when the file is loaded, so a typo fails in a second with
the file, the line and a suggestion, instead of minutes into a search::

    run.yaml:7: unknown key 'warmup_step' in search; did you mean 'warmup_steps'?

The format (``.yaml`` / ``.yml``; every key but ``tasks`` may be left out, defaults as shown):

```yaml
backbone:
  name: resnet18            # a zoo name (automtl.backbones.names()), or a .prototxt / .onnx path,
                            # relative to the config file's folder
  input_shape: [3, 32, 32]  # [C, H, W]; must match the data's images
  trunk_output: layer2      # the operator or submodule the heads read (null: the backbone's output)
  bn: follow                # specific | follow
  skip: true                # offer the "skip" branch for every searchable operator
tasks:                      # name -> task; the name is a target of the data
  segmentation: {kind: segmentation}
  depth: {kind: depth, weight: 1.0}
  normals: {kind: normals, head: dense, hidden_channels: 32}
data:
  name: synthetic_scenes    # synthetic_scenes | multi_digits (or factory: "my_pkg.data:make_dataset")
  images: 500               # dataset size (the constructor's ``n``)
  size: 32                  # other keys: the dataset constructor's own keyword arguments
search:
  strategy: automtl         # the search method; its options follow (automtl: automtl.search.SearchConfig's
  warmup_steps: 60          # fields but seed, device, amp, quiet)
  search_iterations: 40
  finetune_steps: 80
  tau_interval: 10
seed: 0                     # in [0, 2**32): also the search's and (by default) the dataset's seed
device: auto                # auto | cpu | cuda | cuda:N
amp: null                   # null | bf16 | fp16 (fp16 needs CUDA)
baselines: [independent, all-shared]   # models trained for comparison in the report
checkpoint_every: 200       # search steps between checkpoints (0: only at the end)
```

Tasks: ``kind`` is one of :data:`automtl.train.tasks.TASKS` (classification, segmentation, depth,
normals, edges) and must fit the target (a ``synthetic_scenes`` target's kind is its name, every
``multi_digits`` target is a classification). ``head`` is ``auto`` (``dense`` for per-pixel
tasks, ``classification`` for classification), ``dense`` (:func:`automtl.train.tasks.dense_head`, with
``hidden_channels``), ``classification`` (:func:`automtl.train.tasks.classification_head`), or a user
factory (below). Any other key is a keyword argument of the task's constructor (``weight``,
``num_classes``, ``ignore_index``, ``pos_weight``...); ``num_classes`` defaults to the data's.

Data: ``synthetic_scenes`` (:class:`automtl.train.data.SyntheticScenes`, images ``(3, size, size)``,
targets segmentation, depth, normals, edges, and shading (kind depth) when a task names it) or
``multi_digits`` (:class:`automtl.train.data.MultiDigits`,
images ``(channels, size, 2 * size)``, targets left, right, sum_parity, larger). Keys other than
``name`` and ``images`` are the constructor's keyword arguments; ``seed`` defaults to the top-level
seed, ``size`` to the input shape's (``channels`` too, for multi_digits), and only the configured
tasks' targets are produced.

User factories: your own dataset and heads run from a config. ``data: {factory: "my_pkg.data:make_dataset",
root: /data, size: 64}`` calls ``make_dataset(root="/data", size=64)`` (plus ``seed`` and ``tasks``, the
task names, when it takes them); it returns a dataset of ``(image, {task: target})`` items, split by
the search, or a ``(weights, policy, val)`` list of datasets. A task's ``head: {factory:
"my_pkg.heads:make_head", width: 64}`` calls ``make_head(in_channels=C, out_channels=K, width=64)`` (plus
``scale_factor``, the input's size over the trunk output's, and ``input_shape`` when it takes them) and
must return an ``nn.Module``. The module must be importable (installed, or on ``PYTHONPATH``); it is
imported and its signature checked at load time (:mod:`.factories`).

Guards (one line each, with the file and line): nesting deeper than 64 levels, YAML aliases expanding
beyond 100,000 values (:mod:`.parse`); ints outside 64 bits; splits left empty by ``images`` and
``split_fractions``; a search whose estimated memory exceeds the machine's (:mod:`.resources`
documents the estimate); user values echoed at most 200 characters long (:mod:`.errors`).

TOML (``.toml``) has the same structure, with ``[backbone]``, ``[tasks.segmentation]``, ``[data]``,
``[search]`` tables and the top-level keys before the first table. TOML has no null: leave the key
out for the default, or write ``trunk_output = ""`` for the backbone's own output.

PyYAML reads YAML 1.1, where ``1e-3`` is a string (``1.0e-3`` is a float): a string that reads as a
number is accepted wherever a float is expected.

:func:`load_config` returns a :class:`RunConfig`; :func:`build_tasks`, :func:`build_dataset` and
:func:`build_model` turn it into what :class:`automtl.Searcher` takes. :func:`dump_config` writes
the resolved configuration (every field, every search option) back as YAML.

The package: :mod:`.parse` reads files, :mod:`.schema` validates (with :mod:`.coerce`,
:mod:`.factories`, :mod:`.strategies`, :mod:`.resources`), :mod:`.settings` holds the dataclasses,
:mod:`.build` builds, :mod:`.load` is the entry points.
"""

from __future__ import annotations

from .build import build_dataset, build_model, build_tasks
from .errors import ConfigError
from .load import config_from_dict, demo_config, load_config
from .settings import (
    BASELINES,
    DATASETS,
    BackboneConfig,
    DataConfig,
    RunConfig,
    TaskConfig,
    dump_config,
    resolve_device,
)
from .strategies import strategy_options

__all__ = [
    "BASELINES",
    "DATASETS",
    "BackboneConfig",
    "ConfigError",
    "DataConfig",
    "RunConfig",
    "TaskConfig",
    "build_dataset",
    "build_model",
    "build_tasks",
    "config_from_dict",
    "demo_config",
    "dump_config",
    "load_config",
    "resolve_device",
    "strategy_options",
]
