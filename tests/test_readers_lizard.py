"""Lizard (classes through ``id``, info.csv folds) and CoNIC (images.npy / labels.npy) readers."""

import numpy as np
import pandas as pd
import pytest
import scipy.io
from skimage.io import imsave

from stardist_hier import patches as P
from stardist_hier.readers import ReaderError, convert


def _lizard_image(rng, name, labels_dir, images_dir, n=5, h=200, w=300):
    inst = np.zeros((h, w), np.int32)
    ids = rng.choice(np.arange(10, 500), n, replace=False)
    for k, i in enumerate(ids):
        inst[20 + 30 * (k % 5):40 + 30 * (k % 5), 10 + 50 * k:40 + 50 * k] = i
    classes = rng.integers(1, 7, n)
    order = rng.permutation(n)  # rows NOT in id order: classes must go through `id`
    scipy.io.savemat(labels_dir / f"{name}.mat", {"inst_map": inst, "id": ids[order].reshape(-1, 1),
                                                  "class": classes[order].reshape(-1, 1),
                                                  "bbox": np.zeros((n, 4)), "centroid": np.zeros((n, 2))})
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    imsave(images_dir / f"{name}.png", image, check_contrast=False)
    return inst, dict(zip(ids.tolist(), classes.tolist())), image


def _lizard_src(tmp_path, rng, info=True):
    src = tmp_path / "lizard"
    labels = src / "lizard_labels" / "Lizard_Labels" / "Labels"
    im1, im2 = src / "lizard_images1" / "Lizard_Images1", src / "lizard_images2" / "Lizard_Images2"
    for d in (labels, im1, im2):
        d.mkdir(parents=True)
    truth = {}
    names = ["consep_1", "crag_2", "glas_3", "dpath_4"]
    for k, name in enumerate(names):
        truth[name] = _lizard_image(rng, name, labels, im1 if k < 2 else im2)
    if info:
        pd.DataFrame({"Filename": names, "Source": [n.split("_")[0] for n in names], "Split": [1, 2, 3, 1]}) \
            .to_csv(src / "lizard_labels" / "Lizard_Labels" / "info.csv", index=False)
    return src, truth


@pytest.mark.parametrize("info", [True, False])
def test_lizard_classes_through_id_and_splits(tmp_path, info):
    rng = np.random.default_rng(0)
    src, truth = _lizard_src(tmp_path, rng, info)
    out = tmp_path / "out"
    convert("lizard", src, out, progress=False, val_fraction=0.25, seed=0)
    df = P.read_index(out, "lizard")
    if info:
        assert df.groupby("split").source.nunique().to_dict() == {"fold1": 2, "fold2": 1, "fold3": 1}
    else:
        assert df.groupby("split").source.nunique().to_dict() == {"train": 3, "val": 1}
    for row in df.itertuples():
        name = row.patch_id.rsplit("_y", 1)[0]
        inst, cls, image = truth[name]
        im, m = P.read_patch(out, "lizard", row.split, row.patch_id)
        window = inst[row.offset_y:row.offset_y + 256, row.offset_x:row.offset_x + 256]
        h, w = window.shape
        np.testing.assert_array_equal(im[:h, :w], image[row.offset_y:row.offset_y + h, row.offset_x:row.offset_x + w])
        np.testing.assert_array_equal(m[:h, :w, 0], P.relabel_instances(window))
        assert (m[h:, :, 0] == -1).all()
        touching = np.unique(window[window > 0])
        assert P.instance_classes(m) == {new: cls[int(old)] for new, old in enumerate(touching, start=1)}


def test_lizard_bad_class_and_missing_png(tmp_path):
    rng = np.random.default_rng(1)
    src, _ = _lizard_src(tmp_path, rng, info=False)
    labels = src / "lizard_labels" / "Lizard_Labels" / "Labels"
    scipy.io.savemat(labels / "bad.mat", {"inst_map": np.ones((10, 10), np.int32), "id": [[1]], "class": [[9]]})
    imsave(src / "lizard_images1" / "Lizard_Images1" / "bad.png", np.zeros((10, 10, 3), np.uint8), check_contrast=False)
    with pytest.raises(ReaderError, match=r"bad\.mat.*class ids \[9\]"):
        convert("lizard", src, tmp_path / "out", progress=False)
    (src / "lizard_images1" / "Lizard_Images1" / "crag_2.png").unlink()
    with pytest.warns(UserWarning):
        s = convert("lizard", src, tmp_path / "out", progress=False, skip_bad=True)
    assert len(s.bad) == 2 and "crag_2.png" in s.format()


def _conic_src(tmp_path, rng, n=6):
    src = tmp_path / "conic"
    src.mkdir()
    images = rng.integers(0, 256, (n, 256, 256, 3), dtype=np.uint8)
    labels = np.zeros((n, 256, 256, 2), np.uint16)
    truth = []
    for i in range(n):
        cls = {}
        for k in range(1, 4):
            labels[i, 30 * k:30 * k + 20, 40:70, 0] = k
            labels[i, 30 * k:30 * k + 20, 40:70, 1] = (i + k) % 6 + 1
            cls[k] = (i + k) % 6 + 1
        truth.append(cls)
    np.save(src / "images.npy", images)
    np.save(src / "labels.npy", labels)
    pd.DataFrame({"info": [f"{s}-{k:04d}" for s in ("consep_1", "crag_5", "glas_2") for k in range(n // 3)]}) \
        .to_csv(src / "patch_info.csv", index=False)
    return src, images, labels, truth


def test_conic(tmp_path):
    rng = np.random.default_rng(2)
    src, images, labels, truth = _conic_src(tmp_path, rng)
    out = tmp_path / "out"
    s = convert("conic", src, out, progress=False, val_fraction=0.34, seed=0, workers=2)
    df = P.read_index(out, "conic")
    assert len(df) == 6 and (df.label_set == "conic").all() and (df.tissue == "colon").all()
    # validation by source image: both patches of one source image go to val together
    val_sources = {p.rsplit("-", 1)[0] for p in df[df.split == "val"].patch_id}
    assert len(val_sources) == 1 and (df.split == "val").sum() == 2
    for i, row in enumerate(df.sort_values("source", key=lambda s: s.str.extract(r"\[(\d+)\]")[0].astype(int)).itertuples()):
        im, m = P.read_patch(out, "conic", row.split, row.patch_id)
        np.testing.assert_array_equal(im, images[i])
        np.testing.assert_array_equal(m[..., 0], labels[i, ..., 0])
        assert P.instance_classes(m) == truth[i]
    assert s.nuclei_per_class == {k: sum(1 for t in truth for c in t.values() if c == k) for k in range(1, 7)}


def test_conic_mismatched_arrays(tmp_path):
    rng = np.random.default_rng(3)
    src, images, labels, _ = _conic_src(tmp_path, rng)
    np.save(src / "labels.npy", labels[:4])
    with pytest.raises(ReaderError, match="labels.npy"):
        convert("conic", src, tmp_path / "out", progress=False)
