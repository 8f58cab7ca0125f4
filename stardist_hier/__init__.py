"""stardist-hier: StarDist nucleus segmentation and classification on datasets whose label
sets are cuts of one class hierarchy (Parulekar, Kanwat et al., BIOIMAGING 2024).

Importing the package is cheap: the model classes (which need TensorFlow) load on first use,
so data preparation and metrics never pay TensorFlow's import time.
"""

__version__ = "0.1.0"

from .hierarchy import ClassHierarchy, LabelSet, HierarchyError, default_hierarchy_path

_LAZY = {
    "HierConfig2D": "stardist_hier.model",
    "HierStarDist2D": "stardist_hier.model",
    "HierStarDistData2D": "stardist_hier.model",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'stardist_hier' has no attribute {name!r}")


__all__ = ["ClassHierarchy", "LabelSet", "HierarchyError", "default_hierarchy_path", *_LAZY]
