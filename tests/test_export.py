"""Export for QuPath and other tools: the layout QuPath reads, tested as the clients run it.

The ``.pb`` and ``.onnx`` are loaded with OpenCV's DNN module (the engine QuPath uses) and the
ONNX with onnxruntime; their outputs must equal the Keras network's on real H&E tiles, and
decoding the ``.pb``'s output the way QuPath does (split by the class-name list written
beside it, centre-pixel class, background dropped) must give the classes of
``predict_instances(..., class_from='center')`` at the same points: the centre pixels of the
polygons StarDist keeps (``details['points'] // grid``), which are among QuPath's candidates.
"""

import json
import shutil

import numpy as np
import pytest

pytest.importorskip("tensorflow")

import keras  # noqa: E402
from skimage.io import imread  # noqa: E402

from stardist_hier import HierarchyError, HierConfig2D, HierStarDist2D  # noqa: E402
from stardist_hier.cli import main  # noqa: E402
from stardist_hier.export import ExportError, export_layout, export_model, input_divisor, qupath_model  # noqa: E402
from stardist_hier.export.layout import ChannelSoftmax, ChannelSum, NearestUpSampling2D, softmax_kernels  # noqa: E402
from stardist_hier.export.qupath import decode_like_qupath  # noqa: E402
from stardist_hier.export.tensorflow_pb import _tf_internals  # noqa: E402
from stardist_hier.model.folder import write_model_folder  # noqa: E402
from stardist_hier.patches import normalize_image  # noqa: E402

TINY = dict(n_channel_in=3, grid=(2, 2), unet_n_depth=2, unet_n_filter_base=8, net_conv_after_unet=16,
            train_patch_size=(64, 64), train_batch_size=2, train_reduce_lr=None)
PROB_THRESH, NMS_THRESH = 0.8, 0.3
ATOL = 1e-4


