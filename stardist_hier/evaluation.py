"""Temporary re-export of :mod:`stardist_hier.metrics.folder` (and ``normalize_image``) for modules not yet moved; to be deleted."""
from .metrics.folder import *  # noqa: F401,F403
from .patches import normalize_image  # noqa: F401
