"""Run configs of the experiment runner: keys, defaults, validation, and the two scales.

A run is described by a config (a dict, or the YAML file of ``stardist-hier train``; saved
as ``config.yaml`` in the run folder)::

    name: pannuke_lizard_then_mine     # the run folder <out>/<name>
    scale: custom                      # paper / smoke for the paper's rows (see SCALES)
    seed: 0                            # weights, patches, augmentation, mixing
    hierarchy: default                 # or a YAML path (may extend the default hierarchy)
    episodes:                          # trained in order, each continuing from the last
      - {mix: {pannuke: 0.6, lizard: 0.4}, epochs: 200}   # several datasets in every batch
      - {dataset: mine, epochs: 50, monitor: val_loss_mine}   # one dataset (paper IV-E)
    test: [mine, monusac]              # scored at their own label sets
    monitor: val_loss                  # default quantity watched (per episode: monitor)
    workers: 1                         # processes building training batches (HierStarDist2D.train)
    steps_per_epoch: 100
    early_stopping_patience: null      # stop an episode when its monitor stalls (optional)
    reduce_lr: {factor: 0.5, patience: 40, min_lr: 0.0}   # or null
    restore_best: true                 # end each episode with its best-monitor weights
    optimize_thresholds: true          # tune prob/NMS thresholds on the last episode's validation sets
    threshold_max_images: 200          # ... on at most this many of its images (null: all)
    max_images: {train: null, val: null, test: null}      # per dataset and split; null = all
    splits: auto                       # or {dataset: {train: .., val: .., test: ..}}
    untrained_test_classes: error      # or warn (see below)
    model: {...}                       # HierConfig2D parameters
    augment: {...}                     # AugmentConfig parameters (absent: defaults), or null for none

Keys
----
``name`` (required)
    Name of the run folder (a plain folder name).
``episodes`` (required)
    A list; each episode is a mapping with exactly one of

    * ``dataset: NAME``: train on that dataset's ``train`` split (the paper's protocol);
    * ``mix: {NAME: WEIGHT, ...}``: train on several datasets mixed inside every batch,
      each image keeping its own label set. ``WEIGHT`` is a positive number; the weights
      are divided by their sum, and each is then **the probability that a drawn training
      patch comes from that dataset**, whatever the datasets' sizes (``{a: 3, b: 1}`` is
      ``{a: 0.75, b: 0.25}``). Within a dataset its images are drawn as in a one-dataset
      episode (the augmentation's rare-class oversampling included). How it is realised:
      :func:`stardist_hier.experiments.mixing.mix_indices`.

    and ``epochs`` (an integer >= 1). Optional: ``validate`` (datasets whose ``val`` split is
    validated after each epoch; default the episode's own datasets), ``monitor`` (below).
``test`` (required)
    Datasets whose ``test`` split is scored, each at its own label set.
``monitor``
    ``val_loss`` (the validation loss over all validation images of the episode, the
    default) or ``val_loss_<dataset>`` (one validation dataset): what the runner watches for
    the best weights, the learning-rate plateau and early stopping. Set for the whole run or
    per episode; it must be one of the episode's validation losses (else an error before
    any training: add the dataset to the episode's ``validate``).
``workers``
    Processes that build the training batches (``HierStarDist2D.train(workers=...)``), >= 1.
``hierarchy``
    ``default`` or the path of a hierarchy YAML (relative paths are relative to the config
    file in ``stardist-hier train``). A dataset whose prepared label set (``index.csv``) has
    another name than the dataset gets a label set named after the dataset with the same
    classes, so that its losses and metrics carry the dataset's name.
``untrained_test_classes``
    ``error`` (default): refuse to start when a test set has a class that the label set
    of no training dataset labels at or below its node (the model cannot score it: e.g.
    MoNuSAC's macrophages after training on PanNuke's 'inflammatory' only); ``warn``: run, and
    record the classes in ``run.json`` and the summary. The paper's rows use ``warn``
    (its Table III does exactly this).
``data_root``
    Root of the prepared datasets (``stardist-hier train`` only, relative to the config
    file; its ``--data-root`` overrides it). :func:`~.runner.run_experiment` takes the root
    as an argument instead.
``scale``, ``paper_row``
    Set by :func:`make_row_config` for the paper's rows.
``seed``, ``steps_per_epoch``, ``early_stopping_patience``, ``reduce_lr``, ``restore_best``, ``optimize_thresholds``, ``threshold_max_images``, ``max_images``, ``splits``, ``deterministic``
    As in the example above; ``deterministic`` asks TensorFlow for deterministic kernels.
``model``
    :class:`stardist_hier.model.HierConfig2D` parameters, passed through (unknown names are
    an error naming the closest known one), except the hierarchy (top-level key) and the
    runner-owned parameters below.
``augment``
    :class:`stardist_hier.augment.AugmentConfig` parameters.

Every problem of a config is reported at once, before any training
(:class:`RunConfigError`; the data checks add theirs: :mod:`.preflight`).

Stopping, best weights and the learning-rate plateau of a run have one owner, the runner
(:func:`stardist_hier.experiments.checkpoints.update_monitor_state`): the top-level keys
``early_stopping_patience``, ``reduce_lr`` and ``restore_best`` set them. The model
parameters that would add Keras callbacks for the same are refused in ``model``
(:data:`RUNNER_OWNED`), and ``model.train_reduce_lr`` is always ``None`` in a normalised
config: stock StarDist's default (``ReduceLROnPlateau``, factor 0.5, patience 40) would
otherwise run behind the runner's own plateau and restart with every episode and resume.
"""

