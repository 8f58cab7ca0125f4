"""`stardist-hier train CONFIG.yaml`: weighted mixes (realised proportions), per-dataset
validation and a nameable monitor, every bad input reported at once before training, resume
after an interruption, the loss-curve PNG and the one-page summary."""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from stardist_hier.cli import main
from stardist_hier.experiments.config import (RunConfigError, load_run_config, mix_probabilities, normalize_config)
from stardist_hier.experiments.mixing import apportion, episode_training_data, mix_indices

from experiment_data import TINY_MODEL, make_tiny_data

CONFIGS = Path(__file__).resolve().parents[1] / "experiments" / "configs"


# ----------------------------------------------------------------------------------------
# mixing: the list of indices against a plain reference, then through StarDist's sampler


def _reference_counts(sizes, probs):
    """Plain reference: N = max ceil(n / p); entries per group by largest remainders."""
    p = np.asarray(probs, float) / np.sum(probs)
    n = max(math.ceil(s / q - 1e-9) for s, q in zip(sizes, p))
    exact = p * n
    base = np.floor(exact + 1e-9).astype(int)
    for k in sorted(range(len(p)), key=lambda k: (-(exact[k] - base[k]), k))[: n - base.sum()]:
        base[k] += 1
    return n, base


@pytest.mark.parametrize("case", range(30))
def test_mix_indices_against_a_reference(case):
    rng = np.random.default_rng(case)
    k = int(rng.integers(2, 5))
    sizes = rng.integers(1, 40, size=k).tolist()
    probs = rng.uniform(0.02, 1, size=k)
    if case == 0:  # equal sizes and weights: every image once, as a plain concatenation
        sizes, probs = [5, 5], np.array([1.0, 1.0])
    if case == 1:  # a big set down-weighted
        sizes, probs = [3, 200], np.array([0.9, 0.1])
    k = len(sizes)
    starts = np.cumsum([0] + sizes)
    groups = [list(range(starts[j], starts[j + 1])) for j in range(k)]
    idx = mix_indices(groups, probs, seed=case)
    n, counts = _reference_counts(sizes, probs)
    assert len(idx) == n == sum(counts)
    owner = np.searchsorted(starts, idx, side="right") - 1
    got = np.bincount(owner, minlength=k)
    np.testing.assert_array_equal(got, counts)
    p = probs / probs.sum()
    assert np.all(np.abs(got / n - p) < 1 / n + 1e-12)
    reps = np.bincount(idx, minlength=starts[-1])
    for j in range(k):  # every image listed, floor or floor + 1 times
        r = reps[starts[j]:starts[j + 1]]
        assert r.min() >= 1 and r.max() - r.min() <= 1 and r.sum() == counts[j]
    if case == 0:
        assert idx == list(range(10))
    assert mix_indices(groups, probs, seed=case) == idx  # seeded


def test_mix_edge_cases():
    assert mix_indices([[3, 1, 1]], [0.2]) == [3, 1, 1]  # one dataset: unchanged
    assert apportion(10, [1, 1, 1]) == [4, 3, 3]
    for bad in ([0.5, 0], [0.5, -1], [0.5, float("nan")]):
        with pytest.raises(ValueError, match="positive"):
            mix_indices([[0], [1]], bad)
    with pytest.raises(ValueError, match="at least one training image"):
        mix_indices([[0], []], [0.5, 0.5])


def _disc_images(n, value, size=32):
    yy, xx = np.mgrid[:size, :size]
    X, Y, C = [], [], []
    for k in range(n):
        y = (((yy - 12 - k % 5) ** 2 + (xx - 15) ** 2) < 25).astype(np.int32)
        y[20:26, 4:10] = 2
        X.append(np.full((size, size, 3), value, np.float32))
        Y.append(y)
        C.append({1: 1, 2: 2})
    return X, Y, C


