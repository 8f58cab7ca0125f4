"""Training one variant of the claim study (:mod:`.claim`) to convergence.

* :class:`BestWeights`: the one best-weights rule of the study. The train loop's own
  checkpoint (stock StarDist's ``ModelCheckpoint``) writes ``weights_best.h5`` only for a
  model with a folder and monitors ``val_loss``, which for batch mixing is the loss over
  both datasets' validation patches; this callback monitors the same key as the early
  stopping (``val_loss_<dataset>``), keeps the best epoch's weights and optimizer state in
  memory and restores them when the phase ends, for every variant and phase alike.
* :class:`ModelPool`: one network per (hierarchy, loss options), reset to a seed's initial
  weights or to a pre-trained state before each run, so that Keras traces its training and
  prediction functions once per pool entry instead of once per run (a reset pooled model
  trains exactly as a fresh one: ``tests/test_claim_study.py``).
* :class:`PretrainCache`: the pre-training depends only on (source, seed, hierarchy,
  pre-training options): it is trained once and reused by every size and fine-tuning
  variant, kept in memory and, with a folder, on disk (``.npz``, written atomically), so a
  resumed study does not train it again.
* :func:`train_variant`: one (target, size, variant, seed).
* :func:`train_variants`: every variant of one (target, seed) on given arrays (the demo tests).

Seeds (:func:`stardist_hier.model.build.derive_seed` of the run's seed): the initial weights
(the same for every variant and size of a seed), the pre-training's patch sampling, the
target phase's patch sampling (per size) and a re-initialised head each have their own.
"""

from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass, replace

import numpy as np

from ..atomic import atomic_save
from ..augment import class_counts_of
from ..hierarchy import ClassHierarchy
from .claim import VARIANTS, FlattenedModel, applicable_variants
from .flatten import flatten_classes, flatten_hierarchy

__all__ = ["BestWeights", "Flips", "ModelPool", "PretrainState", "PretrainCache", "train_phase", "train_variant",
           "train_variants", "run_seeds"]

#: derive_seed streams of a run's seed
_INIT, _PRE, _TARGET, _HEAD = 1, 2, 3, 4


def run_seeds(seed, size):
    """The seeds of one run: ``{'init', 'pretrain', 'target', 'head'}``."""
    from ..model.build import derive_seed

    return dict(init=derive_seed(seed, _INIT), pretrain=derive_seed(seed, _PRE),
                target=derive_seed(seed, _TARGET, size), head=derive_seed(seed, _HEAD))


def optimizer_values(model):
    """Every optimizer variable's value (moments, iteration count, learning rate), as arrays."""
    from ..model.folder import built_optimizer

    return [np.array(v.numpy()) for v in built_optimizer(model).variables]


def set_optimizer_values(model, values):
    from ..model.folder import built_optimizer

    variables = built_optimizer(model).variables
    if len(variables) != len(values):
        raise ValueError(f"optimizer state of {len(values)} variables, the model's optimizer has {len(variables)}")
    for v, x in zip(variables, values):
        v.assign(x)


class Flips:
    """Augmenter: a random flip and 90 degree rotation of each patch (square patches; else 180)."""

    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)

    def reseed(self, seed):
        self.rng = np.random.default_rng(seed)

    def __call__(self, x, y):
        k = int(self.rng.integers(4))
        if x.shape[0] != x.shape[1]:
            k = 2 * (k % 2)
        x, y = np.rot90(x, k, axes=(0, 1)), np.rot90(y, k, axes=(0, 1))
        if self.rng.integers(2):
            x, y = x[:, ::-1], y[:, ::-1]
        return np.ascontiguousarray(x), np.ascontiguousarray(y)


