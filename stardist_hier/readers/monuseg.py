"""MoNuSeg 2018 reader (``.tif`` + ImageScope ``.xml``, no classes).

Layouts under ``--src``: ``MoNuSeg 2018 Training Data/{Tissue Images,Annotations}/``
(split ``train``) and the flat ``MoNuSegTestData/`` (split ``test``); ``--src`` may also
be one of them, or any flat folder of ``<name>.tif`` + ``<name>.xml`` pairs (split
``test`` if its name contains "test", else ``train``). Validation is drawn from
``train`` by patient (TCGA barcode prefix ``TCGA-XX-XXXX``).

Rule: MoNuSeg has no classes. Training XMLs carry ``<Attribute Name="Description">``,
test XMLs an empty ``<Attributes/>``; both are ignored and every nucleus gets class 1,
which the ``monuseg`` label set maps to the hierarchy's root ("a nucleus").
"""

from __future__ import annotations

import re
from pathlib import Path

from .base import Labelled, ReaderError, Sample, require_dir, to_rgb_uint8
from .imagescope import rasterize, read_imagescope

NAME = "monuseg"
LABEL_SET = "monuseg"
#: where the dataset is downloaded from
DOWNLOAD_URL = "https://monuseg.grand-challenge.org/Data/"
CHUNK = 1
VAL_FROM = "train"
ROOT_CLASS = 1


def _pairs(img_dir, xml_dir, src, split):
    out = []
    imgs = {p.stem: p for p in Path(img_dir).iterdir() if p.suffix.lower() in (".tif", ".tiff", ".png")}
    for xml in sorted(Path(xml_dir).glob("*.xml")):
        img = imgs.get(xml.stem)
        out.append(Sample(source=str(xml.relative_to(src)) if xml.is_relative_to(src) else str(xml),
                          split=split, group=xml.stem[:12], patch_id=xml.stem,
                          key=(str(img) if img else str(Path(img_dir) / f"{xml.stem}.tif"), str(xml))))
    return out


def _folder(folder, src):
    """Samples of one folder in either layout, or [] if it holds none."""
    split = "test" if re.search(r"test", folder.name, re.I) else "train"
    ti, an = folder / "Tissue Images", folder / "Annotations"
    if ti.is_dir() and an.is_dir():
        return _pairs(ti, an, src, split)
    if any(folder.glob("*.xml")):
        return _pairs(folder, folder, src, split)
    return []


def find_samples(src):
    """One :class:`Sample` per annotated image."""
    src = require_dir(src, "MoNuSeg folder", "expected 'MoNuSeg 2018 Training Data/' or 'MoNuSegTestData/'")
    samples = _folder(src, src)
    if not samples:
        for sub in sorted(p for p in src.iterdir() if p.is_dir()):
            samples += _folder(sub, src)
    if not samples:
        raise ReaderError(src, "no MoNuSeg annotation found: expected 'Tissue Images/*.tif' + 'Annotations/*.xml' "
                               f"or '<name>.tif' + '<name>.xml'; the folder holds {sorted(p.name for p in src.iterdir())[:20]}")
    return samples


def load_sample(sample, cache):
    """Image and instance map of one MoNuSeg image, every nucleus at class 1 (root)."""
    import tifffile
    from skimage.io import imread

    img_path, xml = sample.key
    if not Path(img_path).is_file():
        raise ReaderError(xml, f"image missing: {img_path}")
    try:
        arr = tifffile.imread(img_path) if img_path.lower().endswith((".tif", ".tiff")) else imread(img_path)
    except Exception as e:
        raise ReaderError(img_path, f"corrupt or unreadable image ({type(e).__name__}: {e})") from None
    image = to_rgb_uint8(arr, img_path)
    inst, classes, notes = rasterize(read_imagescope(xml), image.shape[:2], lambda name: ROOT_CLASS, path=xml)
    return Labelled(image, inst, classes, notes)
