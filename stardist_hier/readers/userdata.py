"""What the readers of your own data share (:mod:`.folder`, :mod:`.qupath`).

Published datasets have one reader module each, with their name and label set fixed. Your
own data is read by a reader *object*: :class:`UserReader` subclasses made with the
dataset name, the label set and the paths of one conversion. An object has the attributes
of a reader module (:mod:`.base`) and pickles, so it goes to the worker processes of
:func:`stardist_hier.readers.convert` as a module's name does.

Rules shared by both formats:

* ``dataset`` names the output folder: letters, digits, ``_``, ``-`` and ``.``, not the
  name of a published dataset or a format (``pannuke``, ``folder``...).
* ``label_set`` is a label set of ``hierarchy`` (``'default'``, the shipped hierarchy, or
  the path of a YAML that may ``extends: default``), at any depth (a label set ``{1:
  nucleus}`` labels every nucleus at the root). Both are checked when the reader is made.
* Splits: every image is ``train``, unless ``split`` (``prepare --split``) puts all of them
  in one split, or ``test_images`` (a text file: one image name per line, file name or
  stem, ``#`` comments) marks some as ``test``. The seeded validation split is drawn from
  ``train`` by image (each image is its own group).
* Class names (QuPath classifications, names in a class table) are matched to the label
  set's node names case-insensitively, with spaces and ``-`` read as ``_`` and a trailing
  ``*`` dropped (``"Plasma cell"`` is ``plasma_cell``). A name below a label-set node
  (``lymphocyte`` for a label set that has ``inflammatory``) takes that node's id, counted
  in the summary as ``mapped_to_label_set_class``. ``aliases`` (``--class-name
  NAME=NODE``) renames names first. Any other name is an error listing the closest node
  names.
"""

from __future__ import annotations

import difflib
import functools
import re
from pathlib import Path

from .base import ReaderError, check_split, read_tiff

__all__ = ["IMAGE_SUFFIXES", "UserReader", "ClassNames", "read_image_file", "file_stem", "index_by_stem",
           "normalize_name", "read_name_list"]

#: image files read (TIFF, PNG, JPEG): whole images that fit in memory, not pyramidal slides
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def file_stem(path):
    """File name without its image suffix (``a.ome.tif`` -> ``a``; ``a.b.png`` -> ``a.b``)."""
    name = Path(path).name
    low = name.lower()
    for suffix in (".ome.tiff", ".ome.tif", *IMAGE_SUFFIXES):
        if low.endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def index_by_stem(files, what):
    """``{stem: path}`` of ``files``; two files of one stem (``a.png``, ``a.tif``) are an error."""
    out = {}
    for f in sorted(files):
        s = file_stem(f)
        if s in out:
            raise ReaderError(f, f"two {what} have the stem '{s}' ({out[s].name} and {f.name}): "
                                 "images are matched by stem; rename or remove one")
        out[s] = f
    return out


def list_files(folder, suffixes, recursive=False):
    """Files of ``folder`` whose name ends with one of ``suffixes`` (hidden files and folders skipped)."""
    folder = Path(folder)
    it = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in it if p.is_file() and p.name.lower().endswith(tuple(suffixes))
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def read_image_file(path):
    """The pixel array of a TIFF, PNG or JPEG file, with an error naming a missing or bad file."""
    path = Path(path)
    if path.suffix.lower() in (".tif", ".tiff"):
        return read_tiff(path)
    if not path.is_file():
        raise ReaderError(path, "file missing")
    from skimage.io import imread

    try:
        import numpy as np

        arr = np.asarray(imread(path))
    except Exception as e:  # imageio raises many types for damaged files
        raise ReaderError(path, f"corrupt or truncated image ({path.stat().st_size} bytes; {type(e).__name__}: {e})") from None
    if arr.size == 0:
        raise ReaderError(path, "empty image: no pixel data")
    return arr


def read_name_list(path):
    """Image names of a text file: one per line, blank lines and ``#`` comments skipped."""
    path = Path(path)
    if not path.is_file():
        raise ReaderError(path, "list of test images not found")
    names = set()
    for line in path.read_text(encoding="utf-8-sig").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.add(line)
    return frozenset(names)


def normalize_name(name):
    """``"Plasma cell*"`` -> ``"plasma_cell"``: the form class names are compared in."""
    return re.sub(r"[\s\-]+", "_", str(name).strip().rstrip("*").strip()).lower()


def check_dataset_name(name):
    from .registry import DATASETS, USER_FORMATS

    name = str(name)
    if not _NAME.match(name):
        raise ReaderError(f"dataset name {name!r}", "use letters, digits, '_', '-' and '.' only (it names the "
                                                    "output folder), starting with a letter or digit")
    if name.lower() in DATASETS or name.lower() in USER_FORMATS:
        raise ReaderError(f"dataset name {name!r}", f"'{name.lower()}' is the name of a published dataset or "
                                                    "format; give your dataset its own name")
    return name


@functools.lru_cache(maxsize=16)
def _load_label_set(hierarchy, label_set, mtime):
    from ..hierarchy import ClassHierarchy

    return ClassHierarchy.resolve(hierarchy).label_set(label_set)


