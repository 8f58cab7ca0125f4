"""`stardist-hier predict` end to end with a tiny untrained model: outputs, re-runs, bad input."""

import json
import time

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

pytest.importorskip("tensorflow")

from stardist_hier import patches as P  # noqa: E402
from stardist_hier.cli import main  # noqa: E402
from stardist_hier.hierarchy import ClassHierarchy  # noqa: E402
from stardist_hier.predict import geojson as G  # noqa: E402

TINY = dict(n_rays=8, n_channel_in=3, grid=(2, 2), unet_n_depth=2, unet_n_filter_base=8, net_conv_after_unet=16)


def write_slide(path, img, mpp=0.5):
    """A pyramidal tiled TIFF (levels /1, /2, /4) with its pixel size."""
    res = 1e4 / mpp
    with tifffile.TiffWriter(path) as tw:
        tw.write(img, tile=(128, 128), photometric="rgb", compression="zlib", subifds=2,
                 resolution=(res, res), resolutionunit="CENTIMETER")
        for d in (2, 4):
            tw.write(np.ascontiguousarray(img[::d, ::d]), tile=(128, 128), photometric="rgb", compression="zlib",
                     subfiletype=1)


def he_like(shape, seed=0, n=40):
    """Pink tissue with purple discs."""
    rng = np.random.default_rng(seed)
    img = np.empty(shape + (3,), np.uint8)
    img[:] = (225, 160, 200)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    for _ in range(n):
        cy, cx = rng.integers(8, shape[0] - 8), rng.integers(8, shape[1] - 8)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= 36] = (80, 30, 120)
    return img


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from stardist_hier.model import HierConfig2D, HierStarDist2D
    from stardist_hier.model.folder import save_weights

    tmp = tmp_path_factory.mktemp("predict_cli")
    for name, conf in (("tiny", HierConfig2D(hierarchy="default", **TINY)), ("noclass", HierConfig2D(**TINY))):
        m = HierStarDist2D(conf, name=name, basedir=str(tmp / "models"))
        save_weights(m, tmp / "models" / name / "weights_best.h5")
        # an untrained net finds a nucleus almost everywhere: a threshold that keeps a few per image
        prob = m.predict(P.normalize_image(he_like((256, 256), 9)), axes="YXC", normalizer=None)[0]
        (tmp / "models" / name / "thresholds.json").write_text(
            json.dumps({"prob": float(np.quantile(prob, 0.995)), "nms": 0.3}))
    HierStarDist2D(HierConfig2D(hierarchy="default", **TINY), name="noweights", basedir=str(tmp / "models"))
    good = tmp / "good"
    good.mkdir()
    tifffile.imwrite(good / "img_a.tif", he_like((96, 160), 1))
    Image.fromarray(he_like((80, 120), 2)).save(good / "img_b.png")
    slide = np.full((640, 512, 3), 245, np.uint8)
    slide[96:544, 64:448] = he_like((448, 384), 3, n=120)
    write_slide(good / "slide_c.tif", slide)
    return dict(tmp=tmp, model=tmp / "models" / "tiny", noclass=tmp / "models" / "noclass",
                noweights=tmp / "models" / "noweights", good=good)


def run(argv, capsys):
    rc = main(argv)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def no_temporaries(folder):
    return not [p for p in folder.rglob(".*") if p.is_file()]


