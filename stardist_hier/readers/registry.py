"""The dataset readers by name, and the readers of your own data by format.

A published dataset has one reader *module* (``get_reader("pannuke")``). Your own data
has a reader *class* per format (:data:`USER_FORMATS`), made with the dataset name, the
label set and the folders of one conversion (``user_reader("folder", ...)``); an instance
has the same attributes as a module and is passed to :func:`stardist_hier.readers.convert`
in place of a name.
"""

from __future__ import annotations

import importlib

from ..patches import PUBLISHED_DATASETS

__all__ = ["DATASETS", "USER_FORMATS", "get_reader", "user_reader", "download_url", "pixel_size_um"]

DATASETS = PUBLISHED_DATASETS

#: formats of your own data -> ``module:class`` of their reader
USER_FORMATS = {"folder": "folder:FolderReader", "qupath": "qupath:QuPathReader"}


def get_reader(name):
    """The reader of dataset ``name`` (a module, or an object with the same attributes).

    A reader object (anything with ``find_samples``) is returned as it is, so the
    conversion takes a name or a reader alike.
    """
    if not isinstance(name, str) and hasattr(name, "find_samples"):
        return name
    key = str(name).lower()
    if key == "conic":
        from .lizard import conic

        return conic
    if key in USER_FORMATS:
        module, cls = USER_FORMATS[key].split(":")
        raise ValueError(f"{key!r} reads your own data: make its reader with "
                         f"stardist_hier.readers.registry.user_reader({key!r}, ...) "
                         f"(stardist_hier.readers.{module}.{cls}), as `stardist-hier prepare {key}` does")
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; supported: {', '.join(DATASETS)} "
                         f"(your own data: {', '.join(USER_FORMATS)})")
    return importlib.import_module(f"{__package__}.{key}")


def user_reader(fmt, **params):
    """A reader of your own data: ``fmt`` is one of :data:`USER_FORMATS`, ``params`` its class's arguments."""
    try:
        module, cls = USER_FORMATS[str(fmt).lower()].split(":")
    except KeyError:
        raise ValueError(f"unknown format {fmt!r} of your own data; supported: {', '.join(USER_FORMATS)}") from None
    return getattr(importlib.import_module(f"{__package__}.{module}"), cls)(**params)


def download_url(name):
    """Where dataset ``name`` is downloaded from (``None`` for your own data or a dataset without a reader)."""
    try:
        return get_reader(name).DOWNLOAD_URL
    except ValueError:
        return None


def pixel_size_um(name):
    """Pixel size (µm) of a published dataset's images (``PIXEL_SIZE_UM``); ``None`` when not known.

    Your own data and datasets without a reader have none: give it to the model as
    ``pixel_size_um`` (the run config's ``model:``).
    """
    try:
        return getattr(get_reader(name), "PIXEL_SIZE_UM", None)
    except ValueError:
        return None
