"""MoNuSAC reader and the ImageScope XML shared with MoNuSeg: every quirk of the release."""

import numpy as np
import pytest
import tifffile

from stardist_hier import patches as P
from stardist_hier.readers import ReaderError, convert
from stardist_hier.readers.imagescope import rasterize, read_imagescope


def rect(y0, x0, y1, x1):
    """A rectangle polygon with half-pixel (float) corners: it covers rows ceil(y0)..floor(y1)."""
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def rect_mask(shape, y0, x0, y1, x1):
    """Reference raster of :func:`rect`, clipped to the image."""
    m = np.zeros(shape, bool)
    m[int(np.ceil(y0)):int(np.floor(y1)) + 1, int(np.ceil(x0)):int(np.floor(x1)) + 1] = True
    return m


def imagescope(layers, attr="name"):
    """ImageScope XML text. ``layers``: list of (name, list of polygons or None for no <Regions>)."""
    out = ['<?xml version="1.0" encoding="UTF-8"?>', '<Annotations MicronsPerPixel="0.2525">']
    for k, (name, regions) in enumerate(layers, start=1):
        out.append(f'<Annotation Id="{k}" Name="" Type="4" LineColor="65280">')
        if attr == "name":
            out.append(f'<Attributes><Attribute Name="{name}" Id="0" Value=""/></Attributes>')
        elif attr == "description":
            out.append('<Attributes><Attribute Name="Description" Id="0" Value=""/></Attributes>')
        else:
            out.append("<Attributes/>")
        if regions is not None:
            out.append('<Regions><RegionAttributeHeaders><AttributeHeader Id="9999" Name="Region"/></RegionAttributeHeaders>')
            for r, poly in enumerate(regions, start=1):
                out.append(f'<Region Id="{r}" Type="0" DisplayId="{r}"><Attributes/><Vertices>')
                out += [f'<Vertex X="{x}" Y="{y}" Z="0"/>' for x, y in poly]
                out.append("</Vertices></Region>")
            out.append("</Regions>")
        out.append("<Plots/></Annotation>")
    out.append("</Annotations>")
    return "\n".join(out)


H, W = 120, 150
EPI = [(10.5, 10.5, 30.5, 30.5), (40.5, 10.5, 60.5, 35.5)]   # (y0, x0, y1, x1)
LYM = (70.5, 70.5, 90.5, 95.5)
MAC = (100.5, 130.5, 140.5, 170.5)                           # past the bottom-right edge


def _image(rng, channels=3):
    return rng.integers(0, 256, (H, W, channels), dtype=np.uint8)


def _write_sub(pdir, stem, xml, image, kind="tif"):
    pdir.mkdir(parents=True, exist_ok=True)
    (pdir / f"{stem}.xml").write_text(xml)
    if kind == "tif":
        tifffile.imwrite(pdir / f"{stem}.tif", image, photometric="rgb")
    elif kind == "svs":  # an Aperio-like tiled, pyramidal TIFF without a .tif next to it
        with tifffile.TiffWriter(pdir / f"{stem}.svs") as tw:
            tw.write(image, photometric="rgb", tile=(64, 64), subifds=1)
            tw.write(image[::2, ::2], photometric="rgb", tile=(64, 64), subfiletype=1)


def _std_layers():
    return [("Epithelial", [rect(*r) for r in EPI]),
            ("Lymphocyte", [rect(*LYM)]),          # a single Region
            ("Neutrophil", None),                  # an Annotation without Regions
            ("Macrophage", [rect(*MAC)])]


def _expected(shape, ambiguous=None):
    inst = np.zeros(shape, np.int32)
    classes = {}
    for k, (r, c) in enumerate([(EPI[0], 1), (EPI[1], 1), (LYM, 2), (MAC, 4)], start=1):
        inst[rect_mask(shape, *r)] = k
        classes[k] = c
    if ambiguous is not None:
        inst[rect_mask(shape, *ambiguous)] = -1
    return inst, classes


