"""Episodes of a run: their cache keys, training with per-epoch checkpoints, resuming, finishing.

Every episode trains in a cache folder keyed by a hash of everything that determines it
(:func:`episode_key`). After every epoch its weights, optimizer state, history and monitor
state are saved (versioned files, then a ``state.json`` naming them, written by rename: an
interruption leaves either the old or the new epoch, never a mix); a restarted run continues
from the last saved epoch.

Best weights, the learning-rate plateau and early stopping of a run are decided here, in
:func:`update_monitor_state`, and nowhere else: the state lives in the checkpoint, so a
resumed episode continues the counts instead of restarting them as fresh Keras callbacks
would. :func:`check_no_keras_monitors` refuses a model that would add Keras' own
``EarlyStopping`` or ``ReduceLROnPlateau``; and if training still ends before its epochs for
another reason (a Keras callback setting ``stop_training``), the state records it
(``stopped_early``, ``stop_reason``) before anything else is written, so that a resumed run
does not train the episode on.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import yaml

from ..atomic import atomic_write_text
from ..hierarchy import ClassHierarchy
from .config import (TRAINING_FORMAT, episode_datasets, episode_monitor, episode_name, mix_probabilities, plain,
                     validation_sets)
from .data import data_fingerprint

__all__ = ["log", "history_columns", "episode_key", "update_monitor_state", "check_no_keras_monitors", "train_episode",
           "episode_validation_data", "finish_episode", "load_episode_into"]


def log(msg, verbose=1):
    """Print a progress line when ``verbose``."""
    if verbose:
        print(msg, flush=True)


def history_columns(val_sets):
    """Columns of an episode's ``history.csv``: per validation dataset a ``val_loss_<name>``."""
    val_sets = [val_sets] if isinstance(val_sets, str) else list(val_sets)
    return ["epoch", "episode", "dataset", "episode_epoch", "loss", "val_loss", *[f"val_loss_{d}" for d in val_sets],
            "prob_loss", "dist_loss", "prob_class_loss", "val_prob_loss", "val_dist_loss", "val_prob_class_loss", "lr",
            "seconds"]


def episode_key(cfg, data_root, index, hierarchy=None):
    """What determines episode ``index`` (and so its cache folder).

    An episode of one dataset, validated on it and watching ``val_loss``, with one worker,
    has the key it had before mixes, validation sets, monitors and workers existed (so
    existing caches stay valid); otherwise the key has the mix's probabilities (weights
    divided by their sum: ``{a: 3, b: 1}`` and ``{a: 0.75, b: 0.25}`` share a cache), the
    data and splits of each dataset, the validation sets, the monitor and the workers.
    """
    eps = []
    for ep in cfg["episodes"][: index + 1]:
        if "mix" not in ep:
            ds = ep["dataset"]
            sp = cfg["_splits"][ds]
            e = dict(dataset=ds, epochs=ep["epochs"], data=data_fingerprint(data_root, ds),
                     splits=dict(train=sp["train"], val=sp["val"]))
        else:
            e = dict(mix={d: round(p, 12) for d, p in mix_probabilities(ep).items()}, epochs=ep["epochs"],
                     data={d: data_fingerprint(data_root, d) for d in ep["mix"]},
                     splits={d: dict(train=cfg["_splits"][d]["train"], val=cfg["_splits"][d]["val"]) for d in ep["mix"]})
        if validation_sets(ep) != episode_datasets(ep):
            e["validate"] = {d: dict(data=data_fingerprint(data_root, d), split=cfg["_splits"][d]["val"])
                             for d in validation_sets(ep)}
        if episode_monitor(ep, cfg) != "val_loss":
            e["monitor"] = episode_monitor(ep, cfg)
        eps.append(e)
    h = ClassHierarchy.resolve(hierarchy if hierarchy is not None else cfg["hierarchy"]).to_dict()
    key = dict(format=TRAINING_FORMAT, episodes=eps, seed=cfg["seed"], model=cfg["model"], augment=cfg["augment"],
               steps_per_epoch=cfg["steps_per_epoch"], early_stopping_patience=cfg["early_stopping_patience"],
               reduce_lr=cfg["reduce_lr"], restore_best=cfg["restore_best"], deterministic=cfg["deterministic"],
               max_images=dict(train=cfg["max_images"]["train"], val=cfg["max_images"]["val"]), hierarchy=h)
    if cfg.get("workers", 1) != 1:
        key["workers"] = cfg["workers"]  # N workers draw other (equally valid) batches than one
    return key


