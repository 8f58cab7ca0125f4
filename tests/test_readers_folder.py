"""`prepare folder`: images + instance masks (class channel, class maps or a CSV table) into the patch
format, checked tile by tile against the source arrays; every bad input named."""

import numpy as np
import pytest
import tifffile
from skimage.io import imsave

from stardist_hier import patches as P
from stardist_hier.cli import main
from stardist_hier.hierarchy import ClassHierarchy
from stardist_hier.readers import BadFilesError, ReaderError, convert
from stardist_hier.readers.folder import FolderReader, read_label_image


def _inst(rng, size=300, n=12):
    """Non-contiguous instance ids on random rectangles (later on top), plus an ignore block."""
    inst = np.zeros((size, size), np.int32)
    ids = rng.choice(np.arange(3, 5000), n, replace=False)
    for i in ids:
        y, x = rng.integers(0, size - 10, 2)
        h, w = rng.integers(4, 30, 2)
        inst[y:y + h, x:x + w] = i
    inst[:5, :5] = -1
    return inst


def make(tmp_path, names=("a", "b", "c"), size=300, how="channel", label_set="monusac", seed=0):
    """images/ (PNG), masks/ (TIFF), and per image the reference {instance: class}."""
    rng = np.random.default_rng(seed)
    ids = ClassHierarchy.default().label_set(label_set).ids
    img_dir, mask_dir, map_dir = tmp_path / "images", tmp_path / "masks", tmp_path / "maps"
    for d in (img_dir, mask_dir, map_dir):
        d.mkdir(parents=True, exist_ok=True)
    ref, rows = {}, ["image,instance,class"]
    for name in names:
        image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        imsave(img_dir / f"{name}.png", image, check_contrast=False)
        inst = _inst(rng, size)
        present = [int(i) for i in np.unique(inst[inst > 0])]
        classes = {i: int(rng.choice(ids)) for i in present}
        cls = np.zeros_like(inst)
        for i, c in classes.items():
            cls[inst == i] = c
        if how == "channel":
            tifffile.imwrite(mask_dir / f"{name}.tif", np.stack([inst, cls], -1))
        else:
            tifffile.imwrite(mask_dir / f"{name}_mask.tif", inst)
        if how == "maps":
            imsave(map_dir / f"{name}_class.png", cls.astype(np.uint8), check_contrast=False)
        rows += [f"{name}.png,{i},{c}" for i, c in classes.items()]
        ref[name] = (image, inst, classes)
    (tmp_path / "classes.csv").write_text("\n".join(rows) + "\n")
    return img_dir, mask_dir, map_dir, ref


def _check_patches(out, dataset, ref, stride=256):
    """Every patch equals the window of its source image, instances relabelled, classes kept."""
    df = P.read_index(out, dataset)
    assert len(df)
    for row in df.itertuples():
        image, inst, classes = ref[row.source.rsplit(".", 1)[0]]
        img, mask = P.read_patch(out, dataset, row.split, row.patch_id)
        win = inst[row.offset_y:row.offset_y + 256, row.offset_x:row.offset_x + 256]
        np.testing.assert_array_equal(img, image[row.offset_y:row.offset_y + 256, row.offset_x:row.offset_x + 256])
        np.testing.assert_array_equal(mask[..., 0], P.relabel_instances(win))
        got = P.instance_classes(mask)
        old = {int(k): int(win[mask[..., 0] == k][0]) for k in got}
        assert {k: classes[old[k]] for k in got} == got
        assert row.n_nuclei == len(got)
    return df


@pytest.mark.parametrize("how", ["channel", "maps", "table"])
def test_three_class_sources_convert_the_same(tmp_path, how):
    img_dir, mask_dir, map_dir, ref = make(tmp_path, how=how)
    kw = {"class_maps": map_dir} if how == "maps" else {"classes": tmp_path / "classes.csv"} if how == "table" else {}
    reader = FolderReader(mask_dir, "mine", "monusac", **kw)
    s = convert(reader, img_dir, tmp_path / "out", progress=False, val_fraction=0.34, seed=0)
    df = _check_patches(tmp_path / "out", "mine", ref)
    assert df.groupby("split").source.nunique().to_dict() == {"train": 2, "val": 1}  # by image
    assert set(df.label_set) == {"monusac"} and s.patches == 12
    # nuclei per class agree with a count over the windows of the references
    total = {}
    for row in df.itertuples():
        _, inst, classes = ref[row.source.rsplit(".", 1)[0]]
        win = inst[row.offset_y:row.offset_y + 256, row.offset_x:row.offset_x + 256]
        for i in np.unique(win[win > 0]):
            total[classes[int(i)]] = total.get(classes[int(i)], 0) + 1
    assert {k: v for k, v in s.nuclei_per_class.items() if v} == total