@pytest.fixture
def monusac_src(tmp_path):
    rng = np.random.default_rng(0)
    src = tmp_path / "monusac"
    train = src / "MoNuSAC_images_and_annotations"
    images = {}
    for p in range(4):
        pid = f"TCGA-5P-A9K{p}-01Z-00-DX1"
        img = _image(rng, 4 if p == 0 else 3)  # RGBA TIFF for the first patient
        _write_sub(train / pid, f"{pid}_1", imagescope(_std_layers()), img)
        images[(pid, 1)] = img[..., :3]
    pid = "TCGA-55-1594-01Z-00-DX1"
    img = _image(rng)
    # an _002 annotation next to an _2 image, and an _003 annotation with only an .svs
    (train / pid).mkdir(parents=True)
    (train / pid / f"{pid}_002.xml").write_text(imagescope(_std_layers()))
    tifffile.imwrite(train / pid / f"{pid}_2.tif", img, photometric="rgb")
    images[(pid, 2)] = img
    img3 = _image(rng)
    _write_sub(train / pid, f"{pid}_003", imagescope(_std_layers()), img3, kind="svs")
    images[(pid, 3)] = img3
    test = src / "MoNuSAC Testing Data and Annotations"
    pid = "TCGA-2Z-A9JG-01Z-00-DX1"
    img = _image(rng)
    amb = (25.5, 25.5, 45.5, 45.5)
    _write_sub(test / pid, f"{pid}_1", imagescope(_std_layers() + [("Ambiguous", [rect(*amb)])]), img)
    images[(pid, 1)] = img
    return src, images, amb


def test_imagescope_float_vertices_edge_and_empty_layers(tmp_path):
    path = tmp_path / "a.xml"
    path.write_text(imagescope(_std_layers()))
    layers = read_imagescope(path)
    assert [l.name for l in layers] == ["Epithelial", "Lymphocyte", "Neutrophil", "Macrophage"]
    assert [len(l.regions) for l in layers] == [2, 1, 0, 1]
    assert layers[0].regions[0].dtype == np.float64 and layers[0].regions[0][0, 0] == 10.5
    inst, classes, notes = rasterize(layers, (H, W), {"Epithelial": 1, "Lymphocyte": 2, "Macrophage": 4}.get)
    ref, ref_cls = _expected((H, W))
    np.testing.assert_array_equal(inst, ref)
    assert classes == ref_cls and notes["dropped_regions"] == 0


def test_convert_monusac(monusac_src, tmp_path):
    src, images, amb = monusac_src
    out = tmp_path / "out"
    s = convert("monusac", src, out, progress=False, val_fraction=0.25, seed=3)
    df = P.read_index(out, "monusac")
    assert len(df) == 7 and set(df.split) == {"train", "val", "test"}
    # validation by patient: one of the five training patients, all of its sub-images
    val_patients = {sid[:12] for sid in df[df.split == "val"].patch_id}
    assert len(val_patients) == 1
    assert not val_patients & {sid[:12] for sid in df[df.split == "train"].patch_id}
    assert s.notes["ambiguous_px"] > 0
    for row in df.itertuples():
        stem = row.patch_id.rsplit("_y", 1)[0]
        pid, num = stem.rsplit("_", 1)
        image, mask = P.read_patch(out, "monusac", row.split, row.patch_id)
        np.testing.assert_array_equal(image[:H, :W], images[(pid, int(num))])
        assert (mask[H:, :, 0] == -1).all() and (mask[:, W:, 0] == -1).all()  # padding is ignore
        ref, ref_cls = _expected((H, W), amb if row.split == "test" else None)
        np.testing.assert_array_equal(mask[:H, :W, 0], P.relabel_instances(ref))
        got = P.instance_classes(mask)
        present = sorted(np.unique(ref[ref > 0]))
        assert got == {new: ref_cls[old] for new, old in enumerate(present, start=1)}
        assert row.n_class_1 == 2 and row.n_class_2 == 1 and row.n_class_3 == 0 and row.n_class_4 == 1
    # re-running with the same seed draws the same patient
    convert("monusac", src, out, progress=False, val_fraction=0.25, seed=3)
    assert P.read_index(out, "monusac").equals(df)


def test_missing_image_lists_the_files(tmp_path):
    pdir = tmp_path / "src" / "TCGA-AA-0000-01Z-00-DX1"
    pdir.mkdir(parents=True)
    (pdir / "TCGA-AA-0000-01Z-00-DX1_1.xml").write_text(imagescope(_std_layers()))
    (pdir / "notes.txt").write_text("x")
    with pytest.raises(ReaderError) as e:
        convert("monusac", tmp_path / "src", tmp_path / "out", progress=False)
    assert "TCGA-AA-0000-01Z-00-DX1_1.xml" in str(e.value) and "notes.txt" in str(e.value)


