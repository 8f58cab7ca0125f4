"""`prepare qupath`: images + QuPath GeoJSON (FeatureCollection, 0.2-style arrays, bare-string classes,
MultiPolygons, holes, cells) into the patch format; the rasteriser against a plain-numpy point-in-polygon
reference; class names to label-set ids; bad input named."""

import gzip
import json
import struct

import numpy as np
import pytest
import tifffile

from stardist_hier import patches as P
from stardist_hier.cli import main
from stardist_hier.readers import BadFilesError, ReaderError, convert
from stardist_hier.readers.qupath import PIXEL_OFFSET, QuPathReader, feature_objects, rasterize_objects, read_geojson


# ----------------------------------------------------------------------------------------
# fixtures in QuPath's export format


def sq(x0, y0, x1, y1):
    """A closed rectangular ring (QuPath coordinates: pixel corners)."""
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


def feature(coords, name=None, kind="Polygon", object_type="detection", style="0.4", **extra):
    """A Feature as QuPath writes it: 0.4 (objectType, classification object with color), 0.2 (id
    PathDetectionObject, colorRGB), 'string' (bare-string classification), 'name' (properties.name)."""
    props = {"isLocked": False, "measurements": {}}
    f = {"type": "Feature", "geometry": {"type": kind, "coordinates": coords}, "properties": props}
    if style == "0.2":
        f["id"] = {"annotation": "PathAnnotationObject", "detection": "PathDetectionObject",
                   "cell": "PathCellObject", "tile": "PathTileObject"}[object_type]
        props["measurements"] = []
        if name:
            props["classification"] = {"name": name, "colorRGB": -3670016}
    else:
        f["id"] = "7f1e2c3a-0000-4000-8000-000000000001"
        props["objectType"] = object_type
        if name and style == "0.4":
            props["classification"] = {"name": name, "color": [200, 0, 0]}
        elif name and style == "string":
            props["classification"] = name
        elif name and style == "name":
            props["name"] = name
    f.update(extra)
    return f


def write(folder, stem, features, size=300, how="collection", seed=0, image_suffix=".tif"):
    folder.mkdir(parents=True, exist_ok=True)
    img = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    if image_suffix == ".tif":
        tifffile.imwrite(folder / f"{stem}.tif", img)
    else:
        from skimage.io import imsave

        imsave(folder / f"{stem}{image_suffix}", img, check_contrast=False)
    data = {"type": "FeatureCollection", "features": features} if how == "collection" else features
    (folder / f"{stem}.geojson").write_text(json.dumps(data))
    return img


def _reader(label_set="monusac", **kw):
    return QuPathReader("mine", label_set, **kw)


# ----------------------------------------------------------------------------------------
# the rasteriser against a plain-numpy reference


def _inside(px, py, ring):
    """Even-odd rule: is each point (px, py) inside the closed ring? (plain numpy ray casting)"""
    x, y = ring[:, 0], ring[:, 1]
    x2, y2 = np.roll(x, -1), np.roll(y, -1)
    out = np.zeros(px.shape, bool)
    for a, b, c, d in zip(x, y, x2, y2):
        crosses = (b > py) != (d > py)
        with np.errstate(divide="ignore", invalid="ignore"):
            xc = a + (py - b) * (c - a) / (d - b)
        out ^= crosses & (px < xc)
    return out


def _reference(objects, shape):
    h, w = shape
    py, px = np.mgrid[0:h, 0:w].astype(float) + 0.5  # pixel centres in QuPath coordinates
    inst = np.zeros(shape, np.int32)
    n, later = 0, []
    for kind, _, rings, _ in objects:
        m = np.zeros(shape, bool)
        for outer, holes in rings:
            part = _inside(px, py, outer)
            for hole in holes:
                part &= ~_inside(px, py, hole)
            m |= part
        if not m.any():
            continue
        if kind == "ignore":
            later.append(m)
            continue
        n += 1
        inst[m] = n
    for m in later:
        inst[m] = -1
    return inst


def _star(rng, cx, cy, r, k=9):
    a = np.sort(rng.uniform(0, 2 * np.pi, k))
    rad = rng.uniform(0.4 * r, r, k)
    return np.stack([cx + rad * np.cos(a), cy + rad * np.sin(a)], 1)


