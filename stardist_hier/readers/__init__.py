"""Readers of the native dataset downloads, and the conversion driver.

One module per dataset: :mod:`.pannuke`, :mod:`.monusac`, :mod:`.consep`,
:mod:`.monuseg`, :mod:`.lizard` (Lizard and CoNIC); :mod:`.imagescope` reads the
ImageScope XML of MoNuSAC and MoNuSeg. :func:`convert` (in :mod:`.convert`) turns a
download into the patch format of :mod:`stardist_hier.patches`.

Everything here is numpy / scipy / scikit-image / tifffile: no TensorFlow.
"""

from .base import Labelled, ReaderError, Sample, SkipSample

DATASETS = ("pannuke", "monusac", "consep", "monuseg", "lizard", "conic")


def get_reader(name):
    """The reader of dataset ``name`` (a module, or an object with the same attributes)."""
    import importlib

    key = str(name).lower()
    if key == "conic":
        from .lizard import conic

        return conic
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; supported: {', '.join(DATASETS)}")
    return importlib.import_module(f"{__name__}.{key}")


def download_url(name):
    """Where dataset ``name`` is downloaded from (``None`` for a dataset without a reader)."""
    try:
        return get_reader(name).DOWNLOAD_URL
    except ValueError:
        return None


def convert(*args, **kwargs):
    """See :func:`stardist_hier.readers.convert.convert`."""
    from .convert import convert as _convert

    return _convert(*args, **kwargs)


__all__ = ["DATASETS", "get_reader", "download_url", "convert", "ReaderError", "SkipSample", "Sample", "Labelled"]