def update_monitor_state(state, monitor, epoch, lr, cfg, name="val_loss"):
    """Best validation loss, learning-rate plateau and early stopping after one epoch.

    The state lives in the checkpoint (``state.json``), so a resumed episode continues the
    counts instead of restarting them as fresh Keras callbacks would.

    Parameters
    ----------
    state : dict
        ``best``, ``best_epoch``, ``wait`` (epochs since the best), ``lr_wait`` (epochs
        since the best or the last reduction), ``stopped_early`` and ``stop_reason`` (set
        when this call stops the episode); updated in place.
    monitor : float
        This epoch's value of the monitored validation loss.
    epoch : int
        This epoch (1-based, within the episode).
    lr : float
        Current learning rate.
    cfg : dict
        Run config (``reduce_lr``, ``early_stopping_patience``).
    name : str
        Name of the monitored quantity (``val_loss`` or ``val_loss_<dataset>``), for
        ``stop_reason``.

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
        state["stop_reason"] = f"early_stopping_patience: {name} has not improved for {state['wait']} epochs"
    return improved, new_lr, stop


def check_no_keras_monitors(model):
    """Refuse a model whose training would add Keras' own early stopping or LR plateau.

    The runner owns both (:func:`update_monitor_state`); stock StarDist adds
    ``ReduceLROnPlateau`` whenever ``config.train_reduce_lr`` is set (its default), and
    :class:`~stardist_hier.model.HierStarDist2D` adds ``EarlyStopping`` for
    ``config.train_early_stopping_patience``.

    Raises
    ------
    ValueError
        Naming the model parameter and the run-config key to use instead.
    """
    import keras

    from .config import RUNNER_OWNED

    for k, top in RUNNER_OWNED.items():
        if getattr(model.config, k, None) is not None:
            raise ValueError(f"model config has {k}={getattr(model.config, k)!r}: in a run the runner owns this; set "
                             f"{k}=None and use the run config's top-level '{top}'")
    owned = (keras.callbacks.EarlyStopping, keras.callbacks.ReduceLROnPlateau)
    found = [type(cb).__name__ for cb in getattr(model, "callbacks", None) or [] if isinstance(cb, owned)]
    if found:
        raise ValueError(f"the model holds Keras callback(s) {found}: in a run the runner owns stopping and the "
                         "learning-rate plateau (run-config keys 'early_stopping_patience', 'reduce_lr')")


def _write_state(ckpt, state):
    """The commit point of an epoch: ``state.json``, written by rename."""
    atomic_write_text(Path(ckpt) / "state.json", json.dumps(state, indent=1))


def _make_epoch_callback(model, ep_dir, state, rows, info, cfg, verbose, on_epoch_end):
    """Keras callback: per-epoch bookkeeping, best weights, LR plateau, early stopping, saving."""
    import keras

    from ..model.folder import save_optimizer_state, save_weights

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
            for k in history_columns(info["val_sets"])[4:-2]:
                row[k] = float(logs[k]) if k in logs else float("nan")
            rows.append(row)
            watched = info["monitor"]
            monitor = row[watched]
            improved, new_lr, stop = update_monitor_state(state, monitor, e, lr, cfg, watched)
            files = dict(state.get("files") or {})
            if improved:
                files["best"] = f"weights_best_{e:05d}.h5"
                save_weights(model, ckpt / files["best"])
            if new_lr is not None:
                opt.learning_rate.assign(new_lr)
                log(f"    reducing learning rate to {new_lr:.3g}", verbose)
            if stop:
                self.model.stop_training = True
                log(f"    early stopping: {watched} has not improved for {state['wait']} epochs", verbose)
            files["last"] = f"weights_last_{e:05d}.h5"
            files["optimizer"] = f"optimizer_{e:05d}.npz"
            save_weights(model, ckpt / files["last"])
            save_optimizer_state(opt, ckpt / files["optimizer"])
            atomic_write_text(ckpt / f"history_{e:05d}.csv", _rows_frame(rows, info["val_sets"]).to_csv(index=False))
            files["history"] = f"history_{e:05d}.csv"
            old = dict(state.get("files") or {})
            state["epochs_done"] = e
            state["files"] = files
            _write_state(ckpt, state)  # the commit point: state.json names this epoch's files
            for key, name in old.items():
                if name != files.get(key) and (ckpt / name).exists():
                    (ckpt / name).unlink()
            best = f"best {state['best']:.4f} @ {state['best_epoch']}" if state["best_epoch"] else ""
            log(f"  [{info['run']}] episode {info['episode']}/{info['n_episodes']} {ds}: epoch {e}/{info['epochs']}"
                 f"  loss {row['loss']:.4f}  {watched} {monitor:.4f}  {best}  ({row['seconds']:.1f} s)", verbose)
            if on_epoch_end is not None:
                on_epoch_end(dict(run=info["run"], episode=info["episode"], dataset=ds, epoch=e))

    return EpochCheckpoint()


def _rows_frame(rows, val_sets):
    import pandas as pd

    cols = [c for c in history_columns(val_sets) if c != "epoch"]
    return pd.DataFrame(rows, columns=cols)


def episode_validation_data(ep, data):
    """``validation_data`` of ``HierStarDist2D.train`` for an episode, and its validation sets.

    One validation set that is the episode's one dataset: ``(X, Y, classes)`` (that dataset's
    label set, as before mixes existed); otherwise the validation images of every set with
    one dataset name per image.
    """
    val_sets = validation_sets(ep)
    if val_sets == episode_datasets(ep) and len(val_sets) == 1:
        return data["val"][val_sets[0]], val_sets
    Xv, Yv, Cv, names = [], [], [], []
    for d in val_sets:
        x, y, c = data["val"][d]
        Xv += x
        Yv += y
        Cv += c
        names += [d] * len(x)
    return (Xv, Yv, Cv, names), val_sets


def train_episode(model, cfg, i, ep_dir, data, verbose, on_epoch_end):
    """Train (or resume) episode ``i`` in ``ep_dir``.

    Parameters
    ----------
    data : dict
        ``{'train': {dataset: (X, Y, classes)}, 'val': {dataset: (X, Y, classes)}}``, every
        dataset the episode trains on or validates.

    Returns
    -------
    trained : int
        Epochs trained by this call.
    state : dict
        The monitor state (``state.json``), with ``mix``: per training dataset its images,
        entries in the training list and their share (:mod:`.mixing`).
    rows : list of dict
        The episode's history rows.
    """
    from ..model.build import derive_seed, seed_everything
    from ..model.folder import load_optimizer_state
    from .mixing import episode_training_data

    ep = cfg["episodes"][i]
    ds = episode_name(ep)
    ckpt = ep_dir / "checkpoint"
    ckpt.mkdir(parents=True, exist_ok=True)
    state = dict(epochs_done=0, best=float("inf"), best_epoch=None, wait=0, lr_wait=0, stopped_early=False,
                 stop_reason=None, files={})
    rows = []
    if (ckpt / "state.json").is_file():
        import pandas as pd

        state = json.loads((ckpt / "state.json").read_text())
        state.setdefault("stop_reason", None)
        files = state["files"]
        if files.get("last"):  # (none when training stopped before its first epoch ended)
            model.keras_model.load_weights(str(ckpt / files["last"]))
            load_optimizer_state(model, ckpt / files["optimizer"])
            rows = pd.read_csv(ckpt / files["history"]).to_dict("records")
        log(f"  resuming episode {i + 1} ({ds}) after epoch {state['epochs_done']}/{ep['epochs']}", verbose)
    start = state["epochs_done"]
    remaining = ep["epochs"] - start
    validation_data, val_sets = episode_validation_data(ep, data)
    if remaining > 0 and not state["stopped_early"]:
        seed = derive_seed(cfg["seed"], i, start)
        seed_everything(seed, cfg["deterministic"])
        probs = mix_probabilities(ep)
        parts = [(d, *data["train"][d]) for d in episode_datasets(ep)]
        X, Y, C, names, augmenter, mix = episode_training_data(parts, [probs[d] for d in probs], cfg["augment"], seed)
        state["mix"] = mix
        if len(parts) > 1:
            log(f"  episode {i + 1} mixes " + ", ".join(f"{d} {m['images']} images, p = {probs[d]:.3f} (realised "
                                                         f"{m['share']:.3f})" for d, m in mix.items()), verbose)
        info = dict(run=cfg["name"], episode=i + 1, n_episodes=len(cfg["episodes"]), dataset=ds, epochs=ep["epochs"],
                    val_sets=val_sets, monitor=episode_monitor(ep, cfg))
        cb = _make_epoch_callback(model, ep_dir, state, rows, info, cfg, verbose, on_epoch_end)
        check_no_keras_monitors(model)
        # epochs=remaining with initial_epoch=0: the data generator is built for exactly the
        # batches that are consumed, so no prefetching thread outlives the call
        model.train(X, Y, validation_data=validation_data, classes=C, dataset=names, augmenter=augmenter, seed=seed,
                    epochs=remaining, steps_per_epoch=cfg["steps_per_epoch"], callbacks=[cb],
                    verbose=1 if verbose >= 2 else 0, workers=cfg.get("workers", 1), normalize=True)
        if state["epochs_done"] < ep["epochs"] and not state["stopped_early"]:
            # fit returned before its epochs without the runner stopping it: say so in the
            # checkpoint before anything else, so that a resume does not train on
            state["stopped_early"] = True
            state["stop_reason"] = (f"training ended after epoch {state['epochs_done']} of {ep['epochs']} "
                                    "without the runner stopping it (a Keras callback set stop_training)")
            _write_state(ckpt, state)
            log(f"    {state['stop_reason']}", verbose)
        if state["stopped_early"]:
            time.sleep(0.5)  # let a batch that TensorFlow was still prefetching finish (see module docs)
    trained = state["epochs_done"] - start
    if cfg["restore_best"] and state["files"].get("best"):
        model.keras_model.load_weights(str(ckpt / state["files"]["best"]))
    return trained, state, rows


def finish_episode(model, ep_dir, state, rows, key, val_sets):
    """Write the episode's model folder, optimizer state, history and key; mark it done."""
    from ..model.folder import save_optimizer_state, write_model_folder

    write_model_folder(model, ep_dir / "model")
    save_optimizer_state(model.keras_model.optimizer, ep_dir / "optimizer.npz")
    atomic_write_text(ep_dir / "history.csv", _rows_frame(rows, val_sets).to_csv(index=False))
    atomic_write_text(ep_dir / "key.yaml", yaml.safe_dump(plain(key), sort_keys=False))
    done = dict(epochs=state["epochs_done"], best=state["best"] if np.isfinite(state["best"]) else None,
                best_epoch=state["best_epoch"], stopped_early=state["stopped_early"],
                stop_reason=state.get("stop_reason"), finished=time.time())
    if state.get("mix"):
        done["mix"] = state["mix"]
    atomic_write_text(ep_dir / "done.json", json.dumps(done, indent=1))
    shutil.rmtree(ep_dir / "checkpoint", ignore_errors=True)


def load_episode_into(model, ep_dir):
    """Continue from a finished episode: its final weights and optimizer state."""
    from ..model.folder import load_optimizer_state

    model.keras_model.load_weights(str(ep_dir / "model" / "weights_best.h5"))
    load_optimizer_state(model, ep_dir / "optimizer.npz")