@pytest.mark.parametrize("seed", range(4))
def test_rasterize_matches_point_in_polygon_reference(seed):
    """Random star polygons (overlapping, past the edges), holes, multi-part nuclei, ignore regions."""
    rng = np.random.default_rng(seed)
    shape = (61, 47)
    objects = []
    for i in range(12):
        cx, cy = rng.uniform(-5, 52), rng.uniform(-5, 66)
        outer = _star(rng, cx, cy, rng.uniform(3, 14))
        holes = [_star(rng, cx, cy, 2.5, k=5)] if i % 3 == 0 else []
        rings = [(outer, holes)]
        if i % 4 == 1:  # a MultiPolygon: one nucleus of two parts
            rings.append((_star(rng, rng.uniform(0, 47), rng.uniform(0, 61), 4), []))
        objects.append(("ignore" if i == 5 else "nucleus", i + 1, rings, None))
    inst, classes, notes = rasterize_objects(objects, shape)
    ref = _reference(objects, shape)
    np.testing.assert_array_equal(inst, ref)
    assert set(classes) == set(np.unique(ref[ref > 0]).tolist())
    assert notes["ignore_regions"] == 1


def test_rasterize_edge_cases():
    tiny = np.array([[1.0, 1.0], [3.0, 1.0]])  # 2 vertices
    outside = np.array(sq(100, 100, 110, 110), float)
    a = np.array(sq(2, 2, 8, 8), float)
    cover = np.array(sq(1, 1, 9, 9), float)
    inst, classes, notes = rasterize_objects([("nucleus", 1, [(tiny, [])], None), ("nucleus", 2, [(outside, [])], None),
                                              ("nucleus", 3, [(a, [])], None), ("nucleus", 4, [(cover, [])], None)],
                                             (10, 10))
    assert notes["dropped_polygons"] == 2 and notes["covered_nuclei"] == 1
    assert classes == {2: 4}  # ids in paint order among painted objects; the covered one is gone
    # a square from corner 1 to corner 9 covers pixels 1..8 (centres 1.5..8.5)
    ref = np.zeros((10, 10), np.int32)
    ref[1:9, 1:9] = 2
    np.testing.assert_array_equal(inst, ref)
    inst, classes, _ = rasterize_objects([], (4, 4))
    assert not inst.any() and classes == {}


def test_pixel_offset_is_the_predict_writers():
    from stardist_hier.predict import geojson

    assert PIXEL_OFFSET == geojson.PIXEL_OFFSET


def test_round_trip_of_our_own_predictions(tmp_path):
    """GeoJSON written by `stardist-hier predict` reads back as the label image of the same polygons."""
    from skimage.draw import polygon

    from stardist_hier.hierarchy import ClassHierarchy
    from stardist_hier.predict import Nuclei
    from stardist_hier.predict.geojson import write_geojson

    rng = np.random.default_rng(3)
    ls = ClassHierarchy.default().label_set("monusac")
    n, rays = 6, 16
    centres = rng.uniform(20, 80, (n, 2))
    ang = np.linspace(0, 2 * np.pi, rays, endpoint=False)
    rad = rng.uniform(3, 9, (n, rays))
    # vertices on a quarter-pixel grid, so the writer's rounding to 2 decimals changes nothing
    coord = np.round(np.stack([centres[:, :1] + rad * np.sin(ang), centres[:, 1:] + rad * np.cos(ang)], 1) * 4) / 4
    class_id = rng.choice(ls.ids, n)
    class_prob = np.zeros((n, ls.max_id + 1), np.float32)
    class_prob[np.arange(n), class_id] = 1
    nuclei = Nuclei(coord=coord.astype(np.float32), points=centres.astype(np.float32), prob=np.ones(n, np.float32),
                    label_set=ls, class_id=class_id, class_prob=class_prob, levels={}, level_class_id={},
                    shape=(100, 100))
    src = tmp_path / "src"
    src.mkdir()
    tifffile.imwrite(src / "pred.tif", np.zeros((100, 100, 3), np.uint8))
    write_geojson(nuclei, src / "pred.geojson")
    ref = np.zeros((100, 100), np.int32)
    for i in range(n):  # StarDist's rule: polygon fill at array coordinates, later on top
        rr, cc = polygon(coord[i, 0], coord[i, 1], (100, 100))
        ref[rr, cc] = i + 1
    reader = _reader()
    (sample,) = reader.find_samples(src)
    lab = reader.load_sample(sample, {})
    np.testing.assert_array_equal(P.relabel_instances(lab.inst), P.relabel_instances(ref))
    want = {k: int(class_id[k - 1]) for k in np.unique(ref[ref > 0])}
    got = {int(np.unique(ref[lab.inst == k])[0]): c for k, c in lab.classes.items()}
    assert got == want


