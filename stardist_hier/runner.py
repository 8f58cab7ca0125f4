"""Experiment runner: the paper's protocol (episodes of training on one dataset each), then
evaluation of every test set at its own label set, into one run folder.

A run is described by a config (a dict, saved as ``config.yaml``)::

    name: table2_row6_pannuke_then_monusac
    scale: paper                       # or smoke (see SCALES)
    seed: 0
    episodes:                          # in order; one dataset per episode (paper IV-E)
      - {dataset: pannuke, epochs: 250}
      - {dataset: monusac, epochs: 130}
    test: [monusac]                    # scored at their own label sets
    steps_per_epoch: 100
    early_stopping_patience: null      # stop an episode when val_loss stalls (optional)
    reduce_lr: {factor: 0.5, patience: 40, min_lr: 0.0}   # or null
    restore_best: true                 # end each episode with its best-val_loss weights
    optimize_thresholds: true          # tune prob/NMS thresholds on the last episode's val split
    threshold_max_images: 200          # ... on at most this many of its images (null: all)
    max_images: {train: null, val: null, test: null}      # null = the whole split
    splits: auto                       # or {dataset: {train: .., val: .., test: ..}}
    hierarchy: default
    model: {...}                       # HierConfig2D parameters
    augment: {...}                     # AugmentConfig parameters, or null for none

Run folder ``<out>/<name>/``:

* ``config.yaml``: the exact config used (resolved splits, data root and a fingerprint of
  each dataset's ``index.csv``, versions);
* ``model/``: the final model (loads with ``HierStarDist2D(None, 'model', run_folder)`` and
  with stock ``StarDist2D``);
* ``history.csv``: one row per epoch: ``epoch`` (over the whole run), ``episode``,
  ``dataset``, ``episode_epoch``, the training and validation losses, ``lr``, ``seconds``
  and ``reused`` (the episode was found finished in the cache: trained by another run that
  shares it, or by this run before an interruption);
* ``metrics.csv``: one row per test dataset, every convention of
  :mod:`stardist_hier.evaluation`; ``eval/`` the per-image CSVs;
* ``run.json``: written last: the run is complete.

Sharing, resuming, reproducing
------------------------------
Every episode trains in a cache folder ``<cache>/<k>-<dataset>-<epochs>ep-<hash>`` keyed by a
hash of everything that determines it: the model and augmentation config, the seed, the
training settings, the data (``index.csv`` of each dataset) and all earlier episodes. Runs
that share a pre-training (PanNuke for 250 epochs is the first episode of four rows) find it
finished there and reuse it. After every epoch the episode's weights, optimizer state,
history and early-stopping state are saved (versioned files, then a ``state.json`` naming
them, written by rename: an interruption leaves either the old or the new epoch, never a
mix); a restarted run continues from the last saved epoch.

Before training, the model's weights are initialised from ``seed`` and every episode reseeds
numpy, Python's ``random``, TensorFlow (``keras.utils.set_random_seed``) and the augmenter
from ``(seed, episode, first epoch)``, so rerunning a config reproduces its history on the
CPU. A resumed episode reseeds from the epoch it resumes at: it is itself reproducible but
draws other patches than an uninterrupted run would after that epoch. (With early stopping,
TensorFlow may still be prefetching a batch of a stopped episode when the next one reseeds;
the runner waits for it, but exact reproducibility is only tested without early stopping.)
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
import zlib
from copy import deepcopy
from pathlib import Path

import numpy as np
import yaml

from . import __version__
from . import patches as P
from .atomic import atomic_save, atomic_write_text
from .augment import AugmentConfig
from .hierarchy import ClassHierarchy, HierarchyError
from .paper_tables import ROWS, PaperRow, get_row

__all__ = ["SCALES", "MissingDataError", "RunResult", "make_row_config", "normalize_config", "check_data",
           "resolve_splits", "run_experiment", "run_rows", "load_run", "prepare_command", "DOWNLOADS",
           "SYNTHETIC_SMOKE", "ensure_synthetic", "row_main", "run_all_main"]

#: Version of the training procedure, part of every cache key: bump it when a change to
#: this module would make old cached episodes differ from new ones.
TRAINING_FORMAT = 1

#: Where each dataset is downloaded from (see experiments/README.md).
DOWNLOADS = {
    "pannuke": "https://warwick.ac.uk/fac/cross_fac/tia/data/pannuke",
    "monusac": "https://monusac-2020.grand-challenge.org/Data/",
    "consep": "https://warwick.ac.uk/fac/cross_fac/tia/data/hovernet/",
    "monuseg": "https://monuseg.grand-challenge.org/Data/",
    "lizard": "https://warwick.ac.uk/fac/cross_fac/tia/data/lizard/",
    "conic": "https://conic-challenge.grand-challenge.org/",
}

#: Split folders tried for each role, in order: the first complete set wins. PanNuke's
#: prepared data has the official folds only (fold 1 trains, fold 2 validates, fold 3
#: tests, the PanNuke protocol); the synthetic sets and the other datasets have
#: train/val/test.
SPLIT_CHOICES = {
    "pannuke": [dict(train="train", val="val", test="test"), dict(train="fold1", val="fold2", test="fold3")],
}
DEFAULT_SPLIT_CHOICES = [dict(train="train", val="val", test="test")]

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
                   train_learning_rate=3e-4, train_reduce_lr=None, use_gpu=False),
        steps_per_epoch=100, epoch_factor=1.0, reduce_lr=dict(factor=0.5, patience=40, min_lr=0.0),
        early_stopping_patience=None, optimize_thresholds=True, threshold_max_images=200,
        max_images=dict(train=None, val=None, test=None),
    ),
    "smoke": dict(
        model=dict(n_rays=16, grid=(2, 2), n_channel_in=3, unet_n_depth=2, unet_n_filter_base=16,
                   net_conv_after_unet=32, train_patch_size=(64, 64), train_batch_size=4,
                   train_learning_rate=3e-3, train_reduce_lr=None, use_gpu=False),
        steps_per_epoch=50, epoch_factor=0.02, reduce_lr=None, early_stopping_patience=None,
        optimize_thresholds=False, threshold_max_images=None, max_images=dict(train=16, val=4, test=8),
    ),
}

#: Synthetic stand-in sets for runs without the real data (``--synthetic``): small tiles,
#: few of them, enough for the smoke scale.
SYNTHETIC_SMOKE = dict(counts=dict(train=16, val=4, test=8), size=128, seed=0)

_DATASETS_OF_PAPER = ("pannuke", "monusac", "consep")


class MissingDataError(FileNotFoundError):
    """Prepared data missing or incomplete; the message says what and how to make it."""


# ----------------------------------------------------------------------------------------
# small helpers


def _log(msg, verbose=1):
    if verbose:
        print(msg, flush=True)


def _plain(obj):
    """Config values as YAML/JSON-friendly plain types (tuples -> lists)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _hash(obj):
    return hashlib.sha256(json.dumps(_plain(obj), sort_keys=True).encode()).hexdigest()


