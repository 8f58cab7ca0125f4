"""Reading the inputs of prediction: image files and whole-slide images.

* Image files (``.tif``/``.tiff`` that are not pyramidal, ``.png``, ``.jpg``/``.jpeg``) are read
  whole into memory (tifffile, or imageio for PNG/JPEG).
* Whole-slide images (``.svs``, ``.ndpi``, ``.mrxs``, ``.scn``, ``.vms``, ``.vmu``, ``.bif``,
  and pyramidal tiled TIFF) are read region by region through OpenSlide
  (``openslide-python`` + ``openslide-bin``), or through ``tiffslide`` (pure Python, TIFF-based
  formats only) when OpenSlide is missing or cannot open the file.

Every failure to read (missing, unreadable or truncated file) raises :class:`InputError`, a
one-line message naming the file, which a runner over many inputs can catch per input.

No TensorFlow here.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["InputError", "SlideReader", "OpenedInput", "open_input", "open_slide", "read_image",
           "check_channels", "IMAGE_SUFFIXES", "SLIDE_SUFFIXES"]

#: Suffixes read as plain images (TIFF only when it is not a tiled pyramid).
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
#: Suffixes always read as whole-slide images.
SLIDE_SUFFIXES = (".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide")


#: Micrometres per pixel accepted from TIFF resolution tags; others are taken as unknown.
MPP_RANGE = (0.02, 50.0)


class InputError(ValueError):
    """An input file that cannot be used: the message names the file and what is wrong."""

    def __init__(self, path, problem):
        self.path = str(path)
        self.problem = " ".join(str(problem).split())  # one line
        super().__init__(f"{self.path}: {self.problem}")


def _one_line(e):
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 300 else text[:297] + "..."


# ----------------------------------------------------------------------------------------
# images


def check_channels(image, n_channel_in=3, name="image"):
    """Return an image with ``n_channel_in`` channels, or raise :class:`InputError`.

    An RGBA image (4 channels where 3 are needed) loses its alpha channel; anything else
    with the wrong number of channels is an error naming ``name``.

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W)`` or ``(H, W, C)``.
    n_channel_in : int or None
        Channels the model expects (``model.config.n_channel_in``); None accepts any
        ``(H, W)`` or ``(H, W, C)`` image.
    name : str
        What to call the image in the error (its file name).
    """
    image = np.asarray(image)
    if n_channel_in is None:
        if image.ndim not in (2, 3) or min(image.shape[:2]) < 1:
            raise InputError(name, f"not a 2-D image (shape {image.shape})")
        return image
    if image.ndim == 2 and n_channel_in == 1:
        return image
    if image.ndim == 3 and image.shape[-1] == 1 and n_channel_in == 1:
        return image[..., 0]
    if image.ndim != 3 or min(image.shape[:2]) < 1:
        raise InputError(name, f"an image of shape {image.shape}: the model needs (height, width, {n_channel_in}) "
                               f"({'RGB' if n_channel_in == 3 else f'{n_channel_in} channels'})")
    c = image.shape[-1]
    if c == n_channel_in:
        return image
    if c == 4 and n_channel_in == 3:
        return image[..., :3]
    raise InputError(name, f"{c} channel(s) (shape {image.shape}), the model needs {n_channel_in}"
                           f"{' (RGB)' if n_channel_in == 3 else ''}")


def read_image(path, n_channel_in=3):
    """Read an image file whole: ``(H, W, C)`` array (RGBA loses its alpha channel).

    Raises
    ------
    InputError
        Missing, unreadable or truncated file, or the wrong number of channels.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such file" if not path.exists() else "not a file")
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                img = tif.series[0].asarray()  # level 0 of the first series
        else:
            import imageio.v3 as iio

            img = iio.imread(path)
    except Exception as e:  # truncated or not an image: name the file
        raise InputError(path, f"cannot read the image ({_one_line(e)})") from None
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[0] in (3, 4) and img.shape[-1] not in (1, 3, 4):
        img = np.moveaxis(img, 0, -1)  # planar (C, H, W) TIFF
    return check_channels(img, n_channel_in, name=str(path))


def _tiff_mpp(path):
    """Level-0 micrometres per pixel from TIFF resolution tags (None when absent)."""
    try:
        import tifffile

        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            tags = page.tags
            if "XResolution" not in tags or "ResolutionUnit" not in tags:
                return None
            num, den = tags["XResolution"].value
            unit = int(tags["ResolutionUnit"].value)
            per_unit = num / den if den else 0
            um = {2: 25400.0, 3: 10000.0}.get(unit)
            if not per_unit or um is None:
                return None
            mpp = um / per_unit
            # plain images often carry a screen resolution (72 dpi = 353 um/px): not a microscope's
            return mpp if MPP_RANGE[0] <= mpp <= MPP_RANGE[1] else None
    except Exception:
        return None