# ----------------------------------------------------------------------------------------
# QuPath's export variants, end to end


def test_export_variants_convert(tmp_path):
    src = tmp_path / "src"
    # QuPath 0.4+: FeatureCollection, annotations and detections, a MultiPolygon, a hole, a cell
    write(src, "img_a", [
        feature([sq(10, 10, 30, 30)], "Epithelial", object_type="annotation"),
        feature([sq(100, 100, 140, 140), sq(110, 110, 120, 120)], "Lymphocyte"),          # holed
        feature([[sq(200, 20, 210, 30)], [sq(220, 20, 230, 30)]], "macrophage", kind="MultiPolygon"),
        feature([sq(40, 200, 80, 240)], "Neutrophil", object_type="cell",
                nucleusGeometry={"type": "Polygon", "coordinates": [sq(50, 210, 60, 220)]}),
        feature([sq(250, 250, 270, 270)], None),                                            # unclassified
        feature([150.0, 150.0], "Lymphocyte", kind="Point"),                                # skipped
        feature([sq(0, 0, 300, 300)], "Region*", object_type="annotation"),                 # region: skipped
        feature([sq(0, 0, 256, 256)], "Tumor", object_type="tile"),                         # tile: skipped
        feature([sq(280, 0, 300, 20)], "Ignore*", object_type="annotation"),                # ignore region
    ], seed=1)
    # QuPath 0.2: a bare array, ids naming the object type, colorRGB; the older string class; properties.name
    write(src, "img_b", [feature([sq(5, 5, 25, 25)], "Epithelial", style="0.2"),
                         feature([sq(50, 5, 70, 25)], "Lymphocyte", style="string"),
                         feature([sq(90, 5, 110, 25)], "Neutrophil", style="name")], how="array", seed=2,
          image_suffix=".png")
    write(src, "img_c", [feature([sq(5, 5, 25, 25)], "Macrophage")], seed=3)
    out = tmp_path / "out"
    s = convert(_reader(), src, out, progress=False, val_fraction=0.34, seed=0)
    df = P.read_index(out, "mine")
    assert set(df.label_set) == {"monusac"}
    assert df.groupby("split").source.nunique().to_dict() == {"train": 2, "val": 1}
    assert s.notes["unclassified_nuclei"] == 1 and s.notes["region_objects"] == 1
    assert s.notes["other_objects"] == 1 and s.notes["non_polygon_objects"] == 1 and s.notes["ignore_regions"] == 1

    reader = _reader()
    samples = {x.patch_id: x for x in reader.find_samples(src)}
    lab = reader.load_sample(samples["img_a"], {})
    inst = lab.inst
    by_pixel = lambda r, c: lab.classes.get(int(inst[r, c]))
    assert by_pixel(20, 20) == 1 and by_pixel(105, 105) == 2 and inst[115, 115] == 0  # hole
    assert inst[25, 205] == inst[25, 225] > 0 and by_pixel(25, 205) == 4             # one multi-part nucleus
    assert by_pixel(215, 55) == 3 and inst[205, 45] == 0                             # the cell's nucleus only
    assert by_pixel(260, 260) is None and inst[10, 290] == -1
    assert len(lab.classes) == 5
    lab = reader.load_sample(samples["img_b"], {})
    assert sorted(lab.classes.values()) == [1, 2, 3]
    # the patches hold the same labels: the top-left tile of img_a, relabelled
    x, y, c = P.load_split(out, "mine", samples["img_a"].split, normalize=False, ids=["img_a_y0000_x0000"],
                           label_set="monusac")
    full = reader.load_sample(samples["img_a"], {}).inst[:256, :256]
    np.testing.assert_array_equal(y[0], P.relabel_instances(full))