def _derive_seed(*parts):
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1)[0] % (2**31 - 1))


# ----------------------------------------------------------------------------------------
# configs


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
        A row of :mod:`stardist_hier.paper_tables`, or ``(table, row)``.
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
    )
    return normalize_config(_merge(cfg, overrides))


_CONFIG_KEYS = {"name", "scale", "seed", "episodes", "test", "steps_per_epoch", "early_stopping_patience", "reduce_lr",
                "restore_best", "optimize_thresholds", "max_images", "splits", "hierarchy", "model", "augment",
                "paper_row", "deterministic", "threshold_max_images"}


def normalize_config(cfg):
    """Validate a run config and fill defaults; returns a new plain dict.

    Raises
    ------
    ValueError
        Unknown keys, no episodes or test sets, non-positive epochs, bad augmentation
        parameters, ...
    """
    cfg = deepcopy(dict(cfg))
    unknown = sorted(set(cfg) - _CONFIG_KEYS)
    if unknown:
        raise ValueError(f"run config: unknown key(s) {unknown}; known: {sorted(_CONFIG_KEYS)}")
    if not cfg.get("name"):
        raise ValueError("run config: 'name' is required")
    eps = cfg.get("episodes") or []
    if not eps:
        raise ValueError("run config: at least one episode is required")
    out_eps = []
    for i, ep in enumerate(eps, 1):
        if isinstance(ep, (list, tuple)):
            ep = dict(dataset=ep[0], epochs=ep[1])
        if not isinstance(ep.get("dataset"), str) or int(ep.get("epochs", 0)) < 1:
            raise ValueError(f"run config: episode {i} needs a dataset name and epochs >= 1, got {ep}")
        out_eps.append(dict(ep, epochs=int(ep["epochs"])))
    cfg["episodes"] = out_eps
    test = cfg.get("test") or []
    cfg["test"] = [test] if isinstance(test, str) else list(test)
    if not cfg["test"]:
        # checked here, not after training: the run folder needs metrics of a test set
        raise ValueError("run config: at least one test dataset is required ('test')")
    cfg.setdefault("scale", "custom")
    cfg["seed"] = int(cfg.get("seed", 0))
    cfg["steps_per_epoch"] = int(cfg.get("steps_per_epoch", 100))
    if cfg["steps_per_epoch"] < 1:
        raise ValueError("run config: steps_per_epoch must be >= 1")
    pat = cfg.get("early_stopping_patience")
    if pat is not None and int(pat) < 1:
        raise ValueError("run config: early_stopping_patience must be >= 1 or null")
    cfg["early_stopping_patience"] = None if pat is None else int(pat)
    rl = cfg.get("reduce_lr")
    if rl is not None:
        rl = dict(dict(factor=0.5, patience=10, min_lr=0.0), **rl)
        if not 0 < rl["factor"] < 1 or int(rl["patience"]) < 1:
            raise ValueError(f"run config: reduce_lr needs 0 < factor < 1 and patience >= 1, got {rl}")
    cfg["reduce_lr"] = rl
    cfg["restore_best"] = bool(cfg.get("restore_best", True))
    cfg["optimize_thresholds"] = bool(cfg.get("optimize_thresholds", False))
    tmi = cfg.get("threshold_max_images")
    cfg["threshold_max_images"] = None if tmi is None else int(tmi)
    cfg["deterministic"] = bool(cfg.get("deterministic", False))
    mi = dict(train=None, val=None, test=None)
    mi.update(cfg.get("max_images") or {})
    cfg["max_images"] = {k: (None if v is None else int(v)) for k, v in mi.items()}
    cfg.setdefault("splits", "auto")
    cfg.setdefault("hierarchy", "default")
    cfg["model"] = dict(cfg.get("model") or {})
    for k in ("hierarchy", "n_classes"):
        if k in cfg["model"]:
            raise ValueError(f"run config: set the hierarchy with the top-level 'hierarchy' key, not model.{k}")
    if cfg.get("augment") is not None:
        cfg["augment"] = AugmentConfig.from_dict(cfg["augment"]).to_dict()
    return _plain(cfg)


# ----------------------------------------------------------------------------------------
# data checks


def prepare_command(dataset, data_root):
    """The command that makes a prepared dataset under ``data_root``."""
    return f"stardist-hier prepare {dataset} --src <folder of the {dataset} download> --out {data_root}"


