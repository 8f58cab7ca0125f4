"""The patch format: writing, reading, index, tiling, instance classes and load_split."""

import subprocess
import sys

import numpy as np
import pytest
import tifffile

from stardist_hier import patches as P


def _rand_patch(rng, n=5):
    image = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    mask = np.zeros((256, 256, 2), np.int32)
    for i in range(1, n + 1):
        y, x = rng.integers(0, 240, 2)
        mask[y:y + 12, x:x + 12, 0] = i
        mask[y:y + 12, x:x + 12, 1] = i % 3 + 1
    mask[:4, :4, 0] = -1
    mask[:4, :4, 1] = 0
    return image, mask


def test_write_read_roundtrip_and_layout(tmp_path):
    rng = np.random.default_rng(0)
    image, mask = _rand_patch(rng)
    ipath, mpath = P.write_patch(tmp_path, "ds", "train", "a", image, mask)
    assert ipath == tmp_path / "ds" / "train" / "images" / "a.tif"
    assert mpath == tmp_path / "ds" / "train" / "masks" / "a.tif"
    im2, m2 = P.read_patch(tmp_path, "ds", "train", "a")
    assert im2.dtype == np.uint8 and m2.dtype == np.int32 and m2.shape == (256, 256, 2)
    np.testing.assert_array_equal(im2, image)
    np.testing.assert_array_equal(m2, mask)
    # an independent TIFF reader sees the documented layout
    assert tifffile.imread(mpath).shape == (256, 256, 2)
    assert not list((tmp_path / "ds").rglob(".*"))


def test_write_rejects_bad_shapes(tmp_path):
    image, mask = _rand_patch(np.random.default_rng(1))
    with pytest.raises(P.PatchFormatError, match="uint8"):
        P.write_patch(tmp_path, "ds", "s", "x", image.astype(np.float32), mask)
    with pytest.raises(P.PatchFormatError, match="HxWx2"):
        P.write_patch(tmp_path, "ds", "s", "x", image, mask[..., 0])
    with pytest.raises(P.PatchFormatError, match="256x256"):
        P.write_patch(tmp_path, "ds", "s", "x", image[:100], mask[:100])


def test_interrupted_write_leaves_no_patch(tmp_path, monkeypatch):
    image, mask = _rand_patch(np.random.default_rng(2))
    calls = []

    def failing(file, array, **kw):
        calls.append(file)
        with open(file, "wb") as f:
            f.write(b"half")  # a partial TIFF in the temporary file, then the interruption
        raise KeyboardInterrupt

    monkeypatch.setattr(tifffile, "imwrite", failing)
    with pytest.raises(KeyboardInterrupt):
        P.write_patch(tmp_path, "ds", "train", "a", image, mask)
    assert calls and not P.patch_exists(tmp_path, "ds", "train", "a")
    assert [p for p in (tmp_path / "ds").rglob("*") if p.is_file()] == []


def test_list_patches_sorted_and_complete_only(tmp_path):
    image, mask = _rand_patch(np.random.default_rng(3))
    for pid in ["c", "a", "b"]:
        P.write_patch(tmp_path, "ds", "train", pid, image, mask)
    (tmp_path / "ds" / "train" / "images" / "b.tif").unlink()  # half a patch is not a patch
    assert P.list_patches(tmp_path, "ds", "train") == ["a", "c"]
    assert P.list_patches(tmp_path, "ds", "nope") == []


def test_instance_classes_against_loop_reference():
    rng = np.random.default_rng(4)
    inst = rng.integers(-1, 8, (40, 40))
    cls = rng.integers(0, 4, (40, 40))
    ref = {}
    for i in np.unique(inst[inst > 0]):
        c = cls[inst == i]
        c = c[c > 0]
        if c.size == 0:
            ref[int(i)] = None
        else:
            vals, cnt = np.unique(c, return_counts=True)
            ref[int(i)] = int(vals[np.argmax(cnt)])  # argmax takes the first (smallest) on ties
    cls[inst == 5] = 0  # all class 0 -> unknown
    ref[5] = None
    got = P.instance_classes(np.stack([inst, cls], -1))
    assert got == ref
    assert P.instance_classes((inst, cls)) == ref


@pytest.mark.parametrize("length,size,stride", [(256, 256, 256), (100, 256, 256), (1000, 256, 256),
                                                (1000, 256, 200), (513, 256, 128), (257, 256, 256)])
def test_tile_offsets_cover_with_edge_aligned_last(length, size, stride):
    starts = P.tile_offsets(length, size, stride)
    assert starts[0] == 0
    if length <= size:
        assert starts == [0]
        return
    assert starts[-1] == length - size
    assert all(b - a <= stride for a, b in zip(starts, starts[1:]))
    covered = np.zeros(length, bool)
    for s in starts:
        covered[s:s + size] = True
    assert covered.all()


