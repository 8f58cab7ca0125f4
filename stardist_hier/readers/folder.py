"""Your own data: a folder of images and a folder of instance masks (``prepare folder``).

Layout::

    IMAGES/<name>.{tif,tiff,png,jpg}      RGB (or grey) images
    MASKS/<name>.{tif,tiff,png}           instance ids: 0 background, 1..n nuclei, < 0 ignore
    CLASS_MAPS/<name>.{tif,tiff,png}      optional (--class-maps): class id per pixel
    CLASSES.csv                           optional (--classes): image,instance,class

Matching: an image is paired with the mask of the same file stem, or of its stem plus
``_mask``, ``_masks``, ``_label``, ``_labels``, ``_inst`` or ``_instances`` (``-`` works
as ``_``; ``a.png`` <- ``a.tif`` or ``a_mask.png``); class maps the same way, with
``_class``, ``_classes``, ``_type`` or ``_types``. Folders are not searched recursively.
An image without a mask, a mask without an image, or a missing class map is a bad file,
named in the error (``--skip-bad`` leaves it out); when nothing matches at all the error
lists the names on both sides.

Classes, from exactly one of:

* a **second channel** of the mask (``(H, W, 2)``, or ``(2, H, W)`` planar): instance ids,
  then class ids;
* a **class map** per image (``--class-maps DIR``), ``(H, W)`` class ids;
* a **class table** (``--classes FILE``): CSV with the header ``image,instance,class``
  (other columns ignored; ``image`` a file name or stem; ``class`` a class id of the
  label set, or a node name; empty, ``none`` or ``unknown`` for a nucleus of unknown
  class);
* nothing, when the label set has a single class: every nucleus gets it (a label set
  ``{1: nucleus}`` at the root, or one finer class).

From a class channel or map, a nucleus takes the most frequent non-zero class over its
pixels (nuclei with several are counted as ``mixed_class_nuclei``). Class ids must be ids
of the label set. A nucleus whose class is 0 (all its pixels, or no row in the table) is an
error naming the file and the ids, unless ``allow_unclassified`` (``--allow-unclassified``)
keeps it as a nucleus of unknown class (no class loss; ``unclassified_nuclei``). A table row
for an instance that is not in the mask is an error.

Masks: integer TIFF or PNG (16-bit PNG for more than 255 nuclei), not JPEG (lossy: ids
change at edges); a float mask must hold whole numbers; an RGB mask whose three channels are
equal is read as grey (``grey_rgb_masks``), other RGB masks are errors, and so is a binary
mask (one id for several separate regions: label the connected components first). Ids need
not be contiguous; negative ids are ignore regions (no loss there).
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np

from ..masks import dense_ids, instance_classes
from .base import Labelled, ReaderError, Sample, require_dir, to_rgb_uint8
from .userdata import IMAGE_SUFFIXES, UserReader, file_stem, index_by_stem, list_files, read_image_file

__all__ = ["FolderReader", "read_label_image", "read_class_table"]

MASK_SUFFIXES = (".tif", ".tiff", ".png")
_MASK_STEM = re.compile(r"[_-](?:masks?|labels?|inst|instances)$", re.I)
_CLASS_STEM = re.compile(r"[_-](?:class|classes|types?)$", re.I)
_UNKNOWN = ("", "none", "unknown", "nan", "null")


def _pairs(images, folder, stem_re):
    """``{image: [files]}``: files of ``folder`` (label images) of each image's stem, and the unmatched files."""
    files = list_files(folder, MASK_SUFFIXES + (".jpg", ".jpeg"))
    by_stem, by_base = {}, {}
    for f in files:
        s = file_stem(f)
        by_stem.setdefault(s, []).append(f)
        base = stem_re.sub("", s)
        if base != s:
            by_base.setdefault(base, []).append(f)
    out, used = {}, set()
    for img in images:
        s = file_stem(img)
        cands = by_stem.get(s) or by_base.get(s) or []
        out[img] = cands
        used.update(cands)
    return out, [f for f in files if f not in used]


def _one(img, cands, what, folder):
    """The single label file of an image, or the problem with it."""
    if not cands:
        return None, (img, f"no {what} for this image in {folder} (looked for '{file_stem(img)}' and "
                           f"'{file_stem(img)}_{'mask' if what == 'mask' else 'class'}' with .tif/.tiff/.png)")
    if len(cands) > 1:
        return None, (img, f"{len(cands)} {what}s match this image: {', '.join(c.name for c in cands)}")
    if cands[0].suffix.lower() in (".jpg", ".jpeg"):
        return None, (cands[0], f"a JPEG {what}: JPEG is lossy, so ids change at nucleus edges; save it as TIFF or PNG")
    return cands[0], None


