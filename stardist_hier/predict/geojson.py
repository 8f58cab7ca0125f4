"""QuPath GeoJSON of predicted nuclei: one detection Feature per nucleus.

The file is a GeoJSON ``FeatureCollection`` that QuPath (0.4 and later) imports with
*File > Import objects from file* or by dragging it onto the open image; a ``.geojson.gz``
file is gzip-compressed GeoJSON, which QuPath reads directly. Each nucleus is::

    {"type": "Feature",
     "id": "<uuid>",
     "geometry": {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y1], ..., [x0, y0]]]},
     "properties": {"objectType": "detection",
                    "classification": {"name": "lymphocyte", "color": [160, 90, 160]},
                    "measurements": {"Nucleus id": 7, "Object probability": 0.93,
                                     "Probability: lymphocyte": 0.81, ...}}}

QuPath's rules, each checked by the tests (peers break them):

* one Feature per nucleus with a ``Polygon`` geometry (not one ``MultiPolygon`` per class);
* ``objectType`` inside ``properties`` (QuPath reads it nowhere else; without it the objects
  import as annotations), ``"detection"`` for nuclei;
* ``classification`` an object with a ``name`` and an ``[r, g, b]`` ``color`` (not a bare
  string), the colours of the hierarchy's nodes;
* every ring closed (first vertex repeated) with ``[x, y]`` (column, row) vertices;
* ``measurements`` a flat map of name -> number (QuPath 0.4's form);
* a feature ``id``, when present, a UUID (QuPath ignores other ids). The UUIDs are derived
  from the input's name and the nucleus id, so a re-run writes the same ids.

Coordinates are pixels of level 0 of the input, origin at the top-left corner of the image,
in QuPath's convention: pixel ``(row r, column c)`` covers ``[c, c + 1) x [r, r + 1)``, so the
StarDist polygon vertices (array indices, pixel centres at integers) are shifted by
:data:`PIXEL_OFFSET` = 0.5 (a polygon then covers the same pixels in QuPath as in the label
image). A model without classes writes detections without ``classification``.
Plain Python + numpy: no TensorFlow.
"""

from __future__ import annotations

import gzip
import io
import json
import uuid

import numpy as np

from ..atomic import atomic_save

__all__ = ["PIXEL_OFFSET", "UUID_NAMESPACE", "measurement_names", "iter_features", "write_geojson",
           "read_geojson"]

#: added to StarDist's vertex coordinates (pixel centres at integers) to get QuPath's (pixel corners)
PIXEL_OFFSET = 0.5

#: namespace of the feature UUIDs (uuid5 of "<input name>/<nucleus id>")
UUID_NAMESPACE = uuid.UUID("6f1d3c9e-5b8a-4c2e-9d47-1a2b3c4d5e6f")

ID_MEASUREMENT = "Nucleus id"
PROB_MEASUREMENT = "Object probability"


def measurement_names(nuclei):
    """Names of the measurements of each feature, in file order.

    ``"Nucleus id"`` (the row of the table and the value in the label image),
    ``"Object probability"``, then ``"Probability: <class>"`` for every class of the label
    set (summed leaf probabilities; none for a model without classes).
    """
    names = [ID_MEASUREMENT, PROB_MEASUREMENT]
    if nuclei.label_set is not None:
        names += [f"Probability: {n}" for n in nuclei.label_set.names]
    return names


def _classifications(label_set):
    """class id -> the ``classification`` object of QuPath."""
    return {k: {"name": label_set.node(k), "color": [int(v) for v in label_set.color(k)]} for k in label_set.ids}


def iter_features(nuclei, name="", decimals=2):
    """The GeoJSON Features of ``nuclei``, one per nucleus, as JSON text.

    Parameters
    ----------
    nuclei : stardist_hier.predict.Nuclei
        The prediction of one input.
    name : str
        Name of the input; seeds the feature UUIDs.
    decimals : int
        Decimals kept in the vertex coordinates and probabilities.

    Yields
    ------
    str
        One Feature serialised as compact JSON.
    """
    n = len(nuclei)
    if n == 0:
        return
    coord = np.asarray(nuclei.coord, np.float64)
    # (n, 2, n_rays) (y, x) -> (n, n_rays + 1, 2) (x, y), ring closed by repeating vertex 0
    xy = np.round(coord[:, ::-1, :].transpose(0, 2, 1) + PIXEL_OFFSET, decimals)
    xy = np.concatenate([xy, xy[:, :1]], axis=1)
    prob = np.round(np.asarray(nuclei.prob, np.float64), 4)
    ls = nuclei.label_set
    classes = _classifications(ls) if ls is not None else {}
    if ls is not None:
        ids = list(ls.ids)
        class_prob = np.round(np.asarray(nuclei.class_prob, np.float64)[:, ids], 4)
        class_id = np.asarray(nuclei.class_id, np.int64)
        prob_names = [f"Probability: {n}" for n in ls.names]
    for i in range(n):
        measurements = {ID_MEASUREMENT: i + 1, PROB_MEASUREMENT: float(prob[i])}
        properties = {"objectType": "detection"}
        if ls is not None:
            properties["classification"] = classes[int(class_id[i])]
            measurements.update(zip(prob_names, class_prob[i].tolist()))
        properties["measurements"] = measurements
        feature = {
            "type": "Feature",
            "id": str(uuid.uuid5(UUID_NAMESPACE, f"{name}/{i + 1}")),
            "geometry": {"type": "Polygon", "coordinates": [xy[i].tolist()]},
            "properties": properties,
        }
        yield json.dumps(feature, separators=(",", ":"))


def _write(f, nuclei, name, decimals):
    f.write('{"type":"FeatureCollection","features":[')
    for k, text in enumerate(iter_features(nuclei, name=name, decimals=decimals)):
        f.write(",\n" if k else "\n")
        f.write(text)
    f.write("\n]}\n")


def write_geojson(nuclei, path, name="", decimals=2):
    """Write the QuPath GeoJSON of ``nuclei`` to ``path`` atomically.

    Parameters
    ----------
    nuclei : stardist_hier.predict.Nuclei
    path : str or path-like
        ``*.geojson`` (plain) or ``*.geojson.gz`` (gzip; QuPath reads it directly).
    name : str
        Name of the input (seeds the feature UUIDs).
    decimals : int
        Decimals of the vertex coordinates.

    Returns
    -------
    pathlib.Path
    """
    def save(tmp):
        if str(path).endswith(".gz"):
            # no name and mtime=0 in the header: the same prediction gives byte-identical files
            with open(tmp, "wb") as raw, gzip.GzipFile(filename="", fileobj=raw, mode="wb", compresslevel=6, mtime=0) as gz, \
                    io.TextIOWrapper(gz, encoding="utf-8") as f:
                _write(f, nuclei, name, decimals)
        else:
            with open(tmp, "w", encoding="utf-8") as f:
                _write(f, nuclei, name, decimals)

    return atomic_save(path, save)


def read_geojson(path):
    """The parsed GeoJSON of ``path`` (``.geojson`` or ``.geojson.gz``)."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return json.load(f)
