"""The claim study (issue 12, section 4): summary statistics, the answer, variant rules, training blocks, resume, end to end."""

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

from stardist_hier.experiments import claim_report as R
from stardist_hier.experiments.claim import VARIANTS, BenchSettings, applicable_variants, variant_applies

#: t quantile t(0.975, df=4) from a printed table (independent of scipy)
T975_4 = 2.7764451051977987


def _records(effects, sizes=(8, 16, 64), seeds=range(5), target="monusac", noise=0.01, seed=0, second=None):
    """Fake records: target_only's bPQ/mPQ+ per (size, seed) random; each variant adds its effect plus noise.

    ``effects``: variant -> {size: effect} (same for bPQ and mPQ+, unless ``second`` gives
    mPQ+'s: variant -> {size: effect}).
    """
    rng = np.random.default_rng(seed)
    seeds = list(seeds)
    recs = []

    def centred():  # noise of mean exactly 0 over the seeds: the mean difference is the effect
        x = rng.normal(0, noise, len(seeds))
        return x - x.mean() if len(seeds) > 1 else x * 0

    for size in sizes:
        base = [dict(bPQ=rng.uniform(0.3, 0.6), mPQ=rng.uniform(0.1, 0.4), **{"mPQ+": rng.uniform(0.05, 0.3)})
                for _ in seeds]
        for s, b in zip(seeds, base):
            recs.append(dict(target=target, size=size, seed=s, variant="target_only", precision=0.7, recall=0.6,
                             n_unannotated=3, epochs=20, **b))
        for v, eff in effects.items():
            e1, e2 = eff.get(size, 0.0), (second or {}).get(v, eff).get(size, 0.0)
            for s, b, n1, n2, n3 in zip(seeds, base, centred(), centred(), centred()):
                recs.append(dict(target=target, size=size, seed=s, variant=v, precision=0.7, recall=0.6,
                                 n_unannotated=int(rng.integers(5)), epochs=int(rng.integers(5, 30)),
                                 bPQ=b["bPQ"] + e1 + n1, mPQ=b["mPQ"] + e1 + n2, **{"mPQ+": b["mPQ+"] + e2 + n3}))
    return recs


def _numpy_diff(recs, target, size, variant, metric, ref="target_only"):
    pick = lambda v: {r["seed"]: r[metric] for r in recs  # noqa: E731
                      if r["target"] == target and r["size"] == size and r["variant"] == v}
    a, b = pick(variant), pick(ref)
    d = np.array([a[s] - b[s] for s in sorted(set(a) & set(b))])
    half = T975_4 * d.std(ddof=1) / np.sqrt(len(d))
    return d.mean(), d.std(ddof=1), d.mean() - half, d.mean() + half, int((d > 0).sum()), len(d)


def test_t_interval_matches_numpy_and_edge_cases():
    rng = np.random.default_rng(1)
    x = rng.normal(0.02, 0.05, 5)
    mean, sd, lo, hi, n = R.t_interval(x)
    half = T975_4 * x.std(ddof=1) / np.sqrt(5)
    assert (mean, sd, n) == pytest.approx((x.mean(), x.std(ddof=1), 5))
    assert (lo, hi) == pytest.approx((x.mean() - half, x.mean() + half), rel=1e-9)
    mean, sd, lo, hi, n = R.t_interval([0.3])
    assert mean == 0.3 and n == 1 and math.isnan(sd) and math.isnan(lo) and math.isnan(hi)
    assert R.t_interval([])[-1] == 0
    assert R.t_interval([0.1, float("nan"), 0.3])[-1] == 2  # NaN dropped


