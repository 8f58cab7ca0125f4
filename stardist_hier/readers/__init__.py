"""Readers of the native dataset downloads, and the conversion driver.

One module per dataset: :mod:`.pannuke`, :mod:`.monusac`, :mod:`.consep`,
:mod:`.monuseg`, :mod:`.lizard` (Lizard and CoNIC); :mod:`.imagescope` reads the
ImageScope XML of MoNuSAC and MoNuSeg. :func:`convert` (in :mod:`.convert`) turns a
download into the patch format of :mod:`stardist_hier.patches`.

Everything here is numpy / scipy / scikit-image / tifffile: no TensorFlow.
"""

from .base import Labelled, ReaderError, Sample, SkipSample
from .registry import DATASETS, download_url, get_reader


def convert(*args, **kwargs):
    """See :func:`stardist_hier.readers.convert.convert`."""
    from .convert import convert as _convert

    return _convert(*args, **kwargs)


__all__ = ["DATASETS", "get_reader", "download_url", "convert", "ReaderError", "SkipSample", "Sample", "Labelled"]
