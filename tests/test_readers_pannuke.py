"""PanNuke reader: layouts, relabelling per channel, overlap, void patches, split ids, tissue, streaming."""

import numpy as np
import pytest

from stardist_hier import patches as P
from stardist_hier.readers import ReaderError, convert

TISSUES = ["Breast", "Colon", "Adrenal_gland", "Bile-duct", "Skin", "Liver"]


def _fixture_arrays():
    """Six PanNuke patches, each reproducing one quirk; returns (images, masks, types, expected).

    ``expected[i]`` is None for a patch that must be skipped, else ``(inst, classes)`` with
    ``inst`` the expected instance map (before per-patch relabelling, -1 = ignore).
    """
    n = len(TISSUES)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 256, 256, 3)).astype(np.float64)
    masks = np.zeros((n, 256, 256, 6), np.float64)
    masks[..., 5] = 1
    expected = []

    def put(i, ch, nid, ys, xs):
        masks[i, ys, xs, ch] = nid
        masks[i, ys, xs, 5] = 0

    # 0: ids in the thousands, the same id 1500 in two class channels = two nuclei
    put(0, 0, 1500, slice(10, 30), slice(10, 30))
    put(0, 1, 1500, slice(50, 70), slice(50, 70))
    put(0, 2, 2000, slice(100, 120), slice(10, 40))
    e = np.zeros((256, 256), np.int32)
    e[10:30, 10:30], e[50:70, 50:70], e[100:120, 10:40] = 1, 2, 3
    expected.append((e, {1: 1, 2: 2, 3: 3}))
    # 1: two class channels overlap -> the shared pixels are ignore
    put(1, 0, 7, slice(10, 30), slice(10, 30))
    put(1, 3, 8, slice(25, 45), slice(25, 45))
    e = np.zeros((256, 256), np.int32)
    e[10:30, 10:30], e[25:45, 25:45], e[25:30, 25:30] = 1, 2, -1
    expected.append((e, {1: 1, 2: 4}))
    # 2: entirely void (no class, no background) -> skipped
    masks[2] = 0
    expected.append(None)
    # 3: partly void -> the void pixels are ignore
    put(3, 4, 3, slice(60, 80), slice(60, 80))
    masks[3, 200:220, 200:220, 5] = 0
    e = np.zeros((256, 256), np.int32)
    e[60:80, 60:80], e[200:220, 200:220] = 1, -1
    expected.append((e, {1: 5}))
    # 4: one id in two pieces -> the largest piece is the nucleus, the rest ignore
    put(4, 4, 99, slice(50, 70), slice(50, 70))
    put(4, 4, 99, slice(100, 104), slice(100, 104))
    put(4, 1, 5, slice(150, 160), slice(150, 160))
    e = np.zeros((256, 256), np.int32)
    e[50:70, 50:70], e[100:104, 100:104], e[150:160, 150:160] = 2, -1, 1
    expected.append((e, {1: 2, 2: 5}))
    # 5: no nucleus at all: a valid patch of background
    expected.append((np.zeros((256, 256), np.int32), {}))
    return images, masks, np.array(TISSUES), expected


def _write_fold(folder, layout, fold, images, masks, types):
    if layout == "release":
        idir, mdir = folder / f"Fold {fold}" / "images" / f"fold{fold}", folder / f"Fold {fold}" / "masks" / f"fold{fold}"
    else:
        idir = mdir = folder / (f"fold{fold - 1}" if layout == "cellvit" else f"fold{fold}")
    idir.mkdir(parents=True, exist_ok=True)
    mdir.mkdir(parents=True, exist_ok=True)
    np.save(idir / "images.npy", images)
    np.save(mdir / "masks.npy", masks)
    np.save(idir / "types.npy", types)
    return mdir / "masks.npy"


def _check_patch_against(image_f64, mask, expected):
    inst, classes = expected
    ref_inst = P.relabel_instances(inst)  # independent of the reader: relabel the known answer
    np.testing.assert_array_equal(mask[..., 0], ref_inst)
    # class ids of the known answer, carried through the relabelling
    old_ids = sorted(classes)
    ref = {new: classes[old] for new, old in enumerate(old_ids, start=1)}
    assert P.instance_classes(mask) == ref