def _split_complete(root, dataset, split, index):
    """(number of finished patches, list of problems) of one split."""
    have = P.list_patches(root, dataset, split)
    problems = []
    if index is not None and "split" in index.columns:
        listed = set(index.loc[index["split"].astype(str) == split, "patch_id"].astype(str))
        missing = sorted(listed - set(have))
        if missing:
            problems.append(f"split '{split}' of '{dataset}' is incomplete: {len(missing)} of {len(listed)} patches "
                            f"listed in index.csv are missing (e.g. {missing[0]}); an interrupted preparation? "
                            f"rerun: {prepare_command(dataset, root)}")
    return len(have), problems


def resolve_splits(data_root, dataset, roles=("train", "val", "test"), splits="auto"):
    """Split folders of ``dataset`` for each role, or raise :class:`MissingDataError`.

    ``splits='auto'`` tries :data:`SPLIT_CHOICES` (``train/val/test``, for PanNuke also the
    folds); a dict ``{dataset: {role: folder}}`` names them.
    """
    root = Path(data_root)
    if isinstance(splits, dict) and dataset in splits:
        choices = [dict(splits[dataset])]
    else:
        choices = SPLIT_CHOICES.get(dataset, DEFAULT_SPLIT_CHOICES)
    present = P.list_splits(root, dataset)
    for choice in choices:
        if all(choice.get(r) in present for r in roles):
            return {r: choice[r] for r in roles}
    want = " or ".join("/".join(c[r] for r in roles) for c in choices)
    raise MissingDataError(f"dataset '{dataset}' under {root} lacks split(s) for {'/'.join(roles)} "
                           f"(expected {want}; found {present or 'none'}); make it with: "
                           f"{prepare_command(dataset, root)}")


def check_data(data_root, cfg, hierarchy=None):
    """Check, before any training, that every split a run needs is prepared and complete.

    Parameters
    ----------
    data_root : str or path-like
        The ``--out`` of ``stardist-hier prepare`` (or of ``stardist-hier synth``).
    cfg : dict or list of dict
        Run config(s).
    hierarchy : ClassHierarchy, optional
        Default: the config's.

    Returns
    -------
    dict
        ``{dataset: {role: split folder}}``.

    Raises
    ------
    MissingDataError
        Listing every missing dataset, split or label set with the command that makes it.
    """
    cfgs = [cfg] if isinstance(cfg, dict) else list(cfg)
    root = Path(data_root)
    needs = {}
    for c in cfgs:
        for ep in c["episodes"]:
            needs.setdefault(ep["dataset"], set()).update(("train", "val"))
        for t in c["test"]:
            needs.setdefault(t, set()).add("test")
    h = ClassHierarchy.resolve(hierarchy if hierarchy is not None else cfgs[0].get("hierarchy", "default"))
    problems, resolved = [], {}
    if not root.is_dir():
        problems.append(f"data root {root} does not exist")
    for ds, roles in needs.items():
        roles = tuple(r for r in ("train", "val", "test") if r in roles)
        if ds not in h.label_sets:
            problems.append(f"dataset '{ds}' has no label set in the hierarchy {h.source} "
                            f"(label sets: {sorted(h.label_sets)}); add one to the hierarchy YAML")
            continue
        if not root.is_dir():
            continue
        try:
            index = P.read_index(root, ds)
        except FileNotFoundError:
            problems.append(f"dataset '{ds}' is not prepared under {root} ({P.index_path(root, ds)} missing); "
                            f"download it from {DOWNLOADS.get(ds, 'its website')} and run: {prepare_command(ds, root)}")
            continue
        if "label_set" in index.columns:
            sets = sorted({str(v) for v in index["label_set"].dropna()})
            if sets and sets != [ds]:
                problems.append(f"{P.index_path(root, ds)} says label set {sets}, but the run uses '{ds}'; "
                                f"re-prepare it with: {prepare_command(ds, root)}")
        try:
            sp = resolve_splits(root, ds, roles, cfgs[0].get("splits", "auto"))
        except MissingDataError as e:
            problems.append(str(e))
            continue
        for role, split in sp.items():
            n, probs = _split_complete(root, ds, split, index)
            problems += probs
            if n == 0:
                problems.append(f"split '{split}' ({role}) of dataset '{ds}' has no patches; "
                                f"make it with: {prepare_command(ds, root)}")
        resolved[ds] = sp
    if problems:
        raise MissingDataError("cannot start: the prepared data is missing or incomplete (nothing was trained):\n  - "
                               + "\n  - ".join(problems)
                               + f"\n(without the real data, `stardist-hier synth --out {root}` makes synthetic "
                                 "stand-ins with the same names)")
    return resolved


def _data_fingerprint(root, dataset):
    path = P.index_path(root, dataset)
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def _select_ids(root, dataset, split, max_images, seed):
    ids = P.list_patches(root, dataset, split)
    if max_images is not None and len(ids) > max_images:
        rng = np.random.default_rng([seed, zlib.crc32(f"{dataset}/{split}".encode())])
        ids = sorted(rng.choice(ids, size=max_images, replace=False).tolist())
    return ids


def load_images(root, dataset, split, label_set, ids):
    """Normalised images, instance masks and classes of the listed patches.

    Images are normalised as :func:`stardist_hier.evaluation.normalize_image` (the same as
    at prediction); class ids are checked against ``label_set``.
    """
    from .evaluation import normalize_image

    X, Y, C = [], [], []
    for pid in ids:
        image, mask = P.read_patch(root, dataset, split, pid)
        label_set.check_class_ids(np.unique(mask[..., 1]), where=str(P.patch_path(root, dataset, split, "masks", pid)))
        X.append(normalize_image(image).astype(np.float32, copy=False))
        Y.append(np.ascontiguousarray(mask[..., 0]))
        C.append(P.instance_classes(mask))
    return X, Y, C


