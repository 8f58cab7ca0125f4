"""Experiment runner: episodes of training (one dataset, or a weighted mix of several, each),
then evaluation of every test set at its own label set, into one run folder.

The config is described in :mod:`.config`; everything it needs is checked before any
training (:mod:`.preflight`); ``stardist-hier train CONFIG.yaml`` and ``stardist-hier
replay`` (the paper's rows) both run :func:`run_experiment`.

Run folder ``<out>/<name>/``:

* ``config.yaml``: the exact config used (resolved splits, data root and a fingerprint of
  each dataset's ``index.csv``, versions);
* ``model/``: the final model (loads with ``HierStarDist2D(None, 'model', run_folder)`` and
  with stock ``StarDist2D``);
* ``history.csv``: one row per epoch: ``epoch`` (over the whole run), ``episode``,
  ``dataset`` (``pannuke+lizard`` for a mix), ``episode_epoch``, the training loss,
  ``val_loss`` (all validation images of the episode) and ``val_loss_<dataset>`` per
  validation dataset, the loss terms, ``lr``, ``seconds`` and ``reused`` (the episode was
  found finished in the cache: trained by another run that shares it, or by this run
  before an interruption);
* ``metrics.csv``: one row per test dataset, every convention of
  :mod:`stardist_hier.metrics.folder`; ``eval/`` the per-image CSVs;
* ``loss_curves.png``, ``summary.md``, ``summary.html``: the one-page summary
  (:mod:`.training_summary`);
* ``run.json``: written last: the run is complete. Per episode: its cache folder,
  ``epochs_run`` (epochs the episode trained, whoever trained it), ``trained_epochs`` (by
  this invocation), ``reused``, ``stopped_early`` and ``stop_reason``, ``monitor``, ``best``
  and ``best_epoch``, ``validate``, for a mix ``mix`` (probabilities) and ``mix_realised``
  (shares of the training list); ``thresholds``: the detection thresholds the evaluation
  used, and where they were tuned; ``datasets``: each dataset's label set and images per
  split; ``notes``.

Sharing, resuming, reproducing
------------------------------
Every episode trains in a cache folder ``<cache>/<k>-<dataset>-<epochs>ep-<hash>`` keyed by a
hash of everything that determines it: the model and augmentation config, the seed, the
training settings, the data (``index.csv`` of each dataset), the mix probabilities, the
validation sets, the monitor, the workers, and all earlier episodes
(:func:`.checkpoints.episode_key`). Runs
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

import contextlib
import io
import json
import os
import shutil
import time
from copy import deepcopy
from pathlib import Path

import numpy as np
import yaml

from .. import __version__
from .. import patches as P
from ..atomic import atomic_write_text
from ..metrics.folder import HEADLINE_METRICS
from .checkpoints import episode_key, finish_episode, load_episode_into, log, train_episode
from .config import (RunConfigError, config_hash, episode_datasets, episode_monitor, episode_name, identity,
                     make_row_config, mix_probabilities, plain, validation_sets)
from .data import check_data, data_fingerprint, dataset_roles, select_ids
from .preflight import preflight
from .training_summary import write_training_summary
from .paper_tables import PaperRow, get_row

__all__ = ["RunResult", "run_experiment", "run_rows", "load_run"]


def _stock_prints(verbose):
    """Hides what stock StarDist prints (models it builds or loads, tuned thresholds) below
    ``verbose`` 2; warnings still show."""
    return contextlib.redirect_stdout(io.StringIO()) if verbose < 2 else contextlib.nullcontext()


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

    from ..metrics import evaluate_folder, write_results

    rows = []
    for ds in cfg["test"]:
        split = cfg["_splits"][ds]["test"]
        root = Path(data_root)
        n_max = cfg["max_images"]["test"]
        ids = select_ids(root, ds, split, n_max, cfg["seed"])
        if n_max is not None and len(ids) < len(P.list_patches(root, ds, split)):
            root = _test_view(data_root, ds, split, ids, Path(run_dir) / ".eval_data")
        log(f"  [{cfg['name']}] evaluating on {ds}/{split} ({len(ids)} images) at label set '{ds}'", verbose)
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
        ``run.json`` (see the module docstring): per episode its cache folder,
        ``epochs_run``, ``trained_epochs`` (this invocation), ``reused``, ``stopped_early``;
        ``thresholds``; ``seconds``.
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
        Before any training, when a dataset, split or label set is missing or does not fit
        (:func:`.preflight.preflight`).
    RunConfigError
        Before any training, when the config is at fault (with every problem, the data's too).
    """
    import pandas as pd

    t0 = time.perf_counter()
    data_root = Path(data_root).resolve()
    pre = preflight(config, data_root)
    cfg, splits, h = pre.config, pre.splits, pre.hierarchy
    out = Path(out)
    cache = Path(cache_dir) if cache_dir is not None else out / "cache"
    cfg["_splits"] = splits
    run_dir = out / cfg["name"]
    saved = dict(cfg, data_root=str(data_root), splits_used=splits, versions=_versions())
    saved.pop("_splits")
    if pre.aliased:
        saved["label_sets_used"] = dict(pre.label_sets)
    # the data is part of the run's identity (the data root is not: data may move), so a run
    # folder made on other data (e.g. the synthetic stand-ins) is never taken as complete
    saved["data_fingerprints"] = {ds: data_fingerprint(data_root, ds) for ds in splits}
    run_key = config_hash(identity({k: v for k, v in saved.items() if k != "versions"}))
    saved["config_hash"] = run_key
    if (run_dir / "config.yaml").is_file():
        old = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
        if old.get("config_hash") != run_key:
            if not overwrite:
                raise FileExistsError(f"{run_dir} holds a run with another config; use another --out or overwrite=True")
            shutil.rmtree(run_dir)
        elif (run_dir / "run.json").is_file():
            log(f"[{cfg['name']}] already complete: {run_dir}", verbose)
            return load_run(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(plain(saved), sort_keys=False))
    what = (cfg.get("paper_row") or {}).get("description") or " -> ".join(
        f"{episode_name(ep)} {ep['epochs']}" for ep in cfg["episodes"])
    log(f"[{cfg['name']}] {what} (scale {cfg['scale']}, seed {cfg['seed']})", verbose)
    for note in pre.notes:
        log(f"  note: {note}", verbose)

    hier_arg = h if pre.aliased else cfg["hierarchy"]
    keys = [episode_key(cfg, data_root, i, h) for i in range(len(cfg["episodes"]))]
    ep_dirs = [cache / f"{i + 1}-{episode_name(ep)}-{ep['epochs']}ep-{config_hash(k)[:12]}"
               for i, (ep, k) in enumerate(zip(cfg["episodes"], keys))]
    todo = [i for i, d in enumerate(ep_dirs) if not (d / "done.json").is_file()]
    for i, d in enumerate(ep_dirs):
        if i not in todo:
            log(f"  episode {i + 1} ({episode_name(cfg['episodes'][i])}, {cfg['episodes'][i]['epochs']} epochs): "
                f"reusing {d}", verbose)
    data = _load_data(cfg, data_root, h, [cfg["episodes"][i] for i in todo], verbose)

    from ..model import HierStarDist2D
    from ..model.build import build_model

    trained = {}
    model = None
    for i in todo:
        if model is None:
            with _stock_prints(verbose):
                model = build_model(hier_arg, model_params(cfg, verbose), seed=cfg["seed"],
                                    deterministic=cfg["deterministic"])
            if i > 0:
                load_episode_into(model, ep_dirs[i - 1])
        ep_dirs[i].mkdir(parents=True, exist_ok=True)
        n, state, rows = train_episode(model, cfg, i, ep_dirs[i], data, verbose, on_epoch_end)
        finish_episode(model, ep_dirs[i], state, rows, keys[i], validation_sets(cfg["episodes"][i]))
        trained[i] = n

    # the run folder: final model, history, metrics

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

    # stock StarDist prints what it loads; the weights were just written, the thresholds follow
    with _stock_prints(verbose):
        final = HierStarDist2D(None, "model", str(run_dir))
    thresholds = _thresholds(final, cfg, data_root, h, verbose)
    metrics = _evaluate(final, cfg, data_root, run_dir, verbose)
    if cfg.get("paper_row"):
        metrics.insert(3, "paper_pq", cfg["paper_row"]["pq"])
    atomic_write_text(run_dir / "metrics.csv", metrics.to_csv(index=False))
    episodes = []
    for i, (ep, d) in enumerate(zip(cfg["episodes"], ep_dirs)):
        done = json.loads((d / "done.json").read_text())
        e = dict(dataset=episode_name(ep), epochs=ep["epochs"], cache=str(d), epochs_run=int(done["epochs"]),
                 trained_epochs=trained.get(i, 0), reused=i not in trained,
                 stopped_early=bool(done.get("stopped_early")), stop_reason=done.get("stop_reason"),
                 monitor=episode_monitor(ep, cfg), validate=validation_sets(ep),
                 best=done.get("best"), best_epoch=done.get("best_epoch"))
        if "mix" in ep:
            e["mix"] = mix_probabilities(ep)
            e["mix_realised"] = {k: v["share"] for k, v in (done.get("mix") or {}).items()}
        episodes.append(e)
    info = dict(name=cfg["name"], status="complete", config_hash=run_key, seconds=round(time.perf_counter() - t0, 2),
                finished=time.strftime("%Y-%m-%dT%H:%M:%S"), steps_per_epoch=cfg["steps_per_epoch"],
                thresholds=thresholds, episodes=episodes, notes=pre.notes,
                datasets=_dataset_sizes(cfg, data_root, pre.label_sets))
    write_training_summary(run_dir, cfg, history, metrics, info)
    atomic_write_text(run_dir / "run.json", json.dumps(info, indent=1))
    for _, r in metrics.iterrows():
        log(f"  [{cfg['name']}] {r['dataset']}: "
            + "  ".join(f"{label} {r.get(key, float('nan')):.4f}" for label, key in HEADLINE_METRICS)
            + (f"  | paper PQ {cfg['paper_row']['pq']:.4f}" if cfg.get("paper_row") else ""), verbose)
    log(f"[{cfg['name']}] done in {info['seconds']:.1f} s -> {run_dir}", verbose)
    return load_run(run_dir)


