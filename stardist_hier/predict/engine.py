"""Predicting the nuclei of one image or one whole slide: :func:`predict_image`, :func:`predict_slide`.

Both go block by block (:mod:`.blocks`), optionally with test-time augmentation (:mod:`.tta`),
and return a :class:`~.result.Nuclei` in level-0 pixel coordinates with classes at a label
set (and optionally at every hierarchy level above it), from :meth:`LabelSet.classify` on the
per-instance leaf probabilities that the model's class rule computed from each block's
class map.

Whole slides: the working resolution is the model's pixel size
(``model.config.pixel_size_um``; the slide's own micrometres per pixel, or ``mpp=``), read from
the nearest finer pyramid level and resized, or a pyramid level given with ``level=``. A
tissue mask of a thumbnail (Otsu, :mod:`.tissue`, or the user's ``mask=``) selects the blocks
to predict, and the normalisation percentiles come from the tissue pixels of that thumbnail,
once for the whole slide.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..hierarchy import ClassHierarchy, LabelSet
from .blocks import MIN_OVERLAP, block_grid, cover, default_context, predict_block
from .result import Nuclei
from .slides import InputError, SlideReader, check_channels, open_input
from .tissue import load_mask, normalization_percentiles, normalize_with, tissue_mask

__all__ = ["predict_image", "predict_slide", "predict_path", "resolve_label_set", "level_label_sets",
           "model_hierarchy", "DEFAULT_BLOCK_SIZE", "THUMBNAIL_SIZE"]

#: Default block size (pixels per side at the working resolution).
DEFAULT_BLOCK_SIZE = 4096
#: Longer side of the slide thumbnail used for the tissue mask and the normalisation.
THUMBNAIL_SIZE = 2048


# ----------------------------------------------------------------------------------------
# label sets


def model_hierarchy(model):
    """The model's class hierarchy (a flat one for a stock multi-class model), or None without classes."""
    if getattr(model.config, "n_classes", None) is None:
        return None
    h = getattr(model, "hierarchy", None)
    return h if h is not None else ClassHierarchy.flat(model.config.n_classes)


def resolve_label_set(model, label_set=None):
    """The :class:`LabelSet` to classify at.

    The model's own rule when it has one (``HierStarDist2D.resolve_label_set``: ``None`` is
    ``model.config.default_label_set``, else the leaves; ``'leaves'`` the leaf label set unless
    the hierarchy defines one of that name); for other models (stock multi-class StarDist,
    a flat hierarchy), ``None`` is the hierarchy's first label set.

    Parameters
    ----------
    model : HierStarDist2D
    label_set : str, LabelSet or None

    Returns
    -------
    LabelSet or None
        None for a model without classes (and ``label_set=None``).

    Raises
    ------
    HierarchyError
        Unknown label set (the message lists the known ones).
    ValueError
        A label set asked of a model without classes.
    """
    h = model_hierarchy(model)
    if h is None:
        if label_set is not None:
            raise ValueError(f"label set {getattr(label_set, 'name', label_set)!r} given, but this model "
                             "has no classes (n_classes=None): it predicts nuclei only")
        return None
    if isinstance(label_set, LabelSet):
        return label_set
    if callable(getattr(model, "resolve_label_set", None)):
        return model.resolve_label_set(label_set)
    if label_set is None:
        label_set = getattr(model.config, "default_label_set", None)
    if label_set is None:
        return h.label_set(next(iter(h.label_sets))) if h.label_sets else h.leaf_label_set()
    if label_set == "leaves" and "leaves" not in h.label_sets:
        return h.leaf_label_set()
    return h.label_set(label_set)


def level_label_sets(label_set):
    """The cuts of the hierarchy above a label set: ``{'depth<d>': hierarchy.cut(d)}``.

    ``d`` runs from 1 to one less than the depth of the label set's deepest node (depth 0, the
    root, says only "nucleus" and is left out). A label set at depth 1 has none.
    """
    h = label_set.hierarchy
    deepest = max((h.depth(n) for n in label_set.nodes.values()), default=0)
    return {f"depth{d}": h.cut(d) for d in range(1, deepest)}


def _classes(model, label_set, levels, leaf_prob):
    """Class ids, summed probabilities and level ids from per-instance leaf probabilities."""
    if label_set is None:
        return None, None, {}
    background = getattr(model.config, "predict_class_from", "instance") == "center"
    class_id = label_set.classify(leaf_prob, background=background)
    class_prob = label_set.collapse(np.asarray(leaf_prob, np.float64)).astype(np.float32)
    level_ids = {name: ls.classify(leaf_prob, background=background) for name, ls in levels.items()}
    return class_id, class_prob, level_ids


