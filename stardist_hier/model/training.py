"""The training loop of :class:`~stardist_hier.model.HierStarDist2D` (its ``train`` method).

One loop for models with and without classes: stock StarDist's data pipeline
(:class:`.sampling.PatchData2D`, which runs :class:`stardist.models.model2d.StarDistData2D`,
or :class:`.targets.HierStarDistData2D` with the hierarchical class targets), validation
patches drawn once per label set, a fresh best-weights checkpoint per call, optional early
stopping, extra callbacks, ``initial_epoch`` and ``verbose``; batches built in worker
processes (``workers``, :mod:`.pipeline`), raw images normalised per patch (``normalize``,
:mod:`.sampling`), mixed precision and distribution strategies (:mod:`.distribute`).
"""

from __future__ import annotations

import contextlib
import warnings
from numbers import Integral

import numpy as np

from .callbacks import PerDatasetValidation
from .class_rule import record_training_labels
from .inputs import UnnormalizedInputError, check_training_images
from .pipeline import ParallelBatches, check_workers
from .sampling import PatchData2D
from .targets import HierStarDistData2D, resolve_label_sets

__all__ = ["train_model", "check_data", "parse_classes"]


def check_data(X, Y, what, check_normalized=True):
    """Clear errors for training/validation images and masks that do not fit together."""
    if len(X) != len(Y):
        raise ValueError(f"{what}: {len(X)} images but {len(Y)} masks")
    if len(X) == 0:
        raise ValueError(f"{what}: no images")
    for k, (x, y) in enumerate(zip(X, Y)):
        x, y = np.asarray(x), np.asarray(y)
        if x.shape[: y.ndim] != y.shape:
            raise ValueError(f"{what}: image {k} has shape {x.shape} but its mask has shape {y.shape}")
        if not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"{what}: mask {k} has dtype {y.dtype}; masks must hold integer instance ids")
        if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
            raise ValueError(f"{what}: image {k} contains NaN or infinite values")
    if check_normalized:
        try:
            check_training_images(X, what)
        except UnnormalizedInputError as e:
            raise UnnormalizedInputError(f"{e}; or keep the raw images and pass train(..., normalize=True), which "
                                         f"normalises every drawn patch as normalize_image normalises its image") from None


def parse_classes(classes, label_sets, what):
    """Per-image class entries from ``train``'s ``classes`` argument.

    Parameters
    ----------
    classes : 'auto', None, int or sequence
        ``'auto'`` (or ``None``): every nucleus gets the one class of its label set (label
        sets with one class only, e.g. ``monuseg``); an int: that class id for every nucleus
        of every image; a sequence: one entry per image (dict, int or None).
    label_sets : list of LabelSet
        The label set of each image.
    what : str
        Argument name for error messages.
    """
    n = len(label_sets)
    if classes is None or isinstance(classes, str):
        if classes is not None and classes != "auto":
            raise ValueError(f"{what}: classes={classes!r}; only 'auto' is accepted as a string")
        several = {ls.name: list(ls.ids) for ls in label_sets if len(ls.ids) != 1}
        if several:
            shown = ", ".join(f"'{k}' has ids {v}" for k, v in several.items())
            raise ValueError(f"{what}: classes='auto' gives every nucleus the one class of its label set, but {shown}; "
                             f"pass classes: per image a dict {{instance id: class id}} (as "
                             f"stardist_hier.patches.load_split returns), or one class id for all nuclei")
        return [ls.ids[0] for ls in label_sets]
    if isinstance(classes, Integral) and not isinstance(classes, bool):
        return [int(classes)] * n
    if isinstance(classes, (tuple, list, np.ndarray)):
        if len(classes) != n:
            raise ValueError(f"{what}: {len(classes)} class entries but there are {n} images")
        return list(classes)
    raise ValueError(f"{what}: classes must be 'auto', one class id, or a sequence with one entry per image "
                     f"(dict {{instance id: class id}}, int or None), got {type(classes).__name__}")


def _check_patch_size(config, div_by):
    patch_size = config.train_patch_size
    axes = config.axes.replace("C", "")
    b = config.train_completion_crop if config.train_shape_completion else 0
    for p, d, a in zip(patch_size, div_by, axes):
        if (p - 2 * b) % d != 0:
            raise ValueError(f"'train_patch_size' (minus 2*'train_completion_crop') must be divisible by {d} along axis '{a}'")


