"""PanNuke reader (folds of 256x256 patches in ``.npy`` arrays).

Layouts found under ``--src`` (``--src`` may also be one fold folder):

* the release: ``Fold N/images/foldN/images.npy``, ``Fold N/images/foldN/types.npy``,
  ``Fold N/masks/foldN/masks.npy``;
* flattened: ``foldN/{images,masks,types}.npy`` (``fold0..2``, CellViT's 0-based
  naming, is recognised when a ``fold0`` folder exists and shifted to ``fold1..3``).

Splits are the official folds ``fold1``, ``fold2``, ``fold3``. PanNuke gives no source
slide per patch, so no validation split is carved out of a fold (patches of one slide
would leak across it); use one fold for validation, as the PanNuke protocol does.

Arrays: ``images`` (N, 256, 256, 3) float64 0..255; ``masks`` (N, 256, 256, 6) float64,
channels 0-4 instance ids of Neoplastic, Inflammatory, Connective, Dead, Epithelial and
channel 5 background; ``types`` (N,) tissue strings. They are opened with
``mmap_mode='r'`` once per chunk of patches and released after it, so resident memory
does not grow with the fold.

Rules (each counted in the summary):

* Class id = mask channel + 1 (label set ``pannuke``).
* Instance ids are not per patch: each channel is relabelled on its own, with an offset
  per channel, so equal ids in two channels stay two nuclei.
* ``overlap_px``: a pixel > 0 in two class channels belongs to no single nucleus; it
  becomes ignore (``-1``), so no loss is computed on it.
* ``void_px``: a pixel set in no channel at all (neither a class nor background) is
  unlabelled: ignore (``-1``). A patch that is entirely void holds no label at all and
  is skipped ("void patch").
* ``split_pieces``: an id made of several 8-connected pieces keeps its largest piece
  as the nucleus; the other pieces become ignore (a StarDist nucleus is one star-convex
  region, and which piece is the real nucleus is unknown).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from .base import Labelled, ReaderError, Sample, SkipSample, to_rgb_uint8

NAME = "pannuke"
LABEL_SET = "pannuke"
#: where the dataset is downloaded from
DOWNLOAD_URL = "https://warwick.ac.uk/fac/cross_fac/tia/data/pannuke"
#: pixel size of the images, µm (PanNuke: 40x, 0.25 µm/px (reference/datasets.md))
PIXEL_SIZE_UM = 0.25
CHUNK = 16
VAL_FROM = None
CLASS_NAMES = ("neoplastic", "inflammatory", "connective", "dead", "epithelial")


def _fold_files(folder):
    """(images, masks, types) paths of one fold folder in either layout, or None."""
    folder = Path(folder)
    flat = folder / "images.npy", folder / "masks.npy", folder / "types.npy"
    if flat[0].is_file() or flat[1].is_file():
        return flat
    imgs = sorted(folder.glob("images/*/images.npy"))
    masks = sorted(folder.glob("masks/*/masks.npy"))
    if imgs or masks:
        i = imgs[0] if imgs else folder / "images" / "?" / "images.npy"
        m = masks[0] if masks else folder / "masks" / "?" / "masks.npy"
        t = i.parent / "types.npy"
        return i, m, t
    return None


def find_folds(src):
    """``{split name: (images, masks, types)}`` of the folds under ``src``."""
    src = Path(src)
    if not src.is_dir():
        from .base import require_dir

        require_dir(src, "PanNuke folder", "expected 'Fold 1/images/fold1/images.npy' ... or 'fold1/images.npy'")
    folds = {}
    candidates = [src] + sorted(p for p in src.iterdir() if p.is_dir())
    zero_based = any(p.name.lower() == "fold0" for p in candidates[1:])
    for folder in candidates:
        files = _fold_files(folder)
        if files is None:
            continue
        m = re.search(r"(\d+)\s*$", folder.name)
        num = int(m.group(1)) + (1 if zero_based and folder is not src else 0) if m else 1
        folds[f"fold{num}"] = files
        if folder is src:
            break  # --src is a single fold
    if not folds:
        names = sorted(p.name for p in src.iterdir())[:20]
        raise ReaderError(src, "no PanNuke fold found: expected 'Fold 1/images/fold1/images.npy' and "
                               f"'Fold 1/masks/fold1/masks.npy' (or 'fold1/images.npy'); the folder holds {names}")
    return folds


def _open(path, what, mmap=True):
    if not Path(path).is_file():
        raise ReaderError(path, f"{what} missing (the fold folder has {sorted(p.name for p in Path(path).parent.glob('*'))})")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except Exception as e:  # truncated files fail in several ways (ValueError, OSError, EOFError)
        raise ReaderError(path, f"corrupt or truncated .npy file ({e})") from None


def _fold_samples(src, split, ipath, mpath, tpath):
    images = _open(ipath, "images.npy")
    masks = _open(mpath, "masks.npy")
    if images.ndim != 4 or images.shape[1:] != (256, 256, 3):
        raise ReaderError(ipath, f"expected (N, 256, 256, 3) images, got {images.shape}")
    if masks.ndim != 4 or masks.shape[1:] != (256, 256, 6):
        raise ReaderError(mpath, f"expected (N, 256, 256, 6) masks, got {masks.shape}")
    if len(images) != len(masks):
        raise ReaderError(mpath, f"{len(masks)} masks for {len(images)} images in {ipath}")
    n = len(images)
    del images, masks  # only the shapes were needed here
    if Path(tpath).is_file():
        types = _open(tpath, "types.npy", mmap=False)
        if len(types) != n:
            raise ReaderError(tpath, f"{len(types)} tissue types for {n} patches")
        types = [str(t) for t in types]
    else:
        types = [""] * n
    rel = Path(ipath).relative_to(src) if Path(ipath).is_relative_to(src) else Path(ipath)
    return [Sample(source=f"{rel}[{i}]", split=split, group=f"{split}/{i}", patch_id=f"{split}_{i:05d}",
                   tissue=types[i], key=(str(ipath), str(mpath), i), pretiled=True) for i in range(n)]


def find_samples(src, on_bad=None):
    """One :class:`Sample` per patch of every fold (arrays are only opened to check shapes).

    ``on_bad(path, problem)``, if given, is called for a fold whose files are bad, and
    that fold is left out; without it the :class:`ReaderError` is raised.
    """
    src = Path(src)
    samples = []
    for split, (ipath, mpath, tpath) in sorted(find_folds(src).items()):
        try:
            samples += _fold_samples(src, split, ipath, mpath, tpath)
        except ReaderError as e:
            if on_bad is None:
                raise
            on_bad(e.path, e.problem)
    return samples


def convert_mask(masks6):
    """Instance map and classes of one PanNuke mask by the rules of the module docstring.

    Parameters
    ----------
    masks6 : numpy.ndarray
        ``(H, W, 6)`` mask of one patch (any numeric dtype).

    Returns
    -------
    inst : numpy.ndarray
        ``(H, W)`` int32, 0 background, 1..n nuclei, -1 ignore.
    classes : dict
        ``{instance id: class id 1..5}``.
    notes : dict
        Pixel / piece counts of each rule.

    Raises
    ------
    SkipSample
        For an entirely void patch.
    """
    from skimage.measure import label

    from ..patches import dense_ids

    masks6 = np.asarray(masks6)
    # one contiguous int32 plane per class channel; the per-pixel combinations below are
    # written as plane-by-plane ufuncs, far faster than numpy reductions over a short axis
    planes = []
    for c in range(5):
        p = masks6[..., c]
        planes.append((np.rint(p) if p.dtype.kind == "f" else p).astype(np.int32))
    n_present = np.zeros(planes[0].shape, np.int8)
    val = np.zeros(planes[0].shape, np.int64)
    chan = np.zeros(planes[0].shape, np.int64)
    top = 1
    for c, p in enumerate(planes):
        on = p > 0
        n_present += on
        np.maximum(val, p, out=val)
        chan[on] = c
        top = max(top, int(p.max()) + 1)
    void = (n_present == 0) & ~(masks6[..., 5] > 0)
    if void.all():
        raise SkipSample("void patch: no class and no background pixel")
    # channel-wise relabelling: key = channel * (max id + 1) + id is unique across channels;
    # where exactly one channel is set, that channel's id is the maximum over channels
    overlap = n_present > 1
    key = np.where(n_present == 1, chan * top + val, 0)
    keys, rank = dense_ids(key)
    inst = rank.astype(np.int32)
    if keys[0] != 0:
        inst += 1
        keys = np.r_[0, keys]
    # class id = channel + 1, recovered from each key
    cls_of = keys // top + 1
    # pieces of one id: skimage's label joins only neighbouring pixels of equal value
    pieces = label(inst, background=0, connectivity=2)
    n_split = 0
    if pieces.max() > len(keys) - 1:
        owner = np.zeros(pieces.max() + 1, np.int64)
        owner[pieces.ravel()] = inst.ravel()
        sizes = np.bincount(pieces.ravel())
        sizes[0] = 0
        # per owner id, the piece with the most pixels (ties: the first piece) is kept
        order = np.lexsort((np.arange(len(sizes)), -sizes, owner))
        first = np.r_[True, owner[order][1:] != owner[order][:-1]]
        keep = np.zeros(len(sizes), bool)
        keep[order[first]] = True
        n_split = int((~keep[1:]).sum())
        inst[(pieces > 0) & ~keep[pieces]] = -1
    inst[overlap | void] = -1
    present_ids, _ = dense_ids(inst[inst > 0])
    classes = {int(i): int(cls_of[i]) for i in present_ids.tolist()}
    return inst, classes, {"overlap_px": int(overlap.sum()), "void_px": int(void.sum()), "split_pieces": n_split}


def load_sample(sample, cache):
    """Image, instance map and classes of one patch (memory maps kept in ``cache``)."""
    ipath, mpath, i = sample.key
    if ipath not in cache:
        cache[ipath] = _open(ipath, "images.npy")
    if mpath not in cache:
        cache[mpath] = _open(mpath, "masks.npy")
    try:
        image = np.array(cache[ipath][i])
        masks = np.array(cache[mpath][i])
    except (OSError, ValueError) as e:
        raise ReaderError(f"{mpath}[{i}]", f"cannot read patch ({e})") from None
    image = to_rgb_uint8(image, f"{ipath}[{i}]")
    inst, classes, notes = convert_mask(masks)
    return Labelled(image, inst, classes, notes)