def test_gzip_and_image_suffix_in_the_name(tmp_path):
    src = tmp_path / "src"
    write(src, "s1", [feature([sq(5, 5, 25, 25)], "Lymphocyte")])
    text = (src / "s1.geojson").read_text()
    (src / "s1.geojson").unlink()
    with gzip.open(src / "s1.tif.geojson.gz", "wt") as f:  # "<image name>.geojson", compressed
        f.write(text)
    (src / "notes.json").write_text("{}")  # some other JSON: ignored
    (samples,) = [_reader().find_samples(src)]
    assert [s.source for s in samples] == ["s1.tif.geojson.gz"]
    assert read_geojson(src / "s1.tif.geojson.gz")[0]["properties"]["classification"]["name"] == "Lymphocyte"


def test_names_map_to_label_set_ids(tmp_path):
    """Case, spaces and '*' do not matter; a finer node takes its label-set ancestor's id; aliases."""
    reader = QuPathReader("mine", "pannuke", aliases={"Tumour": "malignant_epithelial"})
    ls = reader.labels
    by_node = {v: k for k, v in ls.nodes.items()}
    assert reader.classify("Inflammatory*") == ("nucleus", by_node["inflammatory"])
    assert reader.classify("plasma cell") == ("nucleus", by_node["inflammatory"])  # below 'inflammatory'
    assert reader.classify("TUMOUR") == ("nucleus", by_node["malignant_epithelial"])  # the alias
    assert reader.classify(None) == ("nucleus", None)
    assert reader.classify("Ignore*") == ("ignore", None) and reader.classify("region") == ("region", None)
    with pytest.raises(KeyError):
        reader.classify("Stroma")
    src = tmp_path / "src"
    write(src, "a", [feature([sq(5, 5, 25, 25)], "Plasma cell")])
    convert(reader, src, tmp_path / "out", progress=False, val_fraction=0)
    assert P.read_index(tmp_path / "out", "mine").n_class_2.sum() == 1  # pannuke 2 = inflammatory


def test_unknown_names_are_listed_with_the_closest_nodes(tmp_path):
    src = tmp_path / "src"
    write(src, "a", [feature([sq(5, 5, 25, 25)], "Lymphocite"), feature([sq(45, 5, 65, 25)], "Lymphocite"),
                     feature([sq(85, 5, 95, 25)], "Stroma"), feature([sq(5, 45, 25, 65)], "epithelial")])
    with pytest.raises(ReaderError) as e:
        convert(QuPathReader("mine", "consep"), src, tmp_path / "out", progress=False)
    msg = str(e.value)
    assert "a.geojson" in msg and "3 class name(s) not in label set 'consep'" in msg
    assert "'Lymphocite' is not a node of the hierarchy; closest: 'lymphocyte'" in msg and "(2 objects)" in msg
    assert "'Stroma' is not a node" in msg
    assert "'epithelial' is above the label set's classes healthy_epithelial, malignant_epithelial" in msg
    assert "--class-name" in msg and "\n" not in msg
    with pytest.raises(ReaderError, match="'nucleus_x' is not a node of the hierarchy"):
        QuPathReader("mine", "consep", aliases={"a": "nucleus_x"})


def test_root_label_set_prepares_and_loads(tmp_path):
    """A user label set {1: nucleus} at the root (a YAML extending the default): unclassified -> class 1."""
    from stardist_hier.hierarchy import ClassHierarchy

    yaml = tmp_path / "mine.yaml"
    yaml.write_text("extends: default\nlabel_sets:\n  any_nucleus:\n    1: nucleus\n")
    src = tmp_path / "src"
    write(src, "a", [feature([sq(5, 5, 25, 25)], None), feature([sq(45, 5, 65, 25)], "Nucleus"),
                     feature([sq(85, 5, 95, 25)], "lymphocyte")])
    out = tmp_path / "out"
    assert main(["prepare", "qupath", "--src", str(src), "--dataset", "mine", "--label-set", "any_nucleus",
                 "--hierarchy", str(yaml), "--out", str(out), "-q", "--val-fraction", "0"]) == 0
    ls = ClassHierarchy.from_yaml(yaml).label_set("any_nucleus")
    X, Y, C = P.load_split(out, "mine", "train", label_set=ls)
    # tiles at x 0 and 44 of the top row hold 3 and 2 of the nuclei
    assert len(X) == 4 and sum(len(c) for c in C) == 5 and {v for c in C for v in c.values()} == {1}
    assert set(P.read_index(out, "mine").label_set) == {"any_nucleus"}