@pytest.mark.parametrize("layout", ["release", "flat", "cellvit"])
def test_layouts_and_quirks(tmp_path, layout):
    images, masks, types, expected = _fixture_arrays()
    _write_fold(tmp_path / "src", layout, 1, images, masks, types)
    _write_fold(tmp_path / "src", layout, 2, images[:2], masks[:2], types[:2])
    s = convert("pannuke", tmp_path / "src", tmp_path / "out", progress=False)
    assert s.per_split == {"fold1": 5, "fold2": 2}
    assert [r for _, r in s.skipped] == ["void patch: no class and no background pixel"]
    assert s.notes["overlap_px"] == 2 * 25 and s.notes["void_px"] == 400 and s.notes["split_pieces"] == 1
    df = P.read_index(tmp_path / "out", "pannuke")
    assert set(df.split) == {"fold1", "fold2"} and (df.label_set == "pannuke").all()
    for i, exp in enumerate(expected):
        pid = f"fold1_{i:05d}"
        if exp is None:
            assert pid not in set(df.patch_id)
            continue
        image, mask = P.read_patch(tmp_path / "out", "pannuke", "fold1", pid)
        np.testing.assert_array_equal(image, images[i].astype(np.uint8))
        _check_patch_against(images[i], mask, exp)
        row = df[df.patch_id == pid].iloc[0]
        assert row.tissue == TISSUES[i]
        assert row.n_nuclei == len(exp[1])
        for k in range(1, 6):
            assert row[f"n_class_{k}"] == sum(1 for c in exp[1].values() if c == k)
    X, Y, C = P.load_split(tmp_path / "out", "pannuke", "fold1", label_set="pannuke")
    assert len(X) == 5 and C[0] == {1: 1, 2: 2, 3: 3}


def test_streams_with_memory_maps(tmp_path, monkeypatch):
    images, masks, types, _ = _fixture_arrays()
    _write_fold(tmp_path / "src", "release", 1, images, masks, types)
    calls = []
    real_load = np.load

    def spy(path, *a, **kw):
        calls.append((str(path).rsplit("/", 1)[-1], kw.get("mmap_mode")))
        return real_load(path, *a, **kw)

    monkeypatch.setattr(np, "load", spy)
    convert("pannuke", tmp_path / "src", tmp_path / "out", progress=False)
    big = [m for name, m in calls if name in ("images.npy", "masks.npy")]
    assert big and all(m == "r" for m in big)


def test_rerun_skips_and_overwrite_rewrites(tmp_path):
    images, masks, types, _ = _fixture_arrays()
    _write_fold(tmp_path / "src", "flat", 1, images, masks, types)
    out = tmp_path / "out"
    s1 = convert("pannuke", tmp_path / "src", out, progress=False)
    f = P.patch_path(out, "pannuke", "fold1", "masks", "fold1_00000")
    t0 = f.stat().st_mtime_ns
    s2 = convert("pannuke", tmp_path / "src", out, progress=False)
    assert (s1.written, s1.existing, s2.written, s2.existing) == (5, 0, 0, 5)
    assert f.stat().st_mtime_ns == t0
    s3 = convert("pannuke", tmp_path / "src", out, progress=False, overwrite=True)
    assert s3.written == 5
    assert len(P.read_index(out, "pannuke")) == 5


def test_workers_give_the_same_result(tmp_path):
    images, masks, types, _ = _fixture_arrays()
    _write_fold(tmp_path / "src", "flat", 1, np.concatenate([images] * 7), np.concatenate([masks] * 7),
                np.concatenate([types] * 7))
    s1 = convert("pannuke", tmp_path / "src", tmp_path / "o1", progress=False, workers=1)
    s2 = convert("pannuke", tmp_path / "src", tmp_path / "o2", progress=False, workers=2)
    assert s1.written == s2.written == 35
    a, b = P.read_index(tmp_path / "o1", "pannuke"), P.read_index(tmp_path / "o2", "pannuke")
    assert a.equals(b)
    for pid in ["fold1_00000", "fold1_00034"]:
        np.testing.assert_array_equal(P.read_patch(tmp_path / "o1", "pannuke", "fold1", pid)[1],
                                      P.read_patch(tmp_path / "o2", "pannuke", "fold1", pid)[1])


def test_truncated_fold_error_and_skip_bad(tmp_path):
    images, masks, types, _ = _fixture_arrays()
    _write_fold(tmp_path / "src", "release", 1, images, masks, types)
    bad = _write_fold(tmp_path / "src", "release", 2, images, masks, types)
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ReaderError, match="masks.npy.*truncated"):
        convert("pannuke", tmp_path / "src", tmp_path / "out", progress=False)
    with pytest.warns(UserWarning, match="masks.npy"):
        s = convert("pannuke", tmp_path / "src", tmp_path / "out", progress=False, skip_bad=True)
    assert s.per_split == {"fold1": 5}
    assert len(s.bad) == 1 and "Fold 2" in s.bad[0][0]
    assert "bad file" in s.format()


def test_missing_folder_and_missing_masks(tmp_path):
    with pytest.raises(ReaderError, match="PanNuke folder not found"):
        convert("pannuke", tmp_path / "Pannuke_typo", tmp_path / "out", progress=False)
    (tmp_path / "src" / "fold1").mkdir(parents=True)
    np.save(tmp_path / "src" / "fold1" / "images.npy", np.zeros((2, 256, 256, 3)))
    with pytest.raises(ReaderError, match="masks.npy missing"):
        convert("pannuke", tmp_path / "src", tmp_path / "out", progress=False)
    np.save(tmp_path / "src" / "fold1" / "masks.npy", np.zeros((3, 256, 256, 6)))
    with pytest.raises(ReaderError, match="3 masks for 2 images"):
        convert("pannuke", tmp_path / "src", tmp_path / "out", progress=False)
