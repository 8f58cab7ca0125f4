"""Outputs of `stardist-hier predict`: QuPath GeoJSON, per-nucleus tables, label image, overlays.

Built on hand-made :class:`Nuclei` (no model): random star-convex polygons rasterised with
scikit-image, so every check has an independent reference.
"""

import gzip
import json
import uuid

import numpy as np
import pandas as pd
import pytest
import tifffile
from matplotlib.path import Path as MplPath
from PIL import Image
from skimage.draw import polygon as draw_polygon

from stardist_hier.hierarchy import ClassHierarchy
from stardist_hier.predict import Nuclei
from stardist_hier.predict import geojson as G
from stardist_hier.predict import overlay as O
from stardist_hier.predict import tables as T


def make_nuclei(n=12, shape=(90, 140), n_rays=16, seed=0, label_set="monusac", levels=True, labels=True,
                edge=True):
    """``n`` non-overlapping random star-convex nuclei; one touches the image's right edge if ``edge``."""
    rng = np.random.default_rng(seed)
    hier = ClassHierarchy.default()
    ls = hier.label_set(label_set) if label_set else None
    H, W = shape
    angles = np.linspace(0, 2 * np.pi, n_rays, endpoint=False)
    coords, points, lab = [], [], np.zeros(shape, np.int32)
    tries = 0
    while len(coords) < n and tries < 10000:
        tries += 1
        r = rng.uniform(3, 8, n_rays)
        if edge and not coords:
            cy, cx = H / 2, W - 1 - r.max() * 0.5  # partly outside on the right
        else:
            cy, cx = rng.uniform(8, H - 8), rng.uniform(8, W - 8)
        c = np.stack([cy + r * np.sin(angles), cx + r * np.cos(angles)]).astype(np.float32)
        rr, cc = draw_polygon(c[0], c[1], shape)
        if len(rr) == 0 or lab[rr, cc].any():
            continue
        # keep a gap so that outlines do not touch
        grow = np.stack([cy + (r + 2) * np.sin(angles), cx + (r + 2) * np.cos(angles)])
        gr, gc = draw_polygon(grow[0], grow[1], shape)
        if lab[gr, gc].any():
            continue
        coords.append(c)
        points.append((cy, cx))
        lab[rr, cc] = len(coords)
    n = len(coords)
    coord = np.array(coords, np.float32).reshape(n, 2, n_rays)
    prob = rng.uniform(0.5, 1, n).astype(np.float32)
    class_id = class_prob = None
    lv, lv_ids = {}, {}
    if ls is not None:
        class_id = rng.choice(ls.ids, n).astype(np.int64)
        class_prob = rng.dirichlet(np.ones(ls.max_id + 1), n).astype(np.float32)
        if levels:
            d1 = hier.cut(1)
            lv = {"depth1": d1}
            node_to_id = {v: k for k, v in d1.nodes.items()}
            lv_ids = {"depth1": np.array([node_to_id[hier.ancestor_at(ls.node(k), 1)] for k in class_id], np.int64)}
    return Nuclei(coord=coord, points=np.array(points, np.float32).reshape(n, 2), prob=prob, label_set=ls,
                  class_id=class_id, class_prob=class_prob, levels=lv, level_class_id=lv_ids, shape=shape,
                  labels=lab if labels else None, info={"mpp": 0.5})


def empty_like(nuc):
    k = nuc.coord.shape[2]
    return Nuclei(coord=np.zeros((0, 2, k), np.float32), points=np.zeros((0, 2), np.float32),
                  prob=np.zeros(0, np.float32), label_set=nuc.label_set,
                  class_id=None if nuc.class_id is None else np.zeros(0, np.int64),
                  class_prob=None if nuc.class_prob is None else np.zeros((0, nuc.class_prob.shape[1]), np.float32),
                  levels=nuc.levels, level_class_id={k: np.zeros(0, np.int64) for k in nuc.levels},
                  shape=nuc.shape, labels=np.zeros(nuc.shape, np.int32), info=dict(nuc.info))


# -- QuPath's rules, checked on the file as read back -----------------------------------------