def test_table_takes_node_names_and_unknown_classes(tmp_path):
    img_dir, mask_dir, _, ref = make(tmp_path, names=("a",), how="table")
    _, inst, classes = ref["a"]
    ids = sorted(classes)
    names = {1: "Epithelial", 2: "lymphocyte", 3: "Neutrophil", 4: "macrophage"}
    rows = ["Image,Instance,Class,area"] + [f"a,{i},{names[classes[i]]},1" for i in ids[1:]] + [f"a,{ids[0]},"]
    (tmp_path / "named.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(ReaderError, match=rf"1 nucleus has no row in the class table: instance id\(s\) \[{ids[0]}\]"):
        convert(FolderReader(mask_dir, "mine", "monusac", classes=tmp_path / "named.csv"), img_dir,
                tmp_path / "out", progress=False)
    reader = FolderReader(mask_dir, "mine", "monusac", classes=tmp_path / "named.csv", allow_unclassified=True)
    (sample,) = reader.find_samples(img_dir)
    lab = reader.load_sample(sample, {})
    assert lab.classes == {**classes, ids[0]: None} and lab.notes["unclassified_nuclei"] == 1


def test_one_class_and_root_label_sets_need_no_classes(tmp_path):
    """A label set {1: nucleus} at the root (user YAML extending the default): prepares and loads."""
    img_dir, mask_dir, _, ref = make(tmp_path, names=("a", "b"), how="maps")
    yaml = tmp_path / "mine.yaml"
    yaml.write_text("extends: default\nlabel_sets:\n  any_nucleus:\n    1: nucleus\n  lymph_only:\n    1: lymphocyte\n")
    out = tmp_path / "out"
    assert main(["prepare", "folder", "--images", str(img_dir), "--masks", str(mask_dir), "--dataset", "mine",
                 "--label-set", "any_nucleus", "--hierarchy", str(yaml), "--out", str(out), "-q",
                 "--val-fraction", "0"]) == 0
    ls = ClassHierarchy.from_yaml(yaml).label_set("any_nucleus")
    X, Y, C = P.load_split(out, "mine", "train", label_set=ls)
    assert len(X) == 8 and X[0].dtype == np.float32
    assert {v for c in C for v in c.values()} == {1}
    n_ref = sum(len(np.unique(inst[y:y + 256, x:x + 256][inst[y:y + 256, x:x + 256] > 0]))
                for _, inst, _ in ref.values() for y in (0, 44) for x in (0, 44))
    assert sum(len(c) for c in C) == n_ref
    reader = FolderReader(mask_dir, "lymph", "lymph_only", hierarchy=yaml)  # one finer class: all lymphocytes
    assert set(reader.load_sample(reader.find_samples(img_dir)[0], {}).classes.values()) == {1}
    with pytest.raises(ReaderError, match="no classes for its nuclei.*label set 'monusac' has 4 classes"):
        convert(FolderReader(mask_dir, "mine", "monusac"), img_dir, tmp_path / "o2", progress=False)


def test_unmatched_files_are_listed(tmp_path):
    img_dir, mask_dir, _, _ = make(tmp_path, names=("a", "b"), size=40)
    imsave(img_dir / "lonely.png", np.zeros((40, 40, 3), np.uint8), check_contrast=False)
    tifffile.imwrite(mask_dir / "orphan.tif", np.zeros((40, 40), np.int32))
    (img_dir / "readme.txt").write_text("not an image")
    with pytest.raises(BadFilesError) as e:
        convert(FolderReader(mask_dir, "mine", "monusac"), img_dir, tmp_path / "out", progress=False)
    msg = str(e.value)
    assert "2 bad input files" in msg
    assert "lonely.png: no mask for this image" in msg and "orphan.tif: no image for this mask" in msg
    # nothing matches: one error naming both sides
    (tmp_path / "m2").mkdir()
    tifffile.imwrite(tmp_path / "m2" / "zzz.tif", np.zeros((4, 4), np.int32))
    with pytest.raises(ReaderError, match=r"no mask matches an image.*images \['a.png', 'b.png', 'lonely.png'\], "
                                          r"masks \['zzz.tif'\]"):
        convert(FolderReader(tmp_path / "m2", "mine", "monusac"), img_dir, tmp_path / "out", progress=False)


def test_skip_bad_redraws_validation_and_resume(tmp_path):
    img_dir, mask_dir, _, ref = make(tmp_path, names=("a", "b", "c", "d"), size=64)
    tifffile.imwrite(mask_dir / "b.tif", np.zeros((10, 10, 2), np.int32))  # wrong size
    reader = FolderReader(mask_dir, "mine", "monusac")
    with pytest.warns(UserWarning, match="b.tif"):
        s = convert(reader, img_dir, tmp_path / "out", progress=False, val_fraction=0.5, seed=0, skip_bad=True)
    df = P.read_index(tmp_path / "out", "mine")
    assert sorted(df.source) == ["a.png", "c.png", "d.png"] and len(s.bad) == 1
    assert df.split.value_counts().to_dict() in ({"train": 1, "val": 2}, {"train": 2, "val": 1})
    with pytest.warns(UserWarning):
        again = convert(reader, img_dir, tmp_path / "out", progress=False, val_fraction=0.5, seed=0, skip_bad=True,
                        workers=2)
    assert again.written == 0 and again.existing == 3


BAD = {
    "class 0": (r"1 nucleus has class 0 over all their pixels: instance id\(s\) \[\d+\]", lambda inst, cls: (inst, np.where(inst == inst.max(), 0, cls))),
    "unknown id": (r"class id\(s\) \[9\] \(e.g. under nucleus \d+\) not in label set 'monusac'",
                   lambda inst, cls: (inst, np.where(inst == inst.max(), 9, cls))),
    "binary": ("a binary mask: every nucleus has the id 1", lambda inst, cls: ((inst > 0).astype(np.int32), cls)),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_class_channel_names_file_and_id(tmp_path, case):
    img_dir, mask_dir, _, ref = make(tmp_path, names=("a",), size=64)
    message, change = BAD[case]
    mask = tifffile.imread(mask_dir / "a.tif")
    inst, cls = change(mask[..., 0], mask[..., 1])
    tifffile.imwrite(mask_dir / "a.tif", np.stack([inst, cls], -1))
    with pytest.raises(ReaderError, match=message) as e:
        convert(FolderReader(mask_dir, "mine", "monusac"), img_dir, tmp_path / "out", progress=False)
    assert "a.tif" in str(e.value) and "\n" not in str(e.value)


def test_bad_class_table_rows(tmp_path):
    img_dir, mask_dir, _, ref = make(tmp_path, names=("a",), size=64, how="table")
    _, inst, classes = ref["a"]
    i = sorted(classes)[0]
    cases = {
        f"image,instance,class\na,{i},0\n": "line 2: class 0 for instance",
        f"image,instance,class\na,{i},7\n": r"line 2: class id 7 .* not in label set 'monusac' \(1 = epithelial",
        f"image,instance,class\na,{i},1\na,{i},2\n": f"line 3: instance {i} of a is already on line 2",
        "image,instance,class\na,x,1\n": "line 2: instance 'x' is not an instance id",
        "image,nucleus,class\n": r"line 1: missing column\(s\) \['instance'\]",
        f"image,instance,class\na,{i},Tumour\n": "'Tumour' is not a node of the hierarchy",
        "image,instance,class\na,99999,1\n": r"line\(s\) 2: instance id\(s\) \[99999\] not in the mask",
    }
    for text, message in cases.items():
        (tmp_path / "t.csv").write_text(text)
        with pytest.raises(ReaderError, match=message) as e:
            convert(FolderReader(mask_dir, "mine", "monusac", classes=tmp_path / "t.csv", allow_unclassified=True),
                    img_dir, tmp_path / "out", progress=False)
        assert "t.csv" in str(e.value), text
    (tmp_path / "t.csv").write_text(f"image,instance,class\na,{i},1\nghost.png,1,1\n")
    with pytest.raises(BadFilesError, match=r"rows for 1 image\(s\) not in .*ghost.png \(line 3\)"):
        convert(FolderReader(mask_dir, "mine", "monusac", classes=tmp_path / "t.csv", allow_unclassified=True),
                img_dir, tmp_path / "out", progress=False)


def test_label_images_read_as_written(tmp_path):
    rng = np.random.default_rng(1)
    inst = rng.integers(0, 70000, (20, 30)).astype(np.int32)
    tifffile.imwrite(tmp_path / "m.tif", inst)
    np.testing.assert_array_equal(read_label_image(tmp_path / "m.tif")[0], inst)
    tifffile.imwrite(tmp_path / "planar.tif", np.stack([inst, inst % 5]), photometric="minisblack")
    np.testing.assert_array_equal(read_label_image(tmp_path / "planar.tif")[0], np.stack([inst, inst % 5], -1))
    small = (inst % 60000).astype(np.uint16)
    imsave(tmp_path / "m16.png", small, check_contrast=False)
    np.testing.assert_array_equal(read_label_image(tmp_path / "m16.png")[0], small)
    grey = np.repeat((inst % 200).astype(np.uint8)[..., None], 3, -1)
    imsave(tmp_path / "grey.png", grey, check_contrast=False)
    arr, was_grey = read_label_image(tmp_path / "grey.png")
    assert was_grey and np.array_equal(arr, inst % 200)
    colour = grey.copy()
    colour[0, 0, 1] += 1
    imsave(tmp_path / "colour.png", colour, check_contrast=False)
    with pytest.raises(ReaderError, match="colour.png: an RGB picture"):
        read_label_image(tmp_path / "colour.png")
    tifffile.imwrite(tmp_path / "f.tif", inst.astype(np.float32) + 0.5)
    with pytest.raises(ReaderError, match="non-integer values"):
        read_label_image(tmp_path / "f.tif")


def test_bad_files_and_options(tmp_path):
    img_dir, mask_dir, map_dir, _ = make(tmp_path, names=("a", "b"), size=40, how="maps")
    (mask_dir / "b_mask.tif").unlink()
    imsave(mask_dir / "b_mask.jpg", np.zeros((40, 40), np.uint8), check_contrast=False)
    (map_dir / "a_class.png").unlink()
    with pytest.raises(BadFilesError) as e:
        convert(FolderReader(mask_dir, "mine", "monusac", class_maps=map_dir), img_dir, tmp_path / "out",
                progress=False)
    msg = str(e.value)
    assert "b_mask.jpg: a JPEG mask: JPEG is lossy" in msg and "a.png: no class map for this image" in msg
    with pytest.raises(ReaderError, match="not both"):
        FolderReader(mask_dir, "mine", "monusac", classes=tmp_path / "classes.csv", class_maps=map_dir)
    with pytest.raises(ReaderError, match="same folder"):
        convert(FolderReader(img_dir, "mine", "monusac"), img_dir, tmp_path / "out", progress=False)
    imsave(img_dir / "a.jpg", np.zeros((40, 40, 3), np.uint8), check_contrast=False)
    with pytest.raises(ReaderError, match="two images have the stem 'a'"):
        convert(FolderReader(mask_dir, "mine", "monusac"), img_dir, tmp_path / "out", progress=False)
    with pytest.raises(Exception, match="unknown label set 'monusak'"):
        FolderReader(mask_dir, "mine", "monusak")


def test_cli_folder(tmp_path, capsys):
    img_dir, mask_dir, _, ref = make(tmp_path, names=("a", "b"), how="table")
    (tmp_path / "test.txt").write_text("b\n")
    out = tmp_path / "out"
    argv = ["prepare", "folder", "--images", str(img_dir), "--masks", str(mask_dir), "--classes",
            str(tmp_path / "classes.csv"), "--dataset", "mine", "--label-set", "monusac", "--out", str(out),
            "--test-images", str(tmp_path / "test.txt"), "-q"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "mine: 2 source images -> 8 patches" in text and "test 4" in text and "train 4" in text
    _check_patches(out, "mine", ref)
    assert main(argv) == 0 and "0 written, 8 already there" in capsys.readouterr().out
    assert main(argv + ["--split", "test"]) == 1
    assert "--split and --test-images exclude each other" in capsys.readouterr().err
    assert main(argv + ["--src", str(img_dir)]) == 2
    assert "not --src" in capsys.readouterr().err
    assert main(argv + ["--object-types", "detection"]) == 2
    assert "--object-types: not an option of `prepare folder`" in capsys.readouterr().err


def test_masks_and_class_maps_in_one_folder(tmp_path):
    img_dir, mask_dir, map_dir, ref = make(tmp_path, names=("a", "b"), size=300, how="maps")
    for f in map_dir.iterdir():
        f.rename(mask_dir / f.name)
    reader = FolderReader(mask_dir, "mine", "monusac", class_maps=mask_dir)
    convert(reader, img_dir, tmp_path / "out", progress=False, val_fraction=0)
    _check_patches(tmp_path / "out", "mine", ref)


def test_no_tensorflow_import():
    import subprocess
    import sys

    code = ("import stardist_hier.readers.folder, stardist_hier.readers.qupath, stardist_hier.commands.prepare, sys; "
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
