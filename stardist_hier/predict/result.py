"""The result type of :mod:`stardist_hier.predict`: the nuclei of one image or slide."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["Nuclei"]


@dataclass
class Nuclei:
    """Nuclei of one image or slide, in level-0 pixel coordinates of the input.

    Attributes
    ----------
    coord : numpy.ndarray
        ``(n, 2, n_rays)`` float32 polygon vertices (row y, column x), level 0.
    points : numpy.ndarray
        ``(n, 2)`` float32 polygon centres (y, x), level 0.
    prob : numpy.ndarray
        ``(n,)`` float32 object probability.
    label_set : stardist_hier.hierarchy.LabelSet or None
        The label set of ``class_id`` (None for a model without classes).
    class_id : numpy.ndarray or None
        ``(n,)`` int64 class ids of ``label_set`` (None without classes).
    class_prob : numpy.ndarray or None
        ``(n, label_set.max_id + 1)`` float32 summed probabilities, column = class id,
        column 0 = background (None without classes).
    levels : dict
        name -> LabelSet of each hierarchy level above ``label_set`` that was asked for
        (may be ``{}``).
    level_class_id : dict
        name -> ``(n,)`` int64 class ids at that level.
    shape : tuple
        ``(H, W)`` of the input at level 0.
    labels : numpy.ndarray, optional
        ``(H, W)`` int32 instance label image (instance ``i + 1`` = row ``i``); images only,
        None for slides.
    info : dict
        Extra facts, e.g. ``mpp``, ``level``, ``downsample``, ``tissue_area_px``,
        ``tissue_mask`` (2-D bool at thumbnail scale), ``thumbnail`` (RGB uint8),
        ``thumbnail_downsample``, ``seconds``, ``tta``, ``note`` (e.g. ``"no tissue"``).
    """

    coord: np.ndarray            # (n, 2, n_rays) float32 polygon vertices (row y, column x), level 0
    points: np.ndarray           # (n, 2) float32 polygon centres (y, x), level 0
    prob: np.ndarray             # (n,) float32 object probability
    label_set: object            # stardist_hier.hierarchy.LabelSet or None (model without classes)
    class_id: np.ndarray         # (n,) int64 class ids of label_set (None without classes)
    class_prob: np.ndarray       # (n, label_set.max_id + 1) float32 summed probabilities, column = class id, 0 = background (None without classes)
    levels: dict                 # name -> LabelSet of each hierarchy level above label_set that was asked for (may be {})
    level_class_id: dict         # name -> (n,) int64 class ids at that level
    shape: tuple                 # (H, W) of the input at level 0
    labels: np.ndarray = None    # (H, W) int32 instance label image (instance i+1 = row i); images only, None for slides
    info: dict = field(default_factory=dict)  # e.g. mpp, level, downsample, tissue_area_px, tissue_mask (2-D bool at thumbnail scale), thumbnail (RGB uint8), thumbnail_downsample, seconds, tta, note (e.g. "no tissue")

    def __len__(self):
        return len(self.prob)