# ----------------------------------------------------------------------------------------
# training


def _history_columns(dataset):
    return ["epoch", "episode", "dataset", "episode_epoch", "loss", "val_loss", f"val_loss_{dataset}", "prob_loss",
            "dist_loss", "prob_class_loss", "val_prob_loss", "val_dist_loss", "val_prob_class_loss", "lr", "seconds"]


def _save_optimizer(optimizer, path):
    values = {f"v{i:04d}": np.asarray(v.numpy()) for i, v in enumerate(optimizer.variables)}
    names = np.array([v.path for v in optimizer.variables])
    atomic_save(path, lambda tmp: np.savez(tmp, _names=names, **values))


def _load_optimizer(model, path):
    """Restore optimizer state saved by :func:`_save_optimizer` (builds the optimizer first)."""
    if not model._model_prepared:
        model.prepare_for_training()
    opt = model.keras_model.optimizer
    if not opt.built:
        opt.build(model.keras_model.trainable_variables)
    with np.load(path) as f:
        names = list(f["_names"])
        if len(names) != len(opt.variables):
            raise ValueError(f"{path}: optimizer state of {len(names)} variables, the model's optimizer has "
                             f"{len(opt.variables)}")
        for i, v in enumerate(opt.variables):
            v.assign(f[f"v{i:04d}"])


def _save_weights(model, path):
    # a name not ending in '.weights.h5' makes csbdeep's patched save_weights write the
    # legacy HDF5 format, which stock StarDist loads
    atomic_save(path, lambda tmp: model.keras_model.save_weights(tmp))


def _write_model_folder(model, folder):
    """A complete model folder (config files + ``weights_best.h5``), made aside then renamed."""
    import warnings

    from .model import HierStarDist2D

    folder = Path(folder)
    tmp_parent = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # constructing with a basedir writes config.json, hier_config.json and hierarchy.yaml
            HierStarDist2D(model.config, name="m", basedir=str(tmp_parent))
        model.keras_model.save_weights(str(tmp_parent / "m" / "weights_best.h5"))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp_parent / "m", folder)
    finally:
        shutil.rmtree(tmp_parent, ignore_errors=True)
    return folder


def _episode_key(cfg, data_root, index):
    """What determines episode ``index`` (and so its cache folder)."""
    eps = []
    for ep in cfg["episodes"][: index + 1]:
        ds = ep["dataset"]
        sp = cfg["_splits"][ds]
        eps.append(dict(dataset=ds, epochs=ep["epochs"], data=_data_fingerprint(data_root, ds),
                        splits=dict(train=sp["train"], val=sp["val"])))
    h = ClassHierarchy.resolve(cfg["hierarchy"]).to_dict()
    return dict(format=TRAINING_FORMAT, episodes=eps, seed=cfg["seed"], model=cfg["model"], augment=cfg["augment"],
                steps_per_epoch=cfg["steps_per_epoch"], early_stopping_patience=cfg["early_stopping_patience"],
                reduce_lr=cfg["reduce_lr"], restore_best=cfg["restore_best"], deterministic=cfg["deterministic"],
                max_images=dict(train=cfg["max_images"]["train"], val=cfg["max_images"]["val"]), hierarchy=h)


def update_monitor_state(state, monitor, epoch, lr, cfg):
    """Best validation loss, learning-rate plateau and early stopping after one epoch.

    The state lives in the checkpoint (``state.json``), so a resumed episode continues the
    counts instead of restarting them as fresh Keras callbacks would.

    Parameters
    ----------
    state : dict
        ``best``, ``best_epoch``, ``wait`` (epochs since the best), ``lr_wait`` (epochs
        since the best or the last reduction), ``stopped_early``; updated in place.
    monitor : float
        This epoch's validation loss.
    epoch : int
        This epoch (1-based, within the episode).
    lr : float
        Current learning rate.
    cfg : dict
        Run config (``reduce_lr``, ``early_stopping_patience``).

    Returns
    -------
    improved : bool
    new_lr : float or None
        The reduced learning rate, if it is reduced now.
    stop : bool
    """
    improved = bool(np.isfinite(monitor) and monitor < state["best"])
    if improved:
        state.update(best=float(monitor), best_epoch=int(epoch), wait=0, lr_wait=0)
    else:
        state["wait"] += 1
        state["lr_wait"] += 1
    new_lr = None
    rl = cfg.get("reduce_lr")
    if rl and not improved and state["lr_wait"] >= int(rl["patience"]):
        new_lr = max(lr * float(rl["factor"]), float(rl.get("min_lr", 0.0)))
        state["lr_wait"] = 0
    pat = cfg.get("early_stopping_patience")
    stop = pat is not None and state["wait"] >= pat
    if stop:
        state["stopped_early"] = True
    return improved, new_lr, stop


