"""Lizard (20x, ``inst_map`` + ``id``/``class``) and CoNIC (``images.npy``/``labels.npy``) readers.

Lizard
------
``--src`` holds, at any depth, the images (``Lizard_Images1/*.png``,
``Lizard_Images2/*.png``), the labels (``Lizard_Labels/Labels/<name>.mat``) and optionally
``info.csv`` (``Filename,Source,Split``). With ``info.csv`` the splits are its official
folds ``fold1..fold3``, and no validation is carved out (use a fold); without it all
images are ``train`` and validation is drawn by source image.

Rule: classes go through ``id``, not row order: the nucleus whose ``inst_map`` value is
``id[k]`` has class ``class[k]``. Class ids are Lizard's (1 neutrophil, 2 epithelial,
3 lymphocyte, 4 plasma, 5 eosinophil, 6 connective); others are an error. A nucleus
whose id is not listed keeps class ``None`` (counted as ``unlisted_ids``).

CoNIC
-----
``--src`` holds ``images.npy`` (N, 256, 256, 3) uint8, ``labels.npy`` (N, 256, 256, 2)
(instance map, class map with Lizard ids) and optionally ``patch_info.csv`` (one
column, ``<source image>-<patch number>``). The arrays are memory-mapped. Each nucleus's
class is the majority of the class map over its pixels. CoNIC has no official split:
everything is ``train`` and validation is drawn by source image from ``patch_info.csv``
(without it every patch is its own group, which a warning points out).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from .base import Labelled, ReaderError, Sample, require_dir, to_rgb_uint8
from ..patches import instance_classes
from .consep import read_mat, read_png

NAME = "lizard"
LABEL_SET = "lizard"
#: where the dataset is downloaded from
DOWNLOAD_URL = "https://warwick.ac.uk/fac/cross_fac/tia/data/lizard/"
#: pixel size of the images, µm (Lizard: 20x, about 0.5 µm/px)
PIXEL_SIZE_UM = 0.5
CHUNK = 1
VAL_FROM = "train"  # replaced by None when info.csv gives the folds (see find_samples)
N_CLASSES = 6


def _read_info(src):
    import pandas as pd

    found = sorted(Path(src).rglob("info.csv"))
    if not found:
        return None
    try:
        info = pd.read_csv(found[0])
    except Exception as e:
        raise ReaderError(found[0], f"unreadable CSV ({e})") from None
    if not {"Filename", "Split"} <= set(info.columns):
        raise ReaderError(found[0], f"expected columns Filename, Source, Split; got {list(info.columns)}")
    return {str(r.Filename): (int(r.Split), str(getattr(r, "Source", ""))) for r in info.itertuples()}


def find_samples(src):
    """One :class:`Sample` per labelled Lizard image."""
    src = require_dir(src, "Lizard folder", "expected 'lizard_labels/Lizard_Labels/Labels/*.mat' and the image folders")
    mats = sorted(src.rglob("*.mat"))
    if not mats:
        raise ReaderError(src, f"no Lizard label file (*.mat) found; the folder holds {sorted(p.name for p in src.iterdir())[:20]}")
    pngs = {p.stem: p for p in src.rglob("*.png")}
    info = _read_info(src)
    samples = []
    for mat in mats:
        split = "train"
        if info is not None:
            if mat.stem not in info:
                raise ReaderError(mat, "not listed in info.csv")
            split = f"fold{info[mat.stem][0]}"
        png = pngs.get(mat.stem)
        samples.append(Sample(source=str(mat.relative_to(src)), split=split, group=mat.stem, patch_id=mat.stem,
                              tissue="colon", key=(str(png) if png else str(mat.with_suffix(".png")), str(mat))))
    return samples


def val_from(samples):
    """Split the validation split is carved from: none when the official folds are used."""
    return None if any(s.split.startswith("fold") for s in samples) else "train"


def classes_from_ids(inst, ids, cls, path):
    """``{instance id: class}`` through the ``id`` column; returns (classes, unlisted count)."""
    ids = np.asarray(ids).astype(np.int64).ravel()
    cls = np.asarray(cls).astype(np.int64).ravel()
    if len(ids) != len(cls):
        raise ReaderError(path, f"'id' has {len(ids)} rows but 'class' has {len(cls)}")
    bad = sorted(set(cls.tolist()) - set(range(1, N_CLASSES + 1)))
    if bad:
        raise ReaderError(path, f"class ids {bad} outside Lizard's 1..{N_CLASSES}")
    table = dict(zip(ids.tolist(), cls.tolist()))
    present = np.unique(inst[inst > 0]).tolist()
    classes = {int(i): table.get(int(i)) for i in present}
    return classes, sum(1 for i in present if i not in table)


def load_sample(sample, cache):
    """Image, instance map and classes of one Lizard image."""
    png, mat_path = sample.key
    mat = read_mat(mat_path, ("inst_map", "id", "class"))
    image = read_png(png)
    inst = np.asarray(mat["inst_map"]).astype(np.int32)
    if inst.shape != image.shape[:2]:
        raise ReaderError(mat_path, f"inst_map {inst.shape} and image {image.shape[:2]} ({png}) differ in size")
    classes, unlisted = classes_from_ids(inst, mat["id"], mat["class"], mat_path)
    return Labelled(image, inst, classes, {"unlisted_ids": unlisted})


# ----------------------------------------------------------------------------------------
# CoNIC


def _conic_open(path, what):
    if not Path(path).is_file():
        raise ReaderError(path, f"{what} missing; the folder holds {sorted(p.name for p in Path(path).parent.iterdir())[:20]}")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as e:
        raise ReaderError(path, f"corrupt or truncated .npy file ({e})") from None


def _conic_locate(src):
    for cand in [src] + sorted(p for p in src.rglob("*") if p.is_dir()):
        if (cand / "images.npy").is_file() or (cand / "labels.npy").is_file():
            return cand
    raise ReaderError(src, "no CoNIC arrays found: expected 'images.npy' and 'labels.npy'; "
                           f"the folder holds {sorted(p.name for p in src.iterdir())[:20]}")


def conic_find_samples(src):
    """One :class:`Sample` per CoNIC patch."""
    src = require_dir(src, "CoNIC folder", "expected 'images.npy', 'labels.npy' (and 'patch_info.csv')")
    folder = _conic_locate(src)
    ipath, lpath = folder / "images.npy", folder / "labels.npy"
    images, labels = _conic_open(ipath, "images.npy"), _conic_open(lpath, "labels.npy")
    if images.ndim != 4 or images.shape[3] not in (3, 4):
        raise ReaderError(ipath, f"expected (N, H, W, 3) images, got {images.shape}")
    if labels.ndim != 4 or labels.shape[3] != 2:
        raise ReaderError(lpath, f"expected (N, H, W, 2) labels (instances, classes), got {labels.shape}")
    if labels.shape[:3] != images.shape[:3]:
        raise ReaderError(lpath, f"labels {labels.shape[:3]} and images {images.shape[:3]} ({ipath}) differ")
    n, shape = len(images), images.shape
    del images, labels
    info_path = folder / "patch_info.csv"
    if info_path.is_file():
        import pandas as pd

        try:
            info = pd.read_csv(info_path)
        except Exception as e:
            raise ReaderError(info_path, f"unreadable CSV ({e})") from None
        names = [str(v) for v in info.iloc[:, 0]]
        if len(names) != n:
            raise ReaderError(info_path, f"{len(names)} rows for {n} patches")
    else:
        warnings.warn(f"{info_path} missing: the validation split cannot group patches by source image", stacklevel=2)
        names = [f"patch-{i:05d}" for i in range(n)]
    rel = str(ipath.relative_to(src))
    pretiled = shape[1:3] == (256, 256)
    return [Sample(source=f"{rel}[{i}]", split="train", group=name.rsplit("-", 1)[0] if info_path.is_file() else name,
                   patch_id=f"{name}" if info_path.is_file() else f"conic_{i:05d}", tissue="colon",
                   key=(str(ipath), str(lpath), i), pretiled=pretiled)
            for i, name in enumerate(names)]


def conic_load_sample(sample, cache):
    """Image, instance map and classes (class-map majority) of one CoNIC patch."""
    ipath, lpath, i = sample.key
    for p, what in ((ipath, "images.npy"), (lpath, "labels.npy")):
        if p not in cache:
            cache[p] = _conic_open(p, what)
    try:
        image = np.array(cache[ipath][i])
        lab = np.array(cache[lpath][i]).astype(np.int64)
    except (OSError, ValueError) as e:
        raise ReaderError(f"{lpath}[{i}]", f"cannot read patch ({e})") from None
    image = to_rgb_uint8(image, f"{ipath}[{i}]")
    bad = sorted(set(np.unique(lab[..., 1]).tolist()) - set(range(N_CLASSES + 1)))
    if bad:
        raise ReaderError(f"{lpath}[{i}]", f"class ids {bad} outside Lizard/CoNIC's 0..{N_CLASSES}")
    inst = lab[..., 0].astype(np.int32)
    return Labelled(image, inst, instance_classes((inst, lab[..., 1])), {})


class _ConicReader:
    """The CoNIC reader, with the same attributes as a reader module."""

    NAME = "conic"
    LABEL_SET = "conic"
    DOWNLOAD_URL = "https://conic-challenge.grand-challenge.org/"
    PIXEL_SIZE_UM = 0.5  # CoNIC's patches are Lizard's 20x images
    CHUNK = 32
    VAL_FROM = "train"
    find_samples = staticmethod(conic_find_samples)
    load_sample = staticmethod(conic_load_sample)


conic = _ConicReader()