def model_params(cfg, verbose=0):
    """The run's ``model:`` parameters, with ``pixel_size_um`` filled in when the data says it.

    When ``model:`` does not give ``pixel_size_um`` and every dataset the run trains on is a
    published one of the same pixel size (:func:`stardist_hier.readers.registry.pixel_size_um`),
    the model stores that size (``predict`` resamples slides to it). Otherwise it stays unset,
    with a note when the datasets disagree.
    """
    from ..readers.registry import pixel_size_um

    params = dict(cfg["model"])
    if params.get("pixel_size_um") is not None:
        return params
    datasets = sorted({d for ep in cfg["episodes"] for d in episode_datasets(ep)})
    sizes = {d: pixel_size_um(d) for d in datasets}
    known = set(sizes.values()) - {None}
    if len(known) == 1 and None not in sizes.values():
        params["pixel_size_um"] = known.pop()
    elif len(known) > 1:
        given = ", ".join(f"{d} {v:g} µm" for d, v in sizes.items() if v)
        log(f"  note: the training datasets have different pixel sizes ({given}); the model stores none: "
            f"set model.pixel_size_um", verbose)
    return params


def _load_data(cfg, data_root, h, episodes, verbose):
    """Every split the episodes to train need (loaded before anything trains), and the sizes of the splits.

    Returns ``{'train': {dataset: (X, Y, classes)}, 'val': {...}}``.
    """
    splits = cfg["_splits"]
    data = dict(train={}, val={})
    sizes = {}
    ps = tuple(cfg["model"].get("train_patch_size", (256, 256)))
    for ep in episodes:
        wanted = [(d, "train") for d in episode_datasets(ep)] + [(d, "val") for d in validation_sets(ep)]
        for ds, role in wanted:
            if ds in data[role]:
                continue
            ids = select_ids(data_root, ds, splits[ds][role], cfg["max_images"][role], cfg["seed"])
            # raw (uint8) images: train(normalize=True) normalises each drawn patch as
            # normalize_image would the image, so a run holds a quarter of float32's memory
            X, Y, C = P.load_split(data_root, ds, splits[ds][role], normalize=False, ids=ids, label_set=h.label_set(ds))
            small = [k for k, x in enumerate(X) if x.shape[0] < ps[0] or x.shape[1] < ps[1]]
            if small:
                raise RunConfigError(f"dataset '{ds}': {len(small)} {role} images are smaller than "
                                     f"model.train_patch_size {list(ps)}")
            data[role][ds] = (X, Y, C)
            sizes.setdefault(ds, {})[role] = len(X)
    for ds, n in sizes.items():
        log(f"  loaded {ds}: " + " / ".join(f"{v} {k}" for k, v in n.items()) + " images", verbose)
    return data