def _validation_split(validation_data, multiclass):
    ok_lengths = (2, 3, 4) if multiclass else (2,)
    if not isinstance(validation_data, (list, tuple)) or len(validation_data) not in ok_lengths:
        raise ValueError("validation_data must be (X, Y), (X, Y, classes) or (X, Y, classes, dataset)" if multiclass
                         else "validation_data must be (X_val, Y_val) for a model without classes (n_classes=None)")
    return validation_data


def train_model(model, X, Y, validation_data, classes="auto", augmenter=None, seed=None, epochs=None,
                steps_per_epoch=None, workers=1, dataset=None, callbacks=None, initial_epoch=0, verbose=1,
                early_stopping_monitor="val_loss", normalize=False, strategy=None):
    """``HierStarDist2D.train`` (see there for the parameters)."""
    from .distribute import check_batch_size, check_precision, prepare_network, resolve_strategy

    config = model.config
    multiclass = model._is_multiclass()
    workers = check_workers(workers)
    if not isinstance(normalize, bool):
        raise ValueError(f"normalize={normalize!r}: True (raw images, normalised per drawn patch) or False")
    precision = check_precision(config.train_mixed_precision)
    strategy = resolve_strategy(config.train_distribute if strategy is None else strategy,
                                what="train_distribute" if strategy is None else "strategy")
    check_batch_size(config.train_batch_size, strategy)
    if seed is not None:
        np.random.seed(seed)
    epochs = config.train_epochs if epochs is None else epochs
    steps_per_epoch = config.train_steps_per_epoch if steps_per_epoch is None else steps_per_epoch

    check_normalized = config.check_normalized_input and not normalize
    check_data(X, Y, "training data", check_normalized)
    validation_data = _validation_split(validation_data, multiclass)
    X_val, Y_val = validation_data[0], validation_data[1]
    check_data(X_val, Y_val, "validation data", check_normalized)
    if multiclass:
        label_sets = resolve_label_sets(model.hierarchy, dataset, len(X))
        classes = parse_classes(classes, label_sets, "training data")
        if len(validation_data) > 3:
            dataset_val = validation_data[3]
        elif dataset is None or isinstance(dataset, str):
            dataset_val = dataset
        else:
            raise ValueError("validation_data needs a 4th entry (dataset per validation image) when "
                             "'dataset' names several datasets")
        label_sets_val = resolve_label_sets(model.hierarchy, dataset_val, len(X_val), what="validation dataset")
        classes_val = parse_classes(validation_data[2] if len(validation_data) > 2 else "auto", label_sets_val,
                                    "validation data")
    else:
        if dataset is not None:
            raise ValueError("dataset given, but this model has no classes (n_classes=None): its images have no "
                             "label set; leave dataset out")
        if not (classes is None or (isinstance(classes, str) and classes == "auto")):
            warnings.warn("Ignoring given classes as n_classes is set to None")  # stock StarDist's warning

    set_names = list(dict.fromkeys(ls.name for ls in label_sets_val)) if multiclass else []
    if config.train_early_stopping_patience is not None:
        known = {"val_loss"} | {f"val_loss_{name}" for name in set_names}
        if early_stopping_monitor not in known:
            raise ValueError(f"early_stopping_monitor={early_stopping_monitor!r}: use one of {sorted(known)}")
    _check_patch_size(config, model._axes_div_by(config.axes.replace("C", "")))
    prepare_network(model, strategy, precision)  # rebuilt in the strategy's scope / precision if needed
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        if not model._model_prepared:
            model.prepare_for_training()
        history = _fit(model, X, Y, classes, label_sets if multiclass else None, (X_val, Y_val), classes_val if
                       multiclass else None, label_sets_val if multiclass else None, set_names, augmenter=augmenter,
                       seed=seed, epochs=epochs, steps_per_epoch=steps_per_epoch, workers=workers,
                       callbacks=callbacks, initial_epoch=initial_epoch, verbose=verbose,
                       early_stopping_monitor=early_stopping_monitor, normalize=normalize, strategy=strategy)
    model._training_finished()
    if multiclass:
        record_training_labels(model, Y, classes, label_sets)  # config trained_label_counts
    if multiclass and len({ls.name for ls in label_sets}) == 1 and config.default_label_set != label_sets[0].name:
        config.default_label_set = label_sets[0].name
        model.save_config()
    return history


