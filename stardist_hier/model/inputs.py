"""Is an input image normalised? The one rule behind ``train``'s refusal and ``predict``'s warning.

StarDist models are trained and run on normalised images (``csbdeep.utils.normalize``:
per channel, the 1st and 99.8th percentiles map to 0 and 1); this package normalises with
:func:`stardist_hier.patches.normalize_image`, and ``patches.load_split(normalize=True)``
returns images that way. A raw 8-bit image given to a network trained on normalised ones
runs without an error and finds nonsense (a quarter of a million "nuclei" on MoNuSeg's test
images), so :class:`~stardist_hier.model.HierStarDist2D` checks its inputs.

The rule (:func:`looks_unnormalized`)
-------------------------------------
An image *looks unnormalised* when

* its dtype is an integer type (``uint8``, ``uint16``, ...; a normalised image is float), or
* it is floating point and its 99th percentile (over at most ~100,000 evenly spaced
  values) is above :data:`MAX_NORMALIZED_P99` = 3.

A percentile-normalised image has its 99th percentile at most 1 (below the 99.8th, which
maps to 1), a standardised one (zero mean, unit variance) about 2.3; an 8-bit image cast to
float has it near 255. Isolated bright pixels (fluorescence) do not trip the rule, as the
maximum would.

``train`` raises :class:`UnnormalizedInputError`; ``predict_instances`` (without a
``normalizer``) and ``optimize_thresholds`` warn with :class:`UnnormalizedInputWarning`.
A model whose config has ``check_normalized_input=False`` skips both.
"""

from __future__ import annotations

import numpy as np

__all__ = ["looks_unnormalized", "UnnormalizedInputError", "UnnormalizedInputWarning", "MAX_NORMALIZED_P99",
           "FIX"]

#: A float image whose 99th percentile is above this looks unnormalised.
MAX_NORMALIZED_P99 = 3.0

#: at most this many values enter the percentile (an evenly spaced subsample)
_MAX_SAMPLES = 100_000

#: how to fix it, quoted in every message
FIX = ("normalise images with stardist_hier.patches.normalize_image(img) (or load prepared data with "
       "stardist_hier.patches.load_split(..., normalize=True)), or pass normalizer= to predict_instances")


class UnnormalizedInputError(ValueError):
    """Training images that look raw (integer dtype or 0..255 values) for a model trained on normalised ones."""


class UnnormalizedInputWarning(UserWarning):
    """An image given to a model trained on normalised images looks raw (see :func:`looks_unnormalized`)."""


def looks_unnormalized(img):
    """``(True, why)`` if ``img`` looks like a raw, unnormalised image, else ``(False, '')``.

    Parameters
    ----------
    img : array_like
        An image (any shape).

    Returns
    -------
    (bool, str)
        The verdict and, when True, a short reason (e.g. ``'dtype uint8'``).
    """
    a = np.asarray(img)
    if a.dtype.kind in "iub":
        return True, f"dtype {a.dtype}"
    if a.dtype.kind != "f" or a.size == 0:
        return False, ""
    flat = a.reshape(-1)
    if flat.size > _MAX_SAMPLES:
        flat = flat[:: int(np.ceil(flat.size / _MAX_SAMPLES))]
    flat = flat[np.isfinite(flat)]
    if flat.size == 0:
        return False, ""
    p99 = float(np.percentile(flat, 99))
    if p99 > MAX_NORMALIZED_P99:
        return True, f"99th percentile {p99:.4g} > {MAX_NORMALIZED_P99:g}"
    return False, ""


def check_training_images(X, what):
    """Raise :class:`UnnormalizedInputError` naming the first images of ``X`` that look raw."""
    bad = []
    for k, x in enumerate(X):
        raw, why = looks_unnormalized(x)
        if raw:
            bad.append(f"image {k} ({why})")
            if len(bad) == 3:
                break
    if bad:
        raise UnnormalizedInputError(
            f"{what}: {', '.join(bad)}{' and maybe more' if len(bad) == 3 else ''} look(s) unnormalised, but this "
            f"model expects normalised images: {FIX}; or set check_normalized_input=False in the config to train "
            f"on this intensity scale on purpose")


def warn_if_unnormalized(img, where, stacklevel=3):
    """Warn (:class:`UnnormalizedInputWarning`) when ``img`` looks raw; returns the verdict."""
    import warnings

    raw, why = looks_unnormalized(img)
    if raw:
        warnings.warn(f"{where}: the image looks unnormalised ({why}) but the model was trained on normalised "
                      f"images, so its predictions will be wrong: {FIX}", UnnormalizedInputWarning,
                      stacklevel=stacklevel)
    return raw