@pytest.mark.parametrize("augment", [None, {}])
def test_realised_proportions_of_drawn_patches(augment):
    """Draw batches with the model's own data generator: each drawn patch's dataset is read from
    its pixel values; the share follows the weights, not the sizes (2 vs 6 images)."""
    from stardist_hier.hierarchy import ClassHierarchy
    from stardist_hier.model.targets import HierStarDistData2D

    a, b = _disc_images(2, 0.2), _disc_images(6, 0.8)
    parts = [("pannuke", *a), ("consep", *b)]
    X, Y, C, names, augmenter, info = episode_training_data(parts, [0.8, 0.2], augment, seed=3)
    assert info["pannuke"]["images"] == 2 and info["consep"]["images"] == 6
    assert abs(info["pannuke"]["share"] - 0.8) < 1 / len(X) + 1e-12
    assert [n for n, x in zip(names, X) if x[0, 0, 0] == np.float32(0.2)] == [n for n in names if n == "pannuke"]
    # classes reach training in the datasets' own ids, whatever the augmenter's coding
    assert all(set(c.values()) == {1, 2} for c in C)
    if augment is not None:
        coded = {n: set() for n in ("pannuke", "consep")}
        for y, n in zip(Y, names):
            coded[n] |= augmenter.classes_in(y)
        assert coded["pannuke"] == {1, 2} and coded["consep"] == {3, 4}  # one id range per dataset
    h = ClassHierarchy.default()
    gen = HierStarDistData2D(X, Y, classes=C, label_sets=names, batch_size=4, n_rays=8, length=100, hierarchy=h,
                             patch_size=(16, 16), grid=(2, 2), augmenter=augmenter)
    drawn = np.concatenate([gen[i][0][0][:, 0, 0, 0] for i in range(100)])
    share = np.mean(np.isclose(drawn, 0.2, atol=0.05) if augment is None else drawn < 0.5)
    assert abs(share - 0.8) < 0.05, share  # a plain concatenation gives 0.25


# ----------------------------------------------------------------------------------------
# configs


def test_mix_weights_are_relative_and_a_one_dataset_mix_is_that_dataset():
    cfg = normalize_config(dict(name="x", episodes=[dict(mix=dict(a=3, b=1), epochs=1), dict(mix=dict(c=2), epochs=1)],
                                test=["a"]))
    assert mix_probabilities(cfg["episodes"][0]) == {"a": 0.75, "b": 0.25}
    assert cfg["episodes"][1] == dict(dataset="c", epochs=1)
    with pytest.raises(RunConfigError) as e:
        normalize_config(dict(name="x", episodes=[dict(mix={}, epochs=1), dict(dataset="a", mix=dict(b=1), epochs=1),
                                                  dict(mix=dict(a=True), epochs=1.5)], test=["a"]))
    msg = str(e.value)
    assert "episode 1: mix must map at least one dataset" in msg
    assert "episode 2: give exactly one of 'dataset'" in msg
    assert "episode 3: mix weight of 'a' must be a positive number, got True" in msg
    assert "episode 3: epochs must be an integer >= 1, got 1.5" in msg


def test_example_configs_are_valid():
    for name in ("example_mix.yaml", "example_synthetic.yaml"):
        cfg = normalize_config(load_run_config(CONFIGS / name))
        assert cfg["episodes"] and cfg["test"]
    cfg = load_run_config(CONFIGS / "example_mix.yaml")
    assert cfg["hierarchy"] == str((CONFIGS / "my_hierarchy.yaml").resolve())
    from stardist_hier.hierarchy import ClassHierarchy

    assert "mine" in ClassHierarchy.resolve(cfg["hierarchy"]).label_sets
    assert normalize_config(cfg)["episodes"][0]["mix"] == {"pannuke": 0.6, "lizard": 0.4}


# ----------------------------------------------------------------------------------------
# the command


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = make_tiny_data(tmp_path_factory.mktemp("data"))
    # a user's dataset prepared with another dataset's label set: its losses and metrics
    # carry its own name ('mine', an alias of 'consep' in the run's hierarchy)
    shutil.copytree(root / "consep", root / "mine")
    idx = pd.read_csv(root / "mine" / "index.csv")
    assert set(idx["label_set"]) == {"consep"}
    return root


def _write(path, cfg):
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _err(capsys):
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return err