from __future__ import annotations

import hashlib
import json
import math
from copy import deepcopy
from pathlib import Path

import numpy as np

from ..augment import AugmentConfig
from .config_keys import (RunConfigError, closest, episode_datasets, episode_monitor, episode_name, load_run_config,
                          mix_probabilities, monitor_choices, unknown_keys, validation_sets)
from .paper_tables import PaperRow, get_row

__all__ = ["TRAINING_FORMAT", "SCALES", "SYNTHETIC_SMOKE", "CONFIG_KEYS", "EPISODE_KEYS", "RUNNER_OWNED",
           "RunConfigError", "scaled_epochs", "make_row_config", "normalize_config", "config_problems", "plain",
           "config_hash", "identity", "episode_datasets", "episode_name", "mix_probabilities", "validation_sets",
           "episode_monitor", "monitor_choices", "closest", "unknown_keys", "load_run_config"]

#: Version of the training procedure, part of every cache key: bump it when a change to
#: the runner would make old cached episodes differ from new ones.
TRAINING_FORMAT = 1

#: The two scales. ``paper``: the published epochs and a StarDist configuration for H&E on a
#: GPU (StarDist's CoNIC/H&E settings: 64 rays, grid (2, 2), a U-Net of depth 3 with 32
#: base filters, 256x256 patches = the patch format's full tiles, batch 8, Adam 3e-4,
#: StarDist's default learning-rate schedule; 100 steps per epoch, StarDist's default,
#: since the paper does not give it). ``smoke``: minutes on a CPU: 16 rays, a U-Net of
#: depth 2 with 16 filters, 64x64 patches, batch 4, 50 steps per epoch, Adam 3e-3 (ten
#: times the paper's, so that the few steps find nuclei at all), the paper's epochs times
#: 0.02 rounded up (PanNuke 250 -> 5, MoNuSAC 175 -> 4, CoNSeP 100 -> 2), at most 16/4/8
#: images per train/val/test split.
SCALES = {
    "paper": dict(
        model=dict(n_rays=64, grid=(2, 2), n_channel_in=3, unet_n_depth=3, unet_n_filter_base=32,
                   net_conv_after_unet=128, train_patch_size=(256, 256), train_batch_size=8,
                   train_learning_rate=3e-4, use_gpu=False),
        steps_per_epoch=100, epoch_factor=1.0, reduce_lr=dict(factor=0.5, patience=40, min_lr=0.0),
        early_stopping_patience=None, optimize_thresholds=True, threshold_max_images=200,
        max_images=dict(train=None, val=None, test=None),
    ),
    "smoke": dict(
        model=dict(n_rays=16, grid=(2, 2), n_channel_in=3, unet_n_depth=2, unet_n_filter_base=16,
                   net_conv_after_unet=32, train_patch_size=(64, 64), train_batch_size=4,
                   train_learning_rate=3e-3, use_gpu=False),
        steps_per_epoch=50, epoch_factor=0.02, reduce_lr=None, early_stopping_patience=None,
        optimize_thresholds=False, threshold_max_images=None, max_images=dict(train=16, val=4, test=8),
    ),
}