def _fit(model, X, Y, classes, label_sets, val, classes_val, label_sets_val, set_names, augmenter, seed, epochs,
         steps_per_epoch, workers, callbacks, initial_epoch, verbose, early_stopping_monitor, normalize, strategy):
    """Data generators, callbacks and ``fit`` of :func:`train_model` (its arguments checked)."""
    from keras.callbacks import EarlyStopping, ModelCheckpoint

    from .distribute import multi_worker_fixes

    config = model.config
    multiclass = label_sets is not None
    X_val, Y_val = val
    data_kwargs = dict(n_rays=config.n_rays, patch_size=config.train_patch_size, grid=config.grid,
                       shape_completion=config.train_shape_completion, b=config.train_completion_crop,
                       use_gpu=config.use_gpu, foreground_prob=config.train_foreground_only,
                       sample_ind_cache=config.train_sample_cache, normalize=normalize)

    # validation patches are drawn once per label set, so the per-dataset losses and the
    # overall val_loss are computed on the same patches
    n_val = lambda n: n if config.train_n_val_patches is None else config.train_n_val_patches  # noqa: E731
    val_by_set = {}
    if multiclass:
        hier_kwargs = dict(data_kwargs, hierarchy=model.hierarchy,
                           unannotated_mode=getattr(config, "train_unannotated_mode", "background"))
        for name in set_names:
            idx = [k for k, ls in enumerate(label_sets_val) if ls.name == name]
            gen = HierStarDistData2D([X_val[k] for k in idx], [Y_val[k] for k in idx],
                                     classes=[classes_val[k] for k in idx], label_sets=name,
                                     batch_size=n_val(len(idx)), length=1, **hier_kwargs)
            val_by_set[name] = gen[0]
        first = next(iter(val_by_set.values()))
        data_val = tuple(tuple(np.concatenate([v[part][j] for v in val_by_set.values()])
                               for j in range(len(first[part]))) for part in (0, 1))
        model.data_train = HierStarDistData2D(X, Y, classes=classes, label_sets=label_sets,
                                              batch_size=config.train_batch_size, augmenter=augmenter,
                                              length=epochs * steps_per_epoch, **hier_kwargs)
    else:
        data_val = PatchData2D(X_val, Y_val, batch_size=n_val(len(X_val)), length=1, **data_kwargs)[0]
        model.data_train = PatchData2D(X, Y, batch_size=config.train_batch_size, augmenter=augmenter,
                                       length=epochs * steps_per_epoch, **data_kwargs)

    # a fresh best-weights checkpoint per call: val_loss of a new dataset is not
    # comparable with the previous episode's best
    model.callbacks = [cb for cb in model.callbacks if not isinstance(cb, ModelCheckpoint)]
    model.callbacks += model._checkpoint_callbacks()
    fit_callbacks = ([PerDatasetValidation(val_by_set, config.train_batch_size)] if val_by_set else []) + list(model.callbacks)
    if config.train_early_stopping_patience is not None:
        fit_callbacks.append(EarlyStopping(monitor=early_stopping_monitor, mode="min",
                                           patience=config.train_early_stopping_patience, verbose=verbose))
    fit_callbacks += list(callbacks or [])

    if workers == 1:
        batches = contextlib.nullcontext(iter(model.data_train))  # stock's one-thread path: today's batches
    else:
        seed = int(np.random.randint(2**31 - 1)) if seed is None else seed
        batches = ParallelBatches(model.data_train, workers, seed, steps_per_epoch,
                                  start=initial_epoch * steps_per_epoch, stop=epochs * steps_per_epoch)
    with batches as data_train, multi_worker_fixes(model.keras_model, strategy, data_val), warnings.catch_warnings():
        # Keras 3 warns that fit's default shuffle=True is ignored for a generator: the
        # generator shuffles itself (stock StarDist passes the same iterator)
        warnings.filterwarnings("ignore", message=r"`shuffle=True` was passed", category=UserWarning)
        return model.keras_model.fit(iter(data_train), validation_data=data_val, epochs=epochs,
                                     initial_epoch=initial_epoch, steps_per_epoch=steps_per_epoch,
                                     callbacks=fit_callbacks, verbose=verbose,
                                     validation_batch_size=config.train_batch_size)
