"""Invariants of the synthetic H&E datasets (stardist_hier.synth) and the ``synth`` command."""

import dataclasses
import sys

import numpy as np
import pytest
from scipy import ndimage as ndi

from stardist_hier import patches, synth
from stardist_hier.hierarchy import ClassHierarchy
from stardist_hier.synth.render import _composition
from stardist_hier.synth.specs import _tissue_stain

H = ClassHierarchy.default()
SIZE = 128


def _tiles(dataset, n, size=SIZE, seed=0, split="train", **kw):
    return [synth.generate_tile(dataset, synth.tile_seed(seed, dataset, split, i), size=size, **kw)
            for i in range(n)]


@pytest.fixture(scope="module")
def tiles():
    """A few small tiles of every dataset, shared by the tests below."""
    return {name: _tiles(name, 8) for name in synth.DATASETS}


def _one_leaf_spec(leaf):
    # every nucleus the same leaf, labelled at the root so nothing is unannotated
    base = synth.DATASETS["monuseg"]
    return dataclasses.replace(base, name=f"only_{leaf}", leaf_freq={leaf: 1.0}, density=80.0)


# -- the hierarchy is covered --------------------------------------------------------------


def test_every_leaf_has_morphology_and_a_dataset():
    assert set(synth.MORPHOLOGY) == set(H.leaves)
    drawn = {leaf for spec in synth.DATASETS.values() for leaf, f in spec.leaf_freq.items() if f > 0}
    assert drawn == set(H.leaves)


@pytest.mark.parametrize("leaf", H.leaves)
def test_each_leaf_is_drawn(leaf):
    tile = synth.generate_tile(_one_leaf_spec(leaf), 3, size=SIZE)
    assert len(tile.leaves) >= 2
    assert set(tile.leaves) == {leaf}
    assert (tile.mask[..., 1][tile.mask[..., 0] > 0] == 1).all()


def test_leaves_drawn_across_generated_datasets(tiles):
    seen = {leaf for ts in tiles.values() for t in ts for leaf in t.leaves + t.hidden_leaves}
    # the rarest leaves (eosinophil, dead) are a percent or two of nuclei: most, not all,
    # show up in 32 small tiles; the per-leaf test above covers every one of them
    assert len(seen) >= len(H.leaves) - 2
    assert {"lymphocyte", "malignant_epithelial", "fibroblast"} <= seen


# -- label cuts ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(synth.DATASETS))
def test_class_ids_follow_the_label_set(tiles, name):
    spec = synth.DATASETS[name]
    ls = H.label_set(spec.label_set)
    ids = synth.leaf_class_ids(spec.label_set)
    for t in tiles[name]:
        assert t.label_set == spec.label_set
        ls.check_class_ids(t.mask[..., 1])
        inst, cls = t.mask[..., 0], t.mask[..., 1]
        for k, leaf in enumerate(t.leaves, start=1):
            assert set(np.unique(cls[inst == k])) == {ids[leaf]}
        for leaf in t.hidden_leaves:
            assert ids[leaf] is None and leaf in spec.unannotated


def test_monuseg_has_only_the_root_class(tiles):
    assert synth.leaf_class_ids("monuseg") == {leaf: 1 for leaf in H.leaves}
    assert set(np.unique(np.concatenate([t.mask[..., 1].ravel() for t in tiles["monuseg"]]))) == {0, 1}


def test_leaf_class_ids_cover_through_ancestors():
    pn = synth.leaf_class_ids("pannuke")
    assert pn["lymphocyte"] == pn["eosinophil"] == 2          # inflammatory
    assert pn["muscle"] == pn["endothelial"] == 3             # connective
    assert pn["miscellaneous"] is None
    ms = synth.leaf_class_ids("monusac")
    assert ms["healthy_epithelial"] == ms["malignant_epithelial"] == 1
    assert ms["fibroblast"] is None and ms["plasma_cell"] is None
    cs = synth.leaf_class_ids("consep")
    assert cs["dead"] == cs["miscellaneous"] == 1             # other


def test_monusac_other_nuclei_unannotated(tiles):
    hidden = sum(len(t.hidden_leaves) for t in tiles["monusac"])
    assert hidden > 0
    for t in tiles["monusac"]:
        assert (t.mask[..., 0] >= 0).all()                     # default: left as background
        assert (t.mask[..., 0][t.hidden > 0] == 0).all()
    ign = _tiles("monusac", 3, unannotated="ignore")
    for t, ref in zip(ign, tiles["monusac"][:3]):
        np.testing.assert_array_equal(t.image, ref.image)
        np.testing.assert_array_equal(t.hidden > 0, t.mask[..., 0] < 0)
        assert (t.mask[..., 1][t.mask[..., 0] < 0] == 0).all()
        assert set(np.unique(t.mask[..., 0][t.mask[..., 0] < 0])) <= {patches.IGNORE}