def test_every_bad_input_is_reported_at_once_before_training(data, tmp_path, capsys):
    (tmp_path / "h.yaml").write_text("extends: default\nlabel_sets:\n  narrow:\n    1: epithelial\n    2: lymphocyte\n")
    # a dataset whose classes the label set does not cover (its index says label set 'narrow')
    shutil.copytree(data / "pannuke", tmp_path / "d" / "pannuke")
    shutil.copytree(data / "monusac", tmp_path / "d" / "monusac")
    shutil.copytree(data / "consep", tmp_path / "d" / "wrong")
    idx = pd.read_csv(tmp_path / "d" / "wrong" / "index.csv")
    idx["label_set"] = "narrow"
    idx.to_csv(tmp_path / "d" / "wrong" / "index.csv", index=False)
    cfg = dict(name="bad", hierarchy="h.yaml", data_root="d", steps_pre_epoch=3, workers=0,
               episodes=[dict(mix=dict(pannuke=0.5, consep=-1, lizard=0.5), epochs=1),
                         dict(dataset="wrong", epochs=1, monitor="val_loss_pannuke")],
               test=["monusac"], model=dict(TINY_MODEL, train_patchsize=[64, 64]))
    out = tmp_path / "out"
    assert main(["train", str(_write(tmp_path / "bad.yaml", cfg)), "--out", str(out)]) == 1
    err = _err(capsys)
    assert err.startswith(f"error: {tmp_path / 'bad.yaml'}: ") and "nothing was trained" in err
    for part in ("unknown key 'steps_pre_epoch' (did you mean 'steps_per_epoch'?)",
                 "model: unknown key 'train_patchsize' (did you mean 'train_patch_size'?)",
                 "episode 1: mix weight of 'consep' must be a positive number, got -1",
                 "workers must be >= 1, got 0",
                 "episode 2: monitor 'val_loss_pannuke' is not one of its validation losses "
                 "['val_loss', 'val_loss_wrong']",
                 f"dataset 'consep' is not prepared under {tmp_path / 'd'}",
                 f"stardist-hier prepare lizard --src <folder of the lizard download> --out {tmp_path / 'd'}",
                 "dataset 'wrong': class id(s) 3 (", "are not covered by its label set 'narrow'"):
        assert part in err, (part, err)
    assert not out.exists()
    # a test set finer than the training labels: MoNuSAC's immune cells after PanNuke's
    # 'inflammatory' only (the paper's rows use untrained_test_classes: warn)
    ok = dict(name="finer", episodes=[dict(dataset="pannuke", epochs=1)], test=["monusac"], model=TINY_MODEL)
    assert main(["train", str(_write(tmp_path / "finer.yaml", ok)), "--data-root", str(data), "--out", str(out)]) == 1
    err = _err(capsys)
    assert "test set 'monusac': class(es) 2 = lymphocyte, 3 = neutrophil, 4 = macrophage" in err
    assert "cannot score them" in err and "untrained_test_classes: warn" in err
    assert not out.exists()
    assert main(["train", str(_write(tmp_path / "finer.yaml", dict(ok, untrained_test_classes="warn"))),
                 "--data-root", str(data), "--check"]) == 0
    o = capsys.readouterr().out
    assert "OK: run 'finer': 1 epoch on pannuke; test monusac" in o and "note: test set 'monusac'" in o
    # no data root at all; a file that is not YAML
    assert main(["train", str(_write(tmp_path / "nodata.yaml", ok))]) == 1
    assert "no data root: set data_root in the config" in _err(capsys)
    (tmp_path / "broken.yaml").write_text("name: [unclosed\n")
    assert main(["train", str(tmp_path / "broken.yaml"), "--data-root", str(data)]) == 1
    assert "broken.yaml: not valid YAML" in _err(capsys)