def _assemble(model, parts, label_set, levels, shape, scale=1.0, labels=None, info=None):
    n_rays = model.config.n_rays
    n_leaf = None if label_set is None else label_set.hierarchy.n_classes + 1
    if parts:
        cat = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    else:
        cat = dict(points=np.zeros((0, 2), np.float32), coord=np.zeros((0, 2, n_rays), np.float32),
                   prob=np.zeros(0, np.float32))
        if n_leaf is not None:
            cat["class_prob"] = np.zeros((0, n_leaf), np.float32)
    if scale != 1.0:
        # working pixel y covers level-0 pixels [y * s, (y + 1) * s): its centre is (y + 0.5) * s - 0.5
        cat["points"] = ((cat["points"] + 0.5) * scale - 0.5).astype(np.float32)
        cat["coord"] = ((cat["coord"] + 0.5) * scale - 0.5).astype(np.float32)
    class_id, class_prob, level_ids = _classes(model, label_set, levels, cat.get("class_prob"))
    info = dict(info or {})
    if label_set is not None:
        info["leaf_class_prob"] = cat["class_prob"].astype(np.float32)
    return Nuclei(coord=cat["coord"].astype(np.float32), points=cat["points"].astype(np.float32),
                  prob=cat["prob"].astype(np.float32), label_set=label_set, class_id=class_id,
                  class_prob=class_prob, levels=dict(levels), level_class_id=level_ids, shape=tuple(shape),
                  labels=labels, info=info)


def _prepare(model, label_set, levels, context):
    ls = resolve_label_set(model, label_set)
    lv = level_label_sets(ls) if (levels and ls is not None) else {}
    ctx = default_context(model) if context is None else context
    return ls, lv, ctx


def _progress(iterable, progress, desc, total=None):
    if not progress:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, unit="block", total=total)


# ----------------------------------------------------------------------------------------
# images


def predict_image(model, image, label_set=None, levels=False, tta=False, block_size=None, normalize=True,
                  progress=False, prob_thresh=None, nms_thresh=None, min_overlap=MIN_OVERLAP, context=None,
                  name="image"):
    """The nuclei of an in-memory image.

    Parameters
    ----------
    model : HierStarDist2D
        A trained model (a stock ``StarDist2D`` works too).
    image : numpy.ndarray
        ``(H, W, C)`` with the model's ``n_channel_in`` channels (RGBA loses its alpha), at
        the model's pixel size.
    label_set : str, LabelSet or None
        See :func:`resolve_label_set`.
    levels : bool
        Also classify at every hierarchy level above the label set (:func:`level_label_sets`).
    tta : bool
        8-fold test-time augmentation (:mod:`.tta`); about 8 times slower.
    block_size : int or None
        Pixels per block side; None: :data:`DEFAULT_BLOCK_SIZE`. An image not larger is
        predicted in one block (as ``model.predict_instances``).
    normalize : bool
        Normalise as in training (:func:`stardist_hier.patches.normalize_image`, percentiles
        of this image); False: the image is used as given (already normalised).
    progress : bool
        A progress bar over blocks.
    prob_thresh, nms_thresh : float, optional
        Default: the model's thresholds.
    min_overlap : int
        Guaranteed overlap of neighbouring blocks; nuclei must be smaller.
    context : int or None
        Pixels around each block predicted and discarded; None: the network's receptive field.
    name : str
        What to call the image in errors (its file name).

    Returns
    -------
    Nuclei
        With the label image (``labels``); ``info`` has ``seconds``, ``tta``, ``blocks``,
        ``oversized`` (objects larger than the overlap) and ``leaf_class_prob``.

    Raises
    ------
    InputError
        The image has the wrong number of channels.
    """
    from ..patches import normalize_image

    t0 = time.perf_counter()
    ls, lv, ctx = _prepare(model, label_set, levels, context)
    image = check_channels(image, model.config.n_channel_in, name=name)
    if image.ndim == 2:
        image = image[..., None]
    x = normalize_image(image) if normalize else np.asarray(image, np.float32)
    H, W = x.shape[:2]
    bs = DEFAULT_BLOCK_SIZE if block_size is None else int(block_size)
    blocks = cover((H, W), bs, min_overlap, ctx, block_grid(model))
    labels_out = np.zeros((H, W), np.int32)
    parts, offset, oversized = [], 0, 0
    for block in _progress(blocks, progress, name):
        inst, lab, big = predict_block(model, block, block.read(x, axes="YX"), tta=tta, prob_thresh=prob_thresh,
                                       nms_thresh=nms_thresh, return_labels=True)
        lab[lab > 0] += offset
        block.write(labels_out, lab, axes="YX")
        offset += len(inst["prob"])
        oversized += big
        parts.append(inst)
    info = dict(seconds=time.perf_counter() - t0, tta=bool(tta), blocks=len(blocks), oversized=oversized)
    return _assemble(model, parts, ls, lv, (H, W), labels=labels_out, info=info)