def check_qupath_rules(doc, nuc):
    """Every rule QuPath's GeoJSON reader applies (see stardist_hier.predict.geojson)."""
    assert doc["type"] == "FeatureCollection"
    feats = doc["features"]
    assert isinstance(feats, list) and len(feats) == len(nuc)  # one Feature per nucleus
    H, W = nuc.shape
    for i, f in enumerate(feats):
        assert f["type"] == "Feature"
        assert "objectType" not in f  # QuPath reads it only inside properties
        uuid.UUID(f["id"])  # an id QuPath keeps must be a UUID
        geom = f["geometry"]
        assert geom["type"] == "Polygon"  # not MultiPolygon per class
        assert len(geom["coordinates"]) == 1  # one exterior ring, no holes
        ring = np.array(geom["coordinates"][0], float)
        assert ring.ndim == 2 and ring.shape[1] == 2 and len(ring) >= 4
        assert np.array_equal(ring[0], ring[-1])  # closed
        assert len(np.unique(ring[:-1], axis=0)) == len(ring) - 1  # closed exactly once
        # [x, y] order (column, row), level-0 pixels, QuPath's half-pixel offset
        assert np.allclose(ring[:-1, 0], nuc.coord[i, 1] + 0.5, atol=0.006)
        assert np.allclose(ring[:-1, 1], nuc.coord[i, 0] + 0.5, atol=0.006)
        props = f["properties"]
        assert props["objectType"] == "detection"
        m = props["measurements"]
        assert isinstance(m, dict) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                           for v in m.values())
        assert m["Nucleus id"] == i + 1
        assert m["Object probability"] == pytest.approx(float(nuc.prob[i]), abs=1e-4)
        if nuc.label_set is None:
            assert "classification" not in props
            continue
        c = props["classification"]
        assert isinstance(c, dict)  # not a bare string
        assert isinstance(c["name"], str) and c["name"]
        assert isinstance(c["color"], list) and len(c["color"]) == 3
        assert all(isinstance(v, int) and 0 <= v <= 255 for v in c["color"])
        ls = nuc.label_set
        assert c["name"] == ls.nodes[int(nuc.class_id[i])]
        assert tuple(c["color"]) == ls.hierarchy.colors[c["name"]]
        for k, name in ls.nodes.items():
            assert m[f"Probability: {name}"] == pytest.approx(float(nuc.class_prob[i, k]), abs=1e-4)


@pytest.mark.parametrize("suffix", [".geojson", ".geojson.gz"])
def test_geojson_follows_qupath_rules(tmp_path, suffix):
    nuc = make_nuclei()
    path = G.write_geojson(nuc, tmp_path / f"x{suffix}", name="x")
    raw = path.read_bytes()
    if suffix.endswith(".gz"):
        assert raw[:2] == b"\x1f\x8b"  # gzip, which QuPath reads directly
        raw = gzip.decompress(raw)
    doc = json.loads(raw)
    check_qupath_rules(doc, nuc)
    assert doc == G.read_geojson(path)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


def test_geojson_polygons_cover_the_label_pixels_in_qupath_convention(tmp_path):
    # QuPath: pixel (r, c) is the square [c, c+1) x [r, r+1), its centre (c + 0.5, r + 0.5)
    nuc = make_nuclei(seed=3)
    doc = G.read_geojson(G.write_geojson(nuc, tmp_path / "x.geojson"))
    H, W = nuc.shape
    yy, xx = np.mgrid[0:H, 0:W]
    centres = np.stack([xx.ravel() + 0.5, yy.ravel() + 0.5], axis=1)
    for i, f in enumerate(doc["features"]):
        ring = np.array(f["geometry"]["coordinates"][0])
        inside = MplPath(ring).contains_points(centres).reshape(H, W)
        truth = nuc.labels == i + 1
        # agreement up to pixels whose centre lies on the outline (rounding to 2 decimals)
        assert (inside != truth).sum() <= max(2, 0.05 * truth.sum()), i