def _tiny_model(name, basedir, n_rays=16, hierarchy="default", seed=0):
    """A random tiny network whose outputs look like a model's: varied probabilities, rays of
    ~8 px, class maps where background competes with several classes (non-zero biases too)."""
    keras.utils.set_random_seed(seed)
    config = HierConfig2D(hierarchy=hierarchy, n_rays=n_rays, **TINY) if hierarchy else \
        HierConfig2D(n_rays=n_rays, **TINY)
    model = HierStarDist2D(config, name=name, basedir=None)
    rs = np.random.RandomState(seed + 1)
    km = model.keras_model
    km.set_weights([w + 0.1 * rs.randn(*w.shape).astype(w.dtype) for w in km.get_weights()])

    def adjust(layer, scale=1.0, shift=0.0):
        kernel, bias = km.get_layer(layer).get_weights()
        km.get_layer(layer).set_weights([kernel * scale, bias + shift])

    adjust("prob", scale=30)
    adjust("dist", shift=8.0)
    if hierarchy:
        adjust("prob_class", scale=8)
        kernel, bias = km.get_layer("prob_class").get_weights()
        bias[0] += 2.6
        km.get_layer("prob_class").set_weights([kernel, bias])
    model.thresholds = dict(prob=PROB_THRESH, nms=NMS_THRESH)
    write_model_folder(model, basedir / name)
    return model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny model and its exports: .pb at the leaves and at PanNuke, .onnx and SavedModel at PanNuke."""
    root = tmp_path_factory.mktemp("export")
    model = _tiny_model("tiny", root / "models")
    out = root / "out"
    results = {
        "pb": export_model(model, out, "pb"),
        "pb_pannuke": export_model(model, out, "pb", label_set="pannuke"),
        "onnx_pannuke": export_model(model, out, "onnx", label_set="pannuke"),
        # checked by test_savedmodel_equals_the_network (loading it twice costs seconds)
        "savedmodel_pannuke": export_model(model, out, "savedmodel", label_set="pannuke", verify=False),
    }
    return dict(model=model, root=root, out=out, results=results)


def _tiles(realdata):
    """Normalised real H&E tiles: CoNSeP-format patch1 (256 x 256) and a non-square crop of patch2."""
    tiles = realdata / "consep_format_tiles"
    a = normalize_image(imread(tiles / "patch1.png")[..., :3])
    b = normalize_image(imread(tiles / "patch2.png")[..., :3])[:200, :248]  # multiples of 8 (the divisor)
    return [a, b]


_REFERENCES = {}


def _reference(model, img, label_set=None):
    """The Keras network's outputs in QuPath's order, classes summed by an independent loop over leaves."""
    key = (id(model), img.shape, float(img.sum()), label_set)
    if key not in _REFERENCES:
        _REFERENCES[key] = _compute_reference(model, img, label_set)
    return _REFERENCES[key]


def _compute_reference(model, img, label_set):
    prob, dist, prob_class = (np.asarray(o)[0] for o in model.keras_model([img[None]], training=False))
    if label_set is None:
        classes = prob_class
    else:
        ls = model.hierarchy.label_set(label_set)
        cols = [prob_class[..., 0]]
        for k in ls.ids:
            leaves = [model.hierarchy.leaf_index[leaf] for leaf in model.hierarchy.leaves
                      if leaf == ls.nodes[k] or ls.nodes[k] in model.hierarchy.ancestors(leaf)]
            cols.append(prob_class[..., leaves].sum(axis=-1))
        classes = np.stack(cols, axis=-1)
    return np.concatenate([prob, dist, classes], axis=-1)


def _opencv_run(path, img):
    cv2 = pytest.importorskip("cv2")
    net = cv2.dnn.readNet(str(path))
    net.setInput(np.ascontiguousarray(img[None].transpose(0, 3, 1, 2)))  # QuPath feeds NCHW blobs
    return net.forward()[0].transpose(1, 2, 0)


# -- layout ---------------------------------------------------------------------------------


def test_layout_names_ids_and_refusals(tiny, tmp_path):
    model = tiny["model"]
    leaves = export_layout(model)
    assert leaves.class_names == ["background", *model.hierarchy.leaves] and leaves.class_ids == list(range(13))
    assert leaves.n_channels == 1 + 16 + 13 and leaves.grid == (2, 2)
    pannuke = export_layout(model, "pannuke")
    assert pannuke.class_names == ["background", "malignant_epithelial", "inflammatory", "connective", "dead",
                                   "healthy_epithelial"]
    assert pannuke.class_ids == [0, 1, 2, 3, 4, 5] and pannuke.prob_thresh == PROB_THRESH
    # the divisor is StarDist's own rule (private there: this fails loudly if StarDist changes it)
    assert input_divisor(model.config) == model._axes_div_by("YX") == (8, 8) == pannuke.divisor
    assert pannuke.qupath_compatible
    with pytest.raises(HierarchyError, match="unknown label set 'pannuk'.*pannuke"):
        export_layout(model, "pannuk")
    # 8 rays cannot carry 13 leaf channels (QuPath needs more rays than classes), 6 PanNuke ones they can
    few_rays = _tiny_model("rays8", tmp_path, n_rays=8)
    with pytest.raises(ExportError, match="8 rays and 13 class channels"):
        export_layout(few_rays)
    assert export_layout(few_rays, "pannuke").n_classes == 6
    with pytest.raises(ExportError, match="6 rays and 6 class channels"):  # as many rays as classes: refused too
        export_layout(_tiny_model("rays6", tmp_path, n_rays=6), "pannuke")


def test_written_class_files_and_groovy(tiny):
    result = tiny["results"]["pb_pannuke"]
    files = result.files
    names = files["classes_txt"].read_text().splitlines()
    assert names == result.layout.class_names
    info = json.loads(files["classes_json"].read_text())
    assert info["class_names"] == names and info["channels"] == {"prob": [0, 1], "rays": [1, 17], "classes": [17, 23]}
    assert info["class_colors"][0] == [128, 128, 128] and len(info["class_colors"]) == 6
    groovy = files["groovy"].read_text()
    assert f"'{result.model.resolve()}'" in groovy and f"'{files['classes_txt'].resolve()}'" in groovy
    assert ".classificationNames(classes)" in groovy and f".threshold({PROB_THRESH:g})" in groovy
    assert ".percentiles(1, 99.8)" in groovy and "perChannel(true)" in groovy
    assert set(tiny["results"]["onnx_pannuke"].files) == {"model", "classes_txt", "classes_json"}  # no script


def test_groovy_pixel_size_is_the_models_unless_given(tiny, tmp_path):
    model = tiny["model"]
    assert ".pixelSize(0.5)" in tiny["results"]["pb"].files["groovy"].read_text()  # no pixel_size_um: 0.5
    saved = model.config.pixel_size_um
    try:
        model.config.pixel_size_um = 0.25
        own = export_model(model, tmp_path / "own", "pb", verify=False)
        given = export_model(model, tmp_path / "given", "pb", verify=False, pixel_size=1.0)
    finally:
        model.config.pixel_size_um = saved
    assert ".pixelSize(0.25)" in own.files["groovy"].read_text()
    assert ".pixelSize(1)" in given.files["groovy"].read_text()


# -- the rewritten layers against independent numpy references --------------------------------


def _np_softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_channel_softmax_matches_softmax_also_for_extreme_logits():
    rs = np.random.RandomState(3)
    z = rs.randn(2, 5, 6, 7).astype(np.float32) * 3
    z[0, 0, 0] = 0.0  # all equal
    z[0, 0, 1] = [500, -500, 0, 1, 2, 3, 4]  # a spread far beyond exp's range
    z[0, 0, 2, 3] = 90.0  # one huge logit
    got = np.asarray(ChannelSoftmax()(z))
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, _np_softmax(z.astype(np.float64)), atol=1e-6)
    pair, sums = softmax_kernels(3)
    v = np.array([1.0, 5.0, -2.0])
    np.testing.assert_allclose((v @ pair).reshape(3, 3), v[None, :] - v[:, None])  # row k: z_j - z_k
    assert (sums.sum(axis=0) == 3).all() and (sums.sum(axis=1) == 1).all()


def test_channel_sum_and_nearest_upsampling_match_numpy():
    rs = np.random.RandomState(4)
    x = rs.rand(1, 3, 5, 4).astype(np.float32)
    kernel = (rs.rand(4, 3) > 0.5).astype(np.float32)
    np.testing.assert_allclose(np.asarray(ChannelSum(kernel)(x)), np.einsum("bhwk,kc->bhwc", x, kernel), atol=1e-6)
    for size in ((2, 2), (3, 2)):
        up = np.asarray(NearestUpSampling2D(size)(x))
        np.testing.assert_array_equal(up, np.repeat(np.repeat(x, size[0], axis=1), size[1], axis=2))
        np.testing.assert_array_equal(up, np.asarray(keras.layers.UpSampling2D(size)(x)))


def test_tf_internals_are_there():
    freeze, optimize = _tf_internals()
    assert callable(freeze) and callable(optimize)


# -- as the clients run it, on real tiles ------------------------------------------------------


def test_keras_layout_model_equals_the_network(tiny, realdata):
    model = tiny["model"]
    for label_set in (None, "pannuke"):
        net, layout = qupath_model(model, label_set)
        for img in _tiles(realdata):
            got = np.asarray(net(img[None], training=False))[0]
            ref = _reference(model, img, label_set)
            assert got.shape == (img.shape[0] // 2, img.shape[1] // 2, layout.n_channels)
            np.testing.assert_allclose(got, ref, atol=1e-5)


def test_pb_in_opencv_equals_the_network(tiny, realdata):
    model = tiny["model"]
    for key, label_set in (("pb", None), ("pb_pannuke", "pannuke")):
        for img in _tiles(realdata):
            got = _opencv_run(tiny["results"][key].model, img)
            np.testing.assert_allclose(got, _reference(model, img, label_set), atol=ATOL)


def test_onnx_in_onnxruntime_equals_the_network(tiny, realdata):
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(tiny["results"]["onnx_pannuke"].model), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input"] and [o.name for o in session.get_outputs()] == ["output"]
    for img in _tiles(realdata):
        got = session.run(None, {"input": np.ascontiguousarray(img[None].transpose(0, 3, 1, 2))})[0]  # NCHW
        np.testing.assert_allclose(got[0].transpose(1, 2, 0), _reference(tiny["model"], img, "pannuke"), atol=ATOL)


def test_onnx_in_opencv_equals_the_network(tiny, realdata):
    cv2 = pytest.importorskip("cv2")
    if int(cv2.__version__.split(".")[0]) < 5:
        pytest.skip(f"OpenCV {cv2.__version__}'s ONNX importer needs fixed input sizes (QuPath reads the .pb)")
    for img in _tiles(realdata):
        got = _opencv_run(tiny["results"]["onnx_pannuke"].model, img)
        np.testing.assert_allclose(got, _reference(tiny["model"], img, "pannuke"), atol=ATOL)


def test_savedmodel_equals_the_network(tiny, realdata):
    from stardist_hier.export.savedmodel import load_savedmodel

    run = load_savedmodel(tiny["results"]["savedmodel_pannuke"].model)
    img = _tiles(realdata)[1]
    np.testing.assert_allclose(run(img[None])[0], _reference(tiny["model"], img, "pannuke"), atol=ATOL)


@pytest.mark.parametrize("key,label_set", [("pb", None), ("pb_pannuke", "pannuke")])
def test_qupath_decoding_gives_the_classes_of_predict_instances(tiny, realdata, key, label_set):
    model, result = tiny["model"], tiny["results"][key]
    img = _tiles(realdata)[0]
    names = result.files["classes_txt"].read_text().splitlines()  # QuPath's class-name map, as a user builds it
    out = _opencv_run(result.model, img)
    scale = (round(img.shape[0] / out.shape[0]), round(img.shape[1] / out.shape[1]))  # QuPath's rescaling
    qupath = decode_like_qupath(out, len(names), PROB_THRESH, scale=scale)
    kept = {tuple(p): (c, xy) for p, c, xy in zip(qupath["points"], qupath["class_channel"], qupath["coord"])}

    _, details = model.predict_instances(img, label_set=label_set, class_from="center", prob_thresh=PROB_THRESH,
                                         nms_thresh=NMS_THRESH, verbose=False)
    points = details["points"] // np.array(model.config.grid)
    class_ids = np.asarray(details["class_id"])
    assert (class_ids == 0).sum() >= 5 and (class_ids > 0).sum() >= 5  # both cases are exercised
    for p, class_id, coord in zip(points, class_ids, details["coord"]):
        if class_id == 0:
            assert tuple(p) not in kept  # QuPath drops a nucleus whose centre pixel is background
            continue
        channel, xy = kept[tuple(p)]
        assert result.layout.class_ids[channel] == class_id and names[channel] == result.layout.class_names[channel]
        np.testing.assert_allclose(xy, coord, atol=1e-3)  # same polygon: rays in QuPath's order and angles


# -- the command line ---------------------------------------------------------------------------


def _error_line(capsys):
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_command_exports_and_refuses_bad_input(tiny, tmp_path, capsys):
    models = tiny["root"] / "models"
    out = tmp_path / "out"
    assert main(["export", "--model", str(models / "tiny"), "--label-set", "pannuke", "--format", "pb",
                 "--out", str(out), "-q"]) == 0
    assert (out / "tiny_pannuke.pb").is_file() and (out / "tiny_pannuke.classes.txt").is_file()
    assert "23 channels" in capsys.readouterr().out

    no_weights = tmp_path / "no_weights"
    shutil.copytree(models / "tiny", no_weights, ignore=shutil.ignore_patterns("*.h5"))
    assert main(["export", "--model", str(no_weights), "--format", "pb", "--out", str(out)]) == 1
    assert "has no weights" in _error_line(capsys)

    _tiny_model("plain", models, hierarchy=None)
    assert main(["export", "--model", str(models / "plain"), "--label-set", "pannuke", "--format", "pb",
                 "--out", str(out)]) == 1
    assert "has no classes" in _error_line(capsys)

    assert main(["export", "--model", str(models / "tiny"), "--label-set", "panuke", "--format", "pb",
                 "--out", str(out)]) == 1
    line = _error_line(capsys)
    assert "unknown label set 'panuke'" in line and "pannuke" in line and "monusac" in line

    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    assert main(["export", "--model", str(models / "tiny"), "--format", "pb", "--out", str(a_file)]) == 1
    assert "is a file" in _error_line(capsys)

    with pytest.raises(SystemExit) as e:
        main(["export", "--model", str(models / "tiny"), "--format", "tflite", "--out", str(out)])
    assert e.value.code == 2 and "invalid choice: 'tflite'" in capsys.readouterr().err


def test_model_without_classes_exports_probability_and_rays(tmp_path):
    model = _tiny_model("plain", tmp_path, hierarchy=None)
    result = export_model(model, tmp_path / "out", "pb")
    assert result.layout.n_classes == 0 and result.layout.n_channels == 17 and result.max_abs_diff <= ATOL
    assert "classificationNames" not in result.files["groovy"].read_text()


def test_layout_that_qupath_cannot_pad_is_flagged_and_decoder_options():
    from stardist_hier.export import ExportLayout
    from stardist_hier.export.qupath import groovy_snippet

    deep = ExportLayout(n_rays=8, divisor=(128, 128))  # e.g. unet_n_depth=5 at grid 4
    assert not deep.qupath_compatible and ExportLayout(n_rays=8, divisor=(64, 32)).qupath_compatible
    assert "WARNING" in groovy_snippet("/m.pb", None, deep)
    out = np.zeros((2, 3, 1 + 4 + 2), np.float32)
    out[..., 0] = [[0.9, 0.1, 0.5], [0.5, 0.95, 0.2]]
    out[..., 1:5] = 2.0
    out[..., 5:] = [1.0, 0.0]  # background everywhere but at (1, 1)
    out[1, 1, 5:] = [0.2, 0.8]
    kept = decode_like_qupath(out, 2, 0.5, scale=(2, 2))
    assert kept["points"].tolist() == [[1, 1]] and kept["class_channel"].tolist() == [1]  # >= threshold, no background
    np.testing.assert_allclose(kept["coord"][0][:, 0], [2 + 0, 2 + 2])  # ray 0 points along +x: (y, x + d)
    assert decode_like_qupath(out, 2, 0.5, keep_background=True)["points"].tolist() == [[0, 0], [0, 2], [1, 0], [1, 1]]
    assert decode_like_qupath(out[..., :5], 0, 0.5)["class_channel"].tolist() == [-1] * 4