@functools.lru_cache(maxsize=None)
def _best_weights_callback():
    import keras

    class BestWeights(keras.callbacks.Callback):
        """Keep the best epoch's weights and optimizer state (by ``monitor``, lower is better); restore them at the end.

        Attributes (after training): ``best`` (monitored value), ``best_epoch`` (1-based),
        ``epochs_run``, ``curve`` (the monitored value per epoch).
        """

        def __init__(self, monitor):
            super().__init__()
            self.monitor = monitor
            self.best, self.best_epoch, self.epochs_run, self.curve = float("inf"), 0, 0, []
            self._weights = self._opt = None

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            if self.monitor not in logs:
                raise KeyError(f"BestWeights: the logs of epoch {epoch + 1} have no {self.monitor!r} "
                               f"(have {sorted(logs)})")
            value = float(logs[self.monitor])
            self.epochs_run = epoch + 1
            self.curve.append(value)
            if np.isfinite(value) and value < self.best:
                self.best, self.best_epoch = value, epoch + 1
                self._weights = self.model.get_weights()
                self._opt = [np.array(v.numpy()) for v in self.model.optimizer.variables]

        def on_train_end(self, logs=None):
            if self._weights is not None:
                self.model.set_weights(self._weights)
                for v, x in zip(self.model.optimizer.variables, self._opt):
                    v.assign(x)

    return BestWeights


def BestWeights(monitor):  # noqa: N802 (a class made on first use: keras is imported lazily)
    """A :class:`keras.callbacks.Callback` keeping and restoring the best epoch (module docstring)."""
    return _best_weights_callback()(monitor)


class ModelPool:
    """One network per (hierarchy, loss options), reset before each run (module docstring).

    Parameters
    ----------
    settings : BenchSettings
    hierarchy : ClassHierarchy, str or dict
    """

    def __init__(self, settings, hierarchy="default"):
        self.settings = settings
        self.hierarchy = ClassHierarchy.resolve(hierarchy)
        self.flat = flatten_hierarchy(self.hierarchy, depth=1)
        self._models, self._pristine, self._init = {}, {}, {}

    def _hier(self, flat):
        return self.flat.hierarchy if flat else self.hierarchy

    def model(self, flat, overrides=()):
        """The pooled model of a hierarchy (``flat``: the depth-1 cut) and options (built on first use)."""
        from ..model.build import build_model

        key = (bool(flat), tuple(sorted(overrides)))
        if key not in self._models:
            m = build_model(self._hier(flat), self.settings.model_params(overrides), seed=0)
            self._pristine[key] = optimizer_values(m)
            self._models[key] = m
        return self._models[key]

    def initial_weights(self, flat, seed):
        """The weights a fresh model seeded with ``seed`` starts from (cached)."""
        from ..model.build import build_model

        key = (bool(flat), int(seed))
        if key not in self._init:
            self._init[key] = build_model(self._hier(flat), self.settings.model_params(), seed=seed).keras_model.get_weights()
        return self._init[key]

    def fresh(self, flat, overrides, seed):
        """The pooled model with a fresh model's weights (``seed``) and a fresh optimizer."""
        m = self.model(flat, overrides)
        self._set(m, self.initial_weights(flat, seed), self._pristine[(bool(flat), tuple(sorted(overrides)))], None)
        return m

    def load(self, flat, overrides, state):
        """The pooled model in a saved :class:`PretrainState` (weights, optimizer, label counts)."""
        m = self.model(flat, overrides)
        self._set(m, state.weights, state.optimizer, state.label_counts)
        return m

    @staticmethod
    def _set(m, weights, opt, counts):
        m.keras_model.set_weights(weights)
        set_optimizer_values(m, opt)
        m.config.trained_label_counts = None if counts is None else dict(counts)
        m.config.default_label_set = None


@dataclass
class PretrainState:
    """A pre-trained model's state: ``weights``, ``optimizer`` values, ``label_counts``, ``info``."""

    weights: list
    optimizer: list
    label_counts: dict | None
    info: dict

    @classmethod
    def of(cls, model, info):
        return cls(model.keras_model.get_weights(), optimizer_values(model),
                   dict(model.config.trained_label_counts or {}), info)

    def save(self, path):
        arrays = {f"w{i:04d}": w for i, w in enumerate(self.weights)}
        arrays.update({f"o{i:04d}": o for i, o in enumerate(self.optimizer)})
        meta = json.dumps(dict(info=self.info, label_counts=self.label_counts, n_w=len(self.weights),
                               n_o=len(self.optimizer)))
        return atomic_save(path, lambda tmp: np.savez(tmp, _meta=np.array(meta), **arrays))

    @classmethod
    def load(cls, path):
        with np.load(path) as f:
            meta = json.loads(str(f["_meta"]))
            return cls([f[f"w{i:04d}"] for i in range(meta["n_w"])], [f[f"o{i:04d}"] for i in range(meta["n_o"])],
                       meta["label_counts"], dict(meta["info"], cached=True))