def test_geojson_ids_are_stable_and_distinct(tmp_path):
    nuc = make_nuclei()
    a = G.read_geojson(G.write_geojson(nuc, tmp_path / "a.geojson", name="slide1"))
    b = G.read_geojson(G.write_geojson(nuc, tmp_path / "b.geojson", name="slide1"))
    c = G.read_geojson(G.write_geojson(nuc, tmp_path / "c.geojson", name="slide2"))
    ids = [f["id"] for f in a["features"]]
    assert ids == [f["id"] for f in b["features"]] and len(set(ids)) == len(ids)
    assert not set(ids) & {f["id"] for f in c["features"]}
    assert (tmp_path / "a.geojson").read_bytes() == (tmp_path / "b.geojson").read_bytes()
    G.write_geojson(nuc, tmp_path / "a.geojson.gz", name="slide1")
    first = (tmp_path / "a.geojson.gz").read_bytes()
    G.write_geojson(nuc, tmp_path / "a.geojson.gz", name="slide1")
    assert (tmp_path / "a.geojson.gz").read_bytes() == first  # gzip without a time stamp


def test_geojson_without_classes_and_empty(tmp_path):
    nuc = make_nuclei(label_set=None)
    check_qupath_rules(G.read_geojson(G.write_geojson(nuc, tmp_path / "a.geojson")), nuc)
    empty = empty_like(make_nuclei())
    doc = G.read_geojson(G.write_geojson(empty, tmp_path / "e.geojson.gz"))
    assert doc == {"type": "FeatureCollection", "features": []}


def test_geojson_write_failure_leaves_nothing(tmp_path):
    nuc = make_nuclei()
    nuc.class_id[3] = 99  # not a class of the label set: the writer fails midway
    with pytest.raises(Exception):
        G.write_geojson(nuc, tmp_path / "x.geojson.gz")
    assert list(tmp_path.iterdir()) == []


# -- tables -----------------------------------------------------------------------------------

def fan_area_centroid(ys, xs):
    """Area and centroid by a triangle fan from vertex 0 (plain loop; independent of the shoelace)."""
    a_sum = cx_sum = cy_sum = 0.0
    for k in range(1, len(xs) - 1):
        x0, y0, x1, y1, x2, y2 = xs[0], ys[0], xs[k], ys[k], xs[k + 1], ys[k + 1]
        a = ((x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)) / 2
        a_sum += a
        cx_sum += a * (x0 + x1 + x2) / 3
        cy_sum += a * (y0 + y1 + y2) / 3
    return abs(a_sum), cy_sum / a_sum, cx_sum / a_sum


def test_polygon_area_centroid_against_triangle_fan():
    rng = np.random.default_rng(1)
    n_rays = 24
    ang = np.sort(rng.uniform(0, 2 * np.pi, (30, n_rays)), axis=1)
    r = rng.uniform(0.5, 20, (30, n_rays))
    c = rng.uniform(-50, 50, (30, 2, 1))
    coord = c + np.stack([r * np.sin(ang), r * np.cos(ang)], axis=1)
    coord[0, :, ::2] = coord[0, :, ::2][:, ::-1]  # not sorted by angle: still a polygon (may self-intersect)
    coord = coord[1:]
    area, cy, cx = T.polygon_area_centroid(coord)
    for i in range(len(coord)):
        a, y, x = fan_area_centroid(coord[i, 0], coord[i, 1])
        assert area[i] == pytest.approx(a, rel=1e-9) and cy[i] == pytest.approx(y) and cx[i] == pytest.approx(x)
    # a regular polygon: n/2 r^2 sin(2 pi / n), centroid at the centre; clockwise gives the same area
    ang = np.linspace(0, 2 * np.pi, 8, endpoint=False)
    reg = np.stack([3 + 5 * np.sin(ang), -2 + 5 * np.cos(ang)])[None]
    area, cy, cx = T.polygon_area_centroid(np.concatenate([reg, reg[:, :, ::-1]]))
    assert area == pytest.approx([4 * 25 * np.sin(np.pi / 4)] * 2)
    assert cy == pytest.approx([3, 3]) and cx == pytest.approx([-2, -2])
    # degenerate: every vertex on the centre; empty input
    area, cy, cx = T.polygon_area_centroid(np.full((1, 2, 6), 4.0))
    assert area[0] == 0 and cy[0] == 4 and cx[0] == 4
    assert all(len(v) == 0 for v in T.polygon_area_centroid(np.zeros((0, 2, 6))))


