"""The per-nucleus table of a prediction (Parquet and CSV) and the label image.

One row per nucleus, in the order of :class:`~stardist_hier.predict.Nuclei` (``id`` = row + 1,
the value of the nucleus in the label image and ``"Nucleus id"`` in the GeoJSON). Columns:

============================  ==================================================================
``id``                        1, 2, ...
``centroid_x``, ``centroid_y``  centroid of the polygon (level-0 pixels)
``point_x``, ``point_y``      the StarDist centre the rays start from
``bbox_x0 .. bbox_y1``        bounding box of the polygon vertices (min and max)
``area_px``                   polygon area in level-0 pixels (shoelace formula)
``area_um2``                  ``area_px * mpp**2`` (only when the pixel size is known)
``prob``                      object probability
``class_id``, ``class_name``  class at the label set (no class columns without classes)
``prob_<class>``              summed leaf probability of each class of the label set
``<level>_class_id``, ...     class id and name at each hierarchy level above the label set
============================  ==================================================================

Coordinates follow numpy's convention (``x`` = column, ``y`` = row, pixel centres at
integers); the GeoJSON adds QuPath's half-pixel offset. Parquet needs ``pyarrow`` (the
``tables`` extra). Plain Python + numpy/pandas: no TensorFlow.
"""

from __future__ import annotations

import numpy as np

from ..atomic import atomic_save

__all__ = ["polygon_area_centroid", "nuclei_table", "write_tables", "write_label_image", "have_parquet"]


def polygon_area_centroid(coord):
    """Area and centroid of star-convex polygons (shoelace formula).

    Parameters
    ----------
    coord : array_like
        ``(n, 2, n_rays)`` vertices (row y, column x).

    Returns
    -------
    area, cy, cx : numpy.ndarray
        ``(n,)`` each: the (unsigned) area and the area centroid. A degenerate polygon
        (zero area) gets the mean of its vertices as centroid.
    """
    coord = np.asarray(coord, np.float64)
    if coord.shape[0] == 0:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    y, x = coord[:, 0], coord[:, 1]
    y1, x1 = np.roll(y, -1, axis=1), np.roll(x, -1, axis=1)
    cross = x * y1 - x1 * y
    a2 = cross.sum(axis=1)  # twice the signed area
    with np.errstate(invalid="ignore", divide="ignore"):
        cx = ((x + x1) * cross).sum(axis=1) / (3 * a2)
        cy = ((y + y1) * cross).sum(axis=1) / (3 * a2)
    flat = np.abs(a2) < 1e-12
    cx[flat], cy[flat] = x[flat].mean(axis=1), y[flat].mean(axis=1)
    return np.abs(a2) / 2, cy, cx


def nuclei_table(nuclei, mpp=None):
    """The per-nucleus table of ``nuclei`` (columns in the module docstring).

    Parameters
    ----------
    nuclei : stardist_hier.predict.Nuclei
    mpp : float, optional
        Level-0 pixel size in micrometres (default: ``nuclei.info['mpp']`` if any); adds
        ``area_um2``.

    Returns
    -------
    pandas.DataFrame
    """
    import pandas as pd

    n = len(nuclei)
    coord = np.asarray(nuclei.coord, np.float64)
    area, cy, cx = polygon_area_centroid(coord)
    points = np.asarray(nuclei.points, np.float64).reshape(n, 2)
    cols = {
        "id": np.arange(1, n + 1, dtype=np.int64),
        "centroid_x": cx, "centroid_y": cy,
        "point_x": points[:, 1], "point_y": points[:, 0],
        "bbox_x0": coord[:, 1].min(axis=1) if n else np.zeros(0),
        "bbox_y0": coord[:, 0].min(axis=1) if n else np.zeros(0),
        "bbox_x1": coord[:, 1].max(axis=1) if n else np.zeros(0),
        "bbox_y1": coord[:, 0].max(axis=1) if n else np.zeros(0),
        "area_px": area,
    }
    mpp = nuclei.info.get("mpp") if mpp is None else mpp
    if mpp:
        cols["area_um2"] = area * float(mpp) ** 2
    cols["prob"] = np.asarray(nuclei.prob, np.float64).reshape(n)
    ls = nuclei.label_set
    if ls is not None:
        class_id = np.asarray(nuclei.class_id, np.int64).reshape(n)
        cols["class_id"] = class_id
        cols["class_name"] = np.array([ls.node(k) for k in class_id], dtype=object)
        class_prob = np.asarray(nuclei.class_prob, np.float64).reshape(n, ls.max_id + 1)
        for k, name in zip(ls.ids, ls.names):
            cols[f"prob_{name}"] = class_prob[:, k]
    for level, lls in (nuclei.levels or {}).items():
        ids = np.asarray(nuclei.level_class_id[level], np.int64).reshape(n)
        cols[f"{level}_class_id"] = ids
        cols[f"{level}_class_name"] = np.array([lls.node(k) for k in ids], dtype=object)
    df = pd.DataFrame(cols)
    for c in df.columns:
        if c.endswith("class_name"):
            df[c] = df[c].astype(str)
    return df


def have_parquet():
    """True when ``pyarrow`` is installed (Parquet tables)."""
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return False
    return True


def write_tables(table, stem, formats=("parquet", "csv"), metadata=None):
    """Write a table as ``<stem>.parquet`` and/or ``<stem>.csv``, each atomically.

    Parameters
    ----------
    table : pandas.DataFrame
    stem : pathlib.Path
        Path without suffix.
    formats : sequence of {'parquet', 'csv'}
    metadata : dict, optional
        str -> str stored in the Parquet schema (e.g. label set, model).

    Returns
    -------
    list of pathlib.Path
    """
    from pathlib import Path

    stem = Path(stem)
    paths = []
    for fmt in formats:
        path = stem.with_name(stem.name + "." + fmt)
        if fmt == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            t = pa.Table.from_pandas(table, preserve_index=False)
            if metadata:
                t = t.replace_schema_metadata({**(t.schema.metadata or {}),
                                               **{str(k).encode(): str(v).encode() for k, v in metadata.items()}})
            paths.append(atomic_save(path, lambda tmp: pq.write_table(t, tmp)))
        elif fmt == "csv":
            paths.append(atomic_save(path, lambda tmp: table.to_csv(tmp, index=False, float_format="%.6g")))
        else:
            raise ValueError(f"unknown table format {fmt!r} (parquet or csv)")
    return paths


def write_label_image(nuclei, path):
    """The label image of an image prediction as a 2-channel TIFF, written atomically.

    Channel 0 holds the instance ids (``id`` of the table), channel 1 the class ids at the
    label set (all zeros for a model without classes): the ``(H, W, 2)`` layout of the
    ground-truth masks of :mod:`stardist_hier.patches`, which ``stardist-hier evaluate
    --predictions`` reads.
    """
    import tifffile

    labels = np.asarray(nuclei.labels)
    classes = np.zeros_like(labels, dtype=np.int32)
    if nuclei.class_id is not None and len(nuclei):
        lut = np.concatenate([[0], np.asarray(nuclei.class_id, np.int32)])
        classes = lut[np.clip(labels, 0, len(nuclei))].astype(np.int32)
    arr = np.stack([labels.astype(np.int32), classes], axis=-1)
    return atomic_save(path, lambda tmp: tifffile.imwrite(tmp, arr, photometric="minisblack", planarconfig="contig",
                                                          compression="zlib"))
