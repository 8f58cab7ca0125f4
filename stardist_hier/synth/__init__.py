"""Synthetic H&E nucleus datasets (see :mod:`stardist_hier.synth.render` for now)."""

from .render import *  # noqa: F401,F403
from .render import __all__, __doc__, _composition, _tissue_stain  # noqa: F401
