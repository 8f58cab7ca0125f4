"""What every dataset reader provides, and the errors they raise.

A reader module (one per dataset) defines

* ``NAME``: dataset folder name under ``--out``; ``LABEL_SET``: label set of the default
  hierarchy its class ids belong to; ``DOWNLOAD_URL``: the page the dataset is downloaded
  from (:func:`stardist_hier.readers.download_url` looks it up by name, and error
  messages about a missing download point to it); ``PIXEL_SIZE_UM``: the images' pixel size
  (:func:`stardist_hier.readers.registry.pixel_size_um`; a run trained on datasets that agree
  stores it with the model);
* ``find_samples(src) -> list of Sample``: every labelled image of the download, with its
  official split; raises :class:`ReaderError` for a missing or misspelled folder. It may
  take the keyword ``on_bad`` (called with ``(path, problem)`` for a bad file found while
  listing, which is then left out) and ``split`` (the split of every image found, for a
  download whose split is otherwise read from a folder name: see :func:`split_of_folder`);
* ``load_sample(sample, cache) -> Labelled``: the image and its labels, read on demand
  (``cache`` is a dict that lives for one chunk of samples, so memory maps are opened once
  per chunk and released after it); raises :class:`ReaderError` for bad input and
  :class:`SkipSample` for inputs that are valid but hold nothing to train on;
* optionally ``CHUNK`` (samples per work unit), ``VAL_FROM`` (split the seeded
  validation split is carved from; ``None``: the dataset has official folds only) and
  ``SPLIT_FROM_FOLDER = True`` (the official split is read from folder names, so the
  conversion summary says which folder went to which split).

Your own data has no fixed name or label set, so its readers are *parametric*: a class
per format (:mod:`.folder`, :mod:`.qupath`, listed in
:data:`stardist_hier.readers.registry.USER_FORMATS`), whose instances carry the attributes
above for one conversion (``NAME`` the user's dataset name, ``LABEL_SET``, ``DOWNLOAD_URL =
None``) plus ``HIERARCHY``, the hierarchy (``'default'`` or a YAML path) the label set
belongs to (a module without it uses the default hierarchy). Such an object is passed to
:func:`stardist_hier.readers.convert` in place of the dataset's name and travels to the
worker processes by pickling; ``get_reader(obj)`` returns it unchanged, and
``get_reader('folder')`` is an error pointing at
:func:`stardist_hier.readers.registry.user_reader`. Their shared rules are in
:mod:`.userdata`.

Readers use numpy / scipy / scikit-image / tifffile only: no TensorFlow.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

__all__ = ["ReaderError", "BadFilesError", "SkipSample", "Sample", "Labelled", "to_rgb_uint8", "require_dir", "read_tiff",
           "split_of_folder", "check_split", "SPLITS"]

#: official splits a reader may give a source image (``val`` is drawn later, by the conversion)
SPLITS = ("train", "test")


class ReaderError(ValueError):
    """Bad input. The message names the file (or folder) at fault and what is wrong with it."""

    def __init__(self, path, problem):
        self.path = str(path)
        self.problem = str(problem)
        super().__init__(f"{self.path}: {self.problem}")


class BadFilesError(ReaderError):
    """Every bad input file of a conversion, each with what is wrong with it.

    Attributes
    ----------
    bad : list of (str, str)
        ``(path, problem)`` of each bad file, in the order met.
    converted : int
        Source images that did convert (their patches are written but not indexed).
    """

    LISTED = 20  #: bad files spelt out in the message; the rest are counted

    def __init__(self, bad, converted=0):
        self.bad = [(str(p), str(q)) for p, q in bad]
        self.converted = int(converted)
        self.path, self.problem = self.bad[0]
        n = len(self.bad)
        done = f"; the {self.converted} good source images are converted, not yet indexed" if self.converted else ""
        if n == 1:  # one line, as every reader error
            ValueError.__init__(self, f"{self.path}: {self.problem} (fix the file and rerun, or rerun with --skip-bad "
                                      f"to convert without it{done})")
            return
        lines = [f"{n} bad input files (fix them and rerun, or rerun with --skip-bad to convert without them{done}):"]
        lines += [f"  {p}: {q}" for p, q in self.bad[: self.LISTED]]
        if n > self.LISTED:
            lines.append(f"  ... and {n - self.LISTED} more")
        ValueError.__init__(self, "\n".join(lines))


class SkipSample(Exception):
    """A valid input that yields no patch (e.g. a PanNuke patch with no label at all)."""


@dataclass(frozen=True)
class Sample:
    """One labelled image of a download, as found by a reader (cheap: nothing is read yet).

    Attributes
    ----------
    source : str
        Path of the file relative to ``--src`` (plus ``[i]`` for one item of an array file).
    split : str
        Official split (``train``, ``test``, ``fold1``...), possibly changed to ``val``.
    group : str
        Unit of the validation split (patient or source image): samples of one group
        always land in the same split.
    patch_id : str
        Stem of the patch ids cut from this sample.
    tissue : str
        Tissue or organ where known, else ``''``.
    key : tuple
        Reader-specific locator (absolute paths, array index).
    pretiled : bool
        The sample is already one 256x256 patch: its patch id gets no offset suffix.
    split_folder : str
        The folder whose name gave ``split`` (relative to ``--src``, or ``--src``'s own
        name), so the conversion summary can show the guess; ``''`` when the split comes
        from elsewhere (an index file, array folds, an explicit ``split``).
    """

    source: str
    split: str
    group: str
    patch_id: str
    tissue: str = ""
    key: tuple = field(default=(), compare=False)
    pretiled: bool = False
    split_folder: str = field(default="", compare=False)


@dataclass
class Labelled:
    """A loaded sample: ``image`` HxWx3 uint8, ``inst`` HxW int32 (negative = ignore),
    ``classes`` {instance id: class id or None}; ``notes`` counts rule applications
    (e.g. overlap pixels made ignore) for the summary."""

    image: np.ndarray
    inst: np.ndarray
    classes: dict
    notes: dict = field(default_factory=dict)


def to_rgb_uint8(image, path):
    """RGB uint8 from what image files hold: drop an alpha channel, expand grey, round floats.

    Raises
    ------
    ReaderError
        For shapes or value ranges that are not an RGB(A) image.
    """
    image = np.asarray(image)
    if image.size == 0:
        raise ReaderError(path, f"empty image (no pixel data, array of shape {image.shape}): "
                                "the file is truncated or holds no image")
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.ndim == 3 and image.shape[0] in (3, 4) and image.shape[2] not in (3, 4):
        image = np.moveaxis(image, 0, -1)  # planar TIFF
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ReaderError(path, f"not an RGB image: array of shape {image.shape}")
    # RGBA (MoNuSAC TIFFs, some CoNSeP PNGs): alpha carries no tissue information
    image = image[..., :3]
    if image.dtype == np.uint8:
        return np.ascontiguousarray(image)
    if image.dtype.kind == "f" or (image.dtype.kind in "iu" and image.size and image.max() <= 255):
        lo, hi = (image.min(), image.max()) if image.size else (0, 0)
        if not (lo >= 0 and hi <= 255):  # written so that NaN fails too
            raise ReaderError(path, f"pixel values outside 0..255 ({lo}..{hi})")
        return np.rint(image).astype(np.uint8)
    raise ReaderError(path, f"unsupported pixel type {image.dtype} (values up to {image.max()})")


def require_dir(path, what, hint=""):
    """Raise a :class:`ReaderError` listing what is there if ``path`` is not a folder."""
    from pathlib import Path

    path = Path(path)
    if path.is_dir():
        return path
    parent = path.parent
    near = ""
    if parent.is_dir():
        names = sorted(p.name for p in parent.iterdir())[:20]
        near = f"; {parent} holds: {names}"
    raise ReaderError(path, f"{what} not found{near}{'; ' + hint if hint else ''}")


def read_tiff(path, level0=False):
    """Read a TIFF (or the full-resolution level of a pyramidal ``.svs``) as an array.

    Parameters
    ----------
    path : str or path-like
    level0 : bool
        Read level 0 of the first series (Aperio ``.svs``) instead of the whole file.

    Raises
    ------
    ReaderError
        Naming the file, for a missing, truncated or corrupt file. A TIFF cut off after
        its header is reported as truncated (tifffile returns an empty array for it).
    """
    import logging
    from pathlib import Path

    import tifffile

    path = Path(path)
    if not path.is_file():
        raise ReaderError(path, "image file missing")
    size = path.stat().st_size
    log = logging.getLogger("tifffile")
    level = log.level
    log.setLevel(logging.CRITICAL)  # its "invalid offset" log lines are reported below instead
    try:
        if level0:
            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                arr = (series.levels[0] if getattr(series, "levels", None) else series).asarray()
        else:
            arr = tifffile.imread(path)
    except Exception as e:  # tifffile raises many types for damaged files
        raise ReaderError(path, f"corrupt or truncated TIFF ({size} bytes; {type(e).__name__}: {e})") from None
    finally:
        log.setLevel(level)
    arr = np.asarray(arr)
    if arr.size == 0:
        raise ReaderError(path, f"truncated or empty TIFF: no image data in its {size} bytes")
    return arr


def split_of_folder(name):
    """The official split (``'train'`` or ``'test'``) of a download folder, from its name.

    A folder is ``test`` when one of the words of its name starts with "test" (words are
    split at non-letters and at camel-case humps, so ``MoNuSegTestData``, ``MoNuSAC Testing
    Data and Annotations``, ``monuseg_test`` and ``testset`` are test folders, while
    ``latest``, ``contest`` or ``attestation`` are not); every other folder is ``train``.
    Readers that guess a split this way take an explicit ``split`` instead (``stardist-hier
    prepare --split``), and the conversion summary lists which folder went to which split.
    """
    words = re.findall(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+", str(name))
    return "test" if any(w.lower().startswith("test") for w in words) else "train"


def check_split(split, src):
    """``split`` if it is one of :data:`SPLITS` (or None), else a :class:`ReaderError`."""
    if split is not None and split not in SPLITS:
        raise ReaderError(src, f"unknown split {split!r}: a download's images are in one of {', '.join(SPLITS)}")
    return split
