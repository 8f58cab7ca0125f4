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


# ----------------------------------------------------------------------------------------
# what a careless user meets: truncated files, every bad file named, the validation draw
# over the files that convert, the split of a folder


def _flat(folder, names, size=64, rng=None):
    """A flat MoNuSeg-style folder: ``<name>.tif`` + ``<name>.xml`` with two nuclei each."""
    rng = rng or np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        tifffile.imwrite(folder / f"{name}.tif", rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
        (folder / f"{name}.xml").write_text(imagescope([(None, [rect(5.5, 5.5, 15.5, 15.5), rect(30.5, 30.5, 40.5, 45.5)])]))
    return folder


def _truncate(path, n=8):
    path.write_bytes(path.read_bytes()[:n])


def test_truncated_tiff_is_named_as_truncated(tmp_path):
    src = _flat(tmp_path / "src", ["TCGA-AA-0001-01Z-00-DX1"])
    tif = src / "TCGA-AA-0001-01Z-00-DX1.tif"
    for n in (8, 300):  # cut after the header (tifffile reads an empty array), and inside the data
        data = tif.read_bytes() if n == 8 else None
        _truncate(tif, n)
        with pytest.raises(ReaderError) as e:
            convert("monuseg", src, tmp_path / "out", progress=False, val_fraction=0)
        msg = str(e.value)
        assert "TCGA-AA-0001-01Z-00-DX1.tif" in msg and "truncated" in msg and "shape (0,)" not in msg
        assert "\n" not in msg
        if data is not None:
            tif.write_bytes(data)
            _flat(src, ["TCGA-AA-0001-01Z-00-DX1"])


def test_every_bad_file_is_named_and_nothing_is_indexed(tmp_path):
    names = [f"TCGA-AA-000{i}-01Z-00-DX1" for i in range(4)]
    src = _flat(tmp_path / "src", names)
    _truncate(src / f"{names[1]}.tif")
    (src / f"{names[3]}.xml").write_text("<Annotations><Annotation>")  # truncated XML
    out = tmp_path / "out"
    with pytest.raises(ReaderError) as e:
        convert("monuseg", src, out, progress=False, val_fraction=0)
    msg = str(e.value)
    lines = msg.splitlines()
    assert lines[0].startswith("2 bad input files") and "--skip-bad" in lines[0]
    assert any(f"{names[1]}.tif" in line and "truncated or empty TIFF" in line for line in lines[1:])
    assert any(f"{names[3]}.xml" in line and "truncated XML" in line for line in lines[1:])
    assert names[0] not in msg and names[2] not in msg
    assert [b[0] for b in e.value.bad] == [str(src / f"{names[1]}.tif"), str(src / f"{names[3]}.xml")]
    assert not P.index_path(out, "monuseg").exists()
    # the good files are converted (atomically), so a rerun with --skip-bad only indexes them
    assert len(P.list_patches(out, "monuseg", "train")) == 2
    with pytest.warns(UserWarning, match="skipping bad input"):
        s = convert("monuseg", src, out, progress=False, val_fraction=0, skip_bad=True)
    assert s.written == 0 and s.existing == 2 and len(s.bad) == 2


def _seed_putting_in_val(src, group, val_fraction):
    """A seed whose first validation draw (bad files included) sends ``group`` to 'val'."""
    from stardist_hier.readers.convert import assign_validation
    from stardist_hier.readers.monuseg import find_samples

    samples = find_samples(src)
    for seed in range(100):
        if any(s.group == group and s.split == "val" for s in assign_validation(samples, val_fraction, seed)):
            return seed
    raise AssertionError("no such seed")


def test_skip_bad_draws_validation_without_the_bad_files(tmp_path):
    # one good patient and one whose only image is truncated: the draw over both can send the
    # good one to 'val', leaving 'train' empty; drawn over the good files, it stays in 'train'
    good, bad = "TCGA-AA-0001-01Z-00-DX1", "TCGA-BB-0002-01Z-00-DX1"
    src = _flat(tmp_path / "src", [good, bad])
    _truncate(src / f"{bad}.tif")
    seed = _seed_putting_in_val(src, good[:12], 0.5)
    with pytest.warns(UserWarning) as rec:
        s = convert("monuseg", src, tmp_path / "out", progress=False, val_fraction=0.5, seed=seed, skip_bad=True)
    assert s.per_split == {"train": 1}
    assert P.list_patches(tmp_path / "out", "monuseg", "val") == []
    assert any("no validation split" in str(w.message) for w in rec)
    assert s.warnings and "no validation split" in s.warnings[0]


def test_skip_bad_gives_the_splits_of_a_download_without_the_bad_files(tmp_path):
    names = [f"TCGA-A{i}-000{i}-01Z-00-DX1" for i in range(6)]
    src = _flat(tmp_path / "src", names)
    clean = _flat(tmp_path / "clean", [n for n in names if n != names[2]])
    _truncate(src / f"{names[2]}.tif")
    seed = _seed_putting_in_val(src, names[2][:12], 0.4)  # the bad patient was drawn for 'val'
    ref = convert("monuseg", clean, tmp_path / "ref", progress=False, val_fraction=0.4, seed=seed)
    with pytest.warns(UserWarning):
        s = convert("monuseg", src, tmp_path / "out", progress=False, val_fraction=0.4, seed=seed, skip_bad=True)
    assert s.per_split == ref.per_split and set(s.per_split) == {"train", "val"}

    def splits(root):
        df = P.read_index(root, "monuseg")
        return {sp: P.list_patches(root, "monuseg", sp) for sp in ("train", "val")}, sorted(zip(df.split, df.patch_id))

    assert splits(tmp_path / "out") == splits(tmp_path / "ref")
    # a rerun finds the moved patches and writes nothing
    with pytest.warns(UserWarning):
        again = convert("monuseg", src, tmp_path / "out", progress=False, val_fraction=0.4, seed=seed, skip_bad=True)
    assert again.written == 0 and again.existing == s.patches
    assert splits(tmp_path / "out") == splits(tmp_path / "ref")


def test_one_image_source_warns_that_it_has_no_validation_split(tmp_path):
    src = _flat(tmp_path / "src", ["TCGA-AA-0001-01Z-00-DX1"])
    with pytest.warns(UserWarning, match="no validation split.*one source image"):
        s = convert("monuseg", src, tmp_path / "out", progress=False, val_fraction=0.1)
    assert s.per_split == {"train": 1}
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        convert("monuseg", src, tmp_path / "out2", progress=False, val_fraction=0)  # asked for none: no warning


@pytest.mark.parametrize("name, split", [
    ("MoNuSegTestData", "test"), ("MoNuSeg 2018 Training Data", "train"), ("MoNuSAC Testing Data and Annotations", "test"),
    ("monuseg_test", "test"), ("TEST", "test"), ("testset", "test"), ("Test", "test"), ("my-TEST-data", "test"),
    ("latest", "train"), ("monuseg_latest", "train"), ("contest2018", "train"), ("attestation", "train"),
    ("train", "train"), ("data", "train"),
])
def test_split_of_folder(name, split):
    from stardist_hier.readers.base import split_of_folder

    assert split_of_folder(name) == split


def test_split_is_explicit_and_shown(tmp_path):
    src = _flat(tmp_path / "monuseg_latest", ["TCGA-AA-0001-01Z-00-DX1"])  # "latest" is not "test"
    s = convert("monuseg", src, tmp_path / "out", progress=False, val_fraction=0)
    assert s.per_split == {"train": 1} and s.split_folders == {"monuseg_latest": "train"}
    assert "'monuseg_latest' -> train" in s.format() and "--split" in s.format()
    s = convert("monuseg", src, tmp_path / "out2", progress=False, val_fraction=0, split="test")
    assert s.per_split == {"test": 1} and s.split_folders == {}
    # --split on a download holding both official folders would merge them: refused
    both = tmp_path / "both"
    _flat(both / "MoNuSegTestData", ["TCGA-AA-0001-01Z-00-DX1"])
    _flat(both / "MoNuSeg 2018 Training Data", ["TCGA-BB-0002-01Z-00-DX1"])
    assert convert("monuseg", both, tmp_path / "o3", progress=False, val_fraction=0).per_split == {"test": 1, "train": 1}
    with pytest.raises(ReaderError, match="both a training and a test folder"):
        convert("monuseg", both, tmp_path / "o4", progress=False, split="train")
    with pytest.raises(ReaderError, match="unknown split 'val'"):
        convert("monuseg", src, tmp_path / "o5", progress=False, split="val")


def test_split_for_a_reader_with_official_folds_is_refused(tmp_path):
    (tmp_path / "fold1").mkdir()
    with pytest.raises(ReaderError, match="pannuke takes its splits from the download"):
        convert("pannuke", tmp_path, tmp_path / "out", progress=False, split="test")


def test_output_folder_that_is_a_file_is_refused_before_reading(tmp_path):
    (tmp_path / "out").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file"):
        convert("monuseg", tmp_path / "no_such_src", tmp_path / "out" / "sub", progress=False)
