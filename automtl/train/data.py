"""Built-in datasets, generated offline and deterministic by seed, plus batching and split helpers.

* :class:`SyntheticScenes`: procedural RGB scenes of shapes at different depths over a textured
  background, with per-pixel segmentation, depth, surface normals and edges that agree with each
  other (normals come from the depth map, edges from the segmentation).
* :class:`MultiDigits`: two scikit-learn handwritten digits side by side, with four image-level
  classification tasks that share (or do not share) what they need to know.
* :class:`MultiDomain`: one dataset per task, batched together as ``{task: (x_t, y_t)}``.
* :func:`collate` / :func:`make_collate`: batch both item forms, padding missing labels with the
  task's ignore value instead of inventing them.
* :func:`split_dataset`: the disjoint weight / policy / validation split used by the search.

Every item is ``(x, {task: y})`` (or ``{task: (x_t, y_t)}`` for :class:`MultiDomain`).

This module is the one import path for all of them; the code lives in ``scenes.py``
(:class:`SyntheticScenes` and its rendering), ``digits.py`` (:class:`MultiDigits`), ``batching.py``
(:class:`MultiDomain`, collation, splits) and ``items.py`` (the checks they share).
"""

from __future__ import annotations

from .batching import MultiDomain, collate, make_collate, split_dataset
from .digits import MultiDigits
from .digits import _digit_pool as _digit_pool
from .digits import _load_digits as _load_digits
from .scenes import SCENE_WIDTH, SHAPE_KINDS, SyntheticScenes, depth_to_normals, segmentation_edges

__all__ = [
    "SCENE_WIDTH",
    "SHAPE_KINDS",
    "MultiDigits",
    "MultiDomain",
    "SyntheticScenes",
    "collate",
    "depth_to_normals",
    "make_collate",
    "segmentation_edges",
    "split_dataset",
]
