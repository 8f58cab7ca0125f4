"""CoNSeP reader (``Train|Test/Images/*.png`` + ``Labels/*.mat``), original 7 classes.

``--src`` is the ``CoNSeP`` folder (``Train/`` and ``Test/``, any capitalisation), one
split folder (``Images/`` + ``Labels/``), or a flat folder of ``<name>.png`` +
``<name>.mat`` pairs. The split of one such folder is read from its name
(:func:`.base.split_of_folder`: ``CoNSeP/Test`` is ``test``, a folder of other name
``train``) unless ``split`` is given (``prepare --split``). The validation split is drawn from ``train`` by
source image (CoNSeP does not publish which slide each tile came from).

Rules:

* Class ids are CoNSeP's own: 1 other, 2 inflammatory, 3 healthy epithelial,
  4 dysplastic/malignant epithelial, 5 fibroblast, 6 muscle, 7 endothelial.
* Each instance's class is ``inst_type`` in instance-id order: row ``k`` belongs to the
  ``k``-th smallest id of ``inst_map`` (ids need not be contiguous). A length that
  matches neither the number of instances nor the largest id is an error.
* The class is checked against ``type_map`` (majority over the instance's pixels):
  disagreements are counted (``type_map_mismatch``); if most instances disagree,
  ``inst_type`` is not in id order and the file is rejected.
* An alpha channel is stripped; image and ``inst_map`` must have the same size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..patches import instance_classes
from .base import Labelled, ReaderError, Sample, check_split, require_dir, split_of_folder, to_rgb_uint8

NAME = "consep"
LABEL_SET = "consep"
#: where the dataset is downloaded from
DOWNLOAD_URL = "https://warwick.ac.uk/fac/cross_fac/tia/data/hovernet/"
#: pixel size of the images, µm (CoNSeP: 40x, 0.25 µm/px)
PIXEL_SIZE_UM = 0.25
CHUNK = 1
VAL_FROM = "train"
SPLIT_FROM_FOLDER = True
N_CLASSES = 7


def _ci(folder, name):
    """Child of ``folder`` called ``name``, any capitalisation, or None."""
    for p in Path(folder).iterdir():
        if p.is_dir() and p.name.lower() == name.lower():
            return p
    return None


def _pairs(img_dir, lab_dir, src, split, split_folder=""):
    out = []
    pngs = {p.stem: p for p in sorted(Path(img_dir).glob("*.png"))}
    for mat in sorted(Path(lab_dir).glob("*.mat")):
        png = pngs.get(mat.stem)
        rel = lambda p: str(p.relative_to(src)) if p.is_relative_to(src) else str(p)
        out.append(Sample(source=rel(mat), split=split, group=f"{split}/{mat.stem}", patch_id=mat.stem,
                          split_folder=split_folder,
                          tissue="colon", key=(str(png) if png else str(Path(img_dir) / f"{mat.stem}.png"), str(mat))))
    return out


def find_samples(src, split=None):
    """One :class:`Sample` per labelled tile.

    ``split`` (``'train'`` or ``'test'``), if given, is the split of a single split folder
    or flat folder, instead of the one read from its name.
    """
    src = require_dir(src, "CoNSeP folder", "expected 'CoNSeP/Train/Images/*.png' and 'CoNSeP/Train/Labels/*.mat'")
    check_split(split, src)
    samples = []
    splits = [(d, s) for s in ("train", "test") if (d := _ci(src, s)) is not None]
    if splits:
        if split is not None:
            raise ReaderError(src, f"holds the official split folders {[d.name for d, _ in splits]}, which give the "
                                   "splits: leave --split out, or point --src at one of them")
        for d, split_ in splits:
            img, lab = _ci(d, "Images"), _ci(d, "Labels")
            if img is None or lab is None:
                raise ReaderError(d, f"expected 'Images/' and 'Labels/' inside, found {sorted(p.name for p in d.iterdir())}")
            samples += _pairs(img, lab, src, split_, d.name)
    else:
        named = "" if split else src.name
        split = split or split_of_folder(src.name)
        if _ci(src, "Images") is not None and _ci(src, "Labels") is not None:
            samples = _pairs(_ci(src, "Images"), _ci(src, "Labels"), src, split, named)
        else:
            samples = _pairs(src, src, src, split, named)
    if not samples:
        raise ReaderError(src, "no CoNSeP labels found: expected 'Train/Labels/*.mat' (+ 'Train/Images/*.png') "
                               f"or '<name>.mat' + '<name>.png' pairs; the folder holds {sorted(p.name for p in src.iterdir())[:20]}")
    return samples


def read_png(path):
    """An RGB uint8 PNG (alpha stripped)."""
    from skimage.io import imread

    if not Path(path).is_file():
        raise ReaderError(path, "image missing for this label file")
    try:
        return to_rgb_uint8(imread(path), path)
    except ReaderError:
        raise
    except Exception as e:
        raise ReaderError(path, f"corrupt or unreadable image ({type(e).__name__}: {e})") from None


def read_mat(path, keys):
    """The arrays ``keys`` of a MATLAB file, with an error naming the file if any is absent."""
    import scipy.io

    try:
        mat = scipy.io.loadmat(path)
    except Exception as e:
        raise ReaderError(path, f"corrupt or truncated .mat file ({type(e).__name__}: {e})") from None
    missing = [k for k in keys if k not in mat]
    if missing:
        raise ReaderError(path, f"missing key(s) {missing}; it has {sorted(k for k in mat if not k.startswith('__'))}")
    return mat


def classes_from_inst_type(inst, inst_type, type_map, path):
    """``{id: class}`` from ``inst_type`` in instance-id order, checked against ``type_map``.

    Returns
    -------
    classes : dict
    mismatches : int
        Instances whose ``type_map`` majority differs from ``inst_type``.
    """
    ids = np.unique(inst[inst > 0])
    types = np.asarray(inst_type).astype(np.int64).ravel()
    if len(types) == len(ids):
        classes = {int(i): int(t) for i, t in zip(ids, types)}
    elif len(ids) and len(types) == ids.max():
        # contiguous numbering with some ids absent from the map: row k is id k + 1
        classes = {int(i): int(types[i - 1]) for i in ids}
    else:
        raise ReaderError(path, f"inst_type has {len(types)} rows but inst_map has {len(ids)} instances "
                                f"(largest id {int(ids.max()) if len(ids) else 0})")
    bad = sorted({c for c in classes.values() if not 0 <= c <= N_CLASSES})
    if bad:
        raise ReaderError(path, f"inst_type holds class ids {bad} outside CoNSeP's 0..{N_CLASSES}")
    mismatches = 0
    if type_map is not None:
        if type_map.shape != inst.shape:
            raise ReaderError(path, f"type_map {type_map.shape} and inst_map {inst.shape} differ in size")
        maj = instance_classes((inst, type_map))
        mismatches = sum(1 for i, c in classes.items() if maj.get(i) != (c or None))
        if len(ids) >= 4 and mismatches > len(ids) / 2:
            raise ReaderError(path, f"inst_type disagrees with type_map for {mismatches} of {len(ids)} "
                                    "instances: it is not in instance-id order")
    return {i: (c or None) for i, c in classes.items()}, mismatches


def load_sample(sample, cache):
    """Image, instance map and classes of one CoNSeP tile."""
    png, mat_path = sample.key
    mat = read_mat(mat_path, ("inst_map", "inst_type"))
    image = read_png(png)
    inst = np.asarray(mat["inst_map"]).astype(np.int32)
    if inst.shape != image.shape[:2]:
        raise ReaderError(mat_path, f"inst_map {inst.shape} and image {image.shape[:2]} ({png}) differ in size")
    type_map = np.asarray(mat["type_map"]) if "type_map" in mat else None
    classes, mism = classes_from_inst_type(inst, mat["inst_type"], type_map, mat_path)
    return Labelled(image, inst, classes, {"type_map_mismatch": mism})
