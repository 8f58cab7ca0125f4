"""The real-data benchmark (benchmarks/bench_realdata.py): wiring, resume, data and statistics.

Runs the script's smallest configuration (``--quick``: tiny network, 4 steps, cropped images)
on ``../shared/realdata`` (or ``$STARDIST_HIER_REALDATA``); skipped only where that is absent.
"""

import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name):
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def bench():
    return _load("bench_realdata")


@pytest.fixture(scope="module")
def R(bench):
    return bench.R


@pytest.fixture
def root(R):
    p = R.realdata_root()
    if p is None:
        pytest.skip(f"real data not present (../shared/realdata or ${R.ENV_VAR})")
    return p


def test_env_var_names_the_folder(R, tmp_path, monkeypatch):
    monkeypatch.setenv(R.ENV_VAR, str(tmp_path))
    assert R.realdata_root() == tmp_path
    monkeypatch.setenv(R.ENV_VAR, str(tmp_path / "absent"))
    assert R.realdata_root() is None


def test_t_interval_against_reference(bench):
    rng = np.random.default_rng(0)
    d = rng.normal(0.1, 0.05, 5)
    m, sd, (lo, hi) = bench.t_interval(d)
    ref_sd = np.sqrt(((d - d.mean()) ** 2).sum() / 4)
    half = 2.7764451051977987 * ref_sd / np.sqrt(5)  # t_{0.975, 4}
    assert np.isclose(m, d.mean()) and np.isclose(sd, ref_sd)
    assert np.isclose(lo, d.mean() - half) and np.isclose(hi, d.mean() + half)
    m1, sd1, (lo1, hi1) = bench.t_interval([0.3])
    assert m1 == 0.3 and np.isnan(sd1) and np.isnan(lo1) and np.isnan(hi1)


def test_summary_pairs_by_seed(bench, R):
    s = R.QUICK
    recs = []
    vals = {"stock_mixed": {0: 0.40, 1: 0.45, 2: 0.50}, "hier_mixed": {0: 0.30, 2: 0.41, 3: 0.2}}
    for v, by in vals.items():
        for seed, b in by.items():
            recs.append(dict(variant=v, seed=seed, tag="", fingerprint=R.fingerprint(s, R.VARIANTS[v]), bPQ=b,
                             n_pred=10, n_gt=12, thresholds=dict(prob=0.5, nms=0.4), seconds=60.0))
    # another tag, another settings fingerprint: not in the table
    recs.append({**recs[0], "tag": "rerun", "bPQ": 0.0})
    recs.append({**recs[0], "fingerprint": "other", "bPQ": 0.0})
    rows, diffs = bench.summarize(recs, s)
    by = {r["variant"]: r for r in rows}
    assert by["stock_mixed"]["n"] == 3 and np.isclose(by["stock_mixed"]["bPQ_mean"], 0.45)
    assert np.isclose(by["stock_mixed"]["bPQ_sd"], np.std([0.40, 0.45, 0.50], ddof=1))
    d = next(x for x in diffs if (x["a"], x["b"]) == ("hier_mixed", "stock_mixed"))
    assert d["n"] == 2 and np.isclose(d["mean_diff"], np.mean([0.30 - 0.40, 0.41 - 0.50]))


def test_append_result_atomic_and_read_errors(bench, tmp_path):
    (tmp_path / bench.RESULTS).write_text('{"a": 1}')  # no final newline (an older writer)
    bench.append_result(tmp_path, {"b": 2})
    assert bench.read_results(tmp_path) == [{"a": 1}, {"b": 2}]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp.jsonl") or ".tmp" in p.name]
    (tmp_path / bench.RESULTS).write_text('{"a": 1}\n{"b": \n')
    with pytest.raises(ValueError, match=r"results.jsonl:2"):
        bench.read_results(tmp_path)


def test_unknown_variant_is_a_usage_error(bench):
    with pytest.raises(SystemExit, match="unknown variant 'nope'"):
        bench.select_variants("rows,nope")
    assert bench.select_variants("rows")[:2] == ["stock_monuseg", "stock_mixed"]


def test_hooks_are_listed_not_run(R):
    v = R.HOOKS["hier_mixed_persample"]
    ok, why = R.variant_available(v)
    from stardist_hier.model.config import HIER_CONFIG_DEFAULTS

    assert ok == ("train_class_loss_normalization" in HIER_CONFIG_DEFAULTS)
    if not ok:
        assert "train_class_loss_normalization" in why