def test_aggregate_and_paired_differences_against_numpy():
    recs = _records({"mixed_marginal": {8: 0.1, 16: 0.08}, "finetune": {8: -0.05}, "mixed": {}})
    recs = [r for r in recs if not (r["variant"] == "finetune" and r["size"] == 16 and r["seed"] == 3)]  # a missing run
    for r in recs:
        r["stopped_early"] = not (r["variant"] == "finetune" and r["size"] == 8 and r["seed"] in (1, 4))
    agg = R.aggregate(recs)
    assert agg.loc[(agg["size"] == 8) & (agg["variant"] == "finetune"), "at ceiling"].tolist() == [2]
    assert agg["at ceiling"].sum() == 2
    for (size, v) in [(8, "mixed_marginal"), (16, "finetune"), (64, "target_only")]:
        row = agg[(agg["size"] == size) & (agg["variant"] == v)].iloc[0]
        x = np.array([r["bPQ"] for r in recs if r["size"] == size and r["variant"] == v])
        assert row["n_seeds"] == len(x)
        assert row["bPQ mean"] == pytest.approx(x.mean()) and row["bPQ sd"] == pytest.approx(x.std(ddof=1))
    assert list(agg["variant"][agg["size"] == 8]) == ["target_only", "finetune", "mixed", "mixed_marginal"]  # VARIANTS order
    diffs = R.paired_differences(recs)
    for size in (8, 16, 64):
        for v in ("finetune", "mixed", "mixed_marginal"):
            for m in ("bPQ", "mPQ+"):
                row = diffs[(diffs["size"] == size) & (diffs["variant"] == v) & (diffs["metric"] == m)].iloc[0]
                mean, sd, lo, hi, wins, n = _numpy_diff(recs, "monusac", size, v, m) if not (
                    v == "finetune" and size == 16) else (None,) * 6
                if v == "finetune" and size == 16:
                    assert row["n"] == 4  # paired over the seeds both have
                    continue
                assert (row["mean"], row["sd"], row["lo"], row["hi"]) == pytest.approx((mean, sd, lo, hi))
                assert (row["wins"], row["n"]) == (wins, n)
    assert "target_only" not in set(diffs["variant"])
    eff = R.option_effects(recs)
    assert set(eff["variant"]) == {"mixed_marginal"} and set(eff["reference"]) == {"mixed"}
    row = eff[(eff["size"] == 8) & (eff["metric"] == "bPQ")].iloc[0]
    assert row["mean"] == pytest.approx(_numpy_diff(recs, "monusac", 8, "mixed_marginal", "bPQ", ref="mixed")[0])


def test_answer_combining_wins_at_small_sizes_only_and_names_the_option():
    recs = _records({"mixed_marginal": {8: 0.1, 16: 0.08}, "finetune": {8: -0.05}, "mixed": {}})
    text = R.answer(recs, "monusac")
    assert text.startswith("monusac: combining beats target-only at 8, 16 tiles, not at 64 (5 seeds")
    assert "at 8 tiles mixed_marginal" in text and "at 16 tiles mixed_marginal" in text
    assert ("the option train_unannotated_mode=marginal, train_focal_tversky_uncovered_fp=True makes the difference "
            "(mixed alone does not beat target-only; mixed_marginal - mixed: ") in text
    assert "(also:" not in text  # no other variant wins
    assert "the option without the source" not in text  # target_only_marginal was not run
    # with the option alone measured too: its difference to target-only is named beside the winner
    recs3 = _records({"mixed_marginal": {8: 0.1}, "mixed": {}, "target_only_marginal": {8: 0.07}})
    d = R.paired_differences(recs3)
    row = d[(d["size"] == 8) & (d["variant"] == "target_only_marginal") & (d["metric"] == "mPQ+")].iloc[0]
    assert (f"the option without the source, target_only_marginal: mPQ+ {row['mean']:+.3f} [{row['lo']:+.3f}, "
            f"{row['hi']:+.3f}]") in R.answer(recs3, "monusac")
    # the numbers in the sentence are the paired mean and interval of the metric it names
    row = R.paired_differences(recs)
    best = row[(row["size"] == 8) & (row["variant"] == "mixed_marginal") & row["metric"].isin(R.PRIMARY)]
    best = best.sort_values("mean").iloc[-1]
    assert f"{best['metric']} {best['mean']:+.3f} [{best['lo']:+.3f}, {best['hi']:+.3f}]" in text
    # a base variant that wins too: the option is not what makes the difference
    recs2 = _records({"mixed_marginal": {8: 0.1}, "mixed": {8: 0.09}})
    text2 = R.answer(recs2, "monusac")
    assert text2.startswith("monusac: combining beats target-only at 8 tiles, not at 16, 64")
    assert "at 8 tiles mixed_marginal" in text2 and "makes the difference" not in text2
    assert "; mixed beats target-only there without the option; mixed_marginal - mixed: " in text2
    assert "(also: mixed)" in text2