def read_label_image(path, channels=(1, 2)):
    """An integer label image: ``(H, W)``, or ``(H, W, 2)`` where ``2 in channels``.

    Returns
    -------
    array : numpy.ndarray
        int64, ``(H, W)`` or ``(H, W, 2)``.
    grey_rgb : bool
        The file was RGB(A) with three equal channels, read as grey.

    Raises
    ------
    ReaderError
        Naming the file: a colour picture, a binary mask, non-integer values, a bad shape.
    """
    arr = read_image_file(path)
    grey = False
    if arr.ndim == 3 and arr.shape[0] in (1, 2) and arr.shape[-1] not in (1, 2):
        arr = np.moveaxis(arr, 0, -1)  # planar
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        if not (np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2])):
            raise ReaderError(path, f"an RGB picture ({arr.shape}), not a label image: save one integer id per "
                                    "pixel (a single-channel 16-bit PNG or 32-bit TIFF)")
        arr, grey = arr[..., 0], True
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in channels and arr.shape[-1] > 1)):
        want = "(H, W) or (H, W, 2) (instance ids, class ids)" if 2 in channels else "(H, W)"
        raise ReaderError(path, f"label image of shape {arr.shape}; expected {want}")
    if arr.dtype == bool:
        raise ReaderError(path, "a binary (true/false) mask: instance masks need one id per nucleus; label the "
                                "connected components first (skimage.measure.label)")
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.array_equal(arr, np.round(arr)):
            raise ReaderError(path, "label image with non-integer values: ids must be whole numbers")
    elif arr.dtype.kind not in "iu":
        raise ReaderError(path, f"unsupported pixel type {arr.dtype} for a label image")
    arr = arr.astype(np.int64)
    if np.abs(arr).max(initial=0) > np.iinfo(np.int32).max:
        raise ReaderError(path, "ids larger than 2**31 - 1")
    return arr, grey


def _check_not_binary(inst, path):
    ids = np.unique(inst[inst > 0])
    if len(ids) == 1:
        from scipy import ndimage

        _, n = ndimage.label(inst == ids[0])
        if n > 1:
            raise ReaderError(path, f"a binary mask: every nucleus has the id {int(ids[0])} ({n} separate regions); "
                                    "instance masks need one id per nucleus (label the connected components first, "
                                    "e.g. skimage.measure.label)")


def read_class_table(path, stems, names):
    """Classes of a CSV ``image,instance,class`` table, per image stem.

    Parameters
    ----------
    path : path-like
    stems : set of str
        Stems of the images (a row's ``image`` is a file name or a stem).
    names : ClassNames
        For class ids and names.

    Returns
    -------
    table : dict
        ``{image stem: ((instance, class id or None, line), ...)}``.
    unknown_images : dict
        ``{name: first line}`` of images the table names that are not in ``stems``.

    Raises
    ------
    ReaderError
        Naming the file and line: missing columns, a bad instance or class, a class id not in
        the label set, a duplicate row.
    """
    path = Path(path)
    if not path.is_file():
        raise ReaderError(path, "class table not found")
    ls = names.labels
    valid = ", ".join(f"{k} = {v}" for k, v in ls.nodes.items())
    table, seen, unknown_images, bad_names = {}, {}, {}, {}
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        cols = [c.strip().lower() for c in (header or [])]
        missing = [c for c in ("image", "instance", "class") if c not in cols]
        if missing:
            raise ReaderError(path, f"line 1: missing column(s) {missing}; the header must name image, instance, "
                                    f"class (found {cols})")
        ii, ni, ci = (cols.index(c) for c in ("image", "instance", "class"))
        for line, row in enumerate(reader, start=2):
            if not any(c.strip() for c in row):
                continue
            if len(row) <= max(ii, ni, ci):
                raise ReaderError(path, f"line {line}: {len(row)} fields, too few for the columns image, instance, "
                                        "class of the header")
            image, inst, cls = row[ii].strip(), row[ni].strip(), row[ci].strip()
            stem = image if image in stems else file_stem(image)
            try:
                inst_f = float(inst)
                if inst_f != int(inst_f) or inst_f < 1:
                    raise ValueError
                inst = int(inst_f)
            except (ValueError, OverflowError):
                raise ReaderError(path, f"line {line}: instance {inst!r} is not an instance id (an integer >= 1)") from None
            if cls.lower() in _UNKNOWN:
                cid = None
            elif re.fullmatch(r"[+-]?\d+(\.0*)?", cls):
                cid = int(float(cls))
                if cid == 0:
                    raise ReaderError(path, f"line {line}: class 0 for instance {inst} of {image} is background; "
                                            "leave the class empty for a nucleus of unknown class")
                if cid not in ls.nodes:
                    raise ReaderError(path, f"line {line}: class id {cid} (instance {inst} of {image}) is not in "
                                            f"label set '{ls.name}' ({valid})")
            else:
                hit = names.lookup(cls)
                if hit is None:
                    bad_names[cls] = bad_names.get(cls, 0) + 1
                    continue
                cid = hit[0]
            if stem not in stems:
                unknown_images.setdefault(image, line)
                continue
            key = (stem, inst)
            if key in seen:
                raise ReaderError(path, f"line {line}: instance {inst} of {image} is already on line {seen[key]}")
            seen[key] = line
            table.setdefault(stem, []).append((inst, cid, line))
    if bad_names:
        raise names.unknown_error(path, bad_names)
    return {k: tuple(v) for k, v in table.items()}, unknown_images