class PretrainCache:
    """Pre-trained states by (source, seed, flat, options), in memory and optionally in ``folder``."""

    def __init__(self, folder=None):
        from pathlib import Path

        self.folder = None if folder is None else Path(folder)
        self._mem = {}

    @staticmethod
    def name(source, seed, flat, overrides=()):
        opts = "".join(f"-{k.replace('train_', '')}={v}" for k, v in sorted(overrides))
        return f"{source}-{'flat' if flat else 'full'}{opts}-seed{int(seed)}"

    def get(self, source, seed, flat, overrides, train):
        """The cached state (``info['cached']`` True), or ``train()``'s (then cached)."""
        key = self.name(source, seed, flat, overrides)
        if key in self._mem:
            return replace(self._mem[key], info=dict(self._mem[key].info, cached=True))
        path = None if self.folder is None else self.folder / f"{key}.npz"
        if path is not None and path.is_file():
            state = PretrainState.load(path)
        else:
            state = train()
            state.info["cached"] = False
            if path is not None:
                state.save(path)
        self._mem[key] = state
        return state


def _curves(history, keep=("loss", "val_loss")):
    return {k: [round(float(x), 5) for x in v] for k, v in history.items() if k in keep or k.startswith("val_loss_")}


def train_phase(model, train, val, datasets, val_datasets, monitor, settings, seed):
    """One :meth:`HierStarDist2D.train` call to convergence on ``val_loss_<monitor>``; best epoch restored.

    Parameters
    ----------
    model : HierStarDist2D
    train, val : tuple
        ``(X, Y, C)`` of the training and validation images.
    datasets, val_datasets : str or list of str
        Label set of all images, or one per image.
    monitor : str
        Label set whose validation loss stops the phase.
    settings : BenchSettings
    seed : int

    Returns
    -------
    dict
        ``epochs`` (run), ``best_epoch``, ``best_val``, ``seconds``, ``history`` (losses per epoch).
    """
    from ..model.build import seed_everything

    t0 = time.perf_counter()
    seed_everything(seed)
    best = BestWeights(f"val_loss_{monitor}")
    hist = model.train(train[0], train[1], validation_data=(val[0], val[1], val[2], val_datasets), classes=train[2],
                       dataset=datasets, augmenter=Flips(seed) if settings.augment else None, seed=seed,
                       epochs=settings.max_epochs, steps_per_epoch=settings.steps_per_epoch, verbose=0,
                       early_stopping_monitor=best.monitor, callbacks=[best])
    return dict(epochs=best.epochs_run, best_epoch=best.best_epoch, best_val=round(best.best, 5),
                seconds=round(time.perf_counter() - t0, 2), history=_curves(hist.history))


def _flat_split(split, table):
    return (split[0], split[1], flatten_classes(split[2], table))


