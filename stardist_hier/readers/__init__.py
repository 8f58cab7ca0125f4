"""Readers of the native dataset downloads, and the conversion driver.

One module per dataset: :mod:`.pannuke`, :mod:`.monusac`, :mod:`.consep`,
:mod:`.monuseg`, :mod:`.lizard` (Lizard and CoNIC); :mod:`.imagescope` reads the
ImageScope XML of MoNuSAC and MoNuSeg. :func:`convert` (in :mod:`.convert`) turns a
download into the patch format of :mod:`stardist_hier.patches`.

Everything here is numpy / scipy / scikit-image / tifffile: no TensorFlow.
"""

from .base import BadFilesError, Labelled, ReaderError, Sample, SkipSample
from .registry import DATASETS, download_url, get_reader

# Imported here, not wrapped lazily: importing the submodule sets the package attribute
# ``convert`` to the module, so a lazy wrapper named ``convert`` turned into a module
# (``readers.convert(...)``: "module is not callable") once anything imported the driver.
from .convert import convert  # noqa: E402  (the function; the module is readers.convert in sys.modules)


__all__ = ["DATASETS", "get_reader", "download_url", "convert", "ReaderError", "BadFilesError", "SkipSample", "Sample", "Labelled"]
