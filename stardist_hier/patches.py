"""The common patch format that every dataset is converted to, and its loader.

Layout
------
::

    <root>/<dataset>/index.csv                      one row per patch (see below)
    <root>/<dataset>/<split>/images/<patch_id>.tif  RGB uint8, (256, 256, 3)
    <root>/<dataset>/<split>/masks/<patch_id>.tif   int32, (256, 256, 2)

Mask channels (as in the paper):

* channel 0: instance ids, ``0`` background, ``1..n`` nuclei (relabelled per patch),
  negative (``-1``) = ignore region: no loss is computed there (StarDist's convention).
  Padding, MoNuSAC "Ambiguous" regions and unlabelled pixels are ignore regions.
* channel 1: class ids in the dataset's *own* label ids (``0`` background). Every pixel
  of a nucleus carries the nucleus's class; a nucleus of unknown class is class 0.

``index.csv`` columns: ``patch_id, split, source, offset_y, offset_x, tissue,
label_set, n_nuclei, n_class_<k>`` (one column per class id ``k`` of the label set)
and ``n_unknown`` (nuclei without class), so every patch can be traced back to the
file and position it was cut from.

This module is plain numpy / tifffile / pandas: data preparation never imports TensorFlow.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .atomic import atomic_save, atomic_write_text
from .masks import IGNORE, class_counts, dense_ids, instance_classes, paint_classes, relabel_instances

__all__ = [
    "PATCH_SIZE", "IGNORE", "PatchFormatError",
    "patch_path", "write_patch", "read_patch", "patch_exists", "list_patches", "list_splits",
    "write_index", "read_index", "index_path", "prepare_command", "PUBLISHED_DATASETS",
    "instance_classes", "class_counts", "relabel_instances", "paint_classes", "dense_ids",
    "tile_offsets", "tile_sample", "load_split", "normalize_image", "NORMALIZE_PERCENTILES",
]

PATCH_SIZE = 256

class PatchFormatError(ValueError):
    """A patch, an index or a patch folder that does not follow the format above."""


# ----------------------------------------------------------------------------------------
# paths, writing and reading


def patch_path(root, dataset, split, kind, patch_id):
    """Path of one patch file; ``kind`` is ``'images'`` or ``'masks'``."""
    if kind not in ("images", "masks"):
        raise ValueError(f"kind must be 'images' or 'masks', got {kind!r}")
    return Path(root) / str(dataset) / str(split) / kind / f"{patch_id}.tif"


def _atomic_imwrite(path, array, **kwargs):
    import tifffile

    atomic_save(path, lambda tmp: tifffile.imwrite(tmp, array, **kwargs))


def _compress(name):
    if name is None:
        return {}
    return {"compression": name, "compressionargs": {"level": 1}} if name == "zlib" else {"compression": name}


def _check_patch(image, mask, size=None):
    image = np.asarray(image)
    mask = np.asarray(mask)
    if image.ndim != 3 or image.shape[2] != 3:
        raise PatchFormatError(f"image must be HxWx3 RGB, got shape {image.shape}")
    if image.dtype != np.uint8:
        raise PatchFormatError(f"image must be uint8, got {image.dtype}")
    if mask.ndim != 3 or mask.shape[2] != 2:
        raise PatchFormatError(f"mask must be HxWx2 (instance ids, class ids), got shape {mask.shape}")
    if mask.shape[:2] != image.shape[:2]:
        raise PatchFormatError(f"image {image.shape[:2]} and mask {mask.shape[:2]} differ in size")
    if size is not None and image.shape[:2] != (size, size):
        raise PatchFormatError(f"patches are {size}x{size}, got {image.shape[:2]}")
    if not np.issubdtype(mask.dtype, np.integer):
        raise PatchFormatError(f"mask must be integer, got {mask.dtype}")
    return image, mask.astype(np.int32, copy=False)


def write_patch(out_root, dataset, split, patch_id, image, mask, image_compression=None, mask_compression="zlib",
                size=PATCH_SIZE):
    """Write one patch (image, then mask), each atomically.

    Parameters
    ----------
    out_root : str or path-like
        Root of the converted datasets.
    dataset, split, patch_id : str
        Where the patch goes: ``<out_root>/<dataset>/<split>/{images,masks}/<patch_id>.tif``.
    image : numpy.ndarray
        ``(256, 256, 3)`` RGB uint8.
    mask : numpy.ndarray
        ``(256, 256, 2)`` integer: instance ids (negative = ignore) and class ids.
    image_compression, mask_compression : str or None
        Lossless TIFF compression (``None``: raw). Images are raw by default: H&E gains
        only ~15% from zlib at several times the write time, and raw TIFFs read fastest
        in training. Masks are zlib level 1 (about 100x smaller, ~1 ms).
    size : int or None
        Required side length (the format's 256); other sizes are for small test and demo
        data, ``None`` accepts any size.

    Returns
    -------
    tuple of pathlib.Path
        The image and mask paths.
    """
    image, mask = _check_patch(image, mask, size)
    ipath = patch_path(out_root, dataset, split, "images", patch_id)
    mpath = patch_path(out_root, dataset, split, "masks", patch_id)
    # The mask goes last: patch_exists() tests the mask, so a patch counts as finished
    # only once both files are in place.
    # one strip per file: tifffile's default of one row per strip costs 256 compress calls
    _atomic_imwrite(ipath, image, photometric="rgb", rowsperstrip=image.shape[0], **_compress(image_compression))
    _atomic_imwrite(mpath, mask, photometric="minisblack", planarconfig="contig", rowsperstrip=mask.shape[0],
                    **_compress(mask_compression))
    return ipath, mpath


def patch_exists(root, dataset, split, patch_id):
    """True if both files of a patch are in place (a finished patch)."""
    return (patch_path(root, dataset, split, "masks", patch_id).is_file()
            and patch_path(root, dataset, split, "images", patch_id).is_file())


def read_patch(root, dataset, split, patch_id):
    """Read one patch.

    Returns
    -------
    image : numpy.ndarray
        ``(256, 256, 3)`` uint8.
    mask : numpy.ndarray
        ``(256, 256, 2)`` int32.
    """
    import tifffile

    ipath = patch_path(root, dataset, split, "images", patch_id)
    mpath = patch_path(root, dataset, split, "masks", patch_id)
    for p in (ipath, mpath):
        if not p.is_file():
            raise FileNotFoundError(f"patch file missing: {p}")
    image, mask = _read_tiff(ipath), _read_tiff(mpath)
    if mask.ndim == 3 and mask.shape[0] == 2 and mask.shape[2] != 2:
        mask = np.moveaxis(mask, 0, -1)  # written planar by another tool
    try:
        return _check_patch(image, mask)
    except PatchFormatError as e:
        # name the file at fault: the image for image problems, else the mask
        culprit = ipath if str(e).startswith("image must") else mpath
        raise PatchFormatError(f"{culprit}: {e}") from None


_REMAKE = "delete it and rerun the command that made it (`stardist-hier prepare` or `synth`) to remake it"


def _read_tiff(path):
    """One patch file, or a :class:`PatchFormatError` naming it and what is wrong with it."""
    import logging

    import tifffile

    log = logging.getLogger("tifffile")
    level = log.level
    log.setLevel(logging.CRITICAL)  # a TIFF cut after its header is logged, then read as empty: reported below
    try:
        a = tifffile.imread(path)
    except Exception as e:  # tifffile raises several types for damaged files
        raise PatchFormatError(f"{path}: corrupt or truncated TIFF ({Path(path).stat().st_size} bytes; "
                               f"{type(e).__name__}: {e}); {_REMAKE}") from None
    finally:
        log.setLevel(level)
    if a.size == 0:
        raise PatchFormatError(f"{path}: truncated or empty TIFF (no image data in its {Path(path).stat().st_size} "
                               f"bytes); {_REMAKE}")
    return a


def list_splits(root, dataset):
    """Splits present for a dataset (sorted folder names that contain ``masks/``)."""
    d = Path(root) / str(dataset)
    if not d.is_dir():
        return []
    return sorted(p.name for p in d.iterdir() if (p / "masks").is_dir())


def list_patches(root, dataset, split):
    """Sorted ids of the finished patches of one split (empty list if there are none)."""
    d = Path(root) / str(dataset) / str(split) / "masks"
    if not d.is_dir():
        return []
    return sorted(p.stem for p in d.glob("*.tif")
                  if not p.name.startswith(".") and patch_path(root, dataset, split, "images", p.stem).is_file())


# ----------------------------------------------------------------------------------------
# index


#: The published datasets that ``stardist-hier prepare <name>`` converts (one reader module
#: each in :mod:`stardist_hier.readers`); any other dataset is the user's own.
PUBLISHED_DATASETS = ("pannuke", "monusac", "consep", "monuseg", "lizard", "conic")


def prepare_command(dataset, root):
    """The command that makes the prepared dataset ``dataset`` under ``root`` (for error messages)."""
    if str(dataset) in PUBLISHED_DATASETS:
        return f"stardist-hier prepare {dataset} --src <folder of the {dataset} download> --out {root}"
    return (f"stardist-hier prepare folder --images <images> --masks <masks> --dataset {dataset} "
            f"--label-set <label set> --out {root} (or prepare qupath --src <folder> with the same options)")



def index_path(root, dataset):
    """Path of a dataset's ``index.csv``."""
    return Path(root) / str(dataset) / "index.csv"


def write_index(root, dataset, rows):
    """Write ``index.csv`` (atomically) from a list of row dicts or a DataFrame; returns the path."""
    import pandas as pd

    df = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    front = ["patch_id", "split", "source", "offset_y", "offset_x", "tissue", "label_set", "n_nuclei"]
    if not len(df.columns):
        df = pd.DataFrame(columns=front)  # a run that kept no patch still writes a readable header
    cls_cols = sorted((c for c in df.columns if c.startswith("n_class_")), key=lambda c: int(c[8:]))
    rest = [c for c in df.columns if c not in front and c not in cls_cols]
    cols = [c for c in front if c in df.columns] + cls_cols + rest
    if len(df):
        df = df[cols].sort_values(["split", "patch_id"], kind="stable")
        for c in cls_cols + [c for c in ("n_nuclei", "n_unknown") if c in df.columns]:
            df[c] = df[c].fillna(0).astype(int)
    return atomic_write_text(index_path(root, dataset), df.to_csv(index=False))


def read_index(root, dataset):
    """A dataset's ``index.csv`` as a :class:`pandas.DataFrame` (one row per patch)."""
    import pandas as pd

    path = index_path(root, dataset)
    if not path.is_file():
        raise FileNotFoundError(
            f"no index for dataset '{dataset}': {path} does not exist; convert it with "
            f"`{prepare_command(dataset, root)}`"
        )
    return pd.read_csv(path, dtype={"patch_id": str, "split": str, "source": str, "tissue": str})


# ----------------------------------------------------------------------------------------
# tiling


def tile_offsets(length, size=PATCH_SIZE, stride=None):
    """Start offsets that cover ``[0, length)`` with windows of ``size``.

    Windows advance by ``stride`` (default ``size``: no overlap); the last one is aligned
    to the end so the whole length is covered without padding. A length of at most
    ``size`` gives ``[0]`` (that window is padded by :func:`tile_sample`).
    """
    stride = size if stride is None else int(stride)
    if not 1 <= stride <= size:
        raise ValueError(f"stride must be in 1..{size} (a larger step would leave gaps between tiles), got {stride}")
    if length <= size:
        return [0]
    starts = list(range(0, length - size + 1, stride))
    if starts[-1] != length - size:
        starts.append(length - size)
    return starts


def tile_sample(image, inst, classes, size=PATCH_SIZE, stride=None):
    """Cut one labelled image into ``size x size`` patches in the patch format.

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W, 3)`` uint8 RGB.
    inst : numpy.ndarray
        ``(H, W)`` instance ids; 0 background, negative = ignore region.
    classes : dict or numpy.ndarray
        ``{instance id: class id or None}`` or an ``(H, W)`` class map. The class is
        fixed per nucleus on the *whole* image before cutting, so a nucleus cut by a tile
        edge keeps its class even if the cut-off part held most of a mixed labelling.
    size : int
        Patch size.
    stride : int, optional
        Step between tiles (default ``size``); the last tile is aligned to the edge.

    Yields
    ------
    offset_y, offset_x : int
        Top-left corner of the tile in the source image.
    image : numpy.ndarray
        ``(size, size, 3)`` uint8; padding (images smaller than ``size``) is zero.
    mask : numpy.ndarray
        ``(size, size, 2)`` int32; instance ids relabelled ``1..n`` per tile (a nucleus
        touching several tiles appears in each), padding marked ``IGNORE``.
    """
    image = np.asarray(image)
    inst = np.asarray(inst)
    if image.shape[:2] != inst.shape[:2]:
        raise PatchFormatError(f"image {image.shape[:2]} and instance mask {inst.shape[:2]} differ in size")
    cls = paint_classes(inst, classes)
    h, w = inst.shape
    ph, pw = max(size - h, 0), max(size - w, 0)
    if ph or pw:
        # padding is invented: ignore, so no loss is computed there
        image = np.pad(image, ((0, ph), (0, pw), (0, 0)))
        inst = np.pad(inst, ((0, ph), (0, pw)), constant_values=IGNORE)
        cls = np.pad(cls, ((0, ph), (0, pw)))
    for oy in tile_offsets(h, size, stride):
        for ox in tile_offsets(w, size, stride):
            ti = inst[oy:oy + size, ox:ox + size]
            mask = np.empty((size, size, 2), np.int32)
            mask[..., 0] = relabel_instances(ti)
            mask[..., 1] = np.where(mask[..., 0] > 0, cls[oy:oy + size, ox:ox + size], 0)
            yield oy, ox, np.ascontiguousarray(image[oy:oy + size, ox:ox + size]), mask


# ----------------------------------------------------------------------------------------
# normalisation and loading for training

#: Lower and upper percentiles (per channel) that :func:`normalize_image` maps to 0 and 1,
#: as in StarDist's H&E examples.
NORMALIZE_PERCENTILES = (1.0, 99.8)


def normalize_image(img):
    """Normalise an RGB image for training or prediction, as StarDist's examples do.

    ``csbdeep.utils.normalize(img, 1, 99.8, axis=(0, 1))``: per channel, the 1st and 99.8th
    percentiles map to 0 and 1. Training (:func:`load_split`), evaluation and prediction
    all call this one function, so a model always sees images normalised the same way.

    Returns
    -------
    numpy.ndarray
        float32, same shape as ``img``.
    """
    from csbdeep.utils import normalize

    lo, hi = NORMALIZE_PERCENTILES
    return normalize(img, lo, hi, axis=(0, 1), dtype=np.float32)


def load_split(root, dataset, split, normalize=True, ids=None, label_set=None):
    """Load one split of a prepared dataset, ready for ``HierStarDist2D.train``.

    This is the one loader of prepared data: the experiment runner, the claim study and
    users call it, so training sees images normalised exactly as evaluation and prediction
    normalise them (:func:`normalize_image`).

    Parameters
    ----------
    root : str or path-like
        The ``--out`` folder of ``stardist-hier prepare``.
    dataset : str
        Dataset folder name (``'pannuke'``, ``'monusac'``, ...).
    split : str
        Split folder name (``'train'``, ``'val'``, ``'test'``, ``'fold1'``, ...).
    normalize : bool
        Normalise every image with :func:`normalize_image` (float32, what a model expects);
        ``False`` returns the stored uint8 images.
    ids : sequence of str, optional
        Patch ids to load, in this order (default: every finished patch of the split, sorted).
    label_set : str, LabelSet or None
        If given, every class id is checked against this label set (a name is looked up
        in the default hierarchy), so a mismatch fails here rather than in training.

    Returns
    -------
    X : list of numpy.ndarray
        ``(H, W, 3)`` images: float32 normalised, or uint8 with ``normalize=False``.
    Y : list of numpy.ndarray
        ``(H, W)`` int32 instance masks (negative = ignore).
    classes : list of dict
        Per image ``{instance id: class id or None}``; pass as
        ``HierStarDist2D.train(X, Y, classes=classes, dataset=<label set name>)``.

    Raises
    ------
    FileNotFoundError
        No such split (the message lists the splits present and the command that makes them),
        or a requested patch id that is not there.
    """
    root = Path(root)
    folder = root / str(dataset) / str(split)
    present = list_patches(root, dataset, split)
    if not present:
        have = list_splits(root, dataset)
        what = (f"splits present: {have}" if have else f"dataset '{dataset}' has not been prepared under {root}")
        raise FileNotFoundError(
            f"no patches in {folder} ({what}); convert the dataset with `{prepare_command(dataset, root)}`"
        )
    if ids is None:
        ids = present
    else:
        ids = [str(i) for i in ids]
        missing = sorted(set(ids) - set(present))
        if missing:
            raise FileNotFoundError(f"{len(missing)} requested patch(es) not in {folder}, e.g. '{missing[0]}'")
    checker = None
    if label_set is not None:
        from .hierarchy import ClassHierarchy, LabelSet

        checker = label_set if isinstance(label_set, LabelSet) else ClassHierarchy.default().label_set(label_set)
    X, Y, C = [], [], []
    for pid in ids:
        image, mask = read_patch(root, dataset, split, pid)
        if checker is not None:
            checker.check_class_ids(mask[..., 1], where=str(patch_path(root, dataset, split, "masks", pid)))
        X.append(normalize_image(image) if normalize else image)
        Y.append(np.ascontiguousarray(mask[..., 0]))
        C.append(instance_classes(mask))
    return X, Y, C
