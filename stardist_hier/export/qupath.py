"""Files written beside an export for QuPath, and QuPath's decoding of the output in numpy.

* ``<stem>.classes.txt``: the class names, one per line, line ``k`` naming class channel
  ``k`` (line 1 is channel 0, background). QuPath's class-name map must hold **every**
  class channel, background included: QuPath splits the output by the size of the map.
* ``<stem>.classes.json``: the whole :class:`~stardist_hier.export.layout.ExportLayout`
  (channels, class ids and colours, rays, grid, input divisor, thresholds).
* ``<stem>.groovy``: a QuPath script running the exported ``.pb`` with
  ``StarDist2D.builder(...)`` and those names (:func:`groovy_snippet`).

:func:`decode_like_qupath` reproduces what QuPath's ``StarDist2D.createNuclei`` reads from
the output, so tests can check an export the way QuPath will use it. Plain numpy: no
TensorFlow.
"""

from __future__ import annotations

import numpy as np

from ..atomic import atomic_write_json, atomic_write_text
from ..patches import NORMALIZE_PERCENTILES

__all__ = ["write_class_files", "groovy_snippet", "decode_like_qupath"]


def write_class_files(layout, folder, stem):
    """Write ``<stem>.classes.txt`` and ``<stem>.classes.json`` into ``folder`` (atomically).

    Returns
    -------
    dict
        ``{'classes_txt': path, 'classes_json': path}``.
    """
    txt = folder / f"{stem}.classes.txt"
    js = folder / f"{stem}.classes.json"
    atomic_write_text(txt, "".join(f"{name}\n" for name in layout.class_names))
    atomic_write_json(js, layout.to_dict())
    return {"classes_txt": txt, "classes_json": js}


def groovy_snippet(model_path, classes_txt, layout, pixel_size=0.5):
    """A QuPath (>= 0.4, StarDist extension) script that detects and classifies nuclei with an export.

    Parameters
    ----------
    model_path : path-like
        The exported ``.pb``.
    classes_txt : path-like or None
        The ``<stem>.classes.txt`` beside it (``None`` for a model without classes).
    layout : ExportLayout
        Gives the probability threshold and the input divisor.
    pixel_size : float
        Pixel size (µm) written into ``.pixelSize(...)``: set it to the training images'.

    Returns
    -------
    str
        Groovy source.
    """
    lo, hi = (f"{p:g}" for p in NORMALIZE_PERCENTILES)
    lines = [
        "// Nucleus detection and classification in QuPath with a stardist-hier export.",
        "// Needs QuPath >= 0.4 with the StarDist extension; run it with annotations selected.",
        "import qupath.ext.stardist.StarDist2D",
        "",
        f"def modelPath = '{_groovy_path(model_path)}'",
    ]
    if classes_txt is not None:
        lines += [
            "// class channel k -> name, background first: the map must hold every class channel,",
            "// QuPath splits the model's output by the size of this map",
            f"def names = new File('{_groovy_path(classes_txt)}').readLines().findAll {{ it.trim() }}",
            "def classes = [:]",
            "names.eachWithIndex { name, k -> classes[k] = name }",
        ]
    lines += [
        "",
        "def stardist = StarDist2D.builder(modelPath)",
        "        // normalise as in training: percentiles per channel, here over the whole image",
        "        .preprocess(StarDist2D.imageNormalizationBuilder()",
        f"            .percentiles({lo}, {hi})",
        "            .perChannel(true)",
        "            .build())",
        f"        .threshold({layout.prob_thresh:g})  // the model's probability threshold",
        f"        .pixelSize({pixel_size:g})  // µm per pixel of the training images",
    ]
    if classes_txt is not None:
        lines += [
            "        .classificationNames(classes)  // the class at each nucleus's centre pixel",
            "        .keepClassifiedBackground(false)  // drop nuclei whose centre pixel is background",
        ]
    lines += [
        "        .measureShape()",
        "        .includeProbability(true)",
        "        .build()",
        "",
        "def parents = getSelectedObjects()",
        "if (parents.isEmpty()) {",
        "    println 'Select one or more annotations first'",
        "    return",
        "}",
        "stardist.detectObjects(getCurrentImageData(), parents)",
        "stardist.close()",
        "println 'Done'",
        "",
    ]
    if not layout.qupath_compatible:
        lines.insert(2, f"// WARNING: this network needs inputs divisible by {list(layout.divisor)}; QuPath pads "
                        f"tiles to multiples of 64 only, so it cannot run this model")
    return "\n".join(lines)


def _groovy_path(path):
    return str(path).replace("\\", "/").replace("'", "\\'")


def decode_like_qupath(output, n_class_channels, threshold, scale=None, keep_background=False):
    """Read one output image the way QuPath's StarDist extension does (before its overlap filter).

    QuPath splits the channels by the size of its class-name map (``n_class_channels``):
    channel 0 is the probability, the last ``n_class_channels`` the classes, the channels
    between the rays. Every pixel with probability ``>= threshold`` is a candidate; its class
    is the first arg-max of the class channels, and a candidate of class 0 (background) is
    dropped unless ``keep_background``. Ray ``a`` of length ``max(d, 1e-3)`` ends at
    ``(y * sy + d sin(2 pi a / n), x * sx + d cos(2 pi a / n))``, ``(sy, sx)`` the ratio of
    input to output size. QuPath then drops overlapping candidates by probability on the
    polygons (JTS geometry); that step is not reproduced here.

    Parameters
    ----------
    output : numpy.ndarray
        ``(height, width, channels)`` output of the export (channels last).
    n_class_channels : int
        Size of the class-name map (0: no classes).
    threshold : float
        Probability threshold.
    scale : (float, float) or None
        Input pixels per output pixel (the model's grid); ``None``: 1.
    keep_background : bool
        QuPath's ``keepClassifiedBackground``.

    Returns
    -------
    dict
        ``points`` ``(n, 2)`` output pixel indices (row, column), ``prob`` ``(n,)``,
        ``class_channel`` ``(n,)`` (-1 without classes), ``coord`` ``(n, 2, n_rays)``
        polygon vertices in input pixels (rows y, x), in row-major pixel order.
    """
    output = np.asarray(output, np.float64)
    if output.ndim != 3:
        raise ValueError(f"output must be (height, width, channels), got shape {output.shape}")
    n_rays = output.shape[-1] - 1 - int(n_class_channels)
    if n_rays < 3:
        raise ValueError(f"{output.shape[-1]} channels cannot hold a probability, rays and {n_class_channels} classes")
    sy, sx = (1.0, 1.0) if scale is None else (float(scale[0]), float(scale[1]))
    prob = output[..., 0]
    rows, cols = np.nonzero(prob >= threshold)
    if n_class_channels:
        classes = output[rows, cols, 1 + n_rays:].argmax(axis=-1)
    else:
        classes = np.full(len(rows), -1)
    keep = np.ones(len(rows), bool) if keep_background or not n_class_channels else classes != 0
    rows, cols, classes = rows[keep], cols[keep], classes[keep]
    dist = np.maximum(1e-3, output[rows, cols, 1:1 + n_rays])
    phi = 2 * np.pi / n_rays * np.arange(n_rays)
    coord = np.stack([rows[:, None] * sy + dist * np.sin(phi), cols[:, None] * sx + dist * np.cos(phi)], axis=1)
    return {"points": np.stack([rows, cols], axis=1), "prob": prob[rows, cols], "class_channel": classes,
            "coord": coord}
