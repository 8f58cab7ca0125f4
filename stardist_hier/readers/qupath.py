"""Your own data: images with QuPath-exported GeoJSON annotations (``prepare qupath``).

Layout: ``--src`` holds images (``.tif``, ``.tiff``, ``.png``, ``.jpg``: whole images, e.g.
regions exported from a slide, not pyramidal slides) and one GeoJSON per image, searched
recursively (``images/`` beside ``annotations/`` works, hidden folders are skipped). A
GeoJSON ``<stem>.geojson`` (or ``<stem>.<image suffix>.geojson``, ``.json``,
``.geojson.gz``) belongs to the image of that stem. An image without GeoJSON, or a
``.geojson`` without image, is a bad file (``--skip-bad`` leaves it out); a ``.json``
without an image is not annotation and is ignored.

What is read (QuPath 0.2 to 0.5 exports, *File > Export objects as GeoJSON* or
``exportObjectsToGeoJson``):

* a ``FeatureCollection``, a JSON array of Features, or a single Feature;
* features whose type (``properties.objectType``, or QuPath 0.2's ``id``
  ``PathAnnotationObject``/``PathDetectionObject``/``PathCellObject``; none: an
  annotation, as QuPath imports it) is one of ``object_types`` (default ``annotation``,
  ``detection``, ``cell``); a cell's nucleus is its ``nucleusGeometry`` when exported
  (else its outline). Other objects (tiles, TMA cores) are skipped (``other_objects``);
* ``Polygon`` and ``MultiPolygon`` geometries (a MultiPolygon is one nucleus; holes are
  cut out, so a nucleus below shows through them); points and lines are skipped
  (``non_polygon_objects``);
* the class name: ``properties.classification.name`` (``names`` joined by ``": "`` for a
  derived class), else ``properties.classification`` when a bare string (older exports),
  else ``properties.name``. It is matched to the label set's nodes as
  :mod:`.userdata` says (case-insensitive, ``lymphocyte`` counts for ``inflammatory``,
  ``--class-name NAME=NODE`` aliases); unknown names are one error per file, listing
  them with the closest node names.

Rules:

* An object without a class is a nucleus of unknown class (class ``None``: no class
  loss, counted as ``unclassified_nuclei``), or class 1 when the label set is the root
  alone ("a nucleus").
* QuPath's built-in ``Ignore*`` class marks ignore regions (``-1``: no loss there), painted
  last over everything; ``Region*`` objects are region outlines, not nuclei, and are
  skipped (``region_objects``). A node of the same name wins.
* Rasterised as the ImageScope readers do (:func:`.imagescope.rasterize`): polygons filled
  with :func:`skimage.draw.polygon` and clipped to the image, in file order, a later object
  on top of an earlier one (nuclei wholly covered are counted as ``covered_nuclei``);
  fewer than 3 vertices or no pixel inside the image: dropped (``dropped_polygons``).
  Coordinates are QuPath's (pixels of the full-resolution image, ``(0, 0)`` the top-left
  *corner*): a pixel belongs to a polygon when its centre ``(x + 0.5, y + 0.5)`` is
  inside, the convention of QuPath's own label-image export and of the GeoJSON
  ``stardist-hier predict`` writes (:data:`PIXEL_OFFSET`).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np

from .base import Labelled, ReaderError, Sample, require_dir, to_rgb_uint8
from .userdata import IMAGE_SUFFIXES, UserReader, file_stem, index_by_stem, list_files, normalize_name, read_image_file

__all__ = ["QuPathReader", "read_geojson", "feature_objects", "rasterize_objects", "PIXEL_OFFSET", "OBJECT_TYPES"]

#: QuPath coordinates minus this are array coordinates (pixel centres at integers);
#: ``stardist_hier.predict.geojson.PIXEL_OFFSET`` adds it when writing
PIXEL_OFFSET = 0.5
#: object types read by default
OBJECT_TYPES = ("annotation", "detection", "cell")
_V02_TYPES = {"pathannotationobject": "annotation", "pathdetectionobject": "detection", "pathcellobject": "cell",
              "pathtileobject": "tile", "tmacoreobject": "tma_core", "pathrootobject": "root"}
_GEOJSON_SUFFIXES = (".geojson", ".geojson.gz", ".json")


def read_geojson(path):
    """The list of Features of a QuPath GeoJSON file (FeatureCollection, array or one Feature)."""
    path = Path(path)
    try:
        opener = gzip.open if path.name.lower().endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8-sig") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise ReaderError(path, "annotation file missing") from None
    except json.JSONDecodeError as e:
        raise ReaderError(path, f"corrupt or truncated JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    except (OSError, UnicodeDecodeError, EOFError) as e:
        raise ReaderError(path, f"unreadable annotation file ({type(e).__name__}: {e})") from None
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        data = data.get("features")
    elif isinstance(data, dict) and data.get("type") == "Feature":
        data = [data]
    if not isinstance(data, list) or not all(isinstance(f, dict) for f in data):
        kind = data.get("type") if isinstance(data, dict) else type(data).__name__
        raise ReaderError(path, f"not QuPath GeoJSON: expected a FeatureCollection, an array of Features or a "
                                f"Feature, found {kind!r}")
    return data


def _object_type(feature):
    props = feature.get("properties") or {}
    t = props.get("objectType") if isinstance(props, dict) else None
    if isinstance(t, str) and t:
        return t.strip().lower().replace(" ", "_")
    fid = feature.get("id")
    if isinstance(fid, str) and fid.lower() in _V02_TYPES:
        return _V02_TYPES[fid.lower()]
    return "annotation"  # QuPath imports a feature without objectType as an annotation


def class_name(feature):
    """The class name of a feature (``None``: unclassified), see the module docstring."""
    props = feature.get("properties") or {}
    if not isinstance(props, dict):
        return None
    c = props.get("classification")
    if isinstance(c, dict):
        name = c.get("name")
        if not name and isinstance(c.get("names"), list):
            name = ": ".join(str(n) for n in c["names"])
        return str(name).strip() or None if name else None
    if isinstance(c, str) and c.strip():
        return c.strip()
    name = props.get("name")
    return name.strip() or None if isinstance(name, str) else None


def _rings(geometry, path, index):
    """``[(outer, [holes])]`` of a Polygon / MultiPolygon / GeometryCollection; ``None`` if not polygonal."""
    if not isinstance(geometry, dict):
        return None
    kind = geometry.get("type")
    coords = geometry.get("coordinates")
    if kind == "GeometryCollection":
        parts = [_rings(g, path, index) for g in geometry.get("geometries") or []]
        parts = [p for p in parts if p is not None]
        return [r for p in parts for r in p] if parts else None
    if kind == "Polygon":
        polys = [coords]
    elif kind == "MultiPolygon":
        polys = coords
    else:
        return None
    out = []
    try:
        for poly in polys or []:
            rings = [np.asarray([[float(v[0]), float(v[1])] for v in ring], np.float64).reshape(-1, 2)
                     for ring in poly]
            if rings:
                out.append((rings[0], rings[1:]))
    except (TypeError, ValueError, IndexError):
        raise ReaderError(path, f"feature {index}: {kind} coordinates are not lists of [x, y] numbers") from None
    if any(not np.all(np.isfinite(r)) for o, hs in out for r in [o, *hs]):
        raise ReaderError(path, f"feature {index}: {kind} coordinates hold NaN or infinite numbers")
    return out


def feature_objects(features, classify, object_types=OBJECT_TYPES, path="<geojson>"):
    """The objects to paint, in file order: ``[(kind, class id or None, rings, class name)]``.

    Parameters
    ----------
    features : list of dict
    classify : callable
        Class name (or ``None``) -> ``(kind, class id)`` with ``kind`` one of ``'nucleus'``,
        ``'ignore'``, ``'region'``; raises :class:`KeyError` for an unknown name.
    object_types : iterable of str

    Returns
    -------
    objects : list
    notes : dict
    unknown : dict
        Unknown class name -> number of objects.
    """
    types = {t.lower() for t in object_types}
    objects, unknown = [], {}
    notes = {"other_objects": 0, "non_polygon_objects": 0, "region_objects": 0}
    for i, f in enumerate(features):
        t = _object_type(f)
        if t not in types:
            notes["other_objects"] += 1
            continue
        geometry = f.get("nucleusGeometry") if t == "cell" and f.get("nucleusGeometry") else f.get("geometry")
        rings = _rings(geometry, path, i)
        if rings is None:
            notes["non_polygon_objects"] += 1
            continue
        name = class_name(f)
        try:
            kind, cid = classify(name)
        except KeyError:
            unknown[name] = unknown.get(name, 0) + 1
            continue
        if kind == "region":
            notes["region_objects"] += 1
            continue
        objects.append((kind, cid, rings, name))
    return objects, notes, unknown


def _fill(outer, holes, shape):
    """Rows and columns of the pixels whose centres are inside ``outer`` and outside ``holes``."""
    from skimage.draw import polygon

    if len(outer) < 3:
        return None
    rr, cc = polygon(outer[:, 1] - PIXEL_OFFSET, outer[:, 0] - PIXEL_OFFSET, shape)
    if rr.size == 0 or not holes:
        return rr, cc
    r0, c0 = rr.min(), cc.min()
    keep = np.zeros((rr.max() - r0 + 1, cc.max() - c0 + 1), bool)
    keep[rr - r0, cc - c0] = True
    for h in holes:
        if len(h) >= 3:
            hr, hc = polygon(h[:, 1] - PIXEL_OFFSET - r0, h[:, 0] - PIXEL_OFFSET - c0, keep.shape)
            keep[hr, hc] = False
    kr, kc = np.nonzero(keep)
    return kr + r0, kc + c0


def rasterize_objects(objects, shape):
    """Paint :func:`feature_objects`' objects into an instance map (the module docstring's rules).

    Returns
    -------
    inst : numpy.ndarray
        ``(H, W)`` int32: 0 background, 1..n nuclei in file order, -1 ignore.
    classes : dict
        ``{instance id: class id or None}`` of the nuclei present in ``inst``.
    notes : dict
        ``dropped_polygons``, ``covered_nuclei``, ``ignore_regions``.
    """
    inst = np.zeros(shape, np.int32)
    classes, later, dropped, n = {}, [], 0, 0
    for kind, cid, rings, *_ in objects:
        pixels = []
        for outer, holes in rings:
            px = _fill(outer, holes, shape)
            if px is None or px[0].size == 0:
                dropped += 1
            else:
                pixels.append(px)
        if not pixels:
            continue
        rr, cc = np.concatenate([p[0] for p in pixels]), np.concatenate([p[1] for p in pixels])
        if kind == "ignore":
            later.append((rr, cc))
            continue
        n += 1
        inst[rr, cc] = n
        classes[n] = cid
    for rr, cc in later:
        inst[rr, cc] = -1
    present = set(np.unique(inst[inst > 0]).tolist())
    kept = {k: v for k, v in classes.items() if k in present}
    return inst, kept, {"dropped_polygons": dropped, "covered_nuclei": len(classes) - len(kept),
                        "ignore_regions": len(later)}


def _annotation_stem(path):
    name = Path(path).name
    low = name.lower()
    for suffix in _GEOJSON_SUFFIXES:
        if low.endswith(suffix):
            return file_stem(name[: -len(suffix)])
    return file_stem(name)


class QuPathReader(UserReader):
    """Reader of images with QuPath GeoJSON annotations (the module docstring has the rules).

    Parameters
    ----------
    dataset, label_set, hierarchy, test_images
        See :class:`~stardist_hier.readers.userdata.UserReader`.
    object_types : iterable of str
        QuPath object types read as nuclei (default ``annotation``, ``detection``, ``cell``).
    aliases : dict, optional
        Class name -> node name, applied before matching.
    """

    def __init__(self, dataset, label_set, hierarchy="default", test_images=None, object_types=OBJECT_TYPES,
                 aliases=None):
        super().__init__(dataset, label_set, hierarchy, test_images)
        types = tuple(str(t).strip().lower() for t in object_types if str(t).strip())
        if not types:
            raise ReaderError("--object-types", "name at least one QuPath object type (annotation, detection, cell)")
        self.object_types = types
        self.aliases = dict(aliases or {})
        self._names = None
        self.class_names(self.aliases)  # check the aliases now

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_names"] = None  # rebuilt in each worker process
        return state

    def find_samples(self, src, on_bad=None, split=None):
        """One :class:`Sample` per image with a GeoJSON; unmatched files go to ``on_bad``."""
        def bad(path, problem):
            if on_bad is None:
                raise ReaderError(path, problem)
            on_bad(path, problem)

        src = require_dir(src, "QuPath export folder", "expected images with one GeoJSON each")
        images = index_by_stem(list_files(src, IMAGE_SUFFIXES, recursive=True), "images")
        ann = {}
        for f in list_files(src, _GEOJSON_SUFFIXES, recursive=True):
            s = _annotation_stem(f)
            if s not in images and f.name.lower().endswith(".json"):
                continue  # some other JSON (a QuPath project's summary.json...), not annotation
            ann.setdefault(s, []).append(f)
        if not any(s in images for s in ann):
            raise ReaderError(src, f"no image with a GeoJSON of the same stem: images "
                                   f"{[p.name for p in list(images.values())[:5]]}, GeoJSON "
                                   f"{[p.name for fs in list(ann.values())[:5] for p in fs]}; 'a.tif' is annotated "
                                   "by 'a.geojson' (or 'a.tif.geojson')")
        rel = lambda p: str(p.relative_to(src))
        imgs = list(images.values())
        splits = self.splits(src, imgs, split)
        samples = []
        for stem, img in images.items():
            files = ann.get(stem, [])
            if len(files) != 1:
                bad(img, f"no GeoJSON for this image in {src} (looked for '{stem}.geojson')" if not files else
                    f"{len(files)} GeoJSON files for this image: {', '.join(rel(f) for f in files)}")
                continue
            samples.append(Sample(source=rel(files[0]), split=splits[img], group=stem, patch_id=stem,
                                  key=(str(img), str(files[0]))))
        for stem, files in sorted(ann.items()):
            if stem not in images:
                for f in files:
                    bad(f, f"no image for this GeoJSON in {src} (an image of stem '{stem}': "
                           f"{', '.join(IMAGE_SUFFIXES)})")
        return samples

    def classify(self, name):
        """Class name -> ``(kind, class id)``; :class:`KeyError` for a name not in the label set."""
        if self._names is None:
            self._names = self.class_names(self.aliases)
        if name is None:
            return "nucleus", (1 if self.root_only else None)
        hit = self._names.lookup(name)
        if hit is not None:
            return "nucleus", hit[0]
        key = normalize_name(name)
        if key == "ignore":
            return "ignore", None
        if key == "region":
            return "region", None
        raise KeyError(name)

    def load_sample(self, sample, cache):
        """Image, instance map and classes of one annotated image."""
        img_path, ann_path = sample.key
        image = to_rgb_uint8(read_image_file(img_path), img_path)
        features = read_geojson(ann_path)
        objects, notes, unknown = feature_objects(features, self.classify, self.object_types, path=ann_path)
        if unknown:
            raise self._names.unknown_error(ann_path, unknown)
        inst, classes, more = rasterize_objects(objects, image.shape[:2])
        notes.update(more)
        notes["unclassified_nuclei"] = sum(1 for c in classes.values() if c is None)
        notes["mapped_to_label_set_class"] = sum(1 for name in (o[3] for o in objects if o[0] == "nucleus")
                                                 if name is not None and self._names.lookup(name)[1] is not None)
        return Labelled(image, inst, classes, notes)