def test_predict_outputs_rerun_and_settings(setup, capsys):
    out = setup["tmp"] / "out"
    rc, stdout, err = run(["predict", "--model", str(setup["model"]), str(setup["good"]), "--out", str(out),
                           "--levels", "--label-set", "monusac", "-q"], capsys)
    assert rc == 0, err
    assert "3 input(s): 3 predicted" in stdout
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary["name"]) == ["img_a", "img_b", "slide_c"]
    assert list(summary["kind"]) == ["image", "image", "slide"] and (summary["status"] == "ok").all()
    for name, kind in (("img_a", "image"), ("img_b", "image"), ("slide_c", "slide")):
        d = out / name
        geo = G.read_geojson(d / f"{name}.geojson.gz")
        table = pd.read_parquet(d / f"{name}_nuclei.parquet")
        csv = pd.read_csv(d / f"{name}_nuclei.csv")
        row = summary.set_index("name").loc[name]
        n = int(row["nuclei"])
        assert len(geo["features"]) == len(table) == len(csv) == n
        assert [c for c in table.columns if c.startswith("n_")] == []
        assert {"class_name", "depth1_class_name", "prob_lymphocyte", "area_px"} <= set(table.columns)
        # the summary's class counts are the table's
        counts = table["class_name"].value_counts()
        for cname in ("epithelial", "lymphocyte", "neutrophil", "macrophage"):
            assert row[f"n_{cname}"] == counts.get(cname, 0)
        # the GeoJSON follows QuPath's rules and agrees with the table
        check_rules_without_coords(geo, table, ClassHierarchy.default().label_set("monusac"))
        marker = json.loads((d / "done.json").read_text())
        assert marker["row"]["nuclei"] == n
        assert all((d / "done.json").stat().st_mtime_ns >= p.stat().st_mtime_ns for p in d.iterdir())
        if kind == "image":
            lab = tifffile.imread(d / f"{name}_labels.tif")
            assert lab.shape[-1] == 2 and lab[..., 0].max() == n
            ids = np.unique(lab[..., 0])
            assert set(ids[ids > 0]) <= set(table["id"])
            for i in ids[ids > 0][:20]:  # class channel = the table's class of that instance
                assert set(np.unique(lab[..., 1][lab[..., 0] == i])) == {table.set_index("id").loc[i, "class_id"]}
            assert Image.open(d / f"{name}_overlay.png").size[0] > lab.shape[1]
        else:
            tissue = np.asarray(Image.open(d / f"{name}_tissue.png"))
            assert set(np.unique(tissue)) == {0, 255}
            # the tissue mask covers the pink block, not the white margin
            h, w = tissue.shape
            assert tissue[h // 2, w // 2] == 255 and tissue[2, 2] == 0
            assert row["tissue_area_px"] == pytest.approx(448 * 384, rel=0.15)
            assert row["tissue_area_mm2"] == pytest.approx(448 * 384 * 0.25 / 1e6, rel=0.15)
            assert not (out / name / f"{name}_labels.tif").exists()
    assert no_temporaries(out)

    # a re-run with the same settings skips every input and rewrites nothing
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != "summary.csv"}
    t0 = time.perf_counter()
    rc, stdout, err = run(["predict", "--model", str(setup["model"]), str(setup["good"]), "--out", str(out),
                           "--levels", "--label-set", "monusac", "-q"], capsys)
    assert rc == 0 and "0 predicted, 3 already complete" in stdout
    assert before == {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != "summary.csv"}
    assert (pd.read_csv(out / "summary.csv")["status"] == "skipped").all()
    assert list(pd.read_csv(out / "summary.csv")["nuclei"]) == list(summary["nuclei"])

    # an input whose marker is gone (interrupted) is predicted again, the others not
    (out / "img_b" / "done.json").unlink()
    rc, stdout, _ = run(["predict", "--model", str(setup["model"]), str(setup["good"]), "--out", str(out),
                         "--levels", "--label-set", "monusac", "-q"], capsys)
    assert rc == 0 and "1 predicted, 2 already complete" in stdout

    # other settings: predicted again, at the other label set, plain GeoJSON
    rc, stdout, _ = run(["predict", "--model", str(setup["model"]), str(setup["good"] / "img_a.tif"), "--out",
                         str(out), "--label-set", "pannuke", "--geojson", "plain", "--tables", "csv", "-q"], capsys)
    assert rc == 0 and "1 predicted" in stdout
    t = pd.read_csv(out / "img_a" / "img_a_nuclei.csv")
    assert set(t["class_name"]) <= {"malignant_epithelial", "inflammatory", "connective", "dead",
                                    "healthy_epithelial"}
    check_rules_without_coords(G.read_geojson(out / "img_a" / "img_a.geojson"))


def check_rules_without_coords(doc, table=None, ls=None):
    """QuPath's rules on a file whose polygons come from the model; agreement with its table."""
    assert doc["type"] == "FeatureCollection"
    for f in doc["features"]:
        ring = f["geometry"]["coordinates"][0]
        assert f["geometry"]["type"] == "Polygon" and ring[0] == ring[-1] and len(ring) >= 4
        assert f["properties"]["objectType"] == "detection" and "objectType" not in f
        c = f["properties"]["classification"]
        assert isinstance(c["name"], str) and len(c["color"]) == 3
    if table is not None:
        assert len(doc["features"]) == len(table)
        for f, (_, r) in zip(doc["features"], table.iterrows()):
            m = f["properties"]["measurements"]
            assert m["Nucleus id"] == r["id"]
            assert f["properties"]["classification"]["name"] == r["class_name"] == ls.nodes[int(r["class_id"])]
            assert tuple(f["properties"]["classification"]["color"]) == ls.color(int(r["class_id"]))
            assert m["Object probability"] == pytest.approx(r["prob"], abs=2e-4)
            for c in ls.names:
                assert m[f"Probability: {c}"] == pytest.approx(r[f"prob_{c}"], abs=2e-4)