def test_ambiguous_regions():
    ss = synth.tile_seed(0, "monusac", "test", 0)
    plain = synth.generate_tile("monusac", ss, size=SIZE)
    amb = synth.generate_tile("monusac", ss, size=SIZE, ambiguous=12.0)
    np.testing.assert_array_equal(plain.image, amb.image)
    inst = amb.mask[..., 0]
    assert (inst == patches.IGNORE).any() and inst.min() == patches.IGNORE
    assert (amb.mask[..., 1][inst < 0] == 0).all()
    assert 0 < len(amb.leaves) < len(plain.leaves)
    np.testing.assert_array_equal(np.unique(inst[inst > 0]), np.arange(1, len(amb.leaves) + 1))
    assert synth.DATASETS["monusac"].ambiguous.get("test", 0) > 0
    assert not synth.DATASETS["monusac"].ambiguous.get("train", 0)


def test_other_datasets_annotate_everything(tiles):
    for name in ("pannuke", "consep", "monuseg"):
        assert all(not t.hidden_leaves for t in tiles[name])


# -- reproducibility ------------------------------------------------------------------------


def test_same_seed_same_bytes_different_seed_different():
    a = synth.generate_tile("consep", synth.tile_seed(7, "consep", "train", 2), size=96)
    b = synth.generate_tile("consep", synth.tile_seed(7, "consep", "train", 2), size=96)
    c = synth.generate_tile("consep", synth.tile_seed(8, "consep", "train", 2), size=96)
    assert a.image.tobytes() == b.image.tobytes() and a.mask.tobytes() == b.mask.tobytes()
    assert a.image.tobytes() != c.image.tobytes()
    assert synth.tile_seed(7, "consep", "train", 2).entropy == synth.tile_seed(7, "consep", "train", 2).entropy
    # tiles of other datasets, splits and indices differ
    keys = [synth.tile_seed(7, d, s, i).generate_state(2).tobytes()
            for d in ("consep", "pannuke") for s in synth.SPLITS for i in range(2)]
    assert len(set(keys)) == len(keys)


# -- masks match images ----------------------------------------------------------------------


def _od(image):
    return -np.log((image.astype(float) + 1) / 256)


@pytest.mark.parametrize("name", list(synth.DATASETS))
def test_masks_consistent_with_images(tiles, name):
    for t in tiles[name]:
        assert t.image.dtype == np.uint8 and t.image.shape == (SIZE, SIZE, 3)
        assert t.mask.dtype == np.int32 and t.mask.shape == (SIZE, SIZE, 2)
        inst, cls = t.mask[..., 0], t.mask[..., 1]
        n = len(t.leaves)
        pos = np.unique(inst[inst > 0])
        np.testing.assert_array_equal(pos, np.arange(1, n + 1))   # contiguous ids 1..n
        assert (cls[inst == 0] == 0).all()
        assert (cls[inst > 0] > 0).all()
        for k in pos:
            assert ndi.label(inst == k)[1] == 1                 # one connected piece each
            assert len(np.unique(cls[inst == k])) == 1          # one class each
        nuc = (inst != 0) | (t.hidden > 0)
        if nuc.sum() > 50:
            # nuclei are darker overall and absorb more in red (hematoxylin) than the rest
            od = _od(t.image)
            assert t.image[nuc].mean() < t.image[~nuc].mean() - 15
            assert od[..., 0][nuc].mean() > od[..., 0][~nuc].mean() + 0.2


def test_tile_size_is_a_parameter():
    for size in (64, 100):
        t = synth.generate_tile("pannuke", 0, size=size)
        assert t.image.shape == (size, size, 3) and t.mask.shape == (size, size, 2)


# -- morphology follows the hierarchy ----------------------------------------------------------


@pytest.fixture(scope="module")
def shapes():
    """Area and elongation of the unoccluded nuclei of each leaf, from one-leaf tiles."""
    from skimage.measure import regionprops

    out = {}
    for leaf in H.leaves:
        areas, elong, inten = [], [], []
        for seed in range(2):
            t = synth.generate_tile(_one_leaf_spec(leaf), seed, size=SIZE)
            gray = t.image.mean(-1)
            for r in regionprops(t.mask[..., 0], intensity_image=gray):
                b = r.bbox
                if min(b[:2]) == 0 or b[2] == SIZE or b[3] == SIZE:
                    continue                                     # cut by the tile edge
                areas.append(r.area)
                elong.append(r.axis_major_length / max(r.axis_minor_length, 1))
                inten.append(r.intensity_mean)
        out[leaf] = (np.mean(areas), np.mean(elong), np.mean(inten))
    return out