def test_tile_sample_pads_small_images_with_ignore():
    image = np.full((100, 180, 3), 7, np.uint8)
    inst = np.zeros((100, 180), np.int32)
    inst[10:20, 10:20] = 42
    (oy, ox, im, mask), = list(P.tile_sample(image, inst, {42: 3}))
    assert (oy, ox) == (0, 0)
    assert (mask[100:, :, 0] == P.IGNORE).all() and (mask[:, 180:, 0] == P.IGNORE).all()
    assert (mask[:100, :180, 0] >= 0).all()
    assert (mask[10:20, 10:20, 0] == 1).all() and (mask[10:20, 10:20, 1] == 3).all()
    assert (mask[..., 1][mask[..., 0] <= 0] == 0).all()
    assert (im[:100, :180] == 7).all()


def test_tile_sample_cut_nucleus_keeps_its_class_and_ids_are_relabelled():
    image = np.zeros((300, 300, 3), np.uint8)
    inst = np.zeros((300, 300), np.int32)
    cls = np.zeros((300, 300), np.int32)
    # nucleus 9 straddles the edge of the first tile; 70% of it is class 2, but the part
    # inside the first tile is all class 4: it must stay class 2 in every tile
    inst[100:110, 240:280] = 9
    cls[100:110, 252:280] = 2
    cls[100:110, 240:252] = 4
    inst[5:10, 5:10] = 1000
    cls[5:10, 5:10] = 1
    tiles = {(oy, ox): m for oy, ox, _, m in P.tile_sample(image, inst, cls)}
    assert set(tiles) == {(0, 0), (0, 44), (44, 0), (44, 44)}
    for (oy, ox), m in tiles.items():
        ids = np.unique(m[..., 0][m[..., 0] > 0])
        np.testing.assert_array_equal(ids, np.arange(1, len(ids) + 1))
        got = P.instance_classes(m)
        if ox == 0 and oy == 0:
            assert got == {1: 2, 2: 1}  # ids keep their order: 9 -> 1 (class 2), 1000 -> 2 (class 1)
    m00 = tiles[(0, 0)]
    assert (m00[100:110, 240:256, 1] == 2).all()


def test_hgsc_rasters_tiled(realdata):
    """Every one of the 1294 real nuclei appears once in each 256x256 tile it touches, with its class."""
    from skimage.io import imread

    d = realdata / "hgsc_rasters"
    image = imread(d / "hgsc_nest.jpg")
    inst = np.load(d / "hgsc_nest_inst_mask.npz")["nuc_raster"]
    types = np.load(d / "hgsc_nest_type_mask.npz")["nuc_raster"]
    ids = np.unique(inst[inst > 0])
    assert len(ids) == 1294
    # reference class per nucleus: majority of the type raster over the whole nucleus
    ref_cls = {}
    for i in ids:
        t = types[inst == i]
        t = t[t > 0]
        vals, cnt = np.unique(t, return_counts=True)
        ref_cls[int(i)] = int(vals[np.argmax(cnt)])
    expected_total, got_total, seen = 0, 0, set()
    for oy, ox, im, m in P.tile_sample(image, inst, types):
        assert im.shape == (256, 256, 3) and m.shape == (256, 256, 2)
        window = inst[oy:oy + 256, ox:ox + 256]
        touching = np.unique(window[window > 0])
        expected_total += len(touching)
        got = P.instance_classes(m)
        got_total += len(got)
        assert sorted(got) == list(range(1, len(touching) + 1))
        # relabelling keeps the order of the source ids: new id k is the k-th touching id
        for new, old in enumerate(touching, start=1):
            assert got[new] == ref_cls[int(old)]
            assert ((m[..., 0] == new) == (window == old)).all()
        seen.update(touching.tolist())
    assert seen == set(ids.tolist())
    assert got_total == expected_total


def test_index_roundtrip(tmp_path):
    rows = [dict(patch_id="b", split="train", source="s.png", offset_y=0, offset_x=256, tissue="Colon",
                 label_set="x", n_nuclei=3, n_class_2=1, n_class_10=2, n_unknown=0),
            dict(patch_id="a", split="train", source="s.png", offset_y=0, offset_x=0, tissue="Colon",
                 label_set="x", n_nuclei=0, n_class_2=0, n_class_10=0, n_unknown=0)]
    P.write_index(tmp_path, "ds", rows)
    df = P.read_index(tmp_path, "ds")
    assert list(df.patch_id) == ["a", "b"]
    assert list(df.columns)[:8] == ["patch_id", "split", "source", "offset_y", "offset_x", "tissue", "label_set", "n_nuclei"]
    assert list(df.columns)[8:10] == ["n_class_2", "n_class_10"]
    with pytest.raises(FileNotFoundError, match="stardist-hier prepare consep --src"):
        P.read_index(tmp_path, "consep")
    with pytest.raises(FileNotFoundError, match="stardist-hier prepare folder .*--dataset other"):
        P.read_index(tmp_path, "other")


