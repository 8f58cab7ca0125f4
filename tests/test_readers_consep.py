"""CoNSeP reader: inst_type in instance-id order checked against type_map, alpha, layouts, real tiles."""

import numpy as np
import pytest
import scipy.io
from skimage.io import imsave

from stardist_hier import patches as P
from stardist_hier.readers import ReaderError, convert


def _tile(rng, n=6, size=300, shuffle_types=False):
    """A CoNSeP-format tile: ids 1..n in a grid of squares, each with a known class."""
    inst = np.zeros((size, size), np.int32)
    types = rng.integers(1, 8, n)
    for k in range(n):
        y, x = 20 + 45 * (k // 5), 20 + 45 * (k % 5)
        inst[y:y + 30, x:x + 30] = k + 1
    type_map = np.zeros_like(inst)
    for k in range(n):
        type_map[inst == k + 1] = types[k]
    inst_type = types[::-1] if shuffle_types else types
    return inst, type_map, inst_type.reshape(-1, 1).astype(np.int32), types


def _write(d, name, image, inst, type_map, inst_type):
    (d / "Images").mkdir(parents=True, exist_ok=True)
    (d / "Labels").mkdir(parents=True, exist_ok=True)
    imsave(d / "Images" / f"{name}.png", image, check_contrast=False)
    cen = np.array([[0.0, 0.0]] * len(inst_type))
    scipy.io.savemat(d / "Labels" / f"{name}.mat", {"inst_map": inst, "type_map": type_map,
                                                     "inst_type": inst_type, "inst_centroid": cen})


def test_convert_consep_train_test_alpha_and_tiling(tmp_path):
    rng = np.random.default_rng(0)
    src = tmp_path / "CoNSeP"
    truth = {}
    for split, names in (("Train", ["train_1", "train_2", "train_3"]), ("Test", ["test_1"])):
        for name in names:
            image = rng.integers(0, 256, (300, 300, 4), dtype=np.uint8)  # RGBA PNG
            image[..., 3] = 255
            inst, type_map, inst_type, types = _tile(rng)
            _write(src / split, name, image, inst, type_map, inst_type)
            truth[name] = (image[..., :3], inst, types)
    out = tmp_path / "out"
    s = convert("consep", src, out, progress=False, val_fraction=0.34, seed=0)
    df = P.read_index(out, "consep")
    assert set(df.split) == {"train", "val", "test"}
    assert df.groupby("source").split.nunique().max() == 1  # a source image never straddles splits
    assert len(df) == 4 * 4  # 300 px -> tiles at 0 and 44 in each direction
    assert s.notes.get("type_map_mismatch", 0) == 0
    for row in df.itertuples():
        name = row.patch_id.rsplit("_y", 1)[0]
        image, inst, types = truth[name]
        im, m = P.read_patch(out, "consep", row.split, row.patch_id)
        y, x = row.offset_y, row.offset_x
        np.testing.assert_array_equal(im, image[y:y + 256, x:x + 256])
        window = inst[y:y + 256, x:x + 256]
        np.testing.assert_array_equal(m[..., 0], P.relabel_instances(window))
        touching = np.unique(window[window > 0])
        assert P.instance_classes(m) == {new: int(types[old - 1]) for new, old in enumerate(touching, start=1)}


def test_inst_type_out_of_order_is_rejected(tmp_path):
    rng = np.random.default_rng(1)
    inst, type_map, _, types = _tile(rng, n=8)
    wrong = np.roll(types, 1).reshape(-1, 1)
    if (np.roll(types, 1) != types).sum() <= 4:  # make sure most rows disagree
        wrong = ((types % 7) + 1).reshape(-1, 1)
    _write(tmp_path / "src", "a", np.zeros((300, 300, 3), np.uint8), inst, type_map, wrong)
    with pytest.raises(ReaderError, match=r"a\.mat.*not in instance-id order"):
        convert("consep", tmp_path / "src", tmp_path / "out", progress=False)


def test_few_type_map_disagreements_are_counted_and_inst_type_wins(tmp_path):
    rng = np.random.default_rng(2)
    inst, type_map, inst_type, types = _tile(rng, n=8)
    type_map[inst == 3] = (types[2] % 7) + 1
    _write(tmp_path / "src", "a", np.zeros((300, 300, 3), np.uint8), inst, type_map, inst_type)
    s = convert("consep", tmp_path / "src", tmp_path / "out", progress=False, val_fraction=0)
    assert s.notes["type_map_mismatch"] == 1
    _, m = P.read_patch(tmp_path / "out", "consep", "train", "a_y0000_x0000")
    assert P.instance_classes(m)[3] == int(types[2])


def test_size_mismatch_and_corrupt_mat(tmp_path):
    rng = np.random.default_rng(3)
    inst, type_map, inst_type, _ = _tile(rng)
    _write(tmp_path / "src", "a", np.zeros((200, 300, 3), np.uint8), inst, type_map, inst_type)
    _write(tmp_path / "src", "b", np.zeros((300, 300, 3), np.uint8), inst, type_map, inst_type)
    (tmp_path / "src" / "Labels" / "c.mat").write_bytes(b"MATLAB 5.0 MAT-file, truncated")
    with pytest.raises(ReaderError, match=r"a\.mat.*differ in size"):
        convert("consep", tmp_path / "src", tmp_path / "out", progress=False)
    with pytest.warns(UserWarning):
        s = convert("consep", tmp_path / "src", tmp_path / "out", progress=False, skip_bad=True, val_fraction=0)
    assert s.samples == 3 and len(s.bad) == 2 and s.patches == 4
    assert "c.mat" in s.format() and "a.mat" in s.format()


def test_real_consep_format_tiles(realdata, tmp_path):
    """Real tiles: 20, 47 and 58 nuclei, classes from inst_type (non-contiguous ids)."""
    src = realdata / "consep_format_tiles"
    out = tmp_path / "out"
    s = convert("consep", src, out, progress=False, val_fraction=0)
    df = P.read_index(out, "consep").set_index("patch_id")
    counts = {pid.split("_")[0]: int(n) for pid, n in df.n_nuclei.items()}
    assert counts == {"patch1": 20, "patch2": 47, "patch3": 58}
    assert s.notes.get("type_map_mismatch", 0) == 0
    for k in (1, 2, 3):
        mat = scipy.io.loadmat(src / f"patch{k}.mat")
        types = mat["inst_type"].ravel()
        _, m = P.read_patch(out, "consep", "train", f"patch{k}_y0000_x0000")
        got = P.instance_classes(m)
        # sorted old ids map to 1..n: the k-th smallest id has the k-th inst_type row
        assert got == {i + 1: int(t) for i, t in enumerate(types)}
        np.testing.assert_array_equal(m[..., 0] > 0, mat["inst_map"] > 0)
    X, Y, C = P.load_split(out, "consep", "train", label_set="consep")
    assert [len(c) for c in C] == [20, 47, 58]


def test_new_seed_moves_images_without_leaving_copies(tmp_path):
    rng = np.random.default_rng(4)
    src = tmp_path / "CoNSeP"
    for k in range(6):
        inst, type_map, inst_type, _ = _tile(rng, size=256)
        _write(src / "Train", f"train_{k}", np.zeros((256, 256, 3), np.uint8), inst, type_map, inst_type)
    out = tmp_path / "out"
    for seed in (0, 1, 2, 3):
        convert("consep", src, out, progress=False, val_fraction=0.5, seed=seed)
        df = P.read_index(out, "consep")
        on_disk = {(sp, pid) for sp in P.list_splits(out, "consep") for pid in P.list_patches(out, "consep", sp)}
        assert on_disk == set(zip(df.split, df.patch_id))
        assert len(df) == 6 and df.patch_id.is_unique and (df.split == "val").sum() == 3