def test_answer_when_nothing_wins_or_a_metric_is_worse_or_too_few_seeds():
    recs = _records({"finetune": {8: -0.05, 16: -0.04, 64: -0.02}, "mixed": {}}, noise=0.02)
    text = R.answer(recs, "monusac")
    assert text.startswith("monusac: combining does not beat target-only at any size (8, 16, 64 tiles; 5 seeds")
    assert "closest:" in text
    # better in bPQ but clearly worse in mPQ+: not a win
    recs = _records({"mixed": {8: 0.1}}, second={"mixed": {8: -0.1}})
    assert "does not beat" in R.answer(recs, "monusac")
    # target_only with an option is no combining variant, however much it wins
    recs = _records({"target_only_marginal": {8: 0.2}})
    assert "no variant that uses the source" in R.answer(recs, "monusac")
    recs = _records({"mixed": {8: 0.2}}, seeds=[0])
    assert "too few" in R.answer(recs, "monusac")
    assert "no paired results" in R.answer([], "monusac")


def test_report_files(tmp_path):
    from PIL import Image

    recs = _records({"mixed_marginal": {8: 0.1, 16: 0.08}, "finetune": {8: -0.05}, "mixed": {}})
    recs += _records({"mixed": {}}, target="pannuke", seed=3)
    paths = R.write_report(recs, tmp_path, skipped={"pannuke": {"mixed_per_sample": "no ignored pixels"}},
                           meta=dict(fingerprint="abc", sources={"monusac": "pannuke"}, sizes=[8, 16, 64], seeds=[0, 1]))
    md = (tmp_path / "summary.md").read_text()
    assert R.answer(recs, "monusac") in md and R.answer(recs, "pannuke") in md
    assert "### monusac, 8 training tiles" in md and "mixed_per_sample (no ignored pixels)" in md
    csv = (tmp_path / "summary.csv").read_text().splitlines()
    assert len(csv) == 1 + 3 * 4 + 3 * 2  # header, (target, size, variant) rows
    assert sorted(p.name for p in paths) == ["learning_curve_monusac.png", "learning_curve_pannuke.png"]
    with Image.open(paths[0]) as im:
        assert im.format == "PNG" and im.size[0] >= 800


def test_variant_rules():
    h = "default"
    assert variant_applies("finetune_equal_logit", "monusac", "pannuke", h)[0]  # epithelial above healthy/malignant
    assert variant_applies("finetune_equal_logit", "pannuke", "monusac", h)[0]  # inflammatory above lymphocyte
    ok, why = variant_applies("finetune_equal_logit", "monusac", "monuseg", h)
    assert not ok and "never coarser" in why
    assert variant_applies("target_only_marginal", "monusac", "pannuke", h)[0]
    assert not variant_applies("target_only_marginal", "pannuke", "monusac", h)[0]
    assert variant_applies("mixed_marginal", "pannuke", "monusac", h)[0]  # the source is not exhaustive
    assert not variant_applies("finetune_marginal", "consep", "pannuke", h)[0]  # both exhaustive
    clean = (None, [np.zeros((4, 4), np.int32)], [{1: 2}])
    ignored = (None, [np.array([[0, -1], [1, 1]], np.int32)], [{1: 2}])
    unknown = (None, [np.zeros((4, 4), np.int32)], [{1: None}])
    assert not variant_applies("mixed_per_sample", "monusac", "pannuke", h, {"monusac": clean, "pannuke": clean})[0]
    assert variant_applies("mixed_per_sample", "monusac", "pannuke", h, {"monusac": clean, "pannuke": ignored})[0]
    assert variant_applies("mixed_per_sample", "monusac", "pannuke", h, {"monusac": unknown, "pannuke": clean})[0]
    run, skipped = applicable_variants("pannuke", "monusac", h, {"monusac": clean, "pannuke": clean})
    assert set(skipped) == {"mixed_per_sample", "target_only_marginal", "finetune_marginal"}
    assert run == [v for v in VARIANTS if v not in skipped]
    with pytest.raises(ValueError, match="unknown variant"):
        applicable_variants("pannuke", "monusac", h, variants=["nope"])
    with pytest.raises(ValueError, match="max_epochs"):
        BenchSettings(max_epochs=0)


def test_flips_transform_image_and_labels_alike():
    from stardist_hier.experiments.claim_train import Flips

    rng = np.random.default_rng(0)
    x = rng.random((6, 6, 3))
    y = rng.integers(0, 5, (6, 6)).astype(np.int32)
    f = Flips(0)
    seen = set()
    for _ in range(40):
        x2, y2 = f(x, y)
        hit = [(k, fl) for k in range(4) for fl in (0, 1)
               if np.array_equal(y2, (lambda a: a[:, ::-1] if fl else a)(np.rot90(y, k)))
               and np.array_equal(x2, (lambda a: a[:, ::-1] if fl else a)(np.rot90(x, k, axes=(0, 1))))]
        assert hit
        seen.add(hit[0])
    assert len(seen) == 8  # every symmetry of the square