def test_load_split(tmp_path):
    rng = np.random.default_rng(5)
    written = {}
    for pid in ["p2", "p1"]:
        image, mask = _rand_patch(rng)
        P.write_patch(tmp_path, "consep", "train", pid, image, mask)
        written[pid] = (image, mask)
    X, Y, C = P.load_split(tmp_path, "consep", "train", normalize=False, label_set="consep")
    assert len(X) == len(Y) == len(C) == 2
    for x, y, c, pid in zip(X, Y, C, ["p1", "p2"]):
        image, mask = written[pid]
        np.testing.assert_array_equal(x, image)
        assert y.dtype == np.int32 and y.shape == (256, 256)
        np.testing.assert_array_equal(y, mask[..., 0])
        assert c == P.instance_classes(mask)
    # by default images come normalised: per channel, percentile 1 -> 0 and 99.8 -> 1
    Xn, Yn, _ = P.load_split(tmp_path, "consep", "train", ids=["p2"])
    image = written["p2"][0].astype(np.float64)
    assert Xn[0].dtype == np.float32 and len(Xn) == 1
    for c in range(3):
        lo, hi = np.percentile(image[..., c], 1), np.percentile(image[..., c], 99.8)
        np.testing.assert_allclose(Xn[0][..., c], (image[..., c] - lo) / (hi - lo + 1e-20), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(Yn[0], written["p2"][1][..., 0])
    with pytest.raises(FileNotFoundError, match="'p9'"):
        P.load_split(tmp_path, "consep", "train", ids=["p9"])
    from stardist_hier.hierarchy import HierarchyError

    with pytest.raises(HierarchyError, match="monuseg"):
        P.load_split(tmp_path, "consep", "train", label_set="monuseg")  # ids 2, 3 are not MoNuSeg's


def test_load_split_missing_names_folder_and_command(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        P.load_split(tmp_path, "pannuke", "fold1")
    msg = str(e.value)
    assert str(tmp_path / "pannuke" / "fold1") in msg
    assert "stardist-hier prepare pannuke --src" in msg and f"--out {tmp_path}" in msg


def test_no_tensorflow_import():
    code = ("import stardist_hier.readers, stardist_hier.patches, stardist_hier.readers.convert, "
            "stardist_hier.readers.pannuke, stardist_hier.readers.monusac, stardist_hier.readers.consep, "
            "stardist_hier.readers.monuseg, stardist_hier.readers.lizard, stardist_hier.commands.prepare, sys; "
            "assert 'tensorflow' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_empty_index_is_readable(tmp_path):
    P.write_index(tmp_path, "ds", [])
    df = P.read_index(tmp_path, "ds")
    assert len(df) == 0 and "patch_id" in df.columns


def test_relabel_instances_against_loop_reference():
    rng = np.random.default_rng(6)
    for top in (5, 10**7):  # small ids (lookup table) and huge ids (sort) take different paths
        inst = rng.choice(np.array([-4, -1, 0, 3, 17, top]), (30, 30))
        ref = np.zeros_like(inst)
        for new, old in enumerate(sorted(set(inst[inst > 0].tolist())), start=1):
            ref[inst == old] = new
        ref[inst < 0] = -1
        got = P.relabel_instances(inst)
        assert got.dtype == np.int32
        np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("kind", ["images", "masks"])
@pytest.mark.parametrize("cut", [8, 200])  # after the header (tifffile reads an empty array), inside the data
def test_truncated_patch_file_is_named(tmp_path, kind, cut):
    P.write_patch(tmp_path, "d", "train", "p0", np.zeros((256, 256, 3), np.uint8), np.zeros((256, 256, 2), np.int32))
    path = P.patch_path(tmp_path, "d", "train", kind, "p0")
    path.write_bytes(path.read_bytes()[:cut])
    with pytest.raises(P.PatchFormatError) as e:
        P.read_patch(tmp_path, "d", "train", "p0")
    msg = str(e.value)
    assert msg.startswith(f"{path}: ") and "truncated" in msg and "shape (0,)" not in msg and "\n" not in msg
    with pytest.raises(P.PatchFormatError, match=f"{kind}/p0.tif"):
        P.load_split(tmp_path, "d", "train")


def test_bad_image_of_a_patch_names_the_image_file(tmp_path):
    P.write_patch(tmp_path, "d", "train", "p0", np.zeros((256, 256, 3), np.uint8), np.zeros((256, 256, 2), np.int32))
    ipath = P.patch_path(tmp_path, "d", "train", "images", "p0")
    tifffile.imwrite(ipath, np.zeros((256, 256, 3), np.float32))
    with pytest.raises(P.PatchFormatError, match=r"images/p0\.tif: image must be uint8"):
        P.read_patch(tmp_path, "d", "train", "p0")


def test_prepare_hint_for_published_and_own_datasets(tmp_path):
    assert P.prepare_command("monusac", tmp_path) == (
        f"stardist-hier prepare monusac --src <folder of the monusac download> --out {tmp_path}")
    own = P.prepare_command("mine", tmp_path)
    assert own.startswith("stardist-hier prepare folder ") and "--dataset mine" in own and "prepare qupath" in own
    with pytest.raises(FileNotFoundError, match="prepare folder"):
        P.load_split(tmp_path, "mine", "train")