def test_pairing_errors_name_every_file(tmp_path, capsys):
    src = tmp_path / "src"
    write(src, "a", [feature([sq(5, 5, 25, 25)], "Lymphocyte")])
    tifffile.imwrite(src / "no_annotation.tif", np.zeros((50, 50, 3), np.uint8))
    (src / "orphan.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": []}))
    write(src / "sub", "broken", [])
    (src / "sub" / "broken.geojson").write_text('{"type": "FeatureCollection", "features": [')
    with pytest.raises(BadFilesError) as e:
        convert(_reader(), src, tmp_path / "out", progress=False, val_fraction=0)
    msg = str(e.value)
    assert "3 bad input files" in msg
    assert "no_annotation.tif: no GeoJSON for this image" in msg
    assert "orphan.geojson: no image for this GeoJSON" in msg
    assert "broken.geojson: corrupt or truncated JSON (line 1" in msg
    with pytest.warns(UserWarning):
        s = convert(_reader(), src, tmp_path / "out", progress=False, val_fraction=0, skip_bad=True)
    assert s.samples == 2 and s.patches == 4 and len(s.bad) == 3
    # nothing pairs at all: one error listing both sides
    (tmp_path / "other").mkdir()
    tifffile.imwrite(tmp_path / "other" / "x.tif", np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "other" / "y.geojson").write_text("[]")
    with pytest.raises(ReaderError, match=r"no image with a GeoJSON of the same stem: images \['x.tif'\], GeoJSON \['y.geojson'\]"):
        convert(_reader(), tmp_path / "other", tmp_path / "out2", progress=False)


def test_bad_geojson_content(tmp_path):
    src = tmp_path / "src"
    write(src, "a", [])
    (src / "a.geojson").write_text(json.dumps({"type": "Polygon", "coordinates": []}))
    with pytest.raises(ReaderError, match="not QuPath GeoJSON: expected a FeatureCollection.*'Polygon'"):
        convert(_reader(), src, tmp_path / "out", progress=False)
    (src / "a.geojson").write_text(json.dumps([feature([[["x", 1], [2, 2], [3, 1]]], "Lymphocyte")]))
    with pytest.raises(ReaderError, match="feature 0: Polygon coordinates are not lists of"):
        convert(_reader(), src, tmp_path / "out", progress=False)


def test_object_types_and_test_list(tmp_path):
    src = tmp_path / "src"
    for i in range(3):
        write(src, f"im{i}", [feature([sq(5, 5, 25, 25)], "Lymphocyte", object_type="annotation"),
                              feature([sq(45, 5, 65, 25)], "Lymphocyte", object_type="detection")], size=64, seed=i)
    (tmp_path / "test.txt").write_text("# held out\nim2.tif\n")
    reader = QuPathReader("mine", "monusac", object_types=["detection"], test_images=tmp_path / "test.txt")
    s = convert(reader, src, tmp_path / "out", progress=False, val_fraction=0.5, seed=0)
    df = P.read_index(tmp_path / "out", "mine")
    assert df.set_index("patch_id").split.to_dict()["im2_y0000_x0000"] == "test"
    assert sorted(df.split) == ["test", "train", "val"] and df.n_class_2.tolist() == [1, 1, 1]
    assert s.notes["other_objects"] == 3
    (tmp_path / "test.txt").write_text("im9\n")
    with pytest.raises(ReaderError, match="1 listed test image.*not found.*im9"):
        convert(QuPathReader("mine", "monusac", test_images=tmp_path / "test.txt"), src, tmp_path / "o2", progress=False)


def test_workers_and_resume(tmp_path):
    """The reader object travels to worker processes; a rerun writes nothing new."""
    src = tmp_path / "src"
    for i in range(3):
        write(src, f"im{i}", [feature([sq(5 + i, 5, 25, 25)], "Macrophage")], size=64, seed=i)
    out1, out2 = tmp_path / "o1", tmp_path / "o2"
    convert(_reader(), src, out1, progress=False, val_fraction=0)
    s = convert(_reader(), src, out2, progress=False, val_fraction=0, workers=2)
    assert s.written == 3
    for pid in P.list_patches(out1, "mine", "train"):
        np.testing.assert_array_equal(P.read_patch(out1, "mine", "train", pid)[1],
                                      P.read_patch(out2, "mine", "train", pid)[1])
    again = convert(_reader(), src, out2, progress=False, val_fraction=0, workers=2)
    assert again.written == 0 and again.existing == 3


