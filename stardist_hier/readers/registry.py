"""The dataset readers by name."""

from __future__ import annotations

import importlib

__all__ = ["DATASETS", "get_reader", "download_url"]

DATASETS = ("pannuke", "monusac", "consep", "monuseg", "lizard", "conic")


def get_reader(name):
    """The reader of dataset ``name`` (a module, or an object with the same attributes)."""
    key = str(name).lower()
    if key == "conic":
        from .lizard import conic

        return conic
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; supported: {', '.join(DATASETS)}")
    return importlib.import_module(f"{__package__}.{key}")


def download_url(name):
    """Where dataset ``name`` is downloaded from (``None`` for a dataset without a reader)."""
    try:
        return get_reader(name).DOWNLOAD_URL
    except ValueError:
        return None