def _dataset_sizes(cfg, data_root, label_sets):
    """``{dataset: {'label_set', role: images used}}`` of every dataset of the run (for ``run.json``)."""
    out = {}
    for ds, roles in dataset_roles([cfg]).items():
        out[ds] = dict(label_set=label_sets.get(ds, ds))
        for role in ("train", "val", "test"):
            if role in roles:
                split = cfg["_splits"][ds][role]
                out[ds][role] = len(select_ids(data_root, ds, split, cfg["max_images"][role], cfg["seed"]))
    return out


def _thresholds(final, cfg, data_root, h, verbose):
    """Detection thresholds: the model's, or tuned on the validation sets of the last episode."""
    thresholds = dict(prob=float(final.thresholds.prob), nms=float(final.thresholds.nms), tuned_on=None)
    if not cfg["optimize_thresholds"]:
        return thresholds
    splits = cfg["_splits"]
    n_max = min(n for n in (cfg["max_images"]["val"], cfg["threshold_max_images"], 10**9) if n is not None)
    Xv, Yv, where = [], [], []
    for ds in validation_sets(cfg["episodes"][-1]):
        va = select_ids(data_root, ds, splits[ds]["val"], n_max, cfg["seed"])
        X, Y, _ = P.load_split(data_root, ds, splits[ds]["val"], ids=va, label_set=h.label_set(ds))
        Xv += X
        Yv += Y
        where.append(f"{ds}/{splits[ds]['val']} ({len(va)} images)")
    # StarDist prints its result; the runner says it in its own log line instead
    with _stock_prints(verbose):
        tuned = final.optimize_thresholds(Xv, Yv, optimize_kwargs=dict(verbose=int(verbose >= 2)))
    thresholds = dict(prob=float(tuned["prob"]), nms=float(tuned["nms"]), tuned_on=" + ".join(where))
    log(f"  [{cfg['name']}] thresholds tuned on {thresholds['tuned_on']}: prob {thresholds['prob']:.3f}, "
        f"nms {thresholds['nms']:.2f}", verbose)
    return thresholds


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
        log(f"=== row {k}/{len(cfgs)} ({time.perf_counter() - t0:.0f} s so far)", verbose)
        results.append(run_experiment(cfg, data_root, out, cache_dir=cache_dir, verbose=verbose))
    log(f"=== {len(cfgs)} rows in {time.perf_counter() - t0:.1f} s -> {out}", verbose)
    return results