def _group(shapes, node, k):
    return np.mean([shapes[leaf][k] for leaf in H.leaves if node in H.ancestors(leaf)])


def test_superclass_traits(shapes):
    # inflammatory leaves are smaller than epithelial ones; connective ones are elongated
    assert _group(shapes, "inflammatory", 0) < 0.6 * _group(shapes, "epithelial", 0)
    assert max(shapes[leaf][0] for leaf in ("lymphocyte", "plasma_cell", "neutrophil", "eosinophil")) \
        < min(shapes[leaf][0] for leaf in ("healthy_epithelial", "malignant_epithelial"))
    for leaf in ("fibroblast", "muscle", "endothelial"):
        assert shapes[leaf][1] > 2.5 > max(shapes[x][1] for x in ("lymphocyte", "plasma_cell", "healthy_epithelial",
                                                                    "malignant_epithelial"))
    assert shapes["dead"][0] < shapes["lymphocyte"][0]


def test_sibling_differences(shapes):
    assert shapes["malignant_epithelial"][0] > 1.4 * shapes["healthy_epithelial"][0]
    assert shapes["macrophage"][0] > 1.3 * shapes["lymphocyte"][0]
    assert shapes["macrophage"][2] > shapes["lymphocyte"][2] + 20            # paler
    assert shapes["muscle"][0] > shapes["fibroblast"][0] > shapes["endothelial"][0]
    assert shapes["lymphocyte"][2] < shapes["healthy_epithelial"][2]        # darker


def test_neutrophil_and_eosinophil_are_lobed():
    from skimage.measure import regionprops

    sol = {}
    for leaf in ("neutrophil", "eosinophil", "lymphocyte"):
        t = synth.generate_tile(_one_leaf_spec(leaf), 1, size=SIZE)
        sol[leaf] = np.mean([r.solidity for r in regionprops(t.mask[..., 0])])
    assert sol["neutrophil"] < sol["lymphocyte"] - 0.08
    assert sol["eosinophil"] < sol["lymphocyte"] - 0.05


# -- domains ---------------------------------------------------------------------------------


def test_stain_differs_across_datasets(tiles):
    def stroma_rgb(ts):
        return np.mean([t.image[(t.mask[..., 0] == 0) & (t.hidden == 0)].mean(0) for t in ts], axis=0)

    colours = {name: stroma_rgb(ts) for name, ts in tiles.items()}
    names = list(colours)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert np.abs(colours[a] - colours[b]).max() > 4, (a, b, colours[a], colours[b])


def test_pannuke_tissues_have_their_own_stain():
    t1 = _tiles("pannuke", 2, tissue="Breast")
    t2 = _tiles("pannuke", 2, tissue="Lung")
    assert {t.tissue for t in t1} == {"Breast"} and {t.tissue for t in t2} == {"Lung"}
    s1 = _tissue_stain(synth.DATASETS["pannuke"], synth.DATASETS["pannuke"].tissues[0])
    s2 = _tissue_stain(synth.DATASETS["pannuke"], synth.DATASETS["pannuke"].tissues[2])
    assert s1 != s2


def test_class_frequencies_are_imbalanced():
    rng = np.random.default_rng(0)
    spec = synth.DATASETS["pannuke"]
    leaves = [leaf for _ in range(200) for leaf in _composition(spec, spec.tissues[0], rng, 256, H)]
    ids = synth.leaf_class_ids("pannuke")
    counts = np.bincount([ids[leaf] for leaf in leaves], minlength=6)[1:]
    assert counts[0] == counts.max()                             # neoplastic most common
    assert counts[3] < 0.1 * counts[0]                           # dead rare


def test_spec_errors():
    bad = dataclasses.replace(synth.DATASETS["pannuke"], leaf_freq={"miscellaneous": 1.0})
    with pytest.raises(ValueError, match="unannotated"):
        synth.generate_tile(bad, 0, size=64)
    with pytest.raises(ValueError, match="unknown synthetic dataset"):
        synth.generate_tile("lizard", 0, size=64)
    with pytest.raises(ValueError, match="no tissue"):
        synth.generate_tile("consep", 0, size=64, tissue="Brain")