def test_bad_inputs_fail_alone(setup, capsys):
    tmp = setup["tmp"]
    bad = tmp / "bad"
    bad.mkdir()
    # a truncated slide, a file that is no slide, an image with 2 channels, a slide without tissue, a good image
    slide = np.full((512, 512, 3), 245, np.uint8)
    slide[100:400, 100:400] = he_like((300, 300), 4)
    write_slide(bad / "a_truncated.tif", slide)
    raw = (bad / "a_truncated.tif").read_bytes()
    (bad / "a_truncated.tif").write_bytes(raw[:len(raw) // 3])
    (bad / "b_garbage.svs").write_bytes(b"this is not a slide" * 10)
    tifffile.imwrite(bad / "c_two_channels.tif", np.zeros((64, 64, 2), np.uint8))
    write_slide(bad / "d_blank.tif", np.full((512, 512, 3), 246, np.uint8))
    tifffile.imwrite(bad / "e_good.tif", he_like((64, 96), 5))
    out = tmp / "out_bad"
    rc, stdout, err = run(["predict", "--model", str(setup["model"]), str(bad), "--out", str(out), "-q"], capsys)
    assert rc == 1
    assert "5 input(s): 2 predicted, 0 already complete, 3 failed" in stdout
    assert "error: 3 of 5 input(s) failed:" in err
    for name in ("a_truncated.tif", "b_garbage.svs", "c_two_channels.tif"):
        lines = [line for line in err.splitlines() if name in line]
        assert lines and all(str(bad / name) in line for line in lines), err
        assert not (out / name.rsplit(".", 1)[0]).exists()  # nothing written for it
    assert "2 channel" in err
    s = pd.read_csv(out / "summary.csv").set_index("name")
    assert list(s["status"]) == ["failed", "failed", "failed", "ok", "ok"]
    assert s.loc["a_truncated", "error"].startswith(str(bad / "a_truncated.tif"))
    # no tissue: an empty result and a note, not an error
    assert s.loc["d_blank", "nuclei"] == 0 and "no tissue" in s.loc["d_blank", "note"]
    assert G.read_geojson(out / "d_blank" / "d_blank.geojson.gz") == {"type": "FeatureCollection", "features": []}
    assert len(pd.read_csv(out / "d_blank" / "d_blank_nuclei.csv")) == 0
    assert (out / "d_blank" / "done.json").exists() and (out / "e_good" / "done.json").exists()
    assert no_temporaries(out)
    # a re-run retries the failed ones only, and still exits 1
    rc, stdout, _ = run(["predict", "--model", str(setup["model"]), str(bad), "--out", str(out), "-q"], capsys)
    assert rc == 1 and "0 predicted, 2 already complete, 3 failed" in stdout


@pytest.mark.parametrize("case", ["unknown_label_set", "label_set_no_classes", "no_weights", "no_model",
                                  "out_is_file", "missing_input", "empty_folder"])
def test_user_errors_are_one_line_and_write_nothing(setup, capsys, case, tmp_path):
    img = str(setup["good"] / "img_a.tif")
    out = tmp_path / "out"
    model = str(setup["model"])
    extra = []
    if case == "unknown_label_set":
        extra, expect = ["--label-set", "monusak"], ["monusak", "monusac", "pannuke"]
    elif case == "label_set_no_classes":
        model, extra, expect = str(setup["noclass"]), ["--label-set", "pannuke"], [str(setup["noclass"]), "no classes"]
    elif case == "no_weights":
        model, expect = str(setup["noweights"]), [str(setup["noweights"]), "no weights"]
    elif case == "no_model":
        model, expect = str(tmp_path / "nope"), [str(tmp_path / "nope"), "not found"]
    elif case == "out_is_file":
        out.write_text("x")
        expect = [str(out), "is a file"]
    elif case == "missing_input":
        img, expect = str(tmp_path / "missing.tif"), [str(tmp_path / "missing.tif"), "no such file"]
    else:
        (tmp_path / "empty").mkdir()
        img, expect = str(tmp_path / "empty"), [str(tmp_path / "empty"), "no image or slide files"]
    rc, stdout, err = run(["predict", "--model", model, img, "--out", str(out), "-q", *extra], capsys)
    assert rc == 1
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert all(e in lines[0] for e in expect), lines[0]
    if case != "out_is_file":
        assert not out.exists()


def test_model_without_classes_and_python_api(setup, tmp_path):
    from stardist_hier.predict.run import predict_file, predict_inputs

    row = predict_file(setup["noclass"], setup["good"] / "img_a.tif", tmp_path, tables=("csv",))
    assert row["status"] == "ok" and row["label_set"] == "" and not [k for k in row if k.startswith("n_")]
    geo = G.read_geojson(tmp_path / "img_a" / "img_a.geojson.gz")
    assert all("classification" not in f["properties"] for f in geo["features"])
    t = pd.read_csv(tmp_path / "img_a" / "img_a_nuclei.csv")
    assert "class_id" not in t.columns and len(t) == row["nuclei"]
    assert not (tmp_path / "img_a" / "img_a_nuclei.parquet").exists()
    again = predict_file(setup["noclass"], setup["good"] / "img_a.tif", tmp_path, tables=("csv",))
    assert again["status"] == "skipped" and again["nuclei"] == row["nuclei"]
    rows = predict_inputs(setup["noclass"], [setup["good"] / "img_a.tif", setup["good"] / "img_b.png"], tmp_path,
                          tables=("csv",), progress=False)
    assert [r["status"] for r in rows] == ["skipped", "ok"]
    check_qupath_rules_for_noclass(geo, row["nuclei"])


def check_qupath_rules_for_noclass(doc, n):
    assert len(doc["features"]) == n
    for f in doc["features"]:
        assert f["properties"]["objectType"] == "detection"
        assert set(f["properties"]["measurements"]) == {"Nucleus id", "Object probability"}


def test_same_stem_in_two_folders_gets_two_outputs(setup, tmp_path):
    from stardist_hier.predict.run import output_names

    a, b = tmp_path / "a" / "x.tif", tmp_path / "b" / "x.tif"
    names = output_names([a, b, tmp_path / "y.ome.tif"])
    assert names[0] != names[1] and names[0].startswith("x-") and names[2] == "y"
    assert output_names([a, b]) == names[:2]  # stable


def test_mask_file_and_folder(setup, capsys, tmp_path):
    slide = setup["good"] / "slide_c.tif"  # 640 x 512
    mask = np.zeros((64, 51), np.uint8)
    mask[:, :25] = 255  # the left half
    Image.fromarray(mask).save(tmp_path / "m.png")
    rc, _, err = run(["predict", "--model", str(setup["model"]), str(slide), "--out", str(tmp_path / "o1"),
                      "--mask", str(tmp_path / "m.png"), "-q"], capsys)
    assert rc == 0, err
    row = pd.read_csv(tmp_path / "o1" / "summary.csv").iloc[0]
    assert row["tissue_area_px"] == pytest.approx(640 * 512 * 25 / 51, rel=0.05)
    tissue = np.asarray(Image.open(tmp_path / "o1" / "slide_c" / "slide_c_tissue.png"))
    assert tissue[:, : tissue.shape[1] // 3].all() and not tissue[:, -tissue.shape[1] // 3:].any()
    # one file for several inputs: refused; a folder: per slide by name, the others automatic
    rc, _, err = run(["predict", "--model", str(setup["model"]), str(setup["good"]), "--out", str(tmp_path / "o2"),
                      "--mask", str(tmp_path / "m.png"), "-q"], capsys)
    assert rc == 1 and "one mask file for several inputs" in err and str(tmp_path / "m.png") in err
    (tmp_path / "masks").mkdir()
    Image.fromarray(mask).save(tmp_path / "masks" / "slide_c.png")
    rc, _, err = run(["predict", "--model", str(setup["model"]), str(slide), "--out", str(tmp_path / "o3"),
                      "--mask", str(tmp_path / "masks"), "-q"], capsys)
    assert rc == 0, err
    assert pd.read_csv(tmp_path / "o3" / "summary.csv").iloc[0]["tissue_area_px"] == row["tissue_area_px"]