def test_best_weights_restores_the_best_epoch():
    import keras

    from stardist_hier.experiments.claim_train import BestWeights

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(keras.optimizers.Adam(0.1), "mse")
    values, snap = [3.0, 1.0, 2.0, float("nan"), 5.0], {}

    class Fake(keras.callbacks.Callback):  # the monitored value, as PerDatasetValidation adds it
        def on_epoch_end(self, epoch, logs=None):
            logs["val_loss_x"] = values[epoch]
            snap[epoch] = (model.get_weights(), [np.array(v.numpy()) for v in model.optimizer.variables])

    best = BestWeights("val_loss_x")
    x, y = np.random.default_rng(0).random((8, 3)), np.ones((8, 1))
    model.fit(x, y, epochs=5, verbose=0, callbacks=[Fake(), best])
    assert (best.best_epoch, best.epochs_run, best.best) == (2, 5, 1.0)
    for a, b in zip(model.get_weights(), snap[1][0]):
        np.testing.assert_array_equal(a, b)
    for v, b in zip(model.optimizer.variables, snap[1][1]):
        np.testing.assert_array_equal(v.numpy(), b)
    assert not np.allclose(snap[4][0][0], snap[1][0][0])  # training did move on after the best epoch
    with pytest.raises(KeyError, match="val_loss_y"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[BestWeights("val_loss_y")])


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from stardist_hier.synth import generate_all

    root = tmp_path_factory.mktemp("claim_data")
    generate_all(root, ["pannuke", "monusac"], counts=dict(train=4, val=2, test=2), size=64, seed=0, progress=False)
    return root


def _tiny_settings():
    s = BenchSettings(max_epochs=2, patience=1, steps_per_epoch=2)
    s.model.update(n_rays=8, unet_n_filter_base=8, net_conv_after_unet=8, train_batch_size=2)
    return s