# -- writing ---------------------------------------------------------------------------------


def test_generate_dataset_writes_patch_format(tmp_path):
    counts = {"train": 2, "val": 1, "test": 1}
    res = synth.generate_dataset(tmp_path, "monusac", counts=counts, size=64, seed=3, progress=False)
    assert not res["skipped"] and res["patches"] == 4
    idx = patches.read_index(tmp_path, "monusac")
    assert len(idx) == 4 and set(idx.split) == set(synth.SPLITS)
    for col in ("patch_id", "split", "source", "offset_y", "offset_x", "tissue", "label_set", "n_nuclei",
                "n_class_1", "n_class_2", "n_class_3", "n_class_4", "n_unannotated"):
        assert col in idx.columns
    assert set(idx.label_set) == {"monusac"}
    # the files are the tiles generate_tile makes from the same seeds
    image, mask = patches.read_patch(tmp_path, "monusac", "train", "monusac_train_00001")
    ref = synth.generate_tile("monusac", synth.tile_seed(3, "monusac", "train", 1), size=64)
    np.testing.assert_array_equal(image, ref.image)
    np.testing.assert_array_equal(mask, ref.mask)
    row = idx.set_index("patch_id").loc["monusac_train_00001"]
    assert row.n_nuclei == len(ref.leaves) and row.tissue == ref.tissue
    X, Y, C = patches.load_split(tmp_path, "monusac", "train", label_set="monusac")
    assert len(X) == 2

    # finished: skipped; interrupted: completed; other parameters: refused
    assert synth.generate_dataset(tmp_path, "monusac", counts=counts, size=64, seed=3, progress=False)["skipped"]
    patches.patch_path(tmp_path, "monusac", "val", "masks", "monusac_val_00000").unlink()
    res = synth.generate_dataset(tmp_path, "monusac", counts=counts, size=64, seed=3, progress=False)
    assert not res["skipped"] and patches.patch_exists(tmp_path, "monusac", "val", "monusac_val_00000")
    with pytest.raises(FileExistsError):
        synth.generate_dataset(tmp_path, "monusac", counts=counts, size=64, seed=4, progress=False)
    res = synth.generate_dataset(tmp_path, "monusac", counts={"train": 1}, size=64, seed=4, overwrite=True,
                                 progress=False)
    assert len(patches.read_index(tmp_path, "monusac")) == 1


def test_workers_give_the_same_files(tmp_path):
    counts = {"train": 3, "val": 1, "test": 0}
    synth.generate_dataset(tmp_path / "a", "pannuke", counts=counts, size=64, progress=False)
    synth.generate_dataset(tmp_path / "b", "pannuke", counts=counts, size=64, progress=False, workers=2)
    ia, ib = patches.read_index(tmp_path / "a", "pannuke"), patches.read_index(tmp_path / "b", "pannuke")
    assert ia.equals(ib)
    for pid in ia.patch_id:
        split = pid.split("_")[1]
        for x, y in zip(patches.read_patch(tmp_path / "a", "pannuke", split, pid),
                        patches.read_patch(tmp_path / "b", "pannuke", split, pid)):
            np.testing.assert_array_equal(x, y)


def test_generate_256_through_write_patch(tmp_path):
    synth.generate_dataset(tmp_path, "monuseg", counts={"train": 1, "val": 0, "test": 0}, progress=False)
    image, mask = patches.read_patch(tmp_path, "monuseg", "train", "monuseg_train_00000")
    assert image.shape == (256, 256, 3) and set(np.unique(mask[..., 1])) <= {0, 1}


def test_cli_synth(tmp_path, capsys):
    from stardist_hier.cli import main

    argv = ["synth", "--out", str(tmp_path), "--datasets", "consep,pannuke", "--n-train", "1", "--n-val", "1",
            "--n-test", "0", "--size", "64", "--quiet", "--overlay", str(tmp_path / "ov.png")]
    assert main(argv) == 0
    assert len(patches.read_index(tmp_path, "consep")) == 2
    assert (tmp_path / "ov.png").stat().st_size > 1000
    assert main(argv[:-2]) == 0
    assert "skipped" in capsys.readouterr().out
    assert main(["synth", "--out", str(tmp_path), "--datasets", "nope", "--quiet"]) == 2
    assert main(["synth", "--out", str(tmp_path), "--datasets", "consep", "--n-train", "3", "--size", "64",
                 "--quiet"]) == 1


def test_synth_does_not_import_tensorflow():
    import subprocess

    code = "import sys, stardist_hier.synth, stardist_hier.commands.synth; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
