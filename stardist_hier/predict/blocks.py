"""Block-wise prediction of large images: overlap, de-duplication on block edges, bounded memory.

This is StarDist's :meth:`~stardist.models.base.StarDistBase.predict_instances_big` logic
(the block cover of :class:`stardist.big.BlockND`: blocks that overlap by at least
``min_overlap`` plus ``context`` on each side, the context predicted and discarded), with
these changes:

* which block keeps an object: the block whose *core* holds the object's centre, the core
  being the half-open region between the middles of the block's write-region overlaps with
  its neighbours (:func:`core_slices`; the cores partition the image). Stock StarDist decides
  from the bounding box of the object's pixels in each block's label image, which differs
  between neighbouring blocks where polygons overlap (each block paints its own set), so an
  object could be kept twice or not at all. The centre is a cell of the output grid, the same
  in every block that finds the object, so exactly one block keeps it; an object smaller than
  ``min_overlap`` lies wholly inside that block's write region, as stock guarantees. Larger
  objects (stock raises ``RuntimeError``) are kept the same way and counted;
* every per-instance array is kept (stock filters only its own ``OBJECT_KEYS``), and the
  class probabilities of an instance come from the class map of its own block (the model's
  class rule runs per block), so no array of the size of the input is ever made for a slide;
* blocks start at multiples of the network's total downsampling (:func:`block_grid`), not
  only of its output grid, so a block's maps equal the whole image's inside its write region;
* blocks are read by the caller, so a whole slide is read block by block, and blocks that do
  not touch tissue are skipped.

Peak memory is that of one block: its pixels, the network's maps (``dist`` is
``(B / g)^2 * n_rays`` floats), its label image, and the per-nucleus results.

The two StarDist internals used (``_instances_from_prediction`` and ``_axes_tile_overlap``) are
wrapped here, in :func:`instances_from_maps` and :func:`default_context`, and tested.
"""

from __future__ import annotations

import math

import numpy as np

from .tta import TRANSFORMS, predict_tta

__all__ = ["cover", "predict_maps", "instances_from_maps", "default_context", "block_grid", "predict_block", "core_slices",
           "NET_TILE", "MIN_OVERLAP", "PER_INSTANCE_KEYS"]

#: The network sees at most this many pixels per side at once (``n_tiles`` of ``model.predict``).
NET_TILE = 1024
#: Default guaranteed overlap of neighbouring blocks (pixels): nuclei must be smaller.
MIN_OVERLAP = 128
#: The per-instance arrays a block returns.
PER_INSTANCE_KEYS = ("points", "coord", "prob", "class_prob")


# ----------------------------------------------------------------------------------------
# the two StarDist internals, in one place


def instances_from_maps(model, shape, prob, dist, prob_class=None, prob_thresh=None, nms_thresh=None):
    """Instances (label image and per-instance arrays) from the network's maps of one block.

    What ``model.predict_instances`` does after ``model.predict``: StarDist's
    ``model._instances_from_prediction`` (dense non-maximum suppression, polygons, label
    image, class map at each centre), then the model's class rule on the block's class map
    (:func:`stardist_hier.model.class_rule.instance_class_prob` when the config's
    ``predict_class_from`` is ``'instance'``).

    Returns
    -------
    (numpy.ndarray, dict)
        ``(H, W)`` int32 labels (instance ``i + 1`` = row ``i``) and ``points``, ``coord``,
        ``prob`` and (with classes) ``class_prob`` at leaf level (``n_classes + 1`` columns).
    """
    labels, details = model._instances_from_prediction(
        tuple(shape), prob, dist, prob_class=prob_class, prob_thresh=prob_thresh, nms_thresh=nms_thresh,
        return_labels=True)
    out = {k: details[k] for k in ("points", "coord", "prob")}
    if prob_class is not None:
        n = len(out["prob"])
        centre = np.asarray(details["class_prob"], np.float64).reshape(n, prob_class.shape[-1])
        if getattr(model.config, "predict_class_from", "center") == "instance":
            from ..model.class_rule import instance_class_prob

            centre = instance_class_prob(labels, prob, prob_class, centre, tuple(model.config.grid))
        out["class_prob"] = np.asarray(centre, np.float32)
    return np.asarray(labels, np.int32), out


def block_grid(model):
    """The network's total downsampling per axis (``unet_pool ** unet_n_depth * grid``).

    Blocks start at multiples of it, so that every block sees the pooling lattice of the
    whole image and its maps equal the whole image's away from its edges (StarDist aligns
    blocks to the output grid only, which shifts the lattice by a few pixels).
    """
    c = model.config
    grid = tuple(int(g) for g in c.grid)
    if getattr(c, "backbone", "unet") != "unet":
        return grid
    return tuple(int(p) ** int(c.unet_n_depth) * g for p, g in zip(c.unet_pool, grid))


def default_context(model):
    """Context (pixels) around a block that is predicted and discarded: the network's receptive field.

    Wraps ``model._axes_tile_overlap('YX')`` (what ``predict_instances_big`` uses by default).
    """
    return tuple(int(v) for v in model._axes_tile_overlap("YX"))


# ----------------------------------------------------------------------------------------
# block cover


