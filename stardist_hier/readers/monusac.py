"""MoNuSAC 2020 reader (patient folders of ``.tif``/``.svs`` + ImageScope ``.xml``).

Layout under ``--src``: the training folder ``MoNuSAC_images_and_annotations/`` and/or the
test folder ``MoNuSAC Testing Data and Annotations/`` (either may also be ``--src``
itself), each holding ``<patient>/<patient>_<n>.{tif,svs,xml}``. Split: the release's two
folder names are ``train`` and ``test``; any other folder's split is read from its name
(:func:`.base.split_of_folder`: ``test`` when a word of it starts with "test", else
``train``) unless ``split`` is given (``prepare --split``); the conversion summary lists
which folder went to which split. The seeded validation split is drawn from ``train`` by
patient (the first 12 characters of the TCGA barcode, ``TCGA-XX-XXXX``).

Rules:

* Class = ``Attribute@Name`` of each Annotation layer (see :mod:`.imagescope`), matched
  case-insensitively: Epithelial 1, Lymphocyte 2, Neutrophil 3, Macrophage 4 (the official
  MoNuSAC numbering). Any other name is an error naming the file and the name.
* "Ambiguous" layers (test set) are ignore regions (``-1``), never nuclei.
* Sub-image suffixes ``_1`` and ``_001`` denote the same number: an ``.xml`` is paired with
  the image whose stem has the same prefix and the same suffix number.
* Patients in both official splits (TCGA-A2-A0ES, TCGA-MP-A4T7) stay where the release puts
  each of their sub-images; ``val`` is only ever drawn from ``train``.
* RGBA TIFFs lose their alpha channel. Without a ``.tif``, level 0 of the ``.svs`` (a
  TIFF) is read with tifffile; without either, the error lists the patient folder's files.
"""

from __future__ import annotations

import re
from pathlib import Path


from .base import Labelled, ReaderError, Sample, check_split, read_tiff, require_dir, split_of_folder, to_rgb_uint8
from .imagescope import rasterize, read_imagescope

NAME = "monusac"
LABEL_SET = "monusac"
#: where the dataset is downloaded from
DOWNLOAD_URL = "https://monusac-2020.grand-challenge.org/Data/"
#: pixel size of the images, µm (MoNuSAC: 40x, about 0.25 µm/px)
PIXEL_SIZE_UM = 0.25
CHUNK = 1
VAL_FROM = "train"
SPLIT_FROM_FOLDER = True
CLASSES = {"epithelial": 1, "lymphocyte": 2, "neutrophil": 3, "macrophage": 4}
IGNORE_NAMES = ("ambiguous",)
SPLIT_FOLDERS = {"MoNuSAC_images_and_annotations": "train", "MoNuSAC Testing Data and Annotations": "test"}


def _norm_stem(stem):
    """``X_001`` and ``X_1`` -> ``('X', 1)``; stems without a numeric suffix -> ``(stem, None)``."""
    m = re.match(r"^(.*)_(\d+)$", stem)
    return (m.group(1), int(m.group(2))) if m else (stem, None)


def _folder_split(folder):
    return SPLIT_FOLDERS.get(folder.name) or split_of_folder(folder.name)


def _split_roots(src, split=None):
    src = Path(src)
    require_dir(src, "MoNuSAC folder", "expected 'MoNuSAC_images_and_annotations/<patient>/...'")
    check_split(split, src)
    roots = []
    for p in sorted(src.iterdir()):
        if p.is_dir() and (p.name in SPLIT_FOLDERS or re.search(r"monusac", p.name, re.I)):
            roots.append((p, _folder_split(p)))
    if not roots:
        return [(src, split or _folder_split(src), "" if split else src.name)]
    if split is not None:
        if len({s for _, s in roots}) > 1:
            raise ReaderError(src, f"holds both a training and a test folder: --split {split} would merge them; "
                                   "leave --split out, or point --src at one of the folders")
        return [(p, split, "") for p, _ in roots]
    return [(p, s, p.name) for p, s in roots]


def find_samples(src, split=None):
    """One :class:`Sample` per annotated sub-image (``.xml``) of every patient folder.

    ``split`` (``'train'`` or ``'test'``), if given, is the split of every image found,
    instead of the one read from its folder's name.
    """
    src = Path(src)
    samples = []
    for root, split_, named in _split_roots(src, split):
        patients = sorted(p for p in root.iterdir() if p.is_dir() and any(p.glob("*.xml")))
        for pdir in patients:
            images = {}
            for f in pdir.iterdir():
                if f.suffix.lower() in (".tif", ".tiff", ".svs"):
                    images.setdefault(_norm_stem(f.stem), []).append(f)
            for xml in sorted(pdir.glob("*.xml")):
                cands = images.get(_norm_stem(xml.stem), [])
                # the .tif is the published sub-image; the .svs is its fallback
                cands = sorted(cands, key=lambda f: (f.suffix.lower() == ".svs", f.name))
                samples.append(Sample(
                    source=str(xml.relative_to(src)), split=split_, group=pdir.name[:12],
                    patch_id=xml.stem, key=(str(xml), tuple(str(c) for c in cands), str(pdir)), split_folder=named))
    if not samples:
        raise ReaderError(src, "no MoNuSAC annotation found: expected patient folders with "
                               "'<patient>_<n>.xml' next to '.tif'/'.svs' images "
                               f"(looked in {[str(r[0]) for r in _split_roots(src, split)]})")
    return samples


def read_svs_level0(path):
    """Full-resolution level of an Aperio ``.svs`` (a tiled TIFF) as an array."""
    return read_tiff(path, level0=True)


def read_image(cands, pdir, xml):
    """Read the sub-image of ``xml`` from its ``.tif``, else its ``.svs``."""
    if not cands:
        files = sorted(p.name for p in Path(pdir).iterdir())
        raise ReaderError(xml, f"no image for this annotation: neither '{Path(xml).stem}.tif' nor "
                               f"'.svs' (suffix _N or _00N) in {pdir}, which holds {files}")
    path = cands[0]
    return to_rgb_uint8(read_tiff(path, level0=path.lower().endswith(".svs")), path)


def class_of(name, path="<xml>"):
    """MoNuSAC class id of a layer name (case-insensitive)."""
    key = (name or "").strip().lower()
    if key not in CLASSES:
        known = ", ".join(f"{k.capitalize()} {v}" for k, v in CLASSES.items())
        raise ReaderError(path, f"unknown class name {name!r} (known: {known}, Ambiguous = ignore)")
    return CLASSES[key]


def load_sample(sample, cache):
    """Image, instance map (Ambiguous = -1) and classes of one sub-image."""
    xml, cands, pdir = sample.key
    image = read_image(list(cands), pdir, xml)
    layers = read_imagescope(xml)
    inst, classes, notes = rasterize(layers, image.shape[:2], lambda n: class_of(n, xml),
                                     ignore_names=IGNORE_NAMES, path=xml)
    notes["ambiguous_px"] = int((inst < 0).sum())
    return Labelled(image, inst, classes, notes)