def test_train_mix_then_one_dataset_interrupt_resume_summary(data, tmp_path, monkeypatch, capsys):
    import stardist_hier.experiments.runner as runner_mod
    from stardist_hier.model import HierStarDist2D

    cfg = dict(name="mixrun", seed=2, data_root=str(data), steps_per_epoch=2, workers=2,
               episodes=[dict(mix=dict(pannuke=3, consep=1), epochs=1),
                         dict(dataset="monusac", epochs=2, validate=["monusac", "mine"], monitor="val_loss_mine")],
               test=["monusac", "mine"], untrained_test_classes="warn", model=TINY_MODEL)
    path = _write(tmp_path / "run.yaml", cfg)
    out = tmp_path / "runs"
    real_run, real_train = runner_mod.run_experiment, HierStarDist2D.train
    seen, calls = [], []

    def interrupt(info):
        seen.append((info["episode"], info["dataset"], info["epoch"]))
        if info["episode"] == 2 and info["epoch"] == 1:
            raise KeyboardInterrupt

    def spy_train(self, X, Y, validation_data, **kw):
        calls.append(dict(workers=kw.get("workers"), dataset=kw.get("dataset"), val=validation_data[3:]))
        return real_train(self, X, Y, validation_data, **kw)

    monkeypatch.setattr(HierStarDist2D, "train", spy_train)
    monkeypatch.setattr(runner_mod, "run_experiment", lambda *a, **k: real_run(*a, on_epoch_end=interrupt, **k))
    assert main(["train", str(path), "--out", str(out), "-q"]) == 130
    assert capsys.readouterr().err.strip().endswith("interrupted")
    assert seen == [(1, "pannuke+consep", 1), (2, "monusac", 1)]
    assert not (out / "mixrun" / "run.json").exists()
    # the mix: one dataset name per training image, weights 3:1 realised in the list
    mixed = calls[0]["dataset"]
    assert calls[0]["workers"] == 2 and set(mixed) == {"pannuke", "consep"}
    assert abs(mixed.count("pannuke") / len(mixed) - 0.75) < 1 / len(mixed) + 1e-12
    assert calls[1]["val"] and set(calls[1]["val"][0]) == {"monusac", "mine"}
    seen.clear()
    assert main(["train", str(path), "--out", str(out), "-q"]) == 0
    printed = capsys.readouterr().out
    assert seen == [(2, "monusac", 2)], "resumed after the saved epoch"
    run = out / "mixrun"
    assert f"summary: {run / 'summary.md'}" in printed and "bPQ" in printed
    h = pd.read_csv(run / "history.csv")
    assert list(h["dataset"]) == ["pannuke+consep", "monusac", "monusac"] and list(h["episode_epoch"]) == [1, 1, 2]
    assert h.loc[0, ["val_loss_pannuke", "val_loss_consep"]].notna().all() and np.isnan(h.loc[0, "val_loss_mine"])
    assert h.loc[1:, ["val_loss_monusac", "val_loss_mine"]].notna().all().all()
    info = json.loads((run / "run.json").read_text())
    e1, e2 = info["episodes"]
    assert e1["mix"] == {"pannuke": 0.75, "consep": 0.25} and abs(e1["mix_realised"]["pannuke"] - 0.75) < 0.1
    # the monitored quantity chose the best epoch: val_loss_mine, not val_loss
    ep2 = h[h["episode"] == 2]
    assert e2["monitor"] == "val_loss_mine" and e2["best"] == pytest.approx(ep2["val_loss_mine"].min())
    assert e2["best_epoch"] == int(ep2.loc[ep2["val_loss_mine"].idxmin(), "episode_epoch"])
    assert e2["trained_epochs"] == 1 and e1["trained_epochs"] == 0 and e1["reused"]
    assert info["datasets"]["pannuke"] == dict(label_set="pannuke", train=4, val=2)  # also for a reused episode
    m = pd.read_csv(run / "metrics.csv")
    assert list(m["dataset"]) == ["monusac", "mine"] and list(m["label_set"]) == ["monusac", "consep"]
    assert info["datasets"]["mine"] == dict(label_set="consep", val=2, test=2) and info["notes"] == []
    # the final model answers in the dataset's name too (an alias label set of the run's hierarchy)
    from stardist_hier.hierarchy import ClassHierarchy

    saved = ClassHierarchy.from_yaml(run / "model" / "hierarchy.yaml")
    assert saved.label_set("mine").nodes == saved.label_set("consep").nodes
    md = (run / "summary.md").read_text()
    for part in ("# Run `mixrun`", "![loss curves](loss_curves.png)", "| test set | label set | images | bPQ | mPQ |",
                 "pannuke p=0.750", "val_loss_mine", "| mine | consep |", "## Config"):
        assert part in md, part
    html = (run / "summary.html").read_text()
    assert "<img src=\"loss_curves.png\"" in html and "<h2>Episodes</h2>" in html
    png = (run / "loss_curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10000
    # a finished run is not trained again
    seen.clear()
    assert main(["train", str(path), "--out", str(out), "-q"]) == 0 and seen == []