def test_pooled_model_trains_as_a_fresh_one_and_pretrain_state_round_trips(tiny_data, tmp_path):
    from stardist_hier.experiments.claim import load_split_data
    from stardist_hier.experiments.claim_train import ModelPool, PretrainCache, PretrainState, train_phase
    from stardist_hier.model.build import build_model

    s = _tiny_settings()
    tr = tuple(load_split_data(tiny_data, "monusac", "train"))
    va = tuple(load_split_data(tiny_data, "monusac", "val"))
    fresh = build_model("default", s.model_params(), seed=11)
    train_phase(fresh, tr, va, "monusac", "monusac", "monusac", s, seed=5)
    pool = ModelPool(s)
    m = pool.fresh(False, (), 99)
    train_phase(m, tr[:3], va, "monusac", "monusac", "monusac", s, seed=6)  # another run first
    m = pool.fresh(False, (), 11)
    info = train_phase(m, tr, va, "monusac", "monusac", "monusac", s, seed=5)
    for a, b in zip(m.keras_model.get_weights(), fresh.keras_model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert info["epochs"] == 2 and 1 <= info["best_epoch"] <= 2 and len(info["history"]["val_loss_monusac"]) == 2
    # pre-trained states: saved, loaded, cached
    state = PretrainState.of(m, info)
    state.save(tmp_path / "s.npz")
    back = PretrainState.load(tmp_path / "s.npz")
    assert back.info["cached"] and back.label_counts == state.label_counts and back.label_counts
    for a, b in zip(back.weights + back.optimizer, state.weights + state.optimizer):
        np.testing.assert_array_equal(a, b)
    calls = []
    cache = PretrainCache(tmp_path / "cache")
    first = cache.get("pannuke", 0, False, (), lambda: calls.append(1) or state)
    assert not first.info["cached"] and cache.get("pannuke", 0, False, (), None).info["cached"]
    again = PretrainCache(tmp_path / "cache").get("pannuke", 0, False, (), None)  # from disk
    assert again.info["cached"] and calls == [1]


def test_resume_skips_finished_runs_and_settings_are_part_of_the_key(tiny_data, tmp_path, monkeypatch):
    from stardist_hier.experiments import claim_study, claim_train

    trained = []

    def fake_train(name, target, source, data, size, seed, settings, pool, cache):
        trained.append((name, size, seed))
        ph = dict(epochs=3, best_epoch=2, best_val=0.5, seconds=0.1, history={"val_loss_monusac": [1, 0.5, 0.6]})
        pre = None if name == "target_only" else dict(epochs=4, best_epoch=4, seconds=0.2, cached=False)
        return None, dict(target_phase=ph, pretrain=pre)

    def fake_eval(model, data_root, target, hierarchy):
        k = len(trained)
        return {"bPQ": 0.5 + 0.01 * k, "mPQ": 0.3, "mPQ+": 0.2, "PQ (CoNIC)": 0.5, "precision": 0.7, "recall": 0.6,
                "n_pred": 10, "n_gt": 12, "n_unannotated": 1, "set_aside": "applied"}

    monkeypatch.setattr(claim_train, "train_variant", fake_train)
    monkeypatch.setattr(claim_study, "evaluate_model", fake_eval)
    kw = dict(targets=["monusac"], sizes=[2, 4], seeds=[0, 1], variants=["target_only", "finetune"], progress=False,
              log=lambda m: None, report=False)  # the report files: test_bench_claim_quick_end_to_end
    out = tmp_path / "out"
    recs = claim_study.run_claim_study(tiny_data, out, settings=_tiny_settings(), **kw)
    assert len(recs) == len(trained) == 8
    assert [(r["seed"], r["size"], r["variant"]) for r in recs][:3] == [(0, 2, "target_only"), (0, 2, "finetune"),
                                                                        (0, 4, "target_only")]
    lines = (out / "results.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in lines] == json.loads(json.dumps(recs))
    assert json.loads((out / "settings.json").read_text())["fingerprint"] == recs[0]["fingerprint"]
    # a second call trains nothing and returns the same records
    again = claim_study.run_claim_study(tiny_data, out, settings=_tiny_settings(), **kw)
    assert len(trained) == 8 and again == json.loads(json.dumps(recs))
    # one more seed: only its runs
    claim_study.run_claim_study(tiny_data, out, settings=_tiny_settings(), **dict(kw, seeds=[0, 1, 2]))
    assert len(trained) == 12 and {t[2] for t in trained[8:]} == {2}
    # other settings: a new fingerprint, every run again, the old lines kept
    other = _tiny_settings()
    other.patience = 2
    recs2 = claim_study.run_claim_study(tiny_data, out, settings=other, **kw)
    assert len(trained) == 20 and len(recs2) == 8
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 20 and len({r["fingerprint"] for r in rows}) == 2
    with pytest.raises(ValueError, match="fewer than the largest size 8"):
        claim_study.run_claim_study(tiny_data, out, settings=other, **dict(kw, sizes=[8]))


def test_bench_claim_quick_end_to_end(tiny_data, tmp_path, capsys):
    from PIL import Image

    spec = importlib.util.spec_from_file_location("bench_claim", Path(__file__).parents[1] / "benchmarks" / "bench_claim.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "q"
    assert bench.main(["--out", str(out), "--data", str(tiny_data), "--quick", "--sizes", "2", "--n-train", "4",
                       "--n-val", "2", "--n-test", "2"]) == 0
    text = capsys.readouterr().out
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert [r["variant"] for r in rows] == bench.QUICK_VARIANTS.split(",")
    for r in rows:
        assert r["target"] == "monusac" and r["size"] == 2 and r["seed"] == 0 and r["source"] == "pannuke"
        assert 0 <= r["bPQ"] <= 1 and 1 <= r["epochs"] <= 2 and r["set_aside"] == "applied"
        assert (r["pretrain_epochs"] is None) == (r["variant"] != "finetune")
    assert "monusac: 1 seed per run so far" in text
    md = (out / "summary.md").read_text()
    assert "### monusac, 2 training tiles" in md and "(c-mg) mixed_marginal" in md
    with Image.open(out / "learning_curve_monusac.png") as im:
        assert im.format == "PNG"
    assert len(list((out / "pretrain").rglob("*.npz"))) == 1
    for argv, msg in [(["--variants", "nope"], "unknown variant"), (["--sizes", "8,128"], "smaller than the largest"),
                      (["--targets", "foo"], "no source dataset"), (["--patch", "80"], "larger than --tile")]:
        with pytest.raises(SystemExit, match=msg):
            bench.main(["--out", str(tmp_path / "bad"), *argv])