#: Synthetic stand-in sets for runs without the real data (``--synthetic``): small tiles,
#: few of them, enough for the smoke scale.
SYNTHETIC_SMOKE = dict(counts=dict(train=16, val=4, test=8), size=128, seed=0)


def plain(obj):
    """Config values as YAML/JSON-friendly plain types (tuples -> lists)."""
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def config_hash(obj):
    """SHA-256 of a config's canonical JSON form."""
    return hashlib.sha256(json.dumps(plain(obj), sort_keys=True).encode()).hexdigest()


def scaled_epochs(paper_epochs, scale):
    """Epochs of an episode at a scale: ``ceil(paper_epochs * epoch_factor)``, at least 1."""
    factor = SCALES[scale]["epoch_factor"] if isinstance(scale, str) else float(scale)
    return max(1, int(math.ceil(paper_epochs * factor - 1e-9)))


def _merge(base, override):
    out = deepcopy(base)
    for k, v in (override or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = deepcopy(v)
    return out


def make_row_config(row, scale="paper", seed=0, **overrides):
    """The run config of one paper row at a scale.

    Parameters
    ----------
    row : PaperRow or tuple
        A row of :mod:`stardist_hier.experiments.paper_tables`, or ``(table, row)``.
    scale : {'paper', 'smoke'}
    seed : int
    **overrides
        Config keys to replace (``model`` and ``augment`` are merged key by key);
        ``epoch_factor`` rescales the paper's epochs (e.g. 0.001 gives one epoch each).

    Returns
    -------
    dict
    """
    if not isinstance(row, PaperRow):
        row = get_row(*row)
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {sorted(SCALES)}, got {scale!r}")
    s = SCALES[scale]
    factor = overrides.pop("epoch_factor", s["epoch_factor"])
    cfg = dict(
        name=row.name, scale=scale, seed=int(seed),
        episodes=[dict(dataset=d, epochs=scaled_epochs(e, factor), paper_epochs=e) for d, e in row.episodes],
        test=[row.test],
        steps_per_epoch=s["steps_per_epoch"], early_stopping_patience=s["early_stopping_patience"],
        reduce_lr=deepcopy(s["reduce_lr"]), restore_best=True, optimize_thresholds=s["optimize_thresholds"],
        threshold_max_images=s["threshold_max_images"],
        max_images=dict(s["max_images"]), splits="auto", hierarchy="default",
        model=dict(s["model"]), augment=AugmentConfig().to_dict(),
        paper_row=dict(table=row.table, row=row.row, pq=row.pq, description=row.describe()),
        # Table III tests at label sets finer than its training labels (e.g. MoNuSAC's immune
        # cells after CoNSeP's 'inflammatory'): the run says so instead of refusing to start
        untrained_test_classes="warn",
    )
    return normalize_config(_merge(cfg, overrides))


#: model parameters (HierConfig2D) that would add a Keras callback doing what the runner
#: does itself -> the top-level run-config key to use instead
RUNNER_OWNED = {"train_early_stopping_patience": "early_stopping_patience", "train_reduce_lr": "reduce_lr"}

CONFIG_KEYS = {"name", "scale", "seed", "episodes", "test", "steps_per_epoch", "early_stopping_patience", "reduce_lr",
               "restore_best", "optimize_thresholds", "max_images", "splits", "hierarchy", "model", "augment",
               "paper_row", "deterministic", "threshold_max_images", "workers", "monitor", "untrained_test_classes",
               "data_root"}

#: keys of an episode: ``dataset`` or ``mix`` (exactly one), ``epochs``; optional ``monitor``,
#: ``validate``; ``paper_epochs`` (the paper's epochs of a scaled paper row)
EPISODE_KEYS = {"dataset", "mix", "epochs", "paper_epochs", "monitor", "validate"}

#: what the runner adds to the ``config.yaml`` of a run folder; dropped when such a file is
#: given back as a config (the data and the versions are read afresh)
RECORDED_KEYS = {"splits_used", "versions", "data_fingerprints", "config_hash", "label_sets_used"}

#: keys added after the first run folders were written, with their defaults: a config at
#: these defaults hashes as before (:func:`identity`), so existing run folders and episode
#: caches stay valid
LATER_DEFAULTS = {"workers": 1, "monitor": "val_loss", "untrained_test_classes": "error"}

#: values of ``untrained_test_classes``
UNTRAINED_TEST_CLASSES = ("error", "warn")


#: keys that do not change what a run computes (only whether it may start, or where its
#: data lies): never part of a run's identity
NOT_IDENTITY = {"untrained_test_classes", "data_root"}


def identity(cfg):
    """``cfg`` for hashing: without :data:`NOT_IDENTITY`, and without the :data:`LATER_DEFAULTS`
    keys that hold their default (so configs written before those keys hash as they did)."""
    return {k: v for k, v in cfg.items()
            if k not in NOT_IDENTITY and not (k in LATER_DEFAULTS and v == LATER_DEFAULTS[k])}


def _is_number(v):
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _int(cfg, key, default, problems, minimum=None, where="run config", allow_none=False):
    v = cfg.get(key, default)
    if v is None and allow_none:
        return None
    if not _is_number(v) or float(v) != int(v):
        problems.append(f"{key} must be an integer{' or null' if allow_none else ''}, got {v!r}")
        return default
    v = int(v)
    if minimum is not None and v < minimum:
        problems.append(f"{key} must be >= {minimum}{' or null' if allow_none else ''}, got {v}")
        return default
    return v


def _episode(i, ep, cfg, problems):
    """One normalised episode (``None`` when it is unusable), problems appended."""
    where = f"episode {i}"
    if isinstance(ep, (list, tuple)) and len(ep) == 2:
        ep = dict(dataset=ep[0], epochs=ep[1])
    if not isinstance(ep, dict):
        problems.append(f"{where}: expected a mapping such as {{dataset: NAME, epochs: N}} or "
                        f"{{mix: {{NAME: WEIGHT, ...}}, epochs: N}}, got {ep!r}")
        return None
    ep = dict(ep)
    problems += unknown_keys(ep, EPISODE_KEYS, where)
    ok = True
    if ("dataset" in ep) == ("mix" in ep):
        problems.append(f"{where}: give exactly one of 'dataset' (one dataset) and 'mix' (weighted datasets), got "
                        f"{'both' if 'dataset' in ep else 'neither'}")
        ok = False
    elif "dataset" in ep and (not isinstance(ep["dataset"], str) or not ep["dataset"]):
        problems.append(f"{where}: dataset must be a dataset name, got {ep['dataset']!r}")
        ok = False
    elif "mix" in ep:
        mix = ep["mix"]
        if not isinstance(mix, dict) or not mix:
            problems.append(f"{where}: mix must map at least one dataset to its sampling weight, e.g. "
                            f"{{pannuke: 0.6, lizard: 0.4}}, got {mix!r}")
            ok = False
        else:
            weights = {}
            for d, w in mix.items():
                if not isinstance(d, str) or not d:
                    problems.append(f"{where}: mix: {d!r} is not a dataset name")
                    ok = False
                    continue
                if not _is_number(w) or not np.isfinite(float(w)) or float(w) <= 0:
                    problems.append(f"{where}: mix weight of '{d}' must be a positive number, got {w!r}")
                    w = 1.0  # (a stand-in, so that the data checks still see the dataset)
                weights[d] = float(w)
            ok = ok and bool(weights)
            if ok:
                ep["mix"] = weights
                if len(weights) == 1:  # a mix of one dataset is that dataset
                    ep["dataset"] = next(iter(weights))
                    del ep["mix"]
    epochs = ep.get("epochs")
    if not _is_number(epochs) or float(epochs) != int(epochs) or int(epochs) < 1:
        problems.append(f"{where}: epochs must be an integer >= 1, got {epochs!r}")
        epochs = 1  # (a stand-in, as above: the config is refused anyway)
    val = ep.get("validate")
    if val is not None:
        val = [val] if isinstance(val, str) else val
        if not isinstance(val, (list, tuple)) or not val or not all(isinstance(d, str) and d for d in val):
            problems.append(f"{where}: validate must be a list of dataset names, got {ep['validate']!r}")
            ok = False
        else:
            ep["validate"] = list(dict.fromkeys(val))
    if not ok:
        return None
    ep["epochs"] = int(epochs)
    if "validate" in ep and ep["validate"] == episode_datasets(ep):
        del ep["validate"]  # the default, spelt out
    mon = ep.get("monitor", cfg.get("monitor") or "val_loss")
    if not isinstance(mon, str) or mon not in monitor_choices(ep):
        src = "monitor" if "monitor" in ep else "the run's monitor"
        problems.append(f"{where}: {src} {mon!r} is not one of its validation losses {monitor_choices(ep)}; "
                        f"validate that dataset in this episode (validate: [...]) or set monitor per episode")
    if ep.get("monitor") == (cfg.get("monitor") or "val_loss"):
        del ep["monitor"]
    return ep


def config_problems(cfg):
    """Normalise a run config as far as possible and list everything wrong with it.

    Returns
    -------
    cfg : dict
        The normalised config (unusable parts left out).
    problems : list of str
        Empty for a valid config.
    """
    problems = []
    if not isinstance(cfg, dict):
        return {}, [f"expected a mapping of run-config keys, got {type(cfg).__name__}"]
    cfg = deepcopy(dict(cfg))
    for k in RECORDED_KEYS:
        cfg.pop(k, None)
    problems += unknown_keys(cfg, CONFIG_KEYS, "")
    if not cfg.get("name") or not isinstance(cfg["name"], str):
        problems.append("'name' is required (the run folder's name)")
    elif "/" in cfg["name"] or "\\" in cfg["name"] or cfg["name"].startswith("."):
        problems.append(f"name {cfg['name']!r} must be a plain folder name")
    mon = cfg.get("monitor", "val_loss")
    if mon is None:
        mon = "val_loss"
    if not isinstance(mon, str) or not mon.startswith("val_loss"):
        problems.append(f"monitor must be 'val_loss' or 'val_loss_<dataset>', got {mon!r}")
        mon = "val_loss"
    cfg["monitor"] = mon
    eps = cfg.get("episodes") or []
    if not isinstance(eps, (list, tuple)) or not eps:
        problems.append("at least one episode is required ('episodes': a list)")
        eps = []
    out_eps = [_episode(i, ep, cfg, problems) for i, ep in enumerate(eps, 1)]
    cfg["episodes"] = [ep for ep in out_eps if ep is not None]
    test = cfg.get("test") or []
    test = [test] if isinstance(test, str) else test
    if not isinstance(test, (list, tuple)) or not all(isinstance(t, str) and t for t in test):
        problems.append(f"test must be a list of dataset names, got {cfg.get('test')!r}")
        test = []
    elif not test:
        # checked here, not after training: the run folder needs metrics of a test set
        problems.append("at least one test dataset is required ('test')")
    cfg["test"] = list(dict.fromkeys(test))
    cfg.setdefault("scale", "custom")
    cfg["seed"] = _int(cfg, "seed", 0, problems)
    cfg["steps_per_epoch"] = _int(cfg, "steps_per_epoch", 100, problems, minimum=1)
    cfg["workers"] = _int(cfg, "workers", 1, problems, minimum=1)
    cfg["early_stopping_patience"] = _int(cfg, "early_stopping_patience", None, problems, minimum=1, allow_none=True)
    rl = cfg.get("reduce_lr")
    if rl is not None:
        if not isinstance(rl, dict):
            problems.append(f"reduce_lr must be a mapping {{factor, patience, min_lr}} or null, got {rl!r}")
            rl = None
        else:
            problems += unknown_keys(rl, {"factor", "patience", "min_lr"}, "reduce_lr")
            rl = dict(dict(factor=0.5, patience=10, min_lr=0.0), **rl)
            if not (_is_number(rl["factor"]) and 0 < rl["factor"] < 1 and _is_number(rl["patience"])
                    and int(rl["patience"]) >= 1):
                problems.append(f"reduce_lr needs 0 < factor < 1 and patience >= 1, got {rl}")
    cfg["reduce_lr"] = rl
    cfg["restore_best"] = bool(cfg.get("restore_best", True))
    cfg["optimize_thresholds"] = bool(cfg.get("optimize_thresholds", False))
    cfg["threshold_max_images"] = _int(cfg, "threshold_max_images", None, problems, minimum=1, allow_none=True)
    cfg["deterministic"] = bool(cfg.get("deterministic", False))
    ut = cfg.get("untrained_test_classes", "error")
    if ut not in UNTRAINED_TEST_CLASSES:
        problems.append(f"untrained_test_classes must be one of {list(UNTRAINED_TEST_CLASSES)}, got {ut!r}")
        ut = "error"
    cfg["untrained_test_classes"] = ut
    mi = dict(train=None, val=None, test=None)
    given = cfg.get("max_images") or {}
    if not isinstance(given, dict):
        problems.append(f"max_images must be a mapping {{train, val, test}}, got {given!r}")
        given = {}
    problems += unknown_keys(given, mi, "max_images")
    mi.update({k: v for k, v in given.items() if k in mi})
    cfg["max_images"] = {k: _int(mi, k, None, problems, minimum=1, allow_none=True) for k in mi}
    cfg.setdefault("splits", "auto")
    cfg.setdefault("hierarchy", "default")
    if cfg.get("data_root") is None:
        cfg.pop("data_root", None)
    model = cfg.get("model") or {}
    if not isinstance(model, dict):
        problems.append(f"model must be a mapping of HierConfig2D parameters, got {model!r}")
        model = {}
    cfg["model"] = dict(model)
    for k in ("hierarchy", "n_classes"):
        if k in cfg["model"]:
            problems.append(f"set the hierarchy with the top-level 'hierarchy' key, not model.{k}")
            cfg["model"].pop(k)
    for k, top in RUNNER_OWNED.items():
        # null is accepted: it is what the runner sets (and what a saved config.yaml holds)
        if cfg["model"].get(k) is not None:
            problems.append(f"model.{k} is not allowed in a run (a Keras callback behind the runner's own "
                            f"stopping and plateau logic); use the top-level key '{top}' instead")
    cfg["model"].pop("train_early_stopping_patience", None)
    cfg["model"]["train_reduce_lr"] = None  # stock StarDist's default plateau callback is on
    if "augment" not in cfg:
        cfg["augment"] = {}  # the paper's recipe with its defaults; null: no augmentation
    if cfg["augment"] is not None:
        if not isinstance(cfg["augment"], dict):
            problems.append(f"augment must be a mapping of AugmentConfig parameters or null, got {cfg['augment']!r}")
            cfg["augment"] = None
        else:
            try:
                cfg["augment"] = AugmentConfig.from_dict(cfg["augment"]).to_dict()
            except (TypeError, ValueError) as e:
                problems.append(str(e))
                cfg["augment"] = None
    return plain(cfg), problems


def normalize_config(cfg):
    """Validate a run config and fill defaults; returns a new plain dict.

    Raises
    ------
    RunConfigError
        A :class:`ValueError` listing every problem: unknown keys (with the closest known
        one), no episodes or test sets, non-positive epochs, bad mix weights or monitors,
        ``workers`` < 1, bad augmentation parameters, ...
    """
    out, problems = config_problems(cfg)
    if problems:
        raise RunConfigError(problems)
    return out

