"""Pictures of a prediction a person looks at: outline overlays with a legend, the tissue mask.

* :func:`image_overlay`: the input image with each nucleus outlined in its class colour,
  and a legend (class, colour, count) on the right;
* :func:`slide_overlay`: the same on a slide's thumbnail, nuclei drawn as dots or outlines
  (whichever is visible at the thumbnail's scale), the tissue outline in black;
* :func:`mask_image`: the tissue mask as a black/white picture;
* :func:`write_png`: an atomic PNG write.

Colours are the hierarchy's (:meth:`~stardist_hier.hierarchy.LabelSet.color`); a model
without classes draws every nucleus in yellow. Plain Python + numpy/Pillow/scikit-image: no
TensorFlow.
"""

from __future__ import annotations

import numpy as np

from ..atomic import atomic_save

__all__ = ["NO_CLASS_COLOR", "to_rgb8", "legend_entries", "draw_nuclei", "add_legend", "image_overlay",
           "slide_overlay", "mask_image", "write_png"]

#: colour of nuclei of a model without classes
NO_CLASS_COLOR = (255, 255, 0)


def to_rgb8(image):
    """An ``(H, W, 3)`` uint8 picture of an image (grey repeated; other dtypes stretched 0.1..99.9 %)."""
    a = np.asarray(image)
    if a.ndim == 2:
        a = a[..., None]
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    a = a[..., :3]
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a)
    a = a.astype(np.float64)
    lo, hi = np.percentile(a, (0.1, 99.9)) if a.size else (0, 1)
    return (np.clip((a - lo) / max(hi - lo, 1e-12), 0, 1) * 255).round().astype(np.uint8)


def _colors(nuclei):
    """``(n, 3)`` uint8 colour of each nucleus."""
    n = len(nuclei)
    if nuclei.label_set is None:
        return np.tile(np.array(NO_CLASS_COLOR, np.uint8), (n, 1))
    lut = {k: nuclei.label_set.color(k) for k in (0, *nuclei.label_set.ids)}
    return np.array([lut[int(k)] for k in nuclei.class_id], np.uint8).reshape(n, 3)


def legend_entries(nuclei):
    """``[(name, (r, g, b), count), ...]``: one entry per class of the label set (or one for all)."""
    if nuclei.label_set is None:
        return [("nucleus", NO_CLASS_COLOR, len(nuclei))]
    ls = nuclei.label_set
    counts = np.bincount(np.asarray(nuclei.class_id, np.int64), minlength=ls.max_id + 1) if len(nuclei) else \
        np.zeros(ls.max_id + 1, np.int64)
    return [(name, ls.color(k), int(counts[k])) for k, name in zip(ls.ids, ls.names)]


def draw_nuclei(rgb, nuclei, scale=1.0, width=1):
    """Draw the nuclei on a copy of ``rgb``: outlines, or dots where a nucleus is under 4 pixels.

    Parameters
    ----------
    rgb : numpy.ndarray
        ``(h, w, 3)`` uint8 picture of the input at ``scale`` x its level-0 size.
    nuclei : stardist_hier.predict.Nuclei
    scale : float
        Picture pixels per level-0 pixel (e.g. ``1 / thumbnail_downsample``).
    width : int
        Outline width in picture pixels.

    Returns
    -------
    numpy.ndarray
        ``(h, w, 3)`` uint8.
    """
    from PIL import Image, ImageDraw

    out = np.array(rgb, np.uint8, copy=True)
    n = len(nuclei)
    if n == 0:
        return out
    colors = _colors(nuclei)
    if nuclei.labels is not None and scale == 1.0 and nuclei.labels.shape == out.shape[:2]:
        # exact pixel outlines from the label image
        from skimage.segmentation import find_boundaries

        labels = np.asarray(nuclei.labels)
        edge = find_boundaries(labels, mode="inner")
        for _ in range(width - 1):  # thicker outlines grow inwards, never onto a neighbour
            edge |= find_boundaries(np.where(edge, 0, labels), mode="inner") & (labels > 0)
        lut = np.concatenate([np.zeros((1, 3), np.uint8), colors])
        out[edge] = lut[np.clip(labels[edge], 0, n)]
        return out
    coord = np.asarray(nuclei.coord, np.float64) * scale  # (n, 2, rays), (y, x)
    extent = (coord.max(axis=2) - coord.min(axis=2)).max(axis=1)
    img = Image.fromarray(out)
    draw = ImageDraw.Draw(img)
    for i in range(n):
        color = tuple(int(v) for v in colors[i])
        if extent[i] < 4:
            cy, cx = round(coord[i, 0].mean()), round(coord[i, 1].mean())
            r = max(1, round(extent[i] / 2))
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=color)
        else:
            # Pillow truncates float coordinates: round them so vertices land on their nearest pixel
            pts = list(zip(np.round(coord[i, 1]).tolist(), np.round(coord[i, 0]).tolist()))
            draw.line(pts + pts[:1], fill=color, width=width)
    return np.asarray(img)


