"""What every dataset reader provides, and the errors they raise.

A reader module (one per dataset) defines

* ``NAME``: dataset folder name under ``--out``; ``LABEL_SET``: label set of the default
  hierarchy its class ids belong to;
* ``find_samples(src) -> list of Sample``: every labelled image of the download, with its
  official split; raises :class:`ReaderError` for a missing or misspelled folder;
* ``load_sample(sample, cache) -> Labelled``: the image and its labels, read on demand
  (``cache`` is a dict that lives for one chunk of samples, so memory maps are opened once
  per chunk and released after it); raises :class:`ReaderError` for bad input and
  :class:`SkipSample` for inputs that are valid but hold nothing to train on;
* optionally ``CHUNK`` (samples per work unit) and ``VAL_FROM`` (split the seeded
  validation split is carved from; ``None``: the dataset has official folds only).

Readers use numpy / scipy / scikit-image / tifffile only: no TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["ReaderError", "SkipSample", "Sample", "Labelled", "to_rgb_uint8", "require_dir"]


class ReaderError(ValueError):
    """Bad input. The message names the file (or folder) at fault and what is wrong with it."""

    def __init__(self, path, problem):
        self.path = str(path)
        self.problem = str(problem)
        super().__init__(f"{self.path}: {self.problem}")


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
    """

    source: str
    split: str
    group: str
    patch_id: str
    tissue: str = ""
    key: tuple = field(default=(), compare=False)
    pretiled: bool = False


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