def test_nuclei_table_columns_and_values(tmp_path):
    nuc = make_nuclei()
    df = T.nuclei_table(nuc)
    n = len(nuc)
    ls = nuc.label_set
    assert len(df) == n and list(df["id"]) == list(range(1, n + 1))
    for i in range(n):
        a, cy, cx = fan_area_centroid(nuc.coord[i, 0].astype(float), nuc.coord[i, 1].astype(float))
        row = df.iloc[i]
        assert row["area_px"] == pytest.approx(a, rel=1e-5) and row["area_um2"] == pytest.approx(a * 0.25, rel=1e-5)
        assert row["centroid_x"] == pytest.approx(cx, abs=1e-4) and row["centroid_y"] == pytest.approx(cy, abs=1e-4)
        assert row["point_y"] == pytest.approx(nuc.points[i, 0]) and row["point_x"] == pytest.approx(nuc.points[i, 1])
        assert row["bbox_x0"] == pytest.approx(nuc.coord[i, 1].min()) and row["bbox_y1"] == pytest.approx(
            nuc.coord[i, 0].max())
        # the polygon area is close to the pixel count of its rasterisation (label image)
        if nuc.coord[i, 1].max() < nuc.shape[1] - 1:
            assert abs(row["area_px"] - (nuc.labels == i + 1).sum()) <= 0.25 * row["area_px"] + 4
        assert row["class_id"] == nuc.class_id[i] and row["class_name"] == ls.nodes[nuc.class_id[i]]
        for k, name in ls.nodes.items():
            assert row[f"prob_{name}"] == pytest.approx(nuc.class_prob[i, k])
        parent = ls.hierarchy.ancestor_at(row["class_name"], 1)
        assert row["depth1_class_name"] == parent
        assert nuc.levels["depth1"].nodes[row["depth1_class_id"]] == parent
    assert row["prob"] == pytest.approx(nuc.prob[-1])


def test_tables_parquet_and_csv_round_trip(tmp_path):
    pytest.importorskip("pyarrow")
    nuc = make_nuclei()
    df = T.nuclei_table(nuc)
    paths = T.write_tables(df, tmp_path / "x_nuclei", metadata={"label_set": "monusac"})
    assert [p.name for p in paths] == ["x_nuclei.parquet", "x_nuclei.csv"]
    pq = pd.read_parquet(paths[0])
    csv = pd.read_csv(paths[1])
    pd.testing.assert_frame_equal(pq, df)
    pd.testing.assert_frame_equal(csv, df, check_exact=False, rtol=1e-5)
    import pyarrow.parquet as papq
    assert papq.read_schema(paths[0]).metadata[b"label_set"] == b"monusac"
    # without classes: no class columns; empty: the same columns, no rows
    assert not [c for c in T.nuclei_table(make_nuclei(label_set=None)).columns if "class" in c]
    e = T.nuclei_table(empty_like(nuc))
    assert list(e.columns) == list(df.columns) and len(e) == 0
    T.write_tables(e, tmp_path / "e")
    assert len(pd.read_parquet(tmp_path / "e.parquet")) == 0


def test_label_image_tiff(tmp_path):
    nuc = make_nuclei()
    path = T.write_label_image(nuc, tmp_path / "x_labels.tif")
    arr = tifffile.imread(path)
    assert arr.shape == nuc.shape + (2,) and arr.dtype == np.int32
    assert np.array_equal(arr[..., 0], nuc.labels)
    for i in range(len(nuc)):
        assert set(np.unique(arr[..., 1][nuc.labels == i + 1])) == {nuc.class_id[i]}
    assert not arr[..., 1][nuc.labels == 0].any()
    arr = tifffile.imread(T.write_label_image(make_nuclei(label_set=None), tmp_path / "y.tif"))
    assert not arr[..., 1].any() and arr[..., 0].max() > 0