class ClassNames:
    """Class names -> class ids of a label set (see the module docstring for the rule).

    Parameters
    ----------
    labels : LabelSet
    aliases : dict, optional
        Name -> node name, applied first (names compared as :func:`normalize_name` does).
    """

    def __init__(self, labels, aliases=None):
        h = labels.hierarchy
        self.labels = labels
        self.aliases = {normalize_name(k): normalize_name(v) for k, v in (aliases or {}).items()}
        self.node_of = {normalize_name(n): n for n in h.nodes}
        self.ids = {}  # normalised name -> (class id, label-set node it was mapped to, or None)
        for cid, node in labels.nodes.items():
            self.ids[normalize_name(node)] = (cid, None)
        for cid, node in labels.nodes.items():
            for d in h.descendants(node):
                self.ids.setdefault(normalize_name(d), (cid, node))
        for k, v in self.aliases.items():
            if v not in self.node_of:
                raise ReaderError(f"class name alias {k}={v}", f"'{v}' is not a node of the hierarchy "
                                                              f"({h.source}){self._closest(v, self.node_of)}")

    def lookup(self, name):
        """``(class id, label-set node it was mapped up to or None)``, or ``None`` for an unknown name."""
        key = normalize_name(name)
        return self.ids.get(self.aliases.get(key, key))

    @staticmethod
    def _closest(key, choices):
        close = difflib.get_close_matches(key, list(choices), n=3, cutoff=0.5)
        return f"; closest: {', '.join(repr(choices[c]) for c in close)}" if close else ""

    def why_unknown(self, name):
        """Why ``name`` has no class in the label set, with the closest names that would."""
        key = normalize_name(name)
        key = self.aliases.get(key, key)
        h, ls = self.labels.hierarchy, self.labels
        node = self.node_of.get(key)
        if node is not None:
            below = [n for n in ls.nodes.values() if node in h.ancestors(n)]
            if below:
                return (f"'{name}' is above the label set's classes {', '.join(below)}: a nucleus labelled with it "
                        "cannot be given one of them")
            return f"'{name}' is a node of the hierarchy that label set '{ls.name}' does not cover"
        usable = {k: (self.node_of[k] if k in self.node_of else k) for k in self.ids}
        return f"'{name}' is not a node of the hierarchy{self._closest(key, usable)}"

    def unknown_error(self, path, counts, what="class name"):
        """A :class:`ReaderError` for the unknown names of one file (``counts``: name -> objects)."""
        ls = self.labels
        parts = [f"{self.why_unknown(n)} ({k} object{'s' if k != 1 else ''})" for n, k in sorted(counts.items())]
        valid = ", ".join(f"{cid} = {node}" for cid, node in ls.nodes.items())
        return ReaderError(path, f"{len(counts)} {what}(s) not in label set '{ls.name}' ({valid}): "
                                 + "; ".join(parts) + ". Rename them, map them with --class-name NAME=NODE, "
                                 "or use a label set that covers them")


class UserReader:
    """Base of the readers of your own data: a reader module's attributes on an object.

    Parameters
    ----------
    dataset : str
        Name of the prepared dataset (its folder under ``--out``).
    label_set : str
        Label set of ``hierarchy`` the class ids belong to.
    hierarchy : str or path-like
        ``'default'`` or the path of a hierarchy YAML.
    test_images : path-like, optional
        Text file listing the images of the ``test`` split.

    Attributes
    ----------
    NAME, LABEL_SET, HIERARCHY, DOWNLOAD_URL, CHUNK, VAL_FROM, SPLIT_FROM_FOLDER
        As in a reader module (:mod:`.base`); ``HIERARCHY`` is ``'default'`` or an absolute path.
    """

    DOWNLOAD_URL = None  #: your own data is not downloaded
    CHUNK = 1
    VAL_FROM = "train"
    SPLIT_FROM_FOLDER = False

    def __init__(self, dataset, label_set, hierarchy="default", test_images=None):
        self.NAME = check_dataset_name(dataset)
        self.LABEL_SET = str(label_set)
        spec = "default" if hierarchy is None or str(hierarchy) == "default" else str(Path(hierarchy).resolve())
        self.HIERARCHY = spec
        self.labels  # a bad YAML or an unknown label set fails here, before any file is read
        self.test_list = None if test_images is None else str(test_images)
        self.test_images = None if test_images is None else read_name_list(test_images)

    @property
    def labels(self):
        """The :class:`~stardist_hier.hierarchy.LabelSet` (loaded once per process)."""
        mtime = 0 if self.HIERARCHY == "default" else (Path(self.HIERARCHY).stat().st_mtime
                                                       if Path(self.HIERARCHY).exists() else -1)
        return _load_label_set(self.HIERARCHY, self.LABEL_SET, mtime)

    @property
    def root_only(self):
        """True when the label set is the root alone: every nucleus is class 1, "a nucleus"."""
        ls = self.labels
        return list(ls.nodes.values()) == [ls.hierarchy.root]

    def splits(self, src, images, split=None):
        """Official split of each image (``{path: split}``) from ``split`` or the test list.

        Raises
        ------
        ReaderError
            ``split`` together with a test list, or a listed name that is not an image.
        """
        check_split(split, src)
        if split is not None and self.test_images is not None:
            raise ReaderError(src, "--split and --test-images exclude each other: --split puts every image in one split")
        if self.test_images is None:
            return {p: split or "train" for p in images}
        found = {p: (p.name in self.test_images or file_stem(p) in self.test_images) for p in images}
        known = {p.name for p in images} | {file_stem(p) for p in images}
        unknown = sorted(self.test_images - known)
        if unknown:
            raise ReaderError(self.test_list, f"{len(unknown)} listed test image(s) not found in {src}: "
                                              f"{', '.join(unknown[:10])}{' ...' if len(unknown) > 10 else ''}")
        return {p: "test" if t else "train" for p, t in found.items()}

    def class_names(self, aliases=None):
        return ClassNames(self.labels, aliases)

    def __repr__(self):
        return f"{type(self).__name__}(dataset={self.NAME!r}, label_set={self.LABEL_SET!r}, hierarchy={self.HIERARCHY!r})"
