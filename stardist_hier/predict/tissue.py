"""Tissue masks of whole slides and the slide-wide normalisation.

* :func:`tissue_mask`: Otsu's threshold on the smoothed colour saturation of a thumbnail (stained
  tissue is coloured, glass is grey or white; grey levels alone split H&E tissue into nuclei
  and the rest), at least :data:`MIN_SATURATION` and on pixels darker than
  :data:`WHITE_LEVEL`, so that an empty slide stays empty; then a closing, and small objects
  and small holes removed.
* :func:`load_mask`: a user's mask file (``--mask FILE``), resized to the thumbnail.
* :func:`normalization_percentiles`: per-channel percentiles of the tissue pixels of the
  thumbnail (:data:`stardist_hier.patches.NORMALIZE_PERCENTILES`, the training ones), so every
  block of a slide is normalised alike (what QuPath does), not tile by tile;
  :func:`normalize_with` applies them.

No TensorFlow here.
"""

from __future__ import annotations

import numpy as np

from ..patches import NORMALIZE_PERCENTILES
from .slides import InputError, read_image

__all__ = ["tissue_mask", "load_mask", "normalization_percentiles", "normalize_with", "WHITE_LEVEL",
           "MIN_SATURATION", "SMOOTH", "CLOSE", "MIN_OBJECT_FRACTION", "MIN_HOLE_FRACTION"]

#: Grey level (0..255) above which a thumbnail pixel is never tissue (glass is brighter).
WHITE_LEVEL = 235.0
#: Saturation (HSV, 0..1) below which a thumbnail pixel is never tissue, whatever Otsu says.
MIN_SATURATION = 0.05
#: Sigma (thumbnail pixels) of the smoothing before Otsu's threshold.
SMOOTH = 2.0
#: Radius (thumbnail pixels) of the closing after it.
CLOSE = 2
#: Connected tissue regions smaller than this share of the thumbnail are dropped.
MIN_OBJECT_FRACTION = 1e-4
#: Holes in the tissue smaller than this share of the thumbnail are filled.
MIN_HOLE_FRACTION = 1e-3


def _grey(rgb):
    rgb = np.asarray(rgb, np.float32)
    if rgb.ndim == 2:
        return rgb
    return rgb[..., :3] @ np.array([0.2125, 0.7154, 0.0721], np.float32)  # skimage.color.rgb2gray weights


def _saturation(rgb):
    rgb = np.asarray(rgb, np.float32)
    if rgb.ndim == 2:
        return np.zeros(rgb.shape, np.float32)
    mx, mn = rgb[..., :3].max(axis=-1), rgb[..., :3].min(axis=-1)
    return np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-6), 0).astype(np.float32)


def tissue_mask(thumbnail, min_object_fraction=MIN_OBJECT_FRACTION, min_hole_fraction=MIN_HOLE_FRACTION,
                white_level=WHITE_LEVEL, min_saturation=MIN_SATURATION, smooth=SMOOTH, close=CLOSE):
    """Tissue of a slide thumbnail: Otsu on the saturation, small objects and holes removed.

    Parameters
    ----------
    thumbnail : numpy.ndarray
        ``(h, w, 3)`` uint8 RGB.
    min_object_fraction : float
        Regions smaller than this share of the thumbnail's pixels are removed.
    min_hole_fraction : float
        Holes smaller than this share of the thumbnail's pixels are filled.
    white_level : float
        Pixels brighter than this grey level are glass.
    min_saturation : float
        Pixels less saturated than this are glass whatever Otsu's threshold says (an empty
        slide then gives an empty mask rather than half its noise).
    smooth : float
        Sigma (thumbnail pixels) of the Gaussian smoothing before the threshold.
    close : int
        Radius (thumbnail pixels) of the morphological closing after it (0: none).

    Returns
    -------
    numpy.ndarray
        ``(h, w)`` bool.
    """
    from skimage.filters import threshold_otsu
    from skimage.morphology import remove_small_holes, remove_small_objects

    from scipy import ndimage as ndi

    sat = _saturation(thumbnail)
    grey = _grey(thumbnail)
    if sat.size and smooth > 0:
        # stained tissue is a mix of saturated nuclei and paler stroma: smoothing narrows the
        # tissue mode, which Otsu would otherwise split
        sat = ndi.gaussian_filter(sat, smooth)
        grey = ndi.gaussian_filter(grey, smooth)
    if sat.size == 0 or float(sat.max()) < min_saturation:
        return np.zeros(sat.shape, bool)
    t = max(float(threshold_otsu(sat)), float(min_saturation)) if sat.max() > sat.min() else float(min_saturation)
    mask = (sat > t) & (grey < white_level)
    if close > 0:
        from skimage.morphology import disk

        r = int(close)
        padded = np.pad(mask, r, mode="edge")  # no erosion from outside the thumbnail
        mask = ndi.binary_closing(padded, structure=disk(r))[r:-r, r:-r]
    n = sat.size
    min_obj = max(1, int(round(min_object_fraction * n)))
    min_hole = max(1, int(round(min_hole_fraction * n)))
    if _has_max_size():
        mask = remove_small_objects(mask, max_size=min_obj)
        mask = remove_small_holes(mask, max_size=min_hole)
    else:  # scikit-image < 0.26
        mask = remove_small_objects(mask, min_obj)
        mask = remove_small_holes(mask, min_hole)
    return mask