# ----------------------------------------------------------------------------------------
# slides


def working_downsample(reader, model, mpp=None, level=None):
    """Level-0 pixels per working pixel, the level to read, and a note when the scale is unknown.

    Returns
    -------
    (float, int, float or None, str or None)
        Downsample, pyramid level read, slide mpp used, note.
    """
    if level is not None:
        if not (isinstance(level, (int, np.integer)) and 0 <= level < reader.level_count):
            raise ValueError(f"{reader.path}: level={level!r}, the slide has levels 0..{reader.level_count - 1}")
        return reader.level_downsamples[level], int(level), (mpp or reader.mpp), None
    slide_mpp = float(mpp) if mpp is not None else reader.mpp
    if mpp is not None and not float(mpp) > 0:
        raise ValueError(f"mpp must be > 0, got {mpp!r}")
    target = getattr(model.config, "pixel_size_um", None)
    if slide_mpp is None or target is None:
        what = "the slide's pixel size is unknown (give mpp=)" if slide_mpp is None else \
            "the model does not record its pixel size (config pixel_size_um)"
        return 1.0, 0, slide_mpp, f"{what}: predicted at level 0"
    ds = float(target) / slide_mpp
    for k, d in enumerate(reader.level_downsamples):
        if abs(d / ds - 1) <= 0.01:
            return d, k, slide_mpp, None  # an existing level: no resampling
    return ds, reader.best_level(ds), slide_mpp, None