def _tiff_is_pyramid(path):
    """True for a tiled TIFF with reduced-resolution levels (a slide, not a plain image)."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        if not page.is_tiled:
            return False
        series = tif.series[0]
        return len(series.levels) > 1 or len(tif.pages) > 1 and any(
            getattr(p, "is_reduced", False) for p in tif.pages[1:])


# ----------------------------------------------------------------------------------------
# slides


class SlideReader:
    """A whole-slide image read region by region (OpenSlide, or tiffslide as the fallback).

    Parameters
    ----------
    path : str or path-like
    backend : {'auto', 'openslide', 'tiffslide'}
        ``'auto'``: OpenSlide when it is installed and opens the file, else tiffslide.

    Attributes
    ----------
    path : pathlib.Path
    backend : str
        The library in use.
    shape : tuple of int
        ``(H, W)`` at level 0.
    level_shapes : list of tuple
        ``(H, W)`` of each pyramid level.
    level_downsamples : list of float
        Level-0 pixels per pixel of each level.
    mpp : float or None
        Level-0 micrometres per pixel from the file's metadata (None when it has none).

    Raises
    ------
    InputError
        The file is missing, in no format either library reads, or truncated (a read of its
        smallest level fails).
    """

    def __init__(self, path, backend="auto"):
        self.path = Path(path)
        if not self.path.exists():
            raise InputError(self.path, "no such file")
        if backend not in ("auto", "openslide", "tiffslide"):
            raise ValueError(f"backend must be 'auto', 'openslide' or 'tiffslide', got {backend!r}")
        errors = []
        self._slide = None
        for name in (("openslide", "tiffslide") if backend == "auto" else (backend,)):
            try:
                self._slide = self._open(name)
                self.backend = name
                break
            except ImportError as e:
                errors.append(f"{name} not installed ({_one_line(e)})")
            except Exception as e:
                errors.append(f"{name}: {_one_line(e)}")
        if self._slide is None:
            raise InputError(self.path, "cannot open as a whole-slide image: " + "; ".join(errors))
        s = self._slide
        self.level_shapes = [(int(h), int(w)) for (w, h) in s.level_dimensions]
        self.level_downsamples = [float(d) for d in s.level_downsamples]
        self.shape = self.level_shapes[0]
        self.mpp = self._mpp()
        # a truncated file opens but fails on reading its pixels: read the smallest level's corner
        try:
            self.read_level(self.level_count - 1, 0, 0, min(64, self.level_shapes[-1][0]),
                            min(64, self.level_shapes[-1][1]))
        except InputError:
            self.close()
            raise

    def _open(self, name):
        if name == "openslide":
            import openslide

            return openslide.OpenSlide(str(self.path))
        import tiffslide

        return tiffslide.TiffSlide(str(self.path))

    def _mpp(self):
        props = self._slide.properties
        vals = []
        for key in ("mpp-x", "mpp-y"):
            v = props.get(f"{self.backend}.{key}")
            try:
                v = float(v)
            except (TypeError, ValueError):
                v = None
            if v is not None and math.isfinite(v) and v > 0:
                vals.append(v)
        if vals:
            return float(np.mean(vals))
        return _tiff_mpp(self.path) if self.path.suffix.lower() in (".tif", ".tiff") else None

    @property
    def level_count(self):
        return len(self.level_shapes)

    def read_level(self, level, y, x, h, w):
        """Read ``(h, w)`` pixels at ``level`` starting at level coordinates ``(y, x)``.

        Returns
        -------
        numpy.ndarray
            ``(h, w, 3)`` uint8 RGB; transparent pixels (outside the scanned area) are white.
        """
        d = self.level_downsamples[level]
        loc = (int(round(x * d)), int(round(y * d)))  # read_region takes level-0 (x, y)
        try:
            region = self._slide.read_region(loc, int(level), (int(w), int(h)))
            arr = np.asarray(region)
        except Exception as e:
            raise InputError(self.path, f"cannot read a region at level {level}, (y, x) = ({y}, {x}), "
                                        f"size ({h}, {w}): {_one_line(e)}") from None
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=-1)
        if arr.shape[-1] == 4:
            alpha = arr[..., 3:4].astype(np.float32) / 255.0
            rgb = arr[..., :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
            arr = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(arr[..., :3], dtype=np.uint8)

    def best_level(self, downsample):
        """The coarsest level whose downsample does not exceed ``downsample`` (within 1%)."""
        ok = [k for k, d in enumerate(self.level_downsamples) if d <= downsample * 1.01]
        return max(ok, key=lambda k: self.level_downsamples[k]) if ok else 0

    def read_scaled(self, downsample, y, x, h, w):
        """Read ``(h, w)`` pixels of the slide resampled to ``downsample`` level-0 pixels per pixel.

        ``(y, x)`` are coordinates in that resampled image. The pixels come from the coarsest
        pyramid level that is not coarser than ``downsample``, resized when the two differ
        by more than 1% (area averaging when shrinking, bilinear when enlarging).
        """
        level = self.best_level(downsample)
        d = self.level_downsamples[level]
        f = downsample / d  # level pixels per output pixel
        if abs(f - 1) <= 0.01:
            return self.read_level(level, int(round(y * f)), int(round(x * f)), h, w)
        y0, x0 = y * f, x * f
        ly, lx = int(math.floor(y0)), int(math.floor(x0))
        lh = max(1, int(math.ceil((y + h) * f)) - ly)
        lw = max(1, int(math.ceil((x + w) * f)) - lx)
        region = self.read_level(level, ly, lx, lh, lw)
        return _resize(region, (h, w))

    def thumbnail(self, max_size=2048):
        """A thumbnail whose longer side is at most ``max_size`` pixels, read tile by tile.

        Returns
        -------
        (numpy.ndarray, float)
            ``(h, w, 3)`` uint8 and its downsample (level-0 pixels per thumbnail pixel, the
            same along both axes).
        """
        H, W = self.shape
        ds = max(1.0, max(H, W) / float(max_size))
        th, tw = max(1, int(round(H / ds))), max(1, int(round(W / ds)))
        out = np.empty((th, tw, 3), np.uint8)
        step = 512  # thumbnail pixels per chunk: memory stays bounded on single-level slides
        for y in range(0, th, step):
            for x in range(0, tw, step):
                h, w = min(step, th - y), min(step, tw - x)
                out[y:y + h, x:x + w] = self.read_scaled(ds, y, x, h, w)
        return out, ds

    def close(self):
        """Release the file."""
        if self._slide is not None:
            try:
                self._slide.close()
            finally:
                self._slide = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return (f"SlideReader({str(self.path)!r}, backend={self.backend!r}, shape={self.shape}, "
                f"levels={self.level_count}, mpp={self.mpp})")


def _resize(img, shape):
    """Resize an ``(h, w, 3)`` uint8 image to ``shape`` (anti-aliased when shrinking)."""
    from skimage.transform import resize

    if tuple(img.shape[:2]) == tuple(shape):
        return img
    shrink = shape[0] < img.shape[0] or shape[1] < img.shape[1]
    out = resize(img, tuple(shape) + img.shape[2:], order=1, mode="edge", anti_aliasing=shrink,
                 preserve_range=True)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def open_slide(path, backend="auto"):
    """Open a whole-slide image (see :class:`SlideReader`)."""
    return SlideReader(path, backend=backend)


# ----------------------------------------------------------------------------------------
# one entry point for both


@dataclass
class OpenedInput:
    """What :func:`open_input` found.

    Attributes
    ----------
    path : pathlib.Path
    kind : str
        ``'image'`` or ``'slide'``.
    shape : tuple
        ``(H, W)`` at level 0.
    mpp : float or None
        Level-0 micrometres per pixel from the file's metadata.
    levels : int
        Pyramid levels (1 for an image).
    backend : str
        ``'tifffile'``/``'imageio'`` for images, ``'openslide'``/``'tiffslide'`` for slides.
    """

    path: Path
    kind: str
    shape: tuple
    mpp: float = None
    levels: int = 1
    backend: str = ""

    def read(self, n_channel_in=3):
        """The whole image (images only): ``(H, W, C)`` array (see :func:`read_image`)."""
        if self.kind != "image":
            raise InputError(self.path, "a whole-slide image is read by predict_slide, not whole into memory")
        return read_image(self.path, n_channel_in)


def _is_slide(path):
    suffix = path.suffix.lower()
    if suffix in SLIDE_SUFFIXES:
        return True
    if suffix in (".tif", ".tiff"):
        try:
            return _tiff_is_pyramid(path)
        except Exception as e:
            raise InputError(path, f"cannot read the TIFF ({_one_line(e)})") from None
    if suffix in IMAGE_SUFFIXES:
        return False
    raise InputError(path, f"unknown file type {suffix or '(no suffix)'!r}: images are "
                           f"{', '.join(IMAGE_SUFFIXES)}; whole-slide images {', '.join(SLIDE_SUFFIXES)} "
                           "or pyramidal TIFF")


def open_input(path):
    """Tell an image from a whole-slide image, checking that the file can be read.

    An image is decoded once here (to catch truncated files) and read again by
    :meth:`OpenedInput.read`; a slide is opened and its smallest level read.

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    OpenedInput

    Raises
    ------
    InputError
        Missing, unreadable, truncated file or unknown type, naming the file.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such file")
    if path.is_dir():
        raise InputError(path, "is a folder, not an image or slide file")
    if not os.access(path, os.R_OK):
        raise InputError(path, "not readable (permissions)")
    if _is_slide(path):
        with SlideReader(path) as s:
            return OpenedInput(path, "slide", s.shape, s.mpp, s.level_count, s.backend)
    img = read_image(path, n_channel_in=None)  # any channel count here; checked against the model later
    mpp = _tiff_mpp(path) if path.suffix.lower() in (".tif", ".tiff") else None
    backend = "tifffile" if path.suffix.lower() in (".tif", ".tiff") else "imageio"
    return OpenedInput(path, "image", tuple(img.shape[:2]), mpp, 1, backend)
