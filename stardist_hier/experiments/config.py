"""Run configs of the experiment runner: keys, defaults, validation, and the two scales.

A run is described by a config (a dict, saved as ``config.yaml`` in the run folder)::

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
from .paper_tables import PaperRow, get_row

__all__ = ["TRAINING_FORMAT", "SCALES", "SYNTHETIC_SMOKE", "CONFIG_KEYS", "RUNNER_OWNED", "scaled_epochs",
           "make_row_config", "normalize_config", "plain", "config_hash"]

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
    )
    return normalize_config(_merge(cfg, overrides))


#: model parameters (HierConfig2D) that would add a Keras callback doing what the runner
#: does itself -> the top-level run-config key to use instead
RUNNER_OWNED = {"train_early_stopping_patience": "early_stopping_patience", "train_reduce_lr": "reduce_lr"}

CONFIG_KEYS = {"name", "scale", "seed", "episodes", "test", "steps_per_epoch", "early_stopping_patience", "reduce_lr",
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
    unknown = sorted(set(cfg) - CONFIG_KEYS)
    if unknown:
        raise ValueError(f"run config: unknown key(s) {unknown}; known: {sorted(CONFIG_KEYS)}")
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
    for k, top in RUNNER_OWNED.items():
        # null is accepted: it is what the runner sets (and what a saved config.yaml holds)
        if cfg["model"].get(k) is not None:
            raise ValueError(f"run config: model.{k} is not allowed in a run (a Keras callback behind the runner's own "
                             f"stopping and plateau logic); use the top-level key '{top}' instead")
    cfg["model"].pop("train_early_stopping_patience", None)
    cfg["model"]["train_reduce_lr"] = None  # stock StarDist's default plateau callback is on
    if cfg.get("augment") is not None:
        cfg["augment"] = AugmentConfig.from_dict(cfg["augment"]).to_dict()
    return plain(cfg)