def test_load_data_against_reference(R, root):
    from skimage.io import imread

    data = R.load_data(root, R.QUICK)
    a, b = R.QUICK.split
    w = R.QUICK.monuseg_cols
    assert data["monuseg_train"][0].shape == (a, w, 3) and data["monuseg_val"][0].shape == (b - a, w, 3)
    assert data["monuseg_test"][0].shape == (1000 - b, w, 3)
    for k in ("monuseg_train", "monuseg_val", "monuseg_test"):
        x, y, c = data[k]
        assert x.dtype == np.float32 and set(c.values()) == {1}
        assert sorted(c) == list(range(1, y.max() + 1)) == sorted(np.unique(y[y > 0]).tolist())
    # HGSC: majority type per nucleus, by plain loops over the cropped rasters
    s = R.QUICK.hgsc_size
    d = root / "hgsc_rasters"
    inst = np.load(d / "hgsc_nest_inst_mask.npz")["nuc_raster"][:s, :s]
    types = np.load(d / "hgsc_nest_type_mask.npz")["nuc_raster"][:s, :s]
    x, y, c = data["hgsc"]
    assert x.shape == imread(d / "hgsc_nest.jpg")[:s, :s].shape
    for old in np.unique(inst[inst > 0]):
        new = np.unique(y[inst == old])
        assert len(new) == 1
        t = types[inst == old]
        t = t[t > 0]
        vals, cnt = np.unique(t, return_counts=True)
        assert c[int(new[0])] == int(vals[np.argmax(cnt)])  # ties: np.argmax takes the smallest id
    # sampling by nucleus repeats the images in proportion to their nucleus counts
    ep = R.Episode(("monuseg", "hgsc"))
    X, Y, C, D = R._episode_data(data, ep, R.VARIANTS["hier_mixed_nucleus"])
    n_m, n_h = len(data["monuseg_train"][2]), len(data["hgsc"][2])
    assert D.count("monuseg") == max(1, round(n_m / min(n_m, n_h))) and D.count("hgsc") == max(1, round(n_h / min(n_m, n_h)))
    X, Y, C, D = R._episode_data(data, R.Episode(("hgsc_root",)), R.VARIANTS["hier_mixed_root"])
    assert D == ["monuseg"] and set(C[0].values()) == {1}


def test_quick_run_resumes(bench, root, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--out", str(out), "--quick", "--variants", "stock_mixed,hier_mixed", "--seeds", "0", "--data", str(root)]
    assert bench.main(argv) == 0
    recs = bench.read_results(out)
    assert [r["variant"] for r in recs] == ["stock_mixed", "hier_mixed"]
    for r in recs:
        assert 0 <= r["bPQ"] <= 1 and r["n_gt"] > 0 and set(r["thresholds"]) == {"prob", "nms"}
        assert r["episodes"][0]["steps"] == 4
    hier = recs[1]
    assert set(hier["classes_hgsc"]) == set(bench.R.HGSC_NAMES.values())
    assert sum(hier["classes_hgsc"].values()) <= hier["n_pred"]
    assert hier["config"]["train_focal_tversky_weight"] == 1.0
    for f in ("summary.md", "summary.csv", "differences.csv", "bpq.png"):
        assert (out / f).stat().st_size > 0
    capsys.readouterr()
    assert bench.main(argv) == 0  # resumed: nothing left to run
    assert "0 runs in" in capsys.readouterr().out
    assert len(bench.read_results(out)) == 2
    md = (out / "summary.md").read_text()
    assert "| 4 | hier_mixed |" in md and "| hier_mixed | stock_mixed | 1 |" in md


def test_keeping_pairs_classes_and_resumes(root, tmp_path, capsys):
    """bench_realdata_keeping --quick: both modes recorded per seed, the first episode trained once, resumed."""
    keeping = _load("bench_realdata_keeping")
    out = tmp_path / "keep"
    keeping.main(["--out", str(out), "--quick", "--seeds", "0", "--data", str(root)])
    recs = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [(r["seed"], r["mode"]) for r in recs] == [(0, "sum"), (0, "equal_logit")]
    for r in recs:
        for name in keeping.IMAGES:
            assert 0 <= r[name]["n_paired"] <= min(r[name]["n_before"], r[name]["n_after"])
            assert sum(r[name]["before"].values()) == r[name]["n_before"]
    assert len(list((out / "weights").glob("seed0_*.pkl"))) == 1  # the HGSC episode, shared by both modes
    assert "| sum | hgsc | 1 |" in (out / "summary.md").read_text()
    keeping.main(["--out", str(out), "--quick", "--seeds", "0", "--data", str(root)])
    assert len((out / "results.jsonl").read_text().splitlines()) == 2  # nothing run again


def test_paired_classes_against_a_loop():
    """paired_classes: the classes of nuclei that overlap with IoU > 0.5, as a plain loop finds them."""
    paired_classes = _load("bench_coarse_labels").paired_classes
    rng = np.random.default_rng(0)
    a, b = np.zeros((40, 40), np.int32), np.zeros((40, 40), np.int32)
    for k in range(1, 9):
        y, x = rng.integers(0, 32, 2)
        a[y:y + 6, x:x + 6] = k
        dy, dx = rng.integers(-2, 3, 2) if k % 3 else (20, 20)  # some move far: no pair
        yy, xx = np.clip(y + dy, 0, 34), np.clip(x + dx, 0, 34)
        b[yy:yy + 6, xx:xx + 6] = k
    ca, cb = rng.integers(1, 4, a.max()), rng.integers(1, 4, b.max())
    want = []
    for i in range(1, a.max() + 1):
        for j in range(1, b.max() + 1):
            inter = np.sum((a == i) & (b == j))
            union = np.sum((a == i) | (b == j))
            if union and inter / union > 0.5:
                want.append((ca[i - 1], cb[j - 1]))
    got_a, got_b = paired_classes(a, ca, b, cb)
    assert sorted(zip(got_a.tolist(), got_b.tolist())) == sorted((int(x), int(y)) for x, y in want)