def cover(shape, block_size, min_overlap, context, grid):
    """Blocks covering an image of ``shape`` (:class:`stardist.big.BlockND`, axes ``'YX'``).

    An axis not longer than ``block_size`` is one block. Otherwise StarDist's cover, with
    ``block_size`` rounded down to a multiple of the grid.

    Raises
    ------
    ValueError
        When ``min_overlap + 2 * context`` does not fit into ``block_size``.
    """
    from stardist.big import Block, BlockND

    per_axis = []
    for size, b, o, c, g in zip(shape, _pair(block_size), _pair(min_overlap), _pair(context), _pair(grid)):
        size, b, o, c, g = int(size), int(b), int(o), int(c), int(g)
        if size <= b:
            t = Block(size, 0, 0, None)
            t.freeze()
            per_axis.append([t])
            continue
        b = (b // g) * g
        o, c = _ceil_to(o, g), _ceil_to(c, g)
        if not 0 <= o + 2 * c < b:
            raise ValueError(f"block_size={b} must exceed min_overlap + 2 * context = {o} + 2 * {c}; "
                             "use larger blocks or a smaller overlap")
        try:
            per_axis.append(Block.cover(size, b, o, c, g, verbose=False))
        except AssertionError:  # StarDist's own sanity checks (e.g. a stride too small to cover)
            raise ValueError(f"cannot cover {size} pixels with block_size={b}, min_overlap={o}, context={c} "
                             f"(grid {g}): use larger blocks") from None
    return [BlockND(i, (ty, tx), "YX") for i, (ty, tx) in enumerate((ty, tx) for ty in per_axis[0]
                                                                     for tx in per_axis[1])]


def _pair(v):
    return (v, v) if np.isscalar(v) else tuple(v)


def _ceil_to(v, g):
    return int(math.ceil(v / g) * g)


def core_slices(block):
    """The core of a block: the half-open region between the middles of its overlaps with
    its neighbours (global coordinates). The cores of a cover partition the image."""
    out = []
    for t in block.blocks:
        w = t.slice_write
        start = 0 if t.at_begin else (t.pred.slice_write.stop + w.start) // 2
        stop = t.end if t.at_end else (w.stop + t.succ.slice_write.start) // 2
        out.append(slice(start, stop))
    return tuple(out)


# ----------------------------------------------------------------------------------------
# one block


def _n_tiles(shape, net_tile):
    return tuple(max(1, int(math.ceil(s / net_tile))) for s in shape[:2]) + (1,)


def predict_maps(model, img, tta=False, net_tile=NET_TILE):
    """The network's maps ``(prob, dist, prob_class)`` of one normalised block.

    ``model.predict`` with ``n_tiles`` so that the network sees at most ``net_tile`` pixels
    per side; with ``tta`` the 8-fold test-time augmentation of :mod:`.tta`.
    ``prob_class`` is None for a model without classes.
    """
    def predict(x):
        return model.predict(x, axes="YXC", normalizer=None, n_tiles=_n_tiles(x.shape, net_tile),
                             show_tile_progress=False)

    transforms = TRANSFORMS if tta else TRANSFORMS[:1]
    grid = tuple(model.config.grid)
    if tta and grid[0] != grid[1]:
        raise ValueError(f"test-time augmentation needs a square grid (quarter turns); this model has grid={grid}")
    return predict_tta(predict, img, model.config.n_rays, grid, transforms)


def predict_block(model, block, img, tta=False, prob_thresh=None, nms_thresh=None, return_labels=False,
                  net_tile=NET_TILE):
    """Predict one block and keep the nuclei whose centre lies in its core.

    Parameters
    ----------
    model : HierStarDist2D
    block : stardist.big.BlockND
    img : numpy.ndarray
        The block's read region, normalised, ``(h, w, C)``.
    tta : bool
    prob_thresh, nms_thresh : float, optional
        Default: the model's thresholds.
    return_labels : bool
        Also return the block's label image cropped to its write region, with the kept
        instances numbered ``1..n`` in the order of the returned rows.

    Returns
    -------
    (dict, numpy.ndarray or None, int)
        Per-instance arrays (:data:`PER_INSTANCE_KEYS`; ``points`` and ``coord`` in the
        coordinates of the whole image), the cropped labels (or None), and the number of kept
        objects not smaller than ``min_overlap``.
    """
    prob, dist, prob_class = predict_maps(model, img, tta=tta, net_tile=net_tile)
    labels, inst = instances_from_maps(model, img.shape[:2], prob, dist, prob_class, prob_thresh, nms_thresh)
    del prob, dist, prob_class
    labels = block.crop_context(labels, axes="YX")
    n = len(inst["prob"])
    offset = np.array([s.start for s in block.slice_read("YX")], np.float32)
    # the block whose core holds an object's centre keeps it (see the module notes)
    centre = inst["points"] + offset
    keep = np.ones(n, bool)
    for a, c in enumerate(core_slices(block)):
        keep &= (centre[:, a] >= c.start) & (centre[:, a] < c.stop)
    # objects not smaller than the overlap may be cut by the block's edge: counted
    split = np.array([not (t.at_begin and t.at_end) for t in block.blocks])
    min_overlap = np.array([t.min_overlap for t in block.blocks])
    extent = inst["coord"].max(axis=-1) - inst["coord"].min(axis=-1) if n else np.zeros((0, 2))
    oversized = int((keep & ((extent >= min_overlap) & split).any(axis=1)).sum())
    idx = np.flatnonzero(keep)
    out = {k: np.asarray(v)[idx] for k, v in inst.items()}
    out["points"] = (out["points"] + offset).astype(np.float32)
    out["coord"] = (out["coord"] + offset[None, :, None]).astype(np.float32)
    out["prob"] = out["prob"].astype(np.float32)
    if not return_labels:
        return out, None, oversized
    lut = np.zeros(n + 1, np.int32)
    lut[idx + 1] = np.arange(1, len(idx) + 1, dtype=np.int32)
    return out, lut[labels], oversized
