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
        Decimals kept in the vertex coordinates (probabilities keep 4).

    Yields
    ------
    str
        One Feature serialised as compact JSON.
    """
    n = len(nuclei)
    if n == 0:
        return
    coord = np.asarray(nuclei.coord, np.float64)
    n_rays = coord.shape[2]
    if not np.isfinite(coord).all():
        raise ValueError(f"{name or 'nuclei'}: polygon vertices that are not finite numbers")
    # (n, 2, n_rays) (y, x) -> (n, n_rays + 1, 2) (x, y), ring closed by repeating vertex 0
    xy = coord[:, ::-1, :].transpose(0, 2, 1) + PIXEL_OFFSET
    xy = np.concatenate([xy, xy[:, :1]], axis=1).reshape(n, -1).tolist()
    # printf-style formatting in C is ~20x faster than json.dumps on nested lists of floats
    ring_fmt = "[[" + ",".join([f"[%.{int(decimals)}f,%.{int(decimals)}f]"] * (n_rays + 1)) + "]]"
    prob = np.asarray(nuclei.prob, np.float64).tolist()
    ls = nuclei.label_set
    head = '{"type":"Feature","id":"%s","geometry":{"type":"Polygon","coordinates":%s},' \
           '"properties":{"objectType":"detection",'
    meas_fmt = '"measurements":{' + json.dumps(ID_MEASUREMENT) + ':%d,' + json.dumps(PROB_MEASUREMENT) + ':%.4f'
    if ls is not None:
        classes = {k: json.dumps(c, separators=(",", ":")) for k, c in _classifications(ls).items()}
        ids = list(ls.ids)
        class_prob = np.asarray(nuclei.class_prob, np.float64)[:, ids].tolist()
        class_id = np.asarray(nuclei.class_id, np.int64).tolist()
        meas_fmt += "".join("," + json.dumps(f"Probability: {c}") + ":%.4f" for c in ls.names)
    meas_fmt += "}}}"
    for i in range(n):
        uid = uuid.uuid5(UUID_NAMESPACE, f"{name}/{i + 1}")
        text = head % (uid, ring_fmt % tuple(xy[i]))
        if ls is None:
            yield text + meas_fmt % (i + 1, prob[i])
            continue
        try:
            cls = classes[class_id[i]]
        except KeyError:
            raise ValueError(f"{name or 'nuclei'}: class id {class_id[i]} of nucleus {i + 1} is not in label set "
                             f"'{ls.name}' (ids {ids})") from None
        yield text + '"classification":' + cls + "," + meas_fmt % (i + 1, prob[i], *class_prob[i])


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
            with open(tmp, "wb") as raw, gzip.GzipFile(filename="", fileobj=raw, mode="wb", compresslevel=3, mtime=0) as gz, \
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