def predict_slide(model, path, label_set=None, levels=False, tta=False, mpp=None, level=None, mask=None,
                  block_size=DEFAULT_BLOCK_SIZE, progress=False, prob_thresh=None, nms_thresh=None,
                  min_overlap=MIN_OVERLAP, context=None, thumbnail_size=THUMBNAIL_SIZE, backend="auto"):
    """The nuclei of a whole-slide image, block by block over its tissue.

    Parameters
    ----------
    model : HierStarDist2D
    path : str or path-like
        A slide OpenSlide or tiffslide reads (``.svs``, ``.ndpi``, ``.mrxs``, pyramidal TIFF, ...).
    label_set, levels, tta, progress, prob_thresh, nms_thresh, min_overlap, context
        As :func:`predict_image`.
    mpp : float, optional
        Level-0 micrometres per pixel, overriding the slide's metadata.
    level : int, optional
        Predict on this pyramid level as it is (no resampling to the model's pixel size).
    mask : str, path-like or numpy.ndarray, optional
        Tissue mask (non-zero = tissue) covering the slide at any scale; default: Otsu on a
        thumbnail (:func:`stardist_hier.predict.tissue.tissue_mask`).
    block_size : int or None
        Pixels per block side at the working resolution (None: :data:`DEFAULT_BLOCK_SIZE`);
        memory is bounded by it.
    thumbnail_size : int
        Longer side of the thumbnail for the tissue mask and the normalisation percentiles.
    backend : {'auto', 'openslide', 'tiffslide'}

    Returns
    -------
    Nuclei
        No label image. ``info``: ``mpp`` (level 0), ``model_mpp``, ``level``, ``downsample``
        (level-0 pixels per working pixel), ``tissue_area_px`` (level 0), ``tissue_mask`` and
        ``thumbnail`` (thumbnail scale), ``thumbnail_downsample``, ``normalization``
        (per-channel low/high), ``blocks`` (predicted) and ``blocks_total``, ``oversized``,
        ``seconds``, ``tta``, ``backend``, ``leaf_class_prob``, and ``note`` when there is no
        tissue or the scale is unknown.

    Raises
    ------
    InputError
        Unreadable or truncated slide (or mask file), naming the file.
    """
    t0 = time.perf_counter()
    ls, lv, ctx = _prepare(model, label_set, levels, context)
    path = Path(path)
    with SlideReader(path, backend=backend) as reader:
        thumb, thumb_ds = reader.thumbnail(thumbnail_size)
        tissue = tissue_mask(thumb) if mask is None else load_mask(mask, thumb.shape[:2])
        ds, read_level, slide_mpp, note = working_downsample(reader, model, mpp, level)
        H0, W0 = reader.shape
        Hw, Ww = max(1, int(H0 // ds)), max(1, int(W0 // ds))
        info = dict(mpp=slide_mpp, model_mpp=getattr(model.config, "pixel_size_um", None), level=read_level,
                    downsample=ds, tissue_area_px=float(tissue.sum()) * thumb_ds ** 2, tissue_mask=tissue,
                    thumbnail=thumb, thumbnail_downsample=thumb_ds, tta=bool(tta), backend=reader.backend,
                    working_shape=(Hw, Ww), blocks=0, blocks_total=0, oversized=0)
        norm = normalization_percentiles(thumb, tissue)
        if norm is None:
            info.update(note="no tissue" + (f"; {note}" if note else ""), seconds=time.perf_counter() - t0)
            return _assemble(model, [], ls, lv, (H0, W0), info=info)
        if note:
            info["note"] = note
        info["normalization"] = (norm[0].tolist(), norm[1].tolist())
        bs = DEFAULT_BLOCK_SIZE if block_size is None else int(block_size)
        blocks = cover((Hw, Ww), bs, min_overlap, ctx, block_grid(model))
        f = ds / thumb_ds  # thumbnail pixels per working pixel
        todo = [b for b in blocks if _touches(tissue, b, f)]
        info["blocks_total"], info["blocks"] = len(blocks), len(todo)
        parts = []
        for block in _progress(todo, progress, path.name):
            (sy, sx) = block.slice_read("YX")
            img = reader.read_scaled(ds, sy.start, sx.start, sy.stop - sy.start, sx.stop - sx.start)
            img = check_channels(img, model.config.n_channel_in, name=str(path))
            inst, _, big = predict_block(model, block, normalize_with(img, *norm), tta=tta,
                                         prob_thresh=prob_thresh, nms_thresh=nms_thresh)
            info["oversized"] += big
            parts.append(inst)
            del img
    info["seconds"] = time.perf_counter() - t0
    return _assemble(model, parts, ls, lv, (H0, W0), scale=ds, info=info)


def _touches(tissue, block, f):
    """Whether a block's read region (working pixels) overlaps the tissue mask (thumbnail pixels)."""
    (sy, sx) = block.slice_read("YX")
    y0, y1 = int(np.floor(sy.start * f)), int(np.ceil(sy.stop * f))
    x0, x1 = int(np.floor(sx.start * f)), int(np.ceil(sx.stop * f))
    return bool(tissue[max(0, y0):max(y0 + 1, y1), max(0, x0):max(x0 + 1, x1)].any())


# ----------------------------------------------------------------------------------------
# a file of either kind


def predict_path(model, path, label_set=None, levels=False, tta=False, mpp=None, level=None, mask=None,
                 block_size=None, progress=False, **kwargs):
    """Predict an image file or a whole slide, whichever :func:`open_input` finds.

    Images are read whole and go to :func:`predict_image` (``mpp``, ``level`` and ``mask``
    apply to slides only and are then refused); slides go to :func:`predict_slide`.
    ``info['kind']`` says which.

    Raises
    ------
    InputError
        Unreadable, truncated or unknown file, wrong number of channels, naming the file.
    """
    opened = open_input(path)
    if opened.kind == "image":
        given = [k for k, v in (("mpp", mpp), ("level", level), ("mask", mask)) if v is not None]
        if given:
            raise InputError(path, f"{', '.join(given)} apply to whole-slide images only; this is an image")
        img = opened.read(model.config.n_channel_in)
        res = predict_image(model, img, label_set=label_set, levels=levels, tta=tta, block_size=block_size,
                            progress=progress, name=str(path), **kwargs)
        res.info.setdefault("mpp", opened.mpp)
    else:
        res = predict_slide(model, path, label_set=label_set, levels=levels, tta=tta, mpp=mpp, level=level,
                            mask=mask, block_size=DEFAULT_BLOCK_SIZE if block_size is None else block_size,
                            progress=progress, **kwargs)
    res.info["kind"] = opened.kind
    return res