def _make_epoch_callback(model, ep_dir, state, rows, info, cfg, verbose, on_epoch_end):
    """Keras callback: per-epoch bookkeeping, best weights, LR plateau, early stopping, saving."""
    import keras

    ckpt = Path(ep_dir) / "checkpoint"

    class EpochCheckpoint(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            logs = dict(logs or {})
            e = state["epochs_done"] + 1
            opt = self.model.optimizer
            lr = float(np.asarray(opt.learning_rate))
            ds = info["dataset"]
            row = dict(episode=info["episode"], dataset=ds, episode_epoch=e, lr=lr,
                       seconds=round(time.perf_counter() - self.t0, 3))
            for k in _history_columns(ds)[4:-2]:
                row[k] = float(logs[k]) if k in logs else float("nan")
            rows.append(row)
            monitor = row["val_loss"]
            improved, new_lr, stop = update_monitor_state(state, monitor, e, lr, cfg)
            files = dict(state.get("files") or {})
            if improved:
                files["best"] = f"weights_best_{e:05d}.h5"
                _save_weights(model, ckpt / files["best"])
            if new_lr is not None:
                opt.learning_rate.assign(new_lr)
                _log(f"    reducing learning rate to {new_lr:.3g}", verbose)
            if stop:
                self.model.stop_training = True
                _log(f"    early stopping: val_loss has not improved for {state['wait']} epochs", verbose)
            files["last"] = f"weights_last_{e:05d}.h5"
            files["optimizer"] = f"optimizer_{e:05d}.npz"
            _save_weights(model, ckpt / files["last"])
            _save_optimizer(opt, ckpt / files["optimizer"])
            atomic_write_text(ckpt / f"history_{e:05d}.csv", _rows_frame(rows, ds).to_csv(index=False))
            files["history"] = f"history_{e:05d}.csv"
            old = dict(state.get("files") or {})
            state["epochs_done"] = e
            state["files"] = files
            # the commit point: state.json names this epoch's files
            atomic_write_text(ckpt / "state.json", json.dumps(state, indent=1))
            for key, name in old.items():
                if name != files.get(key) and (ckpt / name).exists():
                    (ckpt / name).unlink()
            best = f"best {state['best']:.4f} @ {state['best_epoch']}" if state["best_epoch"] else ""
            _log(f"  [{info['run']}] episode {info['episode']}/{info['n_episodes']} {ds}: epoch {e}/{info['epochs']}"
                 f"  loss {row['loss']:.4f}  val_loss {monitor:.4f}  {best}  ({row['seconds']:.1f} s)", verbose)
            if on_epoch_end is not None:
                on_epoch_end(dict(run=info["run"], episode=info["episode"], dataset=ds, epoch=e))

    return EpochCheckpoint()


def _rows_frame(rows, dataset):
    import pandas as pd

    cols = [c for c in _history_columns(dataset) if c != "epoch"]
    return pd.DataFrame(rows, columns=cols)


def _seed_everything(seed, deterministic=False):
    import keras

    keras.utils.set_random_seed(int(seed))
    if deterministic:
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()


def _new_model(cfg):
    from .model import HierConfig2D, HierStarDist2D

    _seed_everything(cfg["seed"], cfg["deterministic"])
    conf = HierConfig2D(hierarchy=cfg["hierarchy"], **cfg["model"])
    if not conf.is_valid():
        raise ValueError(f"invalid model config: {conf.is_valid(True)[1]}")
    return HierStarDist2D(conf, basedir=None)


def _train_episode(model, cfg, i, ep_dir, data, verbose, on_epoch_end):
    """Train (or resume) episode ``i`` in ``ep_dir``; return the number of epochs trained now."""
    from .augment import ClassAwareAugmenter, oversample_indices, rare_image_indices

    ep = cfg["episodes"][i]
    ds = ep["dataset"]
    ckpt = ep_dir / "checkpoint"
    ckpt.mkdir(parents=True, exist_ok=True)
    state = dict(epochs_done=0, best=float("inf"), best_epoch=None, wait=0, lr_wait=0, stopped_early=False, files={})
    rows = []
    if (ckpt / "state.json").is_file():
        import pandas as pd

        state = json.loads((ckpt / "state.json").read_text())
        files = state["files"]
        model.keras_model.load_weights(str(ckpt / files["last"]))
        _load_optimizer(model, ckpt / files["optimizer"])
        rows = pd.read_csv(ckpt / files["history"]).to_dict("records")
        _log(f"  resuming episode {i + 1} ({ds}) after epoch {state['epochs_done']}/{ep['epochs']}", verbose)
    start = state["epochs_done"]
    remaining = ep["epochs"] - start
    X, Y, C, Xv, Yv, Cv = data
    if remaining > 0 and not state["stopped_early"]:
        seed = _derive_seed(cfg["seed"], i, start)
        _seed_everything(seed, cfg["deterministic"])
        augmenter = None
        if cfg["augment"] is not None:
            Y, C, augmenter = ClassAwareAugmenter.for_dataset(Y, C, cfg["augment"], seed=seed)
            factor = cfg["augment"]["oversample_rare"]
            if factor > 1:
                idx = oversample_indices(len(X), rare_image_indices(C, augmenter.rare_classes), factor, seed)
                X, Y, C = [X[k] for k in idx], [Y[k] for k in idx], [C[k] for k in idx]
        info = dict(run=cfg["name"], episode=i + 1, n_episodes=len(cfg["episodes"]), dataset=ds, epochs=ep["epochs"])
        cb = _make_epoch_callback(model, ep_dir, state, rows, info, cfg, verbose, on_epoch_end)
        # epochs=remaining with initial_epoch=0: the data generator is built for exactly the
        # batches that are consumed, so no prefetching thread outlives the call
        model.train(X, Y, validation_data=(Xv, Yv, Cv), classes=C, dataset=ds, augmenter=augmenter, seed=seed,
                    epochs=remaining, steps_per_epoch=cfg["steps_per_epoch"], callbacks=[cb],
                    verbose=1 if verbose >= 2 else 0)
        if state["stopped_early"]:
            time.sleep(0.5)  # let a batch that TensorFlow was still prefetching finish (see module docs)
    trained = state["epochs_done"] - start
    if cfg["restore_best"] and state["files"].get("best"):
        model.keras_model.load_weights(str(ckpt / state["files"]["best"]))
    return trained, state, rows


def _finish_episode(model, ep_dir, state, rows, key, ds):
    _write_model_folder(model, ep_dir / "model")
    _save_optimizer(model.keras_model.optimizer, ep_dir / "optimizer.npz")
    atomic_write_text(ep_dir / "history.csv", _rows_frame(rows, ds).to_csv(index=False))
    atomic_write_text(ep_dir / "key.yaml", yaml.safe_dump(_plain(key), sort_keys=False))
    done = dict(epochs=state["epochs_done"], best=state["best"] if np.isfinite(state["best"]) else None,
                best_epoch=state["best_epoch"], stopped_early=state["stopped_early"], finished=time.time())
    atomic_write_text(ep_dir / "done.json", json.dumps(done, indent=1))
    shutil.rmtree(ep_dir / "checkpoint", ignore_errors=True)


def _load_episode_into(model, ep_dir):
    model.keras_model.load_weights(str(ep_dir / "model" / "weights_best.h5"))
    _load_optimizer(model, ep_dir / "optimizer.npz")


# ----------------------------------------------------------------------------------------
# evaluation


def _test_view(root, dataset, split, ids, view_root):
    """A folder with only the chosen test patches (links), for :func:`evaluate_folder`."""
    view_root = Path(view_root)
    if view_root.exists():
        shutil.rmtree(view_root)
    for kind in ("images", "masks"):
        for pid in ids:
            src = P.patch_path(root, dataset, split, kind, pid)
            dst = P.patch_path(view_root, dataset, split, kind, pid)
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.symlink(Path(src).resolve(), dst)
            except OSError:
                shutil.copy2(src, dst)
    idx = P.read_index(root, dataset)
    idx = idx[(idx["split"].astype(str) == split) & idx["patch_id"].astype(str).isin(ids)]
    P.write_index(view_root, dataset, idx)
    return view_root


def _evaluate(model, cfg, data_root, run_dir, verbose):
    import pandas as pd

    from .evaluation import evaluate_folder, write_results

    rows = []
    for ds in cfg["test"]:
        split = cfg["_splits"][ds]["test"]
        root = Path(data_root)
        n_max = cfg["max_images"]["test"]
        ids = _select_ids(root, ds, split, n_max, cfg["seed"])
        if n_max is not None and len(ids) < len(P.list_patches(root, ds, split)):
            root = _test_view(data_root, ds, split, ids, Path(run_dir) / ".eval_data")
        _log(f"  [{cfg['name']}] evaluating on {ds}/{split} ({len(ids)} images) at label set '{ds}'", verbose)
        res = evaluate_folder(root, split=split, dataset=ds, model=model, progress=verbose >= 2)
        write_results(res, Path(run_dir) / "eval")
        rows.append(dict(res.summary))
        if root != Path(data_root):
            shutil.rmtree(root, ignore_errors=True)
    df = pd.DataFrame(rows)
    front = ["dataset", "split", "label_set"]
    return df[front + [c for c in df.columns if c not in front]]


# ----------------------------------------------------------------------------------------
# the run


class RunResult:
    """What :func:`run_experiment` returns (also :func:`load_run`).

    Attributes
    ----------
    run_dir : pathlib.Path
    config : dict
        The config as saved in ``config.yaml``.
    history : pandas.DataFrame
    metrics : pandas.DataFrame
    info : dict
        ``run.json``: per episode its cache folder, ``trained_epochs`` (this invocation)
        and ``reused``; ``seconds``.
    """

    def __init__(self, run_dir, config, history, metrics, info):
        self.run_dir, self.config, self.history, self.metrics, self.info = Path(run_dir), config, history, metrics, info

    @property
    def trained_epochs(self):
        """Epochs trained by the invocation that finished the run."""
        return sum(e["trained_epochs"] for e in self.info["episodes"])

    def __repr__(self):
        return f"RunResult({self.run_dir}, {len(self.history)} epochs, tests {list(self.metrics['dataset'])})"


def load_run(run_dir):
    """Read a complete run folder; raises ``FileNotFoundError`` for an incomplete one."""
    import pandas as pd

    run_dir = Path(run_dir)
    if not (run_dir / "run.json").is_file():
        raise FileNotFoundError(f"{run_dir} is not a complete run (no run.json)")
    info = json.loads((run_dir / "run.json").read_text())
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    return RunResult(run_dir, cfg, pd.read_csv(run_dir / "history.csv"), pd.read_csv(run_dir / "metrics.csv"), info)


def run_experiment(config, data_root, out, cache_dir=None, verbose=1, overwrite=False, on_epoch_end=None):
    """Train the episodes of a config, evaluate its test sets, write the run folder.

    Parameters
    ----------
    config : dict
        Run config (see the module docstring; :func:`make_row_config` makes the paper's).
    data_root : str or path-like
        Root of the prepared datasets.
    out : str or path-like
        Parent of the run folder ``<out>/<name>``.
    cache_dir : str or path-like, optional
        Episode cache shared between runs (default ``<out>/cache``).
    verbose : int
        0 silent, 1 a line per epoch, 2 also Keras' and the evaluation's progress bars.
    overwrite : bool
        Replace a run folder made with another config (else that is an error).
    on_epoch_end : callable, optional
        Called with ``{'run', 'episode', 'dataset', 'epoch'}`` after each epoch is saved
        (progress reporting; the tests raise from it to simulate an interruption).

    Returns
    -------
    RunResult

    Raises
    ------
    MissingDataError
        Before any training, when a dataset, split or label set is missing.
    """
    import pandas as pd

    t0 = time.perf_counter()
    cfg = normalize_config(config)
    data_root = Path(data_root).resolve()
    out = Path(out)
    cache = Path(cache_dir) if cache_dir is not None else out / "cache"
    h = ClassHierarchy.resolve(cfg["hierarchy"])
    splits = check_data(data_root, cfg, h)
    cfg["_splits"] = splits
    run_dir = out / cfg["name"]
    saved = dict(cfg, data_root=str(data_root), splits_used=splits, versions=_versions())
    saved.pop("_splits")
    # the data is part of the run's identity (the data root is not: data may move), so a run
    # folder made on other data (e.g. the synthetic stand-ins) is never taken as complete
    saved["data_fingerprints"] = {ds: _data_fingerprint(data_root, ds) for ds in splits}
    run_key = _hash({k: v for k, v in saved.items() if k not in ("versions", "data_root")})
    saved["config_hash"] = run_key
    if (run_dir / "config.yaml").is_file():
        old = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
        if old.get("config_hash") != run_key:
            if not overwrite:
                raise FileExistsError(f"{run_dir} holds a run with another config; use another --out or overwrite=True")
            shutil.rmtree(run_dir)
        elif (run_dir / "run.json").is_file():
            _log(f"[{cfg['name']}] already complete: {run_dir}", verbose)
            return load_run(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(_plain(saved), sort_keys=False))
    _log(f"[{cfg['name']}] {cfg.get('paper_row', {}).get('description', '')} (scale {cfg['scale']}, seed {cfg['seed']})",
         verbose)

    keys = [_episode_key(cfg, data_root, i) for i in range(len(cfg["episodes"]))]
    ep_dirs = [cache / f"{i + 1}-{ep['dataset']}-{ep['epochs']}ep-{_hash(k)[:12]}"
               for i, (ep, k) in enumerate(zip(cfg["episodes"], keys))]
    todo = [i for i, d in enumerate(ep_dirs) if not (d / "done.json").is_file()]
    for i, d in enumerate(ep_dirs):
        if i not in todo:
            _log(f"  episode {i + 1} ({cfg['episodes'][i]['dataset']}, {cfg['episodes'][i]['epochs']} epochs): "
                 f"reusing {d}", verbose)

    # load every episode's data before training anything
    data = {}
    for i in todo:
        ds = cfg["episodes"][i]["dataset"]
        if ds in data:
            continue
        ls = h.label_set(ds)
        tr = _select_ids(data_root, ds, splits[ds]["train"], cfg["max_images"]["train"], cfg["seed"])
        va = _select_ids(data_root, ds, splits[ds]["val"], cfg["max_images"]["val"], cfg["seed"])
        X, Y, C = load_images(data_root, ds, splits[ds]["train"], ls, tr)
        Xv, Yv, Cv = load_images(data_root, ds, splits[ds]["val"], ls, va)
        ps = tuple(cfg["model"].get("train_patch_size", (256, 256)))
        small = [k for k, x in enumerate(X + Xv) if x.shape[0] < ps[0] or x.shape[1] < ps[1]]
        if small:
            raise ValueError(f"dataset '{ds}': {len(small)} images are smaller than train_patch_size {ps}")
        data[ds] = (X, Y, C, Xv, Yv, Cv)
        _log(f"  loaded {ds}: {len(X)} train / {len(Xv)} val images", verbose)

    trained = {}
    model = None
    for i in todo:
        ds = cfg["episodes"][i]["dataset"]
        if model is None:
            model = _new_model(cfg)
            if i > 0:
                _load_episode_into(model, ep_dirs[i - 1])
        ep_dirs[i].mkdir(parents=True, exist_ok=True)
        n, state, rows = _train_episode(model, cfg, i, ep_dirs[i], data[ds], verbose, on_epoch_end)
        _finish_episode(model, ep_dirs[i], state, rows, keys[i], ds)
        trained[i] = n

    # the run folder: final model, history, metrics
    from .model import HierStarDist2D

    tmp_model = run_dir / ".model.tmp"
    shutil.rmtree(tmp_model, ignore_errors=True)
    shutil.copytree(ep_dirs[-1] / "model", tmp_model)
    shutil.rmtree(run_dir / "model", ignore_errors=True)
    os.replace(tmp_model, run_dir / "model")
    hist = []
    for i, d in enumerate(ep_dirs):
        df = pd.read_csv(d / "history.csv")
        df["reused"] = i not in trained
        hist.append(df)
    history = pd.concat(hist, ignore_index=True)
    history.insert(0, "epoch", np.arange(1, len(history) + 1))
    per_set = [c for c in history.columns if c.startswith("val_loss_")]
    rest = [c for c in history.columns if c not in per_set]
    at = rest.index("val_loss") + 1
    history = history[rest[:at] + per_set + rest[at:]]
    atomic_write_text(run_dir / "history.csv", history.to_csv(index=False))

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        final = HierStarDist2D(None, "model", str(run_dir))
    if cfg["optimize_thresholds"]:
        ds = cfg["episodes"][-1]["dataset"]
        n_max = min(n for n in (cfg["max_images"]["val"], cfg["threshold_max_images"], 10**9) if n is not None)
        va = _select_ids(data_root, ds, splits[ds]["val"], n_max, cfg["seed"])
        Xv, Yv, _ = load_images(data_root, ds, splits[ds]["val"], h.label_set(ds), va)
        final.optimize_thresholds(Xv, Yv, optimize_kwargs=dict(verbose=int(verbose >= 2)))
    metrics = _evaluate(final, cfg, data_root, run_dir, verbose)
    if cfg.get("paper_row"):
        metrics.insert(3, "paper_pq", cfg["paper_row"]["pq"])
    atomic_write_text(run_dir / "metrics.csv", metrics.to_csv(index=False))
    info = dict(name=cfg["name"], status="complete", config_hash=run_key, seconds=round(time.perf_counter() - t0, 2),
                finished=time.strftime("%Y-%m-%dT%H:%M:%S"),
                episodes=[dict(dataset=ep["dataset"], epochs=ep["epochs"], cache=str(d), trained_epochs=trained.get(i, 0),
                               reused=i not in trained) for i, (ep, d) in enumerate(zip(cfg["episodes"], ep_dirs))])
    atomic_write_text(run_dir / "run.json", json.dumps(info, indent=1))
    for _, r in metrics.iterrows():
        _log(f"  [{cfg['name']}] {r['dataset']}: bPQ {r.get('bPQ_pannuke_tissue', float('nan')):.4f}  "
             f"mPQ {r.get('mPQ_pannuke_tissue', float('nan')):.4f}  PQ(CoNIC) {r.get('PQ_conic', float('nan')):.4f}  "
             f"mPQ+ {r.get('mPQ+_conic', float('nan')):.4f}"
             + (f"  | paper PQ {cfg['paper_row']['pq']:.4f}" if cfg.get("paper_row") else ""), verbose)
    _log(f"[{cfg['name']}] done in {info['seconds']:.1f} s -> {run_dir}", verbose)
    return load_run(run_dir)


def _versions():
    out = {"stardist_hier": __version__}
    for mod in ("stardist", "tensorflow", "keras", "numpy"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # a version is informative only
            pass
    return out


def run_rows(rows, data_root, out, scale="paper", seed=0, cache_dir=None, verbose=1, **overrides):
    """Run paper rows in order (sharing pre-trainings through the cache).

    All rows' data is checked before the first one trains.

    Returns
    -------
    list of RunResult
    """
    rows = [r if isinstance(r, PaperRow) else get_row(*r) for r in rows]
    cfgs = [make_row_config(r, scale, seed, **deepcopy(overrides)) for r in rows]
    check_data(data_root, cfgs)
    results = []
    t0 = time.perf_counter()
    for k, cfg in enumerate(cfgs, 1):
        _log(f"=== row {k}/{len(cfgs)} ({time.perf_counter() - t0:.0f} s so far)", verbose)
        results.append(run_experiment(cfg, data_root, out, cache_dir=cache_dir, verbose=verbose))
    _log(f"=== {len(cfgs)} rows in {time.perf_counter() - t0:.1f} s -> {out}", verbose)
    return results


# ----------------------------------------------------------------------------------------
# synthetic data and command lines


def ensure_synthetic(root, counts=None, size=None, seed=None, progress=False):
    """Make (or reuse) the synthetic stand-ins of the paper's datasets under ``root``."""
    from .synth import generate_all

    s = SYNTHETIC_SMOKE
    generate_all(root, list(_DATASETS_OF_PAPER), counts=counts or s["counts"], size=size or s["size"],
                 seed=s["seed"] if seed is None else seed, progress=progress)
    return Path(root)


def _parser(description):
    import argparse

    p = argparse.ArgumentParser(description=description)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data-root", help="root of the prepared datasets (`stardist-hier prepare ... --out DIR`)")
    src.add_argument("--synthetic", metavar="DIR",
                     help="no real data: make (or reuse) the synthetic stand-ins in DIR and run on them")
    p.add_argument("--out", default=None, help="results folder (default: results/<scale>)")
    p.add_argument("--scale", choices=sorted(SCALES), default="paper",
                   help="paper: published epochs, GPU-sized model; smoke: minutes on a CPU (default: paper)")
    p.add_argument("--seed", type=int, default=0, help="seed of weights, patches and augmentation (default 0)")
    p.add_argument("--cache", default=None, help="episode cache shared by runs (default: OUT/cache)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    return p


def _resolve_args(args):
    if args.synthetic:
        print(f"no real data: using synthetic stand-ins in {args.synthetic} (numbers are NOT comparable to the paper)",
              flush=True)
        root = ensure_synthetic(args.synthetic, progress=not args.quiet)
    else:
        root = Path(args.data_root)
    out = Path(args.out) if args.out else Path("results") / args.scale
    return root, out


def row_main(table, row, pretrain, finetune, test, pq, argv=None):
    """Command line of one row script (``experiments/table*_row*.py``).

    The script states its row; it is checked against :mod:`stardist_hier.paper_tables`.
    """
    from .paper_tables import check_row

    prow = check_row(table, row, pretrain, finetune, test, pq)
    p = _parser(prow.describe())
    args = p.parse_args(argv)
    try:
        root, out = _resolve_args(args)
        cfg = make_row_config(prow, args.scale, args.seed)
        run_experiment(cfg, root, out, cache_dir=args.cache, verbose=0 if args.quiet else 1)
    except (MissingDataError, FileExistsError, HierarchyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def run_all_main(argv=None):
    """Command line of ``experiments/run_all.py``: every row of Tables II and III, in order."""
    p = _parser("Run all 17 rows of the paper's Tables II and III in order, sharing pre-trainings.")
    p.add_argument("--rows", default=None,
                   help="comma-separated row names or table:row pairs (e.g. 2:1,3:4) to run only some")
    args = p.parse_args(argv)
    rows = list(ROWS)
    if args.rows:
        from .paper_tables import row_by_name

        wanted = [w.strip() for w in args.rows.split(",") if w.strip()]
        rows = []
        for w in wanted:
            try:
                rows.append(get_row(*map(int, w.split(":", 1))) if ":" in w else row_by_name(w))
            except (ValueError, KeyError) as e:
                p.error(f"--rows: {w!r}: {e.args[0] if e.args else e}")
    t0 = time.perf_counter()
    try:
        root, out = _resolve_args(args)
        run_rows(rows, root, out, scale=args.scale, seed=args.seed, cache_dir=args.cache,
                 verbose=0 if args.quiet else 1)
    except (MissingDataError, FileExistsError, HierarchyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"run_all: {len(rows)} rows in {time.perf_counter() - t0:.1f} s", flush=True)
    from .report import collect_table, format_table

    for t in (2, 3):
        print(f"\nTable {'II' if t == 2 else 'III'}:\n" + format_table(collect_table(out, t), as_text=True))
    return 0
