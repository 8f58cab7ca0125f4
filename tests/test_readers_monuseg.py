"""MoNuSeg reader: train (Description attribute) and test (empty Attributes) XML, every nucleus at the root."""

import numpy as np
import pytest
import tifffile

from stardist_hier import patches as P
from stardist_hier.readers import ReaderError, convert

from test_readers_monusac import imagescope, rect, rect_mask


def test_train_and_test_layouts(tmp_path):
    rng = np.random.default_rng(0)
    src = tmp_path / "src"
    polys = [(10.5, 10.5, 40.5, 40.5), (100.5, 200.5, 130.5, 240.5), (250.5, 250.5, 270.5, 280.5)]
    train = src / "MoNuSeg 2018 Training Data"
    for i, patient in enumerate(["TCGA-A7-A13E", "TCGA-AR-A1AK", "TCGA-B0-5698"]):
        name = f"{patient}-01Z-00-DX1"
        (train / "Tissue Images").mkdir(parents=True, exist_ok=True)
        (train / "Annotations").mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(train / "Tissue Images" / f"{name}.tif", rng.integers(0, 256, (300, 300, 3), dtype=np.uint8),
                         compression="zlib")
        (train / "Annotations" / f"{name}.xml").write_text(imagescope([(None, [rect(*p) for p in polys])],
                                                                      attr="description"))
    test = src / "MoNuSegTestData"
    test.mkdir()
    tifffile.imwrite(test / "TCGA-HT-8564-01Z-00-DX1.tif", rng.integers(0, 256, (300, 300, 3), dtype=np.uint8))
    (test / "TCGA-HT-8564-01Z-00-DX1.xml").write_text(imagescope([(None, [rect(*p) for p in polys])], attr="empty"))
    out = tmp_path / "out"
    s = convert("monuseg", src, out, progress=False, val_fraction=0.3, seed=1)
    df = P.read_index(out, "monuseg")
    assert df.groupby("split").source.nunique().to_dict() == {"test": 1, "train": 2, "val": 1}
    assert set(s.nuclei_per_class) == {1}
    ref = np.zeros((300, 300), np.int32)
    for k, p in enumerate(polys, start=1):
        ref[rect_mask((300, 300), *p)] = k
    for row in df.itertuples():
        _, m = P.read_patch(out, "monuseg", row.split, row.patch_id)
        window = ref[row.offset_y:row.offset_y + 256, row.offset_x:row.offset_x + 256]
        np.testing.assert_array_equal(m[..., 0], P.relabel_instances(window))
        assert set(P.instance_classes(m).values()) <= {1}
        assert row.n_class_1 == len(np.unique(window[window > 0]))


def test_real_monuseg_pair(realdata, tmp_path):
    """The real MoNuSeg test image: 249 nuclei, each in every tile it touches."""
    s = convert("monuseg", realdata / "monuseg", tmp_path / "out", progress=False, val_fraction=0)
    df = P.read_index(tmp_path / "out", "monuseg")
    assert len(df) == 16  # 1000 px -> tiles at 0, 256, 512, 744
    # reference count of nuclei: distinct (tile, nucleus) pairs from rasterising each region alone
    import xml.etree.ElementTree as ET
    from skimage.draw import polygon

    root = ET.parse(realdata / "monuseg" / "TCGA-HT-8564-01Z-00-DX1.xml").getroot()
    regions = root.findall(".//Region")
    assert len(regions) == 249
    _, masks = zip(*(P.read_patch(tmp_path / "out", "monuseg", "train", pid) for pid in df.patch_id))
    total_instances = sum(len(P.instance_classes(m)) for m in masks)
    assert total_instances == df.n_nuclei.sum() == s.nuclei_per_class[1]
    full = np.zeros((1000, 1000), np.int32)
    for k, r in enumerate(regions, start=1):
        xy = np.array([[float(v.get("X")), float(v.get("Y"))] for v in r.iter("Vertex")])
        rr, cc = polygon(xy[:, 1], xy[:, 0], (1000, 1000))
        full[rr, cc] = k
    assert len(np.unique(full[full > 0])) == 249
    expected = sum(len(np.unique(w[w > 0])) for w in
                   (full[y:y + 256, x:x + 256] for y in (0, 256, 512, 744) for x in (0, 256, 512, 744)))
    assert total_instances == expected


def test_missing_image(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "TCGA-XX-0000-01Z-00-DX1.xml").write_text(imagescope([(None, [rect(1.5, 1.5, 9.5, 9.5)])]))
    with pytest.raises(ReaderError, match="image missing"):
        convert("monuseg", tmp_path / "src", tmp_path / "out", progress=False)