def test_unknown_class_corrupt_xml_and_skip_bad(tmp_path):
    rng = np.random.default_rng(1)
    src = tmp_path / "src"
    good = "TCGA-AA-0001-01Z-00-DX1"
    _write_sub(src / good, f"{good}_1", imagescope(_std_layers()), _image(rng))
    bad = "TCGA-AA-0002-01Z-00-DX1"
    _write_sub(src / bad, f"{bad}_1", imagescope([("Tumour cell", [rect(*LYM)])]), _image(rng))
    trunc = "TCGA-AA-0003-01Z-00-DX1"
    _write_sub(src / trunc, f"{trunc}_1", imagescope(_std_layers())[:300], _image(rng))
    with pytest.raises(ReaderError, match=r"TCGA-AA-0002.*_1\.xml.*unknown class name 'Tumour cell'"):
        convert("monusac", src, tmp_path / "out", progress=False, val_fraction=0)
    with pytest.warns(UserWarning):
        s = convert("monusac", src, tmp_path / "out", progress=False, val_fraction=0, skip_bad=True)
    assert s.patches == 1 and len(s.bad) == 2
    text = s.format()
    assert "Tumour cell" in text and "truncated XML" in text and f"{trunc}_1.xml" in text


def test_image_and_annotation_size_mismatch_is_clipped_not_crashed(tmp_path):
    # polygons entirely outside the image are dropped and counted, never an error
    path = tmp_path / "a.xml"
    path.write_text(imagescope([("Epithelial", [rect(500.5, 500.5, 510.5, 510.5), [(1, 1), (2, 2)]])]))
    inst, classes, notes = rasterize(read_imagescope(path), (H, W), lambda n: 1)
    assert not inst.any() and classes == {} and notes["dropped_regions"] == 2


def test_misspelled_folder(tmp_path):
    (tmp_path / "data").mkdir()
    with pytest.raises(ReaderError, match="MoNuSAC folder not found"):
        convert("monusac", tmp_path / "data" / "MoNuSAC_images_and_annotatons", tmp_path / "out", progress=False)


def test_single_annotation_single_region_and_empty_regions(tmp_path):
    one = tmp_path / "one.xml"
    one.write_text(imagescope([("Lymphocyte", [rect(*LYM)])]))
    (layer,) = read_imagescope(one)
    assert layer.name == "Lymphocyte" and len(layer.regions) == 1
    empty = tmp_path / "empty.xml"
    empty.write_text(imagescope([("Epithelial", []), ("Neutrophil", None)]))  # <Regions> with headers only
    layers = read_imagescope(empty)
    inst, classes, _ = rasterize(layers, (H, W), lambda n: 1)
    assert [len(l.regions) for l in layers] == [0, 0] and not inst.any() and classes == {}
    inst, classes, _ = rasterize(read_imagescope(one), (H, W), lambda n: 2)
    np.testing.assert_array_equal(inst, rect_mask((H, W), *LYM).astype(np.int32))
    assert classes == {1: 2}


def test_same_sub_image_name_in_both_splits_keeps_both_patches(tmp_path):
    # a patient in both official splits whose sub-images are numbered from 1 in each: the two
    # patches share a patch id, one per split, and neither may be taken for a stale copy
    rng = np.random.default_rng(5)
    src = tmp_path / "src"
    pid = "TCGA-A2-A0ES-01Z-00-DX1"
    _write_sub(src / "MoNuSAC_images_and_annotations" / pid, f"{pid}_1", imagescope(_std_layers()), _image(rng))
    other = "TCGA-55-1594-01Z-00-DX1"
    _write_sub(src / "MoNuSAC_images_and_annotations" / other, f"{other}_1", imagescope(_std_layers()), _image(rng))
    amb = (25.5, 25.5, 45.5, 45.5)
    _write_sub(src / "MoNuSAC Testing Data and Annotations" / pid, f"{pid}_1",
               imagescope(_std_layers() + [("Ambiguous", [rect(*amb)])]), _image(rng))
    out = tmp_path / "out"
    for _ in range(2):  # a re-run keeps them too
        s = convert("monusac", src, out, progress=False, val_fraction=0)
        df = P.read_index(out, "monusac")
        on_disk = {(sp, p) for sp in P.list_splits(out, "monusac") for p in P.list_patches(out, "monusac", sp)}
        assert on_disk == set(zip(df.split, df.patch_id)) and len(on_disk) == 3
        assert ("test", f"{pid}_1_y0000_x0000") in on_disk and ("train", f"{pid}_1_y0000_x0000") in on_disk
        assert not s.notes.get("stale_patches_removed")
    _, mask = P.read_patch(out, "monusac", "test", f"{pid}_1_y0000_x0000")
    assert (mask[..., 0] == -1).any() and (mask[:H, :W, 0] == -1).sum() == rect_mask((H, W), *amb).sum()
