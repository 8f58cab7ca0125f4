"""Experiment runner: paper rows at smoke scale on tiny synthetic data, shared pre-trainings,
resume after an interruption, reproducible history, missing-data messages, row scripts."""

import runpy
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from stardist_hier.experiments.paper_tables import ROWS, TABLE2, TABLE3, check_row, get_row
from stardist_hier.experiments.config import make_row_config, normalize_config
from stardist_hier.experiments.data import MissingDataError
from stardist_hier.experiments.runner import run_experiment

from experiment_data import TINY_MODEL, TINY_RUN, make_tiny_data

pytest.importorskip("tensorflow")

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
LOSSES = ["loss", "val_loss", "prob_loss", "dist_loss", "prob_class_loss", "val_prob_loss", "val_dist_loss",
          "val_prob_class_loss", "lr"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_tiny_data(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def shared_runs(data, tmp_path_factory):
    """Table III row 6 (MoNuSAC -> PanNuke, test CoNSeP), then Table II row 4 (MoNuSAC only):
    the second reuses the first's MoNuSAC pre-training."""
    out = tmp_path_factory.mktemp("results")
    t3 = run_experiment(make_row_config((3, 6), "smoke", **TINY_RUN), data, out, verbose=0)
    t2 = run_experiment(make_row_config((2, 4), "smoke", **TINY_RUN), data, out, verbose=0)
    return dict(out=out, t3=t3, t2=t2)


def test_rows_of_each_table_run_and_write_a_run_folder(shared_runs):
    t3 = shared_runs["t3"]
    d = t3.run_dir
    assert d.name == "table3_row6_monusac_then_pannuke_test_consep"
    for f in ("config.yaml", "history.csv", "metrics.csv", "run.json", "model/config.json", "model/weights_best.h5",
              "model/hierarchy.yaml", "eval/consep_test_summary.csv"):
        assert (d / f).is_file(), f
    assert not list(d.glob(".*")), "temporary files left behind"
    h = pd.read_csv(d / "history.csv")
    assert list(h["dataset"]) == ["monusac", "pannuke"] and list(h["episode"]) == [1, 2]
    assert list(h["epoch"]) == [1, 2] and {"val_loss_monusac", "val_loss_pannuke"} <= set(h.columns)
    assert np.isfinite(h[LOSSES].to_numpy()).all()
    m = pd.read_csv(d / "metrics.csv")
    assert list(m["dataset"]) == ["consep"] and m.loc[0, "label_set"] == "consep"
    assert m.loc[0, "paper_pq"] == pytest.approx(0.4485)
    for key in ("bPQ_pannuke_tissue", "mPQ_pannuke_tissue", "PQ_conic", "mPQ+_conic"):
        assert 0 <= m.loc[0, key] <= 1 or np.isnan(m.loc[0, key])
    cfg = yaml.safe_load((d / "config.yaml").read_text())
    assert cfg["episodes"][0]["paper_epochs"] == 175 and cfg["model"]["n_rays"] == 8
    assert cfg["splits_used"]["consep"] == {"test": "test"} and cfg["paper_row"]["table"] == 3
    # the model folder loads in stock StarDist too
    from stardist.models import StarDist2D

    stock = StarDist2D(None, "model", str(d))
    assert stock.config.n_classes == 12
    t2 = shared_runs["t2"]
    assert t2.metrics.loc[0, "dataset"] == "monusac" and t2.run_dir.name == "table2_row4_monusac_only"


def test_shared_pretraining_is_reused(shared_runs):
    t3, t2 = shared_runs["t3"], shared_runs["t2"]
    assert t3.trained_epochs == 2 and t2.trained_epochs == 0
    assert t2.info["episodes"][0]["reused"] and t2.info["episodes"][0]["cache"] == t3.info["episodes"][0]["cache"]
    assert t2.history["reused"].all() and not t3.history["reused"].any()
    pd.testing.assert_frame_equal(t2.history[LOSSES].iloc[:1], t3.history[LOSSES].iloc[:1])
    episodes = sorted(p.name for p in (shared_runs["out"] / "cache").iterdir())
    assert len(episodes) == 2 and episodes[0].startswith("1-monusac-1ep-") and episodes[1].startswith("2-pannuke-1ep-")
    # a finished run is not run again
    again = run_experiment(make_row_config((2, 4), "smoke", **TINY_RUN), t2.config["data_root"], shared_runs["out"],
                           verbose=0)
    assert again.info == t2.info


def test_complete_run_is_not_reused_for_other_data(shared_runs, data, tmp_path):
    """Same config and --out, other data (e.g. real data after the synthetic stand-ins)."""
    from stardist_hier import patches as P

    other = shutil.copytree(data, tmp_path / "other")
    idx = P.read_index(other, "monusac")
    idx["source"] = "another download"
    P.write_index(other, "monusac", idx)
    with pytest.raises(FileExistsError, match="another config"):
        run_experiment(make_row_config((2, 4), "smoke", **TINY_RUN), other, shared_runs["out"], verbose=0)
    assert (shared_runs["t2"].run_dir / "run.json").is_file()


def _single(name, epochs=2):
    return normalize_config(dict(name=name, episodes=[dict(dataset="consep", epochs=epochs)], test=["consep"],
                                 steps_per_epoch=2, model=TINY_MODEL, seed=3, augment={}))


@pytest.fixture(scope="module")
def fresh_twice(data, tmp_path_factory):
    a = run_experiment(_single("repro"), data, tmp_path_factory.mktemp("a"), verbose=0)
    b = run_experiment(_single("repro"), data, tmp_path_factory.mktemp("b"), verbose=0)
    return a, b


def test_same_seed_reproduces_history(fresh_twice):
    a, b = fresh_twice
    assert len(a.history) == 2 and a.trained_epochs == b.trained_epochs == 2
    pd.testing.assert_frame_equal(a.history[LOSSES], b.history[LOSSES])
    pd.testing.assert_frame_equal(a.metrics, b.metrics)


def test_interrupted_run_resumes_from_last_saved_epoch(data, tmp_path, fresh_twice):
    class Stop(Exception):
        pass

    def interrupt(info):
        if info["epoch"] == 1:
            raise Stop

    with pytest.raises(Stop):
        run_experiment(_single("repro"), data, tmp_path, verbose=0, on_epoch_end=interrupt)
    run_dir = tmp_path / "repro"
    assert (run_dir / "config.yaml").is_file() and not (run_dir / "run.json").exists()
    ckpt = next((tmp_path / "cache").iterdir()) / "checkpoint"
    assert sorted(p.name for p in ckpt.iterdir() if not p.name.startswith(".")) == [
        "history_00001.csv", "optimizer_00001.npz", "state.json", "weights_best_00001.h5", "weights_last_00001.h5"]
    seen = []
    resumed = run_experiment(_single("repro"), data, tmp_path, verbose=0, on_epoch_end=seen.append)
    assert [s["epoch"] for s in seen] == [2] and resumed.trained_epochs == 1
    assert list(resumed.history["episode_epoch"]) == [1, 2]
    # the epoch before the interruption is the one an uninterrupted run trains
    pd.testing.assert_frame_equal(resumed.history[LOSSES].iloc[:1], fresh_twice[0].history[LOSSES].iloc[:1])
    assert not ckpt.exists(), "the checkpoint folder is removed once the episode is done"


def test_missing_data_is_reported_before_training(tmp_path):
    root = make_tiny_data(tmp_path / "data", datasets=("consep",))
    out = tmp_path / "out"
    with pytest.raises(MissingDataError) as e:
        run_experiment(make_row_config((2, 3), "smoke", **TINY_RUN), root, out, verbose=0)
    msg = str(e.value)
    assert "dataset 'pannuke' is not prepared" in msg and "nothing was trained" in msg
    assert f"stardist-hier prepare pannuke --src <folder of the pannuke download> --out {root.resolve()}" in msg
    assert not out.exists() or not any(out.rglob("*.h5"))
    (root / "consep" / "test" / "masks" / "consep_test_00001.tif").unlink()
    with pytest.raises(MissingDataError, match=r"split 'test' of 'consep' is incomplete: 1 of 2 patches"):
        run_experiment(dict(_single("x"), episodes=[dict(dataset="consep", epochs=1)]), root, out, verbose=0)
    shutil.rmtree(root / "consep" / "val")
    with pytest.raises(MissingDataError, match=r"lacks split\(s\) for train/val/test .*found \['test', 'train'\]"):
        run_experiment(make_row_config((2, 1), "smoke", **TINY_RUN), root, out, verbose=0)
    with pytest.raises(MissingDataError, match=r"dataset 'lizzard' is not prepared.*nor is 'lizzard' a label set "
                                               r"of the hierarchy \(did you mean 'lizard'\?\)"):
        run_experiment(dict(_single("x"), test=["lizzard"]), root, out, verbose=0)


def test_paper_tables_and_row_scripts():
    assert len(TABLE2) == 9 and len(TABLE3) == 8 and len(ROWS) == 17
    assert get_row(2, 6).episodes == [("pannuke", 250), ("monusac", 130)] and get_row(3, 1).finetune is None
    scripts = sorted(p.name for p in EXPERIMENTS.glob("table*_row*.py"))
    assert scripts == sorted(f"{r.name}.py" for r in ROWS)
    for r in ROWS:
        row = runpy.run_path(str(EXPERIMENTS / f"{r.name}.py"), run_name="not_main")["ROW"]
        assert check_row(**row) == r
    with pytest.raises(ValueError, match="Table 2 row 1 is"):
        check_row(2, 1, ("consep", 99), None, "consep", 0.5404)
    paper = make_row_config((2, 6), "paper")
    assert [e["epochs"] for e in paper["episodes"]] == [250, 130] and paper["model"]["n_rays"] == 64
    smoke = make_row_config((2, 6), "smoke")
    assert [e["epochs"] for e in smoke["episodes"]] == [5, 3]
    with pytest.raises(ValueError, match="unknown key"):
        normalize_config(dict(_single("x"), epochz=3))
    # --rows naming no paper row: a usage error, not a traceback
    from stardist_hier.commands.replay import run_all_main

    for bad in ("2:10", "table9_row1_x", "2:x"):
        with pytest.raises(SystemExit) as e:
            run_all_main(["--data-root", "nowhere", "--rows", bad])
        assert e.value.code == 2
    # no test set: refused before training (it used to crash after it, building metrics.csv)
    with pytest.raises(ValueError, match="at least one test dataset"):
        normalize_config(dict(_single("x"), test=[]))


def test_monitor_state_plateau_and_early_stopping():
    from stardist_hier.experiments.checkpoints import update_monitor_state

    cfg = dict(reduce_lr=dict(factor=0.5, patience=2, min_lr=1e-4), early_stopping_patience=3)
    state = dict(best=float("inf"), best_epoch=None, wait=0, lr_wait=0, stopped_early=False)
    lr, seen = 1e-3, []
    for epoch, loss in enumerate([3.0, 2.0, 2.5, 2.6, 2.7, 1.0], 1):
        improved, new_lr, stop = update_monitor_state(state, loss, epoch, lr, cfg)
        lr = new_lr or lr
        seen.append((improved, new_lr, stop))
        if stop:
            break
    assert seen == [(True, None, False), (True, None, False), (False, None, False), (False, 5e-4, False),
                    (False, None, True)]
    assert state["best"] == 2.0 and state["best_epoch"] == 2 and state["stopped_early"]
    assert state["stop_reason"] == "early_stopping_patience: val_loss has not improved for 3 epochs"
    # NaN never counts as an improvement
    s2 = dict(best=float("inf"), best_epoch=None, wait=0, lr_wait=0, stopped_early=False)
    assert update_monitor_state(s2, float("nan"), 1, 1e-3, dict(reduce_lr=None, early_stopping_patience=None)) == (
        False, None, False)
    assert "stop_reason" not in s2


def test_runner_owns_stopping_and_plateau_model_keys_are_refused():
    for key, top in (("train_early_stopping_patience", "early_stopping_patience"), ("train_reduce_lr", "reduce_lr")):
        bad = dict(name="x", episodes=[dict(dataset="consep", epochs=1)], test=["consep"],
                   model=dict(TINY_MODEL, **{key: 3 if key.endswith("patience") else dict(factor=0.5, patience=2)}))
        with pytest.raises(ValueError, match=rf"model\.{key} is not allowed.*top-level key '{top}'"):
            normalize_config(bad)
    # null is what the runner itself sets: accepted, and stock StarDist's default plateau
    # (train_reduce_lr on unless said otherwise) is switched off in every run config
    cfg = normalize_config(dict(name="x", episodes=[dict(dataset="consep", epochs=1)], test=["consep"],
                                model=dict(TINY_MODEL, train_early_stopping_patience=None)))
    assert cfg["model"]["train_reduce_lr"] is None and "train_early_stopping_patience" not in cfg["model"]
    assert normalize_config(cfg) == cfg
    for row in ((2, 6), (3, 2)):
        for scale in ("paper", "smoke"):
            assert make_row_config(row, scale)["model"]["train_reduce_lr"] is None
    # a model built by other means is refused before it trains
    from stardist_hier.experiments.checkpoints import check_no_keras_monitors
    from stardist_hier.model.build import build_model

    m = build_model("default", dict(TINY_MODEL))  # stock default: train_reduce_lr on
    with pytest.raises(ValueError, match="train_reduce_lr=.*top-level 'reduce_lr'"):
        check_no_keras_monitors(m)


def test_a_keras_stop_is_recorded_and_a_resume_does_not_train_on(data, tmp_path, monkeypatch):
    """Keras callbacks of fit: none of Keras' own monitors; a stop by another callback marks
    the episode stopped early before anything else, so a run resumed after a crash keeps it."""
    import keras

    import stardist_hier.experiments.runner as runner_mod

    seen_callbacks = []
    fit = keras.Model.fit

    class StopAfterOne(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            self.model.stop_training = True

    def spy_fit(self, *args, callbacks=None, **kwargs):
        seen_callbacks.extend(type(cb).__name__ for cb in callbacks)
        return fit(self, *args, callbacks=list(callbacks) + [StopAfterOne()], **kwargs)

    class Crash(Exception):
        pass

    def crash(*args, **kwargs):
        raise Crash

    cfg = _single("stopped", epochs=3)
    assert "train_reduce_lr" not in TINY_MODEL  # so the test sees stock StarDist's default
    with monkeypatch.context() as m:
        m.setattr(keras.Model, "fit", spy_fit)
        m.setattr(runner_mod, "finish_episode", crash)
        with pytest.raises(Crash):
            run_experiment(cfg, data, tmp_path, verbose=0)
    assert seen_callbacks and not {"EarlyStopping", "ReduceLROnPlateau"} & set(seen_callbacks), seen_callbacks
    ckpt = next((tmp_path / "cache").iterdir()) / "checkpoint"
    state = yaml.safe_load((ckpt / "state.json").read_text())
    assert state["epochs_done"] == 1 and state["stopped_early"] is True
    assert "without the runner stopping it" in state["stop_reason"]
    seen = []
    res = run_experiment(cfg, data, tmp_path, verbose=0, on_epoch_end=seen.append)
    assert seen == [] and len(res.history) == 1
    ep = res.info["episodes"][0]
    assert ep["stopped_early"] is True and ep["epochs_run"] == 1 and ep["epochs"] == 3
    assert "stop_training" in ep["stop_reason"]


def test_replay_commands_share_the_flag_scheme_and_report_user_errors_in_one_line(tmp_path, capsys):
    from stardist_hier.commands.replay import row_main, run_all_main

    missing = ["--data-root", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")]
    assert run_all_main([*missing, "-q", "--rows", "2:1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot start: the prepared data is missing") and "Traceback" not in err
    assert row_main(**dict(table=2, row=1, pretrain=("consep", 100), finetune=None, test="consep", pq=0.5404),
                    argv=[*missing, "--no-progress"]) == 1  # the old spelling of --quiet still works
    assert capsys.readouterr().err.startswith("error: cannot start")
    with pytest.raises(SystemExit) as e:
        run_all_main([*missing, "-q", "-v"])
    assert e.value.code == 2


def test_episode_keys_keep_the_old_form_and_include_mix_weights(data):
    """A one-dataset episode at the defaults keys its cache as before mixes existed (existing
    caches and run folders stay valid); mix probabilities, validation sets, monitor and
    workers are part of the key once they are used."""
    from stardist_hier.experiments.checkpoints import episode_key, update_monitor_state
    from stardist_hier.experiments.config import config_hash, identity
    from stardist_hier.experiments.data import check_data

    row = make_row_config((2, 6), "smoke", **TINY_RUN)
    assert not {"monitor", "workers", "untrained_test_classes"} & set(identity(row))
    row["_splits"] = dict(pannuke=dict(train="train", val="val"), monusac=dict(train="train", val="val"))
    key = episode_key(row, data, 1)
    assert set(key) == {"format", "episodes", "seed", "model", "augment", "steps_per_epoch", "early_stopping_patience",
                        "reduce_lr", "restore_best", "deterministic", "max_images", "hierarchy"}
    assert [set(e) for e in key["episodes"]] == [{"dataset", "epochs", "data", "splits"}] * 2

    def mix_key(weights, **extra):
        cfg = normalize_config(dict(name="m", episodes=[dict(mix=weights, epochs=1, **extra)], test=["consep"],
                                    model=TINY_MODEL))
        cfg["_splits"] = check_data(data, cfg)
        return config_hash(episode_key(cfg, data, 0))

    assert mix_key(dict(consep=3, pannuke=1)) == mix_key(dict(consep=0.75, pannuke=0.25))
    assert mix_key(dict(consep=3, pannuke=1)) != mix_key(dict(consep=1, pannuke=1))
    assert mix_key(dict(consep=1, pannuke=1)) != mix_key(dict(consep=1, pannuke=1), monitor="val_loss_consep")
    assert mix_key(dict(consep=1, pannuke=1)) != mix_key(dict(consep=1, pannuke=1), validate=["consep"])
    cfg = normalize_config(dict(name="w", episodes=[dict(dataset="consep", epochs=1)], test=["consep"], workers=2))
    cfg["_splits"] = check_data(data, cfg)
    assert episode_key(cfg, data, 0)["workers"] == 2
    state = dict(best=1.0, best_epoch=1, wait=0, lr_wait=0, stopped_early=False)
    assert update_monitor_state(state, 2.0, 2, 1e-3, dict(early_stopping_patience=1), "val_loss_mine")[2]
    assert state["stop_reason"] == "early_stopping_patience: val_loss_mine has not improved for 1 epochs"


def test_lizard_folds_are_found_with_splits_auto(tmp_path):
    """Lizard prepared with its info.csv has fold1..fold3 only: 'auto' uses them, as for PanNuke."""
    import stardist_hier.patches as P
    from stardist_hier.experiments.data import resolve_splits

    for split in ("fold1", "fold2", "fold3"):
        P.write_patch(tmp_path, "lizard", split, f"{split}_0", np.zeros((256, 256, 3), np.uint8),
                      np.zeros((256, 256, 2), np.int32))
    assert resolve_splits(tmp_path, "lizard") == dict(train="fold1", val="fold2", test="fold3")
    with pytest.raises(MissingDataError, match="lacks split"):
        resolve_splits(tmp_path, "consep")


def test_runner_trains_on_raw_images_normalised_per_patch(data, monkeypatch):
    """The runner keeps uint8 images in memory and lets train(normalize=True) normalise each patch."""
    from stardist_hier.model import HierStarDist2D

    seen = {}

    def spy(self, X, Y, validation_data, **kwargs):
        seen.update(dtype=X[0].dtype, val_dtype=validation_data[0][0].dtype, normalize=kwargs.get("normalize"))
        raise KeyboardInterrupt  # stop before training: only the call is checked

    monkeypatch.setattr(HierStarDist2D, "train", spy)
    cfg = make_row_config((2, 4), "smoke", **TINY_RUN)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, data, data.parent / "raw_runs", verbose=0)
    assert seen == dict(dtype=np.uint8, val_dtype=np.uint8, normalize=True)


def test_model_stores_the_pixel_size_of_its_training_data(shared_runs):
    """Published datasets of one pixel size (0.25 µm here): the model keeps it; mixed or unknown: none."""
    from stardist_hier.experiments.runner import model_params

    from stardist_hier.model.folder import read_config

    assert read_config(Path(shared_runs["t3"].run_dir) / "model").pixel_size_um == 0.25
    cfg = make_row_config((3, 6), "smoke", **TINY_RUN)
    assert model_params(cfg)["pixel_size_um"] == 0.25
    given = dict(cfg, model=dict(cfg["model"], pixel_size_um=0.3))
    assert model_params(given)["pixel_size_um"] == 0.3
    with_lizard = dict(cfg, episodes=[dict(cfg["episodes"][0], dataset="lizard")] + cfg["episodes"][1:])
    assert "pixel_size_um" not in model_params(with_lizard)
    own = dict(cfg, episodes=[dict(cfg["episodes"][0], dataset="mine")])
    assert "pixel_size_um" not in model_params(own)
