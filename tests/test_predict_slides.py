"""Whole slides: reading (OpenSlide, tiffslide), tissue masks, normalisation, predict_slide, bad input."""

import numpy as np
import pytest

from stardist_hier.predict import engine
from stardist_hier.predict.slides import InputError, SlideReader, open_input, read_image
from stardist_hier.predict.synthetic import island_layout, write_synthetic_slide
from stardist_hier.predict.tissue import load_mask, normalization_percentiles, normalize_with, tissue_mask

from predict_helpers import image, tiny_model

SHAPE, TILE = (640, 768), 64


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    path = tmp_path_factory.mktemp("slides") / "islands.tif"
    layout = write_synthetic_slide(path, SHAPE, mpp=0.5, tile=TILE, downsamples=(2, 4), n_distinct=4)
    return path, layout


@pytest.fixture(scope="module")
def model():
    m = tiny_model()
    m.config.pixel_size_um = 0.5  # read as getattr(config, 'pixel_size_um', None)
    return m


@pytest.fixture(scope="module")
def thresh(model):
    from stardist_hier.patches import normalize_image

    p = model.predict(normalize_image(image()), axes="YXC")[0]
    return float(np.quantile(p, 0.97))


def _layout_px(layout, shape, ds=1.0):
    """The tissue cells as a pixel mask at downsample ``ds`` (plain numpy)."""
    h, w = shape
    yy = ((np.arange(h) + 0.5) * ds // TILE).astype(int).clip(0, layout.shape[0] - 1)
    xx = ((np.arange(w) + 0.5) * ds // TILE).astype(int).clip(0, layout.shape[1] - 1)
    return layout[np.ix_(yy, xx)]


# ----------------------------------------------------------------------------------------
# reading


def test_open_input_tells_slides_from_images(slide, tmp_path):
    import imageio.v3 as iio
    import tifffile

    path, _ = slide
    s = open_input(path)
    assert (s.kind, s.shape, s.levels, s.mpp) == ("slide", SHAPE, 3, pytest.approx(0.5))
    img = image((60, 70))
    tifffile.imwrite(tmp_path / "plain.tif", img)
    iio.imwrite(tmp_path / "a.png", img)
    iio.imwrite(tmp_path / "a.jpg", img)
    for name in ("plain.tif", "a.png", "a.jpg"):
        o = open_input(tmp_path / name)
        assert (o.kind, o.shape) == ("image", (60, 70)), name
        assert o.read().shape == (60, 70, 3)
    (tmp_path / "notes.txt").write_text("x")
    for bad, msg in (("notes.txt", "unknown file type"), ("missing.svs", "no such file"), (".", "folder")):
        with pytest.raises(InputError, match=msg) as e:
            open_input(tmp_path / bad)
        assert str(tmp_path / bad) in str(e.value) and "\n" not in str(e.value)


def test_openslide_and_tiffslide_read_the_same_pixels(slide, monkeypatch):
    path, layout = slide
    a, b = SlideReader(path, backend="openslide"), SlideReader(path, backend="tiffslide")
    assert a.level_shapes == b.level_shapes == [SHAPE, (320, 384), (160, 192)]
    assert a.mpp == pytest.approx(0.5) and b.mpp == pytest.approx(0.5)
    for level in (0, 1):
        np.testing.assert_array_equal(a.read_level(level, 10, 20, 100, 120), b.read_level(level, 10, 20, 100, 120))
    # level 1 is level 0 shrunk by 2 (the writer's 2x2 means)
    l0 = a.read_level(0, 0, 0, 128, 128).astype(float)
    l1 = a.read_level(1, 0, 0, 64, 64).astype(float)
    assert np.abs(l0.reshape(64, 2, 64, 2, 3).mean(axis=(1, 3)) - l1).max() <= 1
    # a resampled read at an existing level is that level; between levels, a resize of the finer one
    np.testing.assert_array_equal(a.read_scaled(2.0, 5, 6, 50, 60), a.read_level(1, 5, 6, 50, 60))
    r = a.read_scaled(1.6, 10, 10, 40, 50)
    assert r.shape == (40, 50, 3) and r.dtype == np.uint8
    src = a.read_level(0, 16, 16, 64, 80).astype(float)  # the same level-0 region
    assert abs(src.mean() - r.astype(float).mean()) < 3
    # OpenSlide missing or refusing the file: tiffslide takes over
    real_open = SlideReader._open

    def no_openslide(self, name):
        if name == "openslide":
            raise ImportError("No module named 'openslide'")
        return real_open(self, name)

    monkeypatch.setattr(SlideReader, "_open", no_openslide)
    c = SlideReader(path)
    assert c.backend == "tiffslide"
    np.testing.assert_array_equal(c.read_level(0, 0, 0, 50, 50), a.read_level(0, 0, 0, 50, 50))
    for r_ in (a, b, c):
        r_.close()


def test_unreadable_and_truncated_files_name_the_file(slide, tmp_path):
    import imageio.v3 as iio

    path, _ = slide
    data = path.read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(InputError) as e:
        opened = open_input(cut)
        if opened.kind == "slide":  # opens, but its tiles are gone
            engine.predict_slide(tiny_model(), cut, block_size=256)
        else:
            opened.read()
    assert str(cut) in str(e.value) and "\n" not in str(e.value)
    garbage = tmp_path / "garbage.svs"
    garbage.write_bytes(b"not a slide" * 100)
    with pytest.raises(InputError, match="garbage.svs: cannot open as a whole-slide image"):
        open_input(garbage)
    png = tmp_path / "cut.png"
    iio.imwrite(png, image((64, 64)))
    png.write_bytes(png.read_bytes()[:200])
    with pytest.raises(InputError, match="cut.png: cannot read the image"):
        open_input(png)


# ----------------------------------------------------------------------------------------
# tissue and normalisation


def test_tissue_mask_finds_the_islands(slide):
    path, layout = slide
    with SlideReader(path) as s:
        thumb, ds = s.thumbnail(256)
    assert thumb.shape[:2] == (213, 256) and ds == pytest.approx(3.0)
    mask = tissue_mask(thumb)
    truth = _layout_px(layout, thumb.shape[:2], ds)
    assert (mask == truth).mean() > 0.93
    assert mask[truth].mean() > 0.9 and mask[~truth].mean() < 0.05


def test_empty_slide_has_no_tissue(tmp_path):
    glass = np.clip(242 + np.random.default_rng(0).normal(0, 3, (200, 300, 3)), 0, 255).astype(np.uint8)
    assert not tissue_mask(glass).any()
    assert not tissue_mask(np.full((50, 50, 3), 255, np.uint8)).any()


def test_user_mask_file(tmp_path):
    import imageio.v3 as iio

    m = np.zeros((100, 120), np.uint8)
    m[10:50, 20:80] = 255
    iio.imwrite(tmp_path / "mask.png", m)
    out = load_mask(tmp_path / "mask.png", (50, 60))
    assert out.shape == (50, 60) and out.dtype == bool
    np.testing.assert_array_equal(out, m[::2, ::2] > 0)
    with pytest.raises(InputError, match=r"mask\.png: tissue mask of shape .* aspect ratio"):
        load_mask(tmp_path / "mask.png", (60, 50))
    rgb = np.stack([m, m * 0, m], axis=-1)
    iio.imwrite(tmp_path / "rgb.png", rgb)
    with pytest.raises(InputError, match="rgb.png: a tissue mask must have one channel"):
        load_mask(tmp_path / "rgb.png", (50, 60))


def test_normalization_percentiles_of_the_tissue_pixels():
    rng = np.random.default_rng(0)
    thumb = rng.integers(0, 256, (40, 50, 3)).astype(np.uint8)
    mask = rng.random((40, 50)) > 0.5
    lo, hi = normalization_percentiles(thumb, mask)
    for c in range(3):
        v = thumb[..., c][mask].astype(float)
        assert lo[c] == pytest.approx(np.percentile(v, 1.0)) and hi[c] == pytest.approx(np.percentile(v, 99.8))
    x = normalize_with(thumb, lo, hi)
    np.testing.assert_allclose(x[..., 1], (thumb[..., 1] - lo[1]) / (hi[1] - lo[1]), rtol=1e-5)
    assert normalization_percentiles(thumb, np.zeros((40, 50), bool)) is None


# ----------------------------------------------------------------------------------------
# predict_slide


def _match(a, b, tol=1e-3):
    d = np.linalg.norm(a[:, None] - b[None], axis=-1)
    j = d.argmin(axis=1)
    ok = d[np.arange(len(a)), j] <= tol
    return np.stack([np.flatnonzero(ok), j[ok]], axis=1)


def test_slide_at_level_0_equals_the_image_over_its_tissue(slide, model, thresh, monkeypatch):
    path, layout = slide
    reads = []
    real = SlideReader.read_scaled

    def spy(self, ds, y, x, h, w):
        reads.append((h, w))
        return real(self, ds, y, x, h, w)

    monkeypatch.setattr(SlideReader, "read_scaled", spy)
    kw = dict(label_set="consep", prob_thresh=thresh, block_size=320, min_overlap=32, context=48)
    r = engine.predict_slide(model, path, thumbnail_size=256, **kw)
    info = r.info
    assert (info["level"], info["downsample"], info["mpp"]) == (0, 1.0, pytest.approx(0.5))
    assert 0 < info["blocks"] <= info["blocks_total"] and "note" not in info  # skipping: see the mask test
    assert r.labels is None and r.shape == SHAPE and len(r) > 20
    assert info["tissue_mask"].shape == info["thumbnail"].shape[:2] == (213, 256)
    assert info["tissue_area_px"] == pytest.approx(layout.mean() * SHAPE[0] * SHAPE[1], rel=0.1)
    # memory: no read larger than a block (the thumbnail is read in chunks of at most 512)
    assert max(h for h, w in reads) <= 512 and max(w for h, w in reads) <= 512
    block_reads = reads[-info["blocks"]:]
    assert max(max(hw) for hw in block_reads) <= 320

    # the same pixels as an image, normalised with the slide's percentiles
    with SlideReader(path) as s:
        pixels = s.read_level(0, 0, 0, *SHAPE)
    lo, hi = (np.array(v, np.float32) for v in info["normalization"])
    ref = engine.predict_image(model, normalize_with(pixels, lo, hi), normalize=False, **kw)
    pairs = _match(r.points, ref.points)
    assert len(pairs) == len(r)  # every slide nucleus is the image's
    np.testing.assert_allclose(r.coord[pairs[:, 0]], ref.coord[pairs[:, 1]], atol=1e-3)
    np.testing.assert_array_equal(r.class_id[pairs[:, 0]], ref.class_id[pairs[:, 1]])
    # and the image's nuclei on tissue are the slide's (those on glass are skipped)
    truth = _layout_px(layout, SHAPE)
    on_tissue = truth[ref.points[:, 0].astype(int), ref.points[:, 1].astype(int)]
    found = np.isin(np.arange(len(ref)), pairs[:, 1])
    assert found[on_tissue].mean() > 0.98


def test_slide_resampled_to_the_model_pixel_size(slide, thresh):
    path, layout = slide
    m = tiny_model()
    kw = dict(label_set="consep", prob_thresh=thresh, block_size=256, min_overlap=32, context=48,
              thumbnail_size=256)
    m.config.pixel_size_um = 1.0  # the slide has 0.5: level 1 (downsample 2), no resampling
    r = engine.predict_slide(m, path, **kw)
    assert (r.info["level"], r.info["downsample"], r.info["working_shape"]) == (1, 2.0, (320, 384))
    with SlideReader(path) as s:
        l1 = s.read_level(1, 0, 0, 320, 384)
    lo, hi = (np.array(v, np.float32) for v in r.info["normalization"])
    ref = engine.predict_image(m, normalize_with(l1, lo, hi), normalize=False, **{k: v for k, v in kw.items()
                                                                                  if k != "thumbnail_size"})
    pairs = _match(r.points, (ref.points + 0.5) * 2 - 0.5)  # level-1 pixel centres in level-0 pixels
    assert len(r) > 5 and len(pairs) == len(r)
    np.testing.assert_allclose(r.coord[pairs[:, 0]], (ref.coord[pairs[:, 1]] + 0.5) * 2 - 0.5, atol=1e-3)
    # mpp= overrides the slide's: 0.8 um/px at level 0 -> 1.25 px per working pixel, resampled
    r2 = engine.predict_slide(m, path, mpp=0.8, **dict(kw, block_size=400))
    assert r2.info["downsample"] == pytest.approx(1.25) and r2.info["level"] == 0
    assert r2.info["working_shape"] == (512, 614) and r2.info["mpp"] == 0.8
    assert len(r2) > 5 and (r2.coord.min() >= -20) and r2.coord[..., 0, :].max() < SHAPE[0] + 20
    truth = _layout_px(layout, SHAPE)
    assert truth[r2.points[:, 0].astype(int), r2.points[:, 1].astype(int)].mean() > 0.9
    # a model without a pixel size, a slide without one: level 0, with a note
    with SlideReader(path) as s:
        m.config.pixel_size_um = None
        ds, level, _, note = engine.working_downsample(s, m)
        assert (ds, level) == (1.0, 0) and "model does not record its pixel size" in note
        m.config.pixel_size_um = 0.5
        s.mpp = None
        ds, level, _, note = engine.working_downsample(s, m)
        assert (ds, level) == (1.0, 0) and "slide's pixel size is unknown" in note
        assert engine.working_downsample(s, m, level=2)[:2] == (4.0, 2)
        with pytest.raises(ValueError, match="levels 0..2"):
            engine.working_downsample(s, m, level=5)


def test_no_tissue_gives_an_empty_result_and_a_note(tmp_path, model, monkeypatch):
    path = tmp_path / "glass.tif"
    write_synthetic_slide(path, (256, 256), tile=64, kind="none", downsamples=(2,))
    monkeypatch.setattr(engine, "predict_block", lambda *a, **k: pytest.fail("predicted on glass"))
    r = engine.predict_slide(model, path, label_set="consep")
    assert len(r) == 0 and r.info["note"].startswith("no tissue") and r.info["blocks"] == 0
    assert r.coord.shape == (0, 2, 16) and r.class_id.shape == (0,) and r.class_prob.shape == (0, 8)
    assert not r.info["tissue_mask"].any()


def test_user_mask_limits_the_blocks(slide, model, thresh, tmp_path):
    import imageio.v3 as iio

    path, layout = slide
    mask = np.zeros((64, 77), np.uint8)  # the slide's aspect ratio, another scale
    mask[:, :30] = 1  # the left part only
    iio.imwrite(tmp_path / "left.png", mask * 255)
    kw = dict(label_set="consep", prob_thresh=thresh, block_size=320, min_overlap=32, context=48,
              thumbnail_size=256)
    r = engine.predict_slide(model, path, mask=tmp_path / "left.png", **kw)
    # only the blocks touching the mask: those whose read region starts left of its edge
    edge = 30 / 77 * SHAPE[1]
    assert 0 < r.info["blocks"] < r.info["blocks_total"] and len(r) > 0
    assert r.points[:, 1].max() < edge + 320
    assert r.info["tissue_mask"][:, :99].all() and not r.info["tissue_mask"][:, 101:].any()
    with pytest.raises(InputError, match="wrong.png: tissue mask"):
        bad = tmp_path / "wrong.png"
        iio.imwrite(bad, np.ones((64, 20), np.uint8))
        engine.predict_slide(model, path, mask=bad, **kw)
    del layout


def test_predict_path_dispatches(slide, model, thresh, tmp_path):
    import imageio.v3 as iio

    path, _ = slide
    iio.imwrite(tmp_path / "tile.png", image((96, 96)))
    r = engine.predict_path(model, tmp_path / "tile.png", label_set="consep", prob_thresh=thresh)
    assert r.info["kind"] == "image" and r.labels.shape == (96, 96)
    with pytest.raises(InputError, match="whole-slide images only"):
        engine.predict_path(model, tmp_path / "tile.png", mpp=0.5)
    iio.imwrite(tmp_path / "grey.png", image((40, 40))[..., 0])
    with pytest.raises(InputError, match=r"grey\.png: .*model needs"):
        engine.predict_path(model, tmp_path / "grey.png")
    del path


def test_read_image_keeps_rgb_and_drops_alpha(tmp_path):
    import imageio.v3 as iio

    rgba = np.concatenate([image((30, 40)), np.full((30, 40, 1), 255, np.uint8)], axis=-1)
    iio.imwrite(tmp_path / "rgba.png", rgba)
    np.testing.assert_array_equal(read_image(tmp_path / "rgba.png"), rgba[..., :3])
    assert island_layout(4, 4, "full").all() and not island_layout(4, 4, "none").any()