def add_legend(rgb, entries, title=None, font_size=14, notes=()):
    """``rgb`` with a legend panel on its right: a swatch, the name and the count per entry.

    Parameters
    ----------
    rgb : numpy.ndarray
        ``(h, w, 3)`` uint8.
    entries : list of (str, (r, g, b), int)
    title : str, optional
        First line of the legend (e.g. the label set and the total count).
    notes : sequence of str
        Lines below the entries (e.g. "no tissue"), wrapped at 48 characters.

    Returns
    -------
    numpy.ndarray
        ``(max(h, legend height), w + legend width, 3)`` uint8, white where nothing is drawn.
    """
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=font_size)
    import textwrap

    lines = ([title] if title else []) + [f"{name} ({count})" for name, _, count in entries]
    note_lines = [w for n in notes for w in textwrap.wrap(str(n), 48)]
    line_h = font_size + 6
    swatch = font_size
    pad = 8
    text_w = max((font.getbbox(t)[2] for t in lines), default=0)
    legend_w = max(pad + swatch + pad + text_w + pad, pad + max((font.getbbox(t)[2] for t in note_lines), default=0) + pad)
    legend_h = pad + line_h * (len(lines) + len(note_lines) + bool(note_lines)) + pad
    h, w = rgb.shape[:2]
    canvas = Image.new("RGB", (w + legend_w, max(h, legend_h)), (255, 255, 255))
    canvas.paste(Image.fromarray(np.asarray(rgb, np.uint8)), (0, 0))
    draw = ImageDraw.Draw(canvas)
    y = pad
    if title:
        draw.text((w + pad, y), title, fill=(0, 0, 0), font=font)
        y += line_h
    for (name, color, count), text in zip(entries, lines[1 if title else 0:]):
        draw.rectangle([w + pad, y + 2, w + pad + swatch, y + 2 + swatch], fill=tuple(int(v) for v in color),
                       outline=(0, 0, 0))
        draw.text((w + pad + swatch + pad, y), text, fill=(0, 0, 0), font=font)
        y += line_h
    y += line_h if note_lines else 0
    for text in note_lines:
        draw.text((w + pad, y), text, fill=(90, 90, 90), font=font)
        y += line_h
    return np.asarray(canvas)


def _title(nuclei):
    ls = nuclei.label_set
    return f"{len(nuclei)} nuclei" + (f", label set {ls.name}" if ls is not None else "")


def image_overlay(image, nuclei, max_side=4096):
    """Outline overlay of an image prediction, with a legend.

    Parameters
    ----------
    image : numpy.ndarray
        ``(H, W[, C])`` the input image.
    nuclei : stardist_hier.predict.Nuclei
    max_side : int
        Larger images are shown downscaled so that their longer side is at most this.

    Returns
    -------
    numpy.ndarray
        RGB uint8 picture.
    """
    rgb = to_rgb8(image)
    h, w = rgb.shape[:2]
    scale = min(1.0, max_side / max(h, w, 1))
    if scale < 1.0:
        from PIL import Image

        rgb = np.asarray(Image.fromarray(rgb).resize((max(1, round(w * scale)), max(1, round(h * scale))),
                                                     Image.Resampling.BILINEAR))
        scale = rgb.shape[1] / w
    width = 2 if min(h, w) * scale >= 512 else 1
    return add_legend(draw_nuclei(rgb, nuclei, scale=scale, width=width), legend_entries(nuclei), title=_title(nuclei))


def slide_overlay(nuclei):
    """Thumbnail overlay of a slide prediction: nuclei, tissue outline and legend.

    Uses ``nuclei.info['thumbnail']`` (RGB uint8), ``info['thumbnail_downsample']`` (level-0
    pixels per thumbnail pixel) and, if present, ``info['tissue_mask']`` (2-D bool of any size;
    resized to the thumbnail).

    Returns
    -------
    numpy.ndarray
        RGB uint8 picture.
    """
    thumb = to_rgb8(nuclei.info["thumbnail"])
    down = float(nuclei.info.get("thumbnail_downsample") or nuclei.shape[0] / thumb.shape[0])
    rgb = draw_nuclei(thumb, nuclei, scale=1.0 / down)
    mask = nuclei.info.get("tissue_mask")
    if mask is not None:
        from skimage.segmentation import find_boundaries

        mask = _resize_mask(np.asarray(mask, bool), thumb.shape[:2])
        rgb = rgb.copy()
        rgb[find_boundaries(mask, mode="inner")] = 0
    notes = [n.strip() for n in str(nuclei.info.get("note") or "").split(";") if n.strip()]
    return add_legend(rgb, legend_entries(nuclei), title=_title(nuclei), notes=notes)


def _resize_mask(mask, shape):
    if mask.shape == tuple(shape):
        return mask
    rows = np.minimum((np.arange(shape[0]) * mask.shape[0] / shape[0]).astype(int), mask.shape[0] - 1)
    cols = np.minimum((np.arange(shape[1]) * mask.shape[1] / shape[1]).astype(int), mask.shape[1] - 1)
    return mask[rows][:, cols]


def mask_image(mask):
    """A 2-D bool mask as a uint8 picture: tissue white (255), background black (0)."""
    return np.where(np.asarray(mask, bool), 255, 0).astype(np.uint8)


def write_png(path, picture):
    """Write a uint8 picture (``(H, W)`` or ``(H, W, 3)``) as a PNG, atomically."""
    from PIL import Image

    img = Image.fromarray(np.asarray(picture, np.uint8))
    return atomic_save(path, lambda tmp: img.save(tmp, format="PNG"))
