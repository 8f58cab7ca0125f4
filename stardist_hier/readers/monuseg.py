"""MoNuSeg 2018 reader (``.tif`` + ImageScope ``.xml``, no classes).

Layouts under ``--src``: ``MoNuSeg 2018 Training Data/{Tissue Images,Annotations}/``
(split ``train``) and the flat ``MoNuSegTestData/`` (split ``test``); ``--src`` may also
be one of them, or any flat folder of ``<name>.tif`` + ``<name>.xml`` pairs. A folder's
split is read from its name (:func:`.base.split_of_folder`: ``test`` when a word of it
starts with "test", else ``train``) unless ``split`` is given (``prepare --split``); the
conversion summary lists which folder went to which split. Validation is drawn from
``train`` by patient (TCGA barcode prefix ``TCGA-XX-XXXX``).

Rule: MoNuSeg has no classes. Training XMLs carry ``<Attribute Name="Description">``,
test XMLs an empty ``<Attributes/>``; both are ignored and every nucleus gets class 1,
which the ``monuseg`` label set maps to the hierarchy's root ("a nucleus").
"""

from __future__ import annotations

from pathlib import Path

from .base import Labelled, ReaderError, Sample, check_split, read_tiff, require_dir, split_of_folder, to_rgb_uint8
from .imagescope import rasterize, read_imagescope

NAME = "monuseg"
LABEL_SET = "monuseg"
#: where the dataset is downloaded from
DOWNLOAD_URL = "https://monuseg.grand-challenge.org/Data/"
#: pixel size of the images, µm (MoNuSeg: 40x, about 0.25 µm/px (MicronsPerPixel 0.2525 in its XML))
PIXEL_SIZE_UM = 0.25
CHUNK = 1
VAL_FROM = "train"
SPLIT_FROM_FOLDER = True
ROOT_CLASS = 1


def _pairs(img_dir, xml_dir, src, split, split_folder=""):
    out = []
    imgs = {p.stem: p for p in Path(img_dir).iterdir() if p.suffix.lower() in (".tif", ".tiff", ".png")}
    for xml in sorted(Path(xml_dir).glob("*.xml")):
        img = imgs.get(xml.stem)
        out.append(Sample(source=str(xml.relative_to(src)) if xml.is_relative_to(src) else str(xml),
                          split=split, group=xml.stem[:12], patch_id=xml.stem, split_folder=split_folder,
                          key=(str(img) if img else str(Path(img_dir) / f"{xml.stem}.tif"), str(xml))))
    return out


def _folder(folder, src, split=None):
    """Samples of one folder in either layout, or [] if it holds none."""
    named = "" if split else (folder.name if folder == src else str(folder.relative_to(src)))
    split = split or split_of_folder(folder.name)
    ti, an = folder / "Tissue Images", folder / "Annotations"
    if ti.is_dir() and an.is_dir():
        return _pairs(ti, an, src, split, named)
    if any(folder.glob("*.xml")):
        return _pairs(folder, folder, src, split, named)
    return []


def find_samples(src, split=None):
    """One :class:`Sample` per annotated image.

    ``split`` (``'train'`` or ``'test'``), if given, is the split of every image found,
    instead of the one read from its folder's name.
    """
    src = require_dir(src, "MoNuSeg folder", "expected 'MoNuSeg 2018 Training Data/' or 'MoNuSegTestData/'")
    check_split(split, src)
    samples = _folder(src, src, split)
    if not samples:
        for sub in sorted(p for p in src.iterdir() if p.is_dir()):
            samples += _folder(sub, src, split)
        guessed = {split_of_folder(Path(s.source).parts[0]) for s in samples}
        if split is not None and len(guessed) > 1:
            raise ReaderError(src, f"holds both a training and a test folder: --split {split} would merge them; "
                                   "leave --split out, or point --src at one of the folders")
    if not samples:
        raise ReaderError(src, "no MoNuSeg annotation found: expected 'Tissue Images/*.tif' + 'Annotations/*.xml' "
                               f"or '<name>.tif' + '<name>.xml'; the folder holds {sorted(p.name for p in src.iterdir())[:20]}")
    return samples


def load_sample(sample, cache):
    """Image and instance map of one MoNuSeg image, every nucleus at class 1 (root)."""
    from skimage.io import imread

    img_path, xml = sample.key
    if not Path(img_path).is_file():
        raise ReaderError(xml, f"image missing: {img_path}")
    if img_path.lower().endswith((".tif", ".tiff")):
        arr = read_tiff(img_path)
    else:
        try:
            arr = imread(img_path)
        except Exception as e:
            raise ReaderError(img_path, f"corrupt or unreadable image ({type(e).__name__}: {e})") from None
    image = to_rgb_uint8(arr, img_path)
    inst, classes, notes = rasterize(read_imagescope(xml), image.shape[:2], lambda name: ROOT_CLASS, path=xml)
    return Labelled(image, inst, classes, notes)