# -- pictures ---------------------------------------------------------------------------------

def test_image_overlay_outlines_in_class_colours_and_legend(tmp_path):
    nuc = make_nuclei()
    image = np.full(nuc.shape + (3,), 230, np.uint8)
    pic = O.image_overlay(image, nuc)
    H, W = nuc.shape
    assert pic.shape[0] >= H and pic.shape[1] > W + 50
    from skimage.segmentation import find_boundaries
    edge = find_boundaries(nuc.labels, mode="inner")
    for i in range(len(nuc)):
        px = pic[:H, :W][edge & (nuc.labels == i + 1)]
        assert (px == nuc.label_set.color(nuc.class_id[i])).all()
    assert (pic[:H, :W][~edge] == 230).all()  # nothing else drawn on the image
    legend = pic[:, W:]
    for k in nuc.label_set.ids:  # every class has its swatch in the legend
        assert (legend == nuc.label_set.color(k)).all(axis=-1).sum() >= 100
    path = O.write_png(tmp_path / "o.png", pic)
    assert np.array_equal(np.asarray(Image.open(path)), pic)


def test_image_overlay_downscaled_and_without_labels():
    nuc = make_nuclei(labels=False)
    image = np.full(nuc.shape + (3,), 230, np.uint8)
    pic = O.image_overlay(image, nuc)
    H, W = nuc.shape
    drawn = (pic[:H, :W] != 230).any(axis=-1)
    for i in range(len(nuc)):  # an outline near each polygon's vertices, in its colour
        y, x = np.round(nuc.coord[i]).astype(int)
        y, x = np.clip(y, 0, H - 1), np.clip(x, 0, W - 1)
        assert drawn[y, x].mean() > 0.5
    small = O.image_overlay(image, nuc, max_side=70)
    assert pic.shape[1] - small.shape[1] == W - 70  # picture downscaled, legend the same


def test_slide_overlay_and_mask_picture():
    nuc = make_nuclei(shape=(400, 560), n=30, labels=False)
    thumb = np.full((100, 140, 3), 240, np.uint8)
    mask = np.zeros((50, 70), bool)
    mask[10:40, 10:60] = True
    nuc.info.update(thumbnail=thumb, thumbnail_downsample=4.0, tissue_mask=mask)
    pic = O.slide_overlay(nuc)
    assert pic.shape[0] >= 100 and pic.shape[1] > 140
    area = pic[:100, :140]
    assert (area == 0).all(axis=-1).sum() > 50  # the tissue outline
    for i in range(len(nuc)):  # each nucleus drawn at its centre / 4 in its colour
        cy, cx = (nuc.points[i] / 4).round().astype(int)
        win = area[max(cy - 2, 0):cy + 3, max(cx - 2, 0):cx + 3].reshape(-1, 3)
        assert (win == nuc.label_set.color(nuc.class_id[i])).all(axis=-1).any(), i
    m = O.mask_image(mask)
    assert m.dtype == np.uint8 and set(np.unique(m)) == {0, 255} and (m == 255).sum() == mask.sum()


def test_thick_outlines_stay_inside_their_nucleus():
    nuc = make_nuclei(shape=(520, 560), n=60, seed=5)
    image = np.full(nuc.shape + (3,), 230, np.uint8)
    pic = O.image_overlay(image, nuc)[:520, :560]
    drawn = (pic != 230).any(axis=-1)
    assert not (drawn & (nuc.labels == 0)).any()  # never onto the background or a neighbour
    from skimage.segmentation import find_boundaries
    ring1 = find_boundaries(nuc.labels, mode="inner")
    ring2 = find_boundaries(np.where(ring1, 0, nuc.labels), mode="inner") & (nuc.labels > 0)
    assert drawn[ring1].all() and drawn[ring2].all()  # two pixels wide
    for i in range(len(nuc)):
        assert (pic[drawn & (nuc.labels == i + 1)] == nuc.label_set.color(nuc.class_id[i])).all()