class FolderReader(UserReader):
    """Reader of a folder of images with instance masks (the module docstring has the rules).

    Parameters
    ----------
    masks : path-like
        Folder of the instance masks.
    dataset, label_set, hierarchy, test_images
        See :class:`~stardist_hier.readers.userdata.UserReader`.
    classes : path-like, optional
        CSV ``image,instance,class``.
    class_maps : path-like, optional
        Folder of class maps.
    allow_unclassified : bool
        Keep nuclei without a class as nuclei of unknown class instead of failing.
    aliases : dict, optional
        Class name -> node name, for the names in ``classes``.

    The images folder is the ``src`` of :func:`stardist_hier.readers.convert`.
    """

    def __init__(self, masks, dataset, label_set, hierarchy="default", classes=None, class_maps=None,
                 test_images=None, allow_unclassified=False, aliases=None):
        super().__init__(dataset, label_set, hierarchy, test_images)
        if classes is not None and class_maps is not None:
            raise ReaderError(classes, "give the classes once: a class table (--classes) or class maps "
                                       "(--class-maps), not both")
        self.masks = str(masks)
        self.classes = None if classes is None else str(classes)
        self.class_maps = None if class_maps is None else str(class_maps)
        self.allow_unclassified = bool(allow_unclassified)
        self.aliases = dict(aliases or {})
        self.class_names(self.aliases)  # check the aliases now

    def find_samples(self, src, on_bad=None, split=None):
        """One :class:`Sample` per image with a mask; unmatched files go to ``on_bad``."""
        def bad(path, problem):
            if on_bad is None:
                raise ReaderError(path, problem)
            on_bad(path, problem)

        images_dir = require_dir(src, "images folder")
        masks_dir = require_dir(self.masks, "masks folder")
        if images_dir.resolve() == masks_dir.resolve():
            raise ReaderError(masks_dir, "the images and masks folders are the same folder: put the masks in their own")
        images = index_by_stem(list_files(images_dir, IMAGE_SUFFIXES), "images")
        imgs = list(images.values())
        if not imgs:
            raise ReaderError(images_dir, f"no image (.tif, .tiff, .png, .jpg) found; the folder holds "
                                          f"{sorted(p.name for p in images_dir.iterdir())[:20]}")
        masks, stray = _pairs(imgs, masks_dir, _MASK_STEM)
        if not any(masks.values()):
            raise ReaderError(masks_dir, f"no mask matches an image of {images_dir} by file stem: images "
                                         f"{[p.name for p in imgs[:5]]}, masks "
                                         f"{[p.name for p in list_files(masks_dir, MASK_SUFFIXES)[:5]]}; an image "
                                         "'a.png' is matched to 'a.tif' or 'a_mask.tif'")
        maps, stray_maps = ({}, [])
        if self.class_maps is not None:
            maps, stray_maps = _pairs(imgs, require_dir(self.class_maps, "class-maps folder"), _CLASS_STEM)
            # masks and class maps may share a folder (a_mask.tif beside a_class.tif)
            used_maps = {f for fs in maps.values() for f in fs}
            used_masks = {f for fs in masks.values() for f in fs}
            stray = [f for f in stray if f not in used_maps]
            stray_maps = [f for f in stray_maps if f not in used_masks]
        table = {}
        if self.classes is not None:
            table, unknown = read_class_table(self.classes, set(images), self.class_names(self.aliases))
            if unknown:
                bad(self.classes, f"rows for {len(unknown)} image(s) not in {images_dir}: "
                                  + ", ".join(f"{n} (line {k})" for n, k in list(unknown.items())[:10]))
        splits = self.splits(images_dir, imgs, split)
        samples = []
        for img in imgs:
            mask, problem = _one(img, masks[img], "mask", masks_dir)
            cmap = ""
            if problem is None and self.class_maps is not None:
                cmap, problem = _one(img, maps[img], "class map", self.class_maps)
            if problem is not None:
                bad(*problem)
                continue
            stem = file_stem(img)
            samples.append(Sample(source=img.name, split=splits[img], group=stem, patch_id=stem,
                                  key=(str(img), str(mask), str(cmap or ""), table.get(stem, ()))))
        for f in stray:
            bad(f, f"no image for this mask in {images_dir} (matched by file stem, or stem + _mask/_label/_inst)")
        for f in stray_maps:
            bad(f, f"no image for this class map in {images_dir}")
        return samples

    def load_sample(self, sample, cache):
        """Image, instance map and classes of one image."""
        img_path, mask_path, cmap_path, rows = sample.key
        image = to_rgb_uint8(read_image_file(img_path), img_path)
        mask, grey = read_label_image(mask_path)
        notes = {"grey_rgb_masks": int(grey), "mixed_class_nuclei": 0, "unclassified_nuclei": 0}
        inst, cls = (mask[..., 0], mask[..., 1]) if mask.ndim == 3 else (mask, None)
        if inst.shape != image.shape[:2]:
            raise ReaderError(mask_path, f"mask {inst.shape} and image {image.shape[:2]} ({img_path}) differ in size")
        _check_not_binary(inst, mask_path)
        if cls is not None and (self.class_maps or self.classes):
            raise ReaderError(mask_path, "the mask has a class channel and --classes/--class-maps gives the classes "
                                         "too: give them once")
        where = mask_path
        if cmap_path:
            cls, _ = read_label_image(cmap_path, channels=(1,))
            where = cmap_path
            if cls.shape != inst.shape:
                raise ReaderError(cmap_path, f"class map {cls.shape} and mask {inst.shape} ({mask_path}) differ in size")
        ls = self.labels
        ids = [int(i) for i in np.unique(inst[inst > 0])]
        if cls is not None:
            classes, notes["mixed_class_nuclei"] = self._from_map(inst, cls, where)
        elif self.classes is not None:
            classes = self._from_table(ids, rows, mask_path)
        elif len(ls.ids) == 1:
            classes = {i: ls.ids[0] for i in ids}
        else:
            raise ReaderError(mask_path, f"no classes for its nuclei: a one-channel mask, and neither --classes nor "
                                         f"--class-maps; label set '{ls.name}' has {len(ls.ids)} classes (a one-class "
                                         "label set needs none)")
        missing = sorted(i for i, c in classes.items() if c is None)
        if missing:
            if not self.allow_unclassified:
                how = "no row in the class table" if cls is None else "class 0 over all their pixels"
                who = "1 nucleus has" if len(missing) == 1 else f"{len(missing)} nuclei have"
                raise ReaderError(where, f"{who} {how}: instance id(s) "
                                         f"{missing[:10]}{' ...' if len(missing) > 10 else ''}; give them a class, "
                                         "or pass --allow-unclassified to keep them as nuclei of unknown class")
            notes["unclassified_nuclei"] = len(missing)
        return Labelled(image, inst.astype(np.int32), classes, notes)

    def _from_map(self, inst, cls, where):
        """Majority classes from a class map, checked against the label set."""
        under = (inst > 0) & (cls != 0)
        bad = sorted(set(np.unique(cls[under]).tolist()) - set(self.labels.ids))
        if bad:
            ls = self.labels
            eg = int(inst[under & np.isin(cls, bad)][0])
            raise ReaderError(where, f"class id(s) {bad} (e.g. under nucleus {eg}) not in label set '{ls.name}' "
                                     f"({', '.join(f'{k} = {v}' for k, v in ls.nodes.items())})")
        classes = instance_classes((inst, cls))
        base = int(cls.max()) + 1
        pairs, _ = dense_ids(inst[under] * base + cls[under])
        _, n_classes = np.unique(pairs // base, return_counts=True)
        return classes, int((n_classes > 1).sum())

    def _from_table(self, ids, rows, mask_path):
        table = {inst: (cid, line) for inst, cid, line in rows}
        absent = sorted(set(table) - set(ids))
        if absent:
            lines = ", ".join(str(table[i][1]) for i in absent[:10])
            raise ReaderError(self.classes, f"line(s) {lines}: instance id(s) {absent[:10]} not in the mask {mask_path}")
        return {i: table[i][0] if i in table else None for i in ids}