def _has_max_size():
    """scikit-image >= 0.26 names the size argument ``max_size`` (``min_size`` is deprecated)."""
    import inspect

    from skimage.morphology import remove_small_objects

    return "max_size" in inspect.signature(remove_small_objects).parameters


def load_mask(mask, shape, name="mask"):
    """A user's tissue mask, as a bool array of ``shape`` (the thumbnail's).

    Parameters
    ----------
    mask : str, path-like or numpy.ndarray
        An image file (TIFF, PNG, JPEG) or an array covering the whole slide at any scale,
        non-zero = tissue; one channel (or several equal ones).
    shape : tuple
        ``(h, w)`` to resize to (nearest neighbour).
    name : str
        What to call an in-memory mask in errors.

    Raises
    ------
    InputError
        Unreadable file, several different channels, or an aspect ratio more than 2% off
        the slide's; the message names the mask file.
    """
    from skimage.transform import resize

    if isinstance(mask, np.ndarray):
        arr = mask
    else:
        name = str(mask)
        arr = read_image(mask, n_channel_in=None)
    arr = np.asarray(arr)
    if arr.ndim == 3:
        if not all(np.array_equal(arr[..., 0], arr[..., k]) for k in range(1, arr.shape[-1])):
            raise InputError(name, f"a tissue mask must have one channel (or equal ones); it has {arr.shape[-1]} "
                                   "different channels")
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise InputError(name, f"a tissue mask must be a 2-D image, got shape {arr.shape}")
    h, w = shape
    aspect_slide, aspect_mask = w / h, arr.shape[1] / arr.shape[0]
    if abs(aspect_mask / aspect_slide - 1) > 0.02:
        raise InputError(name, f"tissue mask of shape {arr.shape} does not have the slide's aspect ratio "
                               f"(width/height {aspect_mask:.3f} vs {aspect_slide:.3f})")
    out = resize(arr != 0, (h, w), order=0, anti_aliasing=False, preserve_range=True)
    return out.astype(bool)


def normalization_percentiles(thumbnail, mask, percentiles=NORMALIZE_PERCENTILES):
    """Per-channel percentiles of the tissue pixels of a thumbnail.

    Parameters
    ----------
    thumbnail : numpy.ndarray
        ``(h, w, C)`` image.
    mask : numpy.ndarray
        ``(h, w)`` bool tissue mask.
    percentiles : tuple of float
        Low and high percentile (default: the training ones).

    Returns
    -------
    (numpy.ndarray, numpy.ndarray) or None
        ``(lo, hi)``, each ``(C,)`` float32; None when the mask is empty.
    """
    thumbnail = np.asarray(thumbnail)
    if thumbnail.ndim == 2:
        thumbnail = thumbnail[..., None]
    px = thumbnail[np.asarray(mask, bool)]
    if len(px) == 0:
        return None
    lo = np.percentile(px, percentiles[0], axis=0).astype(np.float32)
    hi = np.percentile(px, percentiles[1], axis=0).astype(np.float32)
    return lo, hi


def normalize_with(img, lo, hi, eps=1e-20):
    """``(img - lo) / (hi - lo + eps)`` as float32 (csbdeep's ``normalize_mi_ma``, no clipping)."""
    img = np.asarray(img, np.float32)
    lo = np.asarray(lo, np.float32)
    hi = np.asarray(hi, np.float32)
    return (img - lo) / (hi - lo + np.float32(eps))