def train_variant(name, target, source, data, size, seed, settings, pool, cache):
    """Train one (target, size, variant, seed).

    Parameters
    ----------
    name : str
        Key of :data:`~.claim.VARIANTS`.
    target, source : str
    data : dict
        Dataset name -> ``{'train': (X, Y, C), 'val': (X, Y, C)}`` (:func:`~.claim.load_split_data`).
    size : int or None
        The first ``size`` tiles of the target's train split (``None``: all).
    seed : int
    settings : BenchSettings
    pool : ModelPool
    cache : PretrainCache

    Returns
    -------
    (model, dict)
        The trained model (a :class:`~.claim.FlattenedModel` for ``flatten``) with its best
        epoch's weights, and ``{'target_phase': train_phase's dict, 'pretrain': its info or None}``.
    """
    v = VARIANTS[name]
    seeds = run_seeds(seed, size or 0)
    tr_t = tuple(a[:size] for a in data[target]["train"])
    if len(tr_t[0]) < (size or 1):
        raise ValueError(f"{target}: {len(tr_t[0])} training tiles, fewer than the size {size}")
    val_t = data[target]["val"]
    pre_info = None
    if v.kind == "target":
        model = pool.fresh(False, v.overrides, seeds["init"])
        info = train_phase(model, tr_t, val_t, target, target, target, settings, seeds["target"])
    elif v.kind == "mixed":
        # validated on the target alone: its loss is what stops the phase (the source's
        # validation would cost two more evaluations per epoch and decide nothing)
        Xs, Ys, Cs = data[source]["train"]
        tr = (list(Xs) + list(tr_t[0]), list(Ys) + list(tr_t[1]), list(Cs) + list(tr_t[2]))
        names = [source] * len(Xs) + [target] * len(tr_t[0])
        model = pool.fresh(False, v.overrides, seeds["init"])
        info = train_phase(model, tr, val_t, names, target, target, settings, seeds["target"])
    else:
        flat = v.kind == "flatten"
        src_tr, src_val = data[source]["train"], data[source]["val"]
        if flat:
            look = pool.flat.lookup
            src_tr, src_val = _flat_split(src_tr, look[source]), _flat_split(src_val, look[source])
            tr_t, val_t = _flat_split(tr_t, look[target]), _flat_split(val_t, look[target])

        def pretrain():
            m = pool.fresh(flat, v.pretrain_overrides, seeds["init"])
            return PretrainState.of(m, train_phase(m, src_tr, src_val, source, source, source, settings,
                                                   seeds["pretrain"]))

        state = cache.get(source, seed, flat, v.pretrain_overrides, pretrain)
        pre_info = dict(state.info)
        model = pool.load(flat, v.overrides, state)
        if v.kind == "reinit_head":
            model.reinitialize_class_head(seed=seeds["head"])
        info = train_phase(model, tr_t, val_t, target, target, target, settings, seeds["target"])
        if flat:
            model = FlattenedModel(model, pool.flat, pool.hierarchy, {target: class_counts_of(data[target]["train"][2][:size])})
    return model, dict(target_phase=info, pretrain=pre_info)


def train_variants(target, source, data, settings, seed, variants=None, hierarchy="default", on_model=None,
                   size=None):
    """Train the variants of one target and seed on given arrays, sharing the pre-training.

    Parameters
    ----------
    target, source : str
    data : dict
        Dataset name -> ``(X, Y, C, Xv, Yv, Cv)`` (train and val of :func:`~.claim.load_split_data`).
    settings : BenchSettings
    seed : int
    variants : sequence of str, optional
        Default: every variant of :data:`~.claim.VARIANTS` that applies to (target, source)
        (:func:`~.claim.applicable_variants`).
    hierarchy : ClassHierarchy, str or dict
    on_model : callable
        ``on_model(variant, model, history, seconds)`` per trained variant, in the given order;
        ``history`` is the target phase's losses per epoch, ``{'pretrain': ..., 'finetune': ...}``
        for the variants with a pre-training.
    size : int, optional
        Target training tiles (default all).
    """
    split = {ds: {"train": tuple(d[:3]), "val": tuple(d[3:6])} for ds, d in data.items()}
    if variants is None:
        variants, _ = applicable_variants(target, source, hierarchy, {ds: d["train"] for ds, d in split.items()})
    else:
        applicable_variants(target, source, hierarchy, None, variants)  # unknown names: an error
    pool, cache = ModelPool(settings, hierarchy), PretrainCache()
    for name in variants:
        t0 = time.perf_counter()
        model, info = train_variant(name, target, source, split, size, seed, settings, pool, cache)
        hist = info["target_phase"]["history"]
        if info["pretrain"] is not None:
            hist = {"pretrain": info["pretrain"]["history"], "finetune": hist}
        on_model(name, model, hist, time.perf_counter() - t0)
