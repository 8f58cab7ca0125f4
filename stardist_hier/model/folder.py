"""Model folders and training state on disk.

A model folder ``<basedir>/<name>/`` holds

* ``config.json``: stock :class:`stardist.models.Config2D` keys only, so that stock
  ``StarDist2D(None, name, basedir)`` loads the folder;
* ``hier_config.json``: the parameters :class:`HierConfig2D` adds (without the hierarchy);
* ``hierarchy.yaml``: the class hierarchy (absent for a model without one);
* ``weights_best.h5`` / ``weights_last.h5``: weights in the legacy HDF5 format stock StarDist
  reads; ``thresholds.json`` as in StarDist.

Every file is written under a temporary name and renamed. This module also saves and
restores optimizer state (the runner's checkpoints and episode hand-over), so that one piece
of code decides how training state is stored.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from csbdeep.utils import load_json

from ..atomic import atomic_save, atomic_write_json
from ..hierarchy import ClassHierarchy, HierarchyError
from .config import HIER_CONFIG_DEFAULTS, HIER_CONFIG_FILE, HIERARCHY_FILE, HierConfig2D

__all__ = ["write_config_files", "read_config", "save_weights", "write_model_folder", "save_optimizer_state",
           "load_optimizer_state", "copy_optimizer_state", "built_optimizer", "weights_files"]

#: weight files StarDist writes into a model folder, in the order StarDist prefers them
WEIGHTS_FILES = ("weights_best.h5", "weights_last.h5", "weights_now.h5")


def weights_files(folder):
    """The weight files stock StarDist would load from a model folder (names), best first.

    Stock StarDist loads any ``*.h5`` / ``*.hdf5`` file of the folder (preferring names with
    ``best``); the names of :data:`WEIGHTS_FILES` come first here, in that order, then any
    other such file, sorted.
    """
    folder = Path(folder)
    known = [n for n in WEIGHTS_FILES if (folder / n).is_file()]
    other = sorted({p.name for ext in ("*.h5", "*.hdf5") for p in folder.glob(ext) if p.is_file()} - set(known))
    return known + other


def write_config_files(folder, config):
    """Write ``config.json``, ``hier_config.json`` and ``hierarchy.yaml`` of ``config`` into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    params = vars(config)
    atomic_write_json(folder / "config.json", {k: v for k, v in params.items() if k not in HIER_CONFIG_DEFAULTS})
    atomic_write_json(folder / HIER_CONFIG_FILE, {k: params[k] for k in HIER_CONFIG_DEFAULTS if k != "hierarchy"})
    if config.hierarchy is not None:
        ClassHierarchy.from_dict(config.hierarchy).to_yaml(folder / HIERARCHY_FILE)
    elif (folder / HIERARCHY_FILE).exists():
        (folder / HIERARCHY_FILE).unlink()


def read_config(folder):
    """The :class:`HierConfig2D` of a model folder (written by this package or by stock StarDist).

    Raises
    ------
    FileNotFoundError
        No ``config.json`` in ``folder``.
    ValueError, HierarchyError
        Unknown parameters, or a hierarchy that does not fit the network; the message names
        the file.
    """
    folder = Path(folder)
    config_file = folder / "config.json"
    if not config_file.exists():
        raise FileNotFoundError(f"{folder} is not a model folder: {config_file.name} is missing")
    params = HierConfig2D.update_loaded_config(load_json(str(config_file)))
    extra_file = folder / HIER_CONFIG_FILE
    if extra_file.exists():
        extra = load_json(str(extra_file))
        unknown = sorted(set(extra) - set(HIER_CONFIG_DEFAULTS))
        if unknown:
            raise ValueError(f"{extra_file}: unknown parameter(s) {unknown}")
        params.update(extra)
    hierarchy_file = folder / HIERARCHY_FILE
    if hierarchy_file.exists():
        h = ClassHierarchy.from_yaml(hierarchy_file)
        if params.get("n_classes") != h.n_classes:
            raise HierarchyError(f"{hierarchy_file} has {h.n_classes} leaves but the model in {folder} "
                                 f"was built with n_classes={params.get('n_classes')}")
        params["hierarchy"] = h
    config = HierConfig2D(**params)
    if not config.is_valid():
        raise ValueError(f"invalid parameters in {folder}: {', '.join(config.is_valid(True)[1])}")
    return config


def save_weights(model, path):
    """Save a model's weights to ``path`` atomically, in the HDF5 format stock StarDist loads."""
    # a name not ending in '.weights.h5' makes csbdeep's patched save_weights write the
    # legacy HDF5 format, which stock StarDist loads
    return atomic_save(path, lambda tmp: model.keras_model.save_weights(tmp))


def write_model_folder(model, folder):
    """A complete model folder (config files + ``weights_best.h5``), made aside then renamed.

    Parameters
    ----------
    model : HierStarDist2D
    folder : str or path-like
        Destination; an existing folder there is replaced.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        write_config_files(tmp, model.config)
        model.keras_model.save_weights(str(tmp / "weights_best.h5"))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def save_optimizer_state(optimizer, path):
    """Save every variable of a Keras optimizer (moments, iteration count, learning rate) to ``.npz``."""
    values = {f"v{i:04d}": np.asarray(v.numpy()) for i, v in enumerate(optimizer.variables)}
    names = np.array([v.path for v in optimizer.variables])
    return atomic_save(path, lambda tmp: np.savez(tmp, _names=names, **values))


def built_optimizer(model):
    """The model's Keras optimizer, built (the model prepared for training first)."""
    if not model._model_prepared:
        model.prepare_for_training()
    opt = model.keras_model.optimizer
    if not opt.built:
        opt.build(model.keras_model.trainable_variables)
    return opt


def load_optimizer_state(model, path):
    """Restore optimizer state saved by :func:`save_optimizer_state` (prepares the model for training first)."""
    opt = built_optimizer(model)
    with np.load(path) as f:
        names = list(f["_names"])
        if len(names) != len(opt.variables):
            raise ValueError(f"{path}: optimizer state of {len(names)} variables, the model's optimizer has "
                             f"{len(opt.variables)}")
        for i, v in enumerate(opt.variables):
            v.assign(f[f"v{i:04d}"])


def copy_optimizer_state(source, target):
    """Copy the optimizer state of one model into another with the same network."""
    src = built_optimizer(source)
    dst = built_optimizer(target)
    if len(src.variables) != len(dst.variables):
        raise ValueError(f"optimizer states differ: {len(src.variables)} variables vs {len(dst.variables)}")
    for a, b in zip(src.variables, dst.variables):
        b.assign(a)