def test_cli_usage_errors(tmp_path, capsys):
    base = ["prepare", "qupath", "--out", str(tmp_path / "o"), "-q"]
    assert main(base + ["--dataset", "mine", "--label-set", "monusac"]) == 2
    assert "needs --src" in capsys.readouterr().err
    assert main(base + ["--src", str(tmp_path), "--dataset", "mine", "--label-set", "monusac", "--masks", "m"]) == 2
    assert "--masks: not an option of `prepare qupath`" in capsys.readouterr().err
    assert main(base + ["--src", str(tmp_path), "--dataset", "pannuke", "--label-set", "monusac"]) == 1
    assert "'pannuke' is the name of a published dataset" in capsys.readouterr().err
    assert main(base + ["--src", str(tmp_path), "--dataset", "a/b", "--label-set", "monusac"]) == 1
    assert "letters, digits" in capsys.readouterr().err
    assert main(base + ["--src", str(tmp_path), "--dataset", "mine", "--label-set", "monusak"]) == 1
    assert "unknown label set 'monusak'; did you mean 'monusac'" in capsys.readouterr().err
    assert main(base + ["--src", str(tmp_path), "--dataset", "mine", "--label-set", "monusac",
                        "--class-name", "oops"]) == 2
    assert "NAME=NODE" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------
# real polygons: the HGSC nuclei of ../shared/realdata as a QuPath export


def _wkb_polygon(blob):
    """Rings of a WKB Polygon (what the HGSC parquet holds), read with struct."""
    bo = "<" if blob[0] == 1 else ">"
    kind, n = struct.unpack(bo + "II", blob[1:9])
    assert kind == 3, kind
    off, rings = 9, []
    for _ in range(n):
        (k,) = struct.unpack(bo + "I", blob[off:off + 4])
        rings.append(np.frombuffer(blob[off + 4:off + 4 + 16 * k], dtype=bo + "f8").reshape(k, 2).tolist())
        off += 4 + 16 * k
    return rings


def test_real_hgsc_polygons_as_a_qupath_export(realdata, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    folder = realdata / "hgsc_rasters"
    table = pq.read_table(folder / "hgsc_nest.parquet").to_pydict()
    feats = [feature(_wkb_polygon(g), name) for g, name in zip(table["geometry"], table["class_name"])]
    src = tmp_path / "src"
    src.mkdir()
    (src / "hgsc_nest.jpg").write_bytes((folder / "hgsc_nest.jpg").read_bytes())
    (src / "hgsc_nest.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    yaml = tmp_path / "hgsc.yaml"
    yaml.write_text("extends: default\nlabel_sets:\n  hgsc:\n    1: connective\n    2: inflammatory\n"
                    "    3: malignant_epithelial\n")
    with pytest.raises(ReaderError, match="'neoplastic' is not a node of the hierarchy"):
        QuPathReader("hgsc", "hgsc", yaml).load_sample(QuPathReader("hgsc", "hgsc", yaml).find_samples(src)[0], {})
    reader = QuPathReader("hgsc", "hgsc", yaml, aliases={"neoplastic": "malignant_epithelial"})
    lab = reader.load_sample(reader.find_samples(src)[0], {})
    ref = np.load(folder / "hgsc_nest_inst_mask.npz")["nuc_raster"]
    # the polygons are outlines of the published raster: the pixels agree almost everywhere
    assert ((lab.inst > 0) == (ref > 0)).mean() > 0.98
    assert abs(len(lab.classes) - len(np.unique(ref[ref > 0]))) <= 2
    counts = {k: sum(1 for c in lab.classes.values() if c == k) for k in (1, 2, 3)}
    published = {1: 374, 2: 633, 3: 288}  # connective, inflammatory, neoplastic polygons
    assert all(published[k] - 3 <= counts[k] <= published[k] for k in published), counts
    out = tmp_path / "out"
    s = convert(reader, src, out, progress=False, val_fraction=0)
    assert s.patches == 36 and set(s.nuclei_per_class) == {1, 2, 3}
