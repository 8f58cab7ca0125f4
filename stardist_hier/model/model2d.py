"""Hierarchy-aware StarDist: :class:`HierStarDist2D`.

It subclasses :class:`stardist.models.StarDist2D` and keeps its constructor, so existing
pipelines can swap the class in (with ``n_classes`` and no hierarchy, the defaults are
stock's: see :mod:`stardist_hier.model.config`). The network is stock StarDist's multi-class
network with ``n_classes`` = the number of leaves of the hierarchy; what changes is the class
target (:mod:`.targets`), the class loss (:mod:`.losses`), training on several datasets, and
how predicted instances get their class (:mod:`.class_rule`). Training lives in
:mod:`.training`.
"""

from __future__ import annotations

import inspect
from numbers import Number
from pathlib import Path

import numpy as np
from stardist.models import Config2D, StarDist2D

from ..hierarchy import ClassHierarchy
from .class_rule import CLASS_FROM, PER_INSTANCE_KEYS, add_class_details, instance_class_prob
from .config import LEAVES, HierConfig2D
from .folder import read_config, weights_files, write_config_files
from .inputs import warn_if_unnormalized
from .losses import class_loss_from_config
from .training import train_model

__all__ = ["HierStarDist2D"]

_STOCK_GENERATOR = inspect.signature(StarDist2D._predict_instances_generator)


class HierStarDist2D(StarDist2D):
    """StarDist2D trained on datasets whose label sets are cuts of one class hierarchy.

    Parameters
    ----------
    config : HierConfig2D, Config2D or None
        Configuration; a stock :class:`Config2D` is converted (flat hierarchy, stock
        defaults). ``None`` loads the model folder ``basedir/name`` (saved by this class or by
        stock StarDist); a folder without weights is an error naming it.
    name : str or None
        Model name (folder name under ``basedir``).
    basedir : str or None
        Parent folder of the model folder; ``None`` keeps everything in memory.

    Attributes
    ----------
    hierarchy : ClassHierarchy or None
        The class hierarchy (``None`` for a model without classes).

    See Also
    --------
    from_folder, from_stardist, from_pretrained
    """

    def __init__(self, config=HierConfig2D(), name=None, basedir="."):
        """See class docstring."""
        if isinstance(config, Config2D) and not isinstance(config, HierConfig2D):
            config = HierConfig2D.from_config2d(config)
        super().__init__(config, name=name, basedir=basedir)
        self.hierarchy = self._make_hierarchy(self.config)

    @property
    def _config_class(self):
        return HierConfig2D

    @staticmethod
    def _make_hierarchy(config, source="<config>"):
        if config.hierarchy is not None:
            return ClassHierarchy.from_dict(config.hierarchy, source=source)
        if config.n_classes is not None:
            return ClassHierarchy.flat(config.n_classes)
        return None

    # -- model folder ---------------------------------------------------------------------

    @classmethod
    def from_folder(cls, folder):
        """Load a model folder (written by this class or by stock StarDist).

        Raises
        ------
        FileNotFoundError
            No such folder, no ``config.json`` or no weights in it; the message names it.
        """
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"model folder not found: {folder}")
        return cls(None, name=folder.name, basedir=str(folder.parent))

    def _set_logdir(self):
        if self.basedir is None:
            return
        self.logdir = self.basedir / self.name
        if self.config is None:
            self.config = read_config(self.logdir)
            return
        if self.logdir.exists():
            import warnings

            warnings.warn(f"output path for model already exists, files may be overwritten: {self.logdir.resolve()}")
        write_config_files(self.logdir, self.config)

    def save_config(self):
        """Rewrite the config files of the model folder (after changing ``config``); no-op in memory."""
        if self.basedir is not None:
            write_config_files(self.logdir, self.config)

    def _find_and_load_weights(self, prefer="best"):
        if not weights_files(self.logdir):
            raise FileNotFoundError(f"model folder {self.logdir} has no network weights (*.h5, *.hdf5): train the "
                                    f"model there or copy its weights_best.h5 into it")
        super()._find_and_load_weights(prefer)

    def load_weights(self, name="weights_best.h5"):
        """Load weights from the model folder, with a clear error if they do not fit."""
        try:
            super().load_weights(name)
        except ValueError as e:
            raise ValueError(f"the weights {self.logdir / name} do not fit this model "
                             f"(n_classes={self.config.n_classes}, n_rays={self.config.n_rays}, "
                             f"grid={self.config.grid}): {e}") from e

    # -- from stock StarDist --------------------------------------------------------------

    @classmethod
    def from_stardist(cls, model_or_folder, hierarchy=None, name=None, basedir=None, **config_kwargs):
        """A model with the backbone, object and distance heads of a stock StarDist2D model.

        Parameters
        ----------
        model_or_folder : stardist.models.StarDist2D, str or path-like
            A stock model or its folder (e.g. a downloaded ``2D_versatile_he``).
        hierarchy : str, dict, ClassHierarchy or None
            The class hierarchy of the new model: its class head is freshly initialised (seed
            it with :func:`stardist_hier.model.build.seed_everything` first). ``None`` converts
            the model as it is, class head included (``n_classes`` as stock's).
        name, basedir : str, optional
            Model folder of the new model (``basedir=None``: in memory).
        **config_kwargs
            Other :class:`HierConfig2D` parameters to change (e.g. ``train_patch_size``,
            ``pixel_size_um``); the network's own parameters must stay as stock's.

        Returns
        -------
        HierStarDist2D
            Its thresholds are the stock model's.

        Raises
        ------
        FileNotFoundError
            A folder that is not a model folder or has no weights.
        ValueError
            The network parameters do not fit the stock weights.
        """
        from .transfer import copy_weights, stock_config_params, stock_model

        stock = stock_model(model_or_folder)
        where = f"stock model {getattr(stock, 'logdir', None) or stock.name}"
        params = stock_config_params(stock.config)
        params.update(config_kwargs)
        keep_head = hierarchy is None
        if keep_head:
            params["n_classes"] = stock.config.n_classes
            params["train_class_weights"] = stock.config.train_class_weights
        elif stock.config.n_classes is None and "train_loss_weights" not in config_kwargs:
            # stock's (prob, dist) loss weights, and weight 1 for the new class loss (stock's default)
            params["train_loss_weights"] = tuple(stock.config.train_loss_weights)[:2] + (1.0,)
        config = HierConfig2D(hierarchy=hierarchy, **params)
        model = cls(config, name=name, basedir=basedir)
        copy_weights(stock.keras_model, model.keras_model, class_head=keep_head and stock.config.n_classes is not None,
                     where=where)
        model.thresholds = dict(prob=float(stock.thresholds.prob), nms=float(stock.thresholds.nms))
        return model

    @classmethod
    def from_pretrained(cls, name_or_alias=None, hierarchy=None):
        """A registered pretrained StarDist2D model (e.g. ``'2D_versatile_he'``) as a HierStarDist2D.

        Downloads it as stock StarDist does, then :meth:`from_stardist` (``hierarchy=None``:
        converted as it is; a hierarchy: a fresh class head on its backbone).

        Raises
        ------
        ValueError
            No or an unknown name; the message lists the registered ones.
        """
        from csbdeep.models.pretrained import get_model_details, get_model_folder, get_registered_models

        keys, aliases = get_registered_models(StarDist2D)
        known = ", ".join(f"{k} ({', '.join(aliases[k])})" if aliases.get(k) else k for k in keys) or "none"
        if name_or_alias is None:
            raise ValueError(f"name a pretrained StarDist2D model; registered: {known}")
        try:
            get_model_details(StarDist2D, name_or_alias)
        except ValueError:
            raise ValueError(f"unknown pretrained StarDist2D model {name_or_alias!r}; registered: {known}") from None
        return cls.from_stardist(get_model_folder(StarDist2D, name_or_alias), hierarchy=hierarchy)

    # -- training -------------------------------------------------------------------------

    def class_loss(self):
        """The hierarchical class loss configured for this model."""
        return class_loss_from_config(self.config)

    def prepare_for_training(self, optimizer=None):
        """Compile as stock StarDist, then again with the hierarchical class loss (:mod:`.compiling`).

        Raises
        ------
        ValueError
            Under ``train_mixed_precision``, an optimizer that cannot take it
            (:func:`stardist_hier.model.distribute.check_optimizer`).
        """
        from .compiling import recompile_with_class_loss
        from .distribute import check_optimizer, recompile_for_training

        check_optimizer(optimizer, self.config.train_mixed_precision)
        if self.config.train_tensorboard:
            try:
                import tensorboard  # noqa: F401
            except ImportError:
                raise RuntimeError("train_tensorboard=True needs the 'tensorboard' package "
                                   "(pip install tensorboard), or set train_tensorboard=False") from None
        super().prepare_for_training(optimizer)
        if self._is_multiclass():
            recompile_with_class_loss(self, self.class_loss())
        recompile_for_training(self)  # multi-replica strategy, mixed precision

    def train(self, X, Y, validation_data, classes="auto", augmenter=None, seed=None, epochs=None,
              steps_per_epoch=None, workers=1, dataset=None, callbacks=None, initial_epoch=0, verbose=1,
              early_stopping_monitor="val_loss", normalize=False, strategy=None):
        """Train on one dataset, or on several mixed within each batch.

        Same as :meth:`stardist.models.StarDist2D.train`, plus the parameters below, which a
        model without classes (``n_classes=None``) supports too, except ``dataset``.

        Parameters
        ----------
        X : sequence of numpy.ndarray
            Normalised images (:func:`stardist_hier.patches.normalize_image`, or
            ``patches.load_split(normalize=True)``); images that look raw (integer dtype or
            0..255 values, :func:`stardist_hier.model.inputs.looks_unnormalized`) are refused
            unless the config has ``check_normalized_input=False``, or declared raw with
            ``normalize=True``.
        classes : sequence, int or 'auto'
            Per image a dict ``{instance id: class id or None}`` in the dataset's own class
            ids (its label set), a single id for all instances, or ``None`` (unknown: no
            class loss for those objects, as in StarDist); or one class id for every nucleus
            of every image; or ``'auto'``: every nucleus gets the one class of its label set
            (only for label sets with one class, e.g. ``monuseg``).
        validation_data : tuple
            ``(X_val, Y_val)`` (classes ``'auto'``), ``(X_val, Y_val, classes_val)`` or
            ``(X_val, Y_val, classes_val, dataset_val)``; without ``dataset_val`` the
            training ``dataset`` is used (it must then be a single name).
        dataset : str or sequence of str
            Label set of the training images: one name (e.g. ``'monusac'``) or one per image,
            which mixes datasets inside batches (each sample keeps its own label set).
            May be omitted when the hierarchy has a single label set. A single label set
            becomes the model's ``default_label_set`` (saved to the model folder).
        callbacks : list, optional
            Extra Keras callbacks.
        initial_epoch : int
            Epoch to start from (to resume an interrupted run).
        verbose : int
            Keras verbosity (1: progress bar).
        early_stopping_monitor : str
            Quantity watched when ``train_early_stopping_patience`` is set: ``'val_loss'``
            (all validation images) or ``'val_loss_<label set>'`` for one dataset.
        workers : int
            Processes that build the training batches (>= 1). ``1``: stock's one thread of the
            training process, today's batches bit for bit. ``N >= 2``: N forked worker
            processes (Linux), each with its own random stream per epoch, so a seed gives the
            same batches for a given N, and a run resumed at ``initial_epoch`` the batches of
            an uninterrupted one (:mod:`stardist_hier.model.pipeline`).
        normalize : bool
            ``True``: ``X`` (and the validation images) are raw images, e.g. uint8 from
            ``patches.load_split(..., normalize=False)``; they are kept as given (a quarter
            of float32's memory) and every drawn patch is normalised with the percentiles of
            its whole image, exactly as :func:`stardist_hier.patches.normalize_image`
            (:mod:`stardist_hier.model.sampling`). ``False`` (default): ``X`` must be
            normalised already (checked, see ``X``).
        strategy : str, tf.distribute.Strategy or None
            ``'mirrored'``, ``'multi_worker'`` or a strategy object; ``None``: the config's
            ``train_distribute``. The network is rebuilt inside its scope at the first call
            (:mod:`stardist_hier.model.distribute`).

        Returns
        -------
        keras.callbacks.History
            Besides Keras' ``loss`` and ``val_loss``, the history of a model with classes
            holds ``val_loss_<name>`` for the validation images of each label set.

        Notes
        -----
        The paper's protocol (dataset A for some epochs, then dataset B, same layers) is
        two calls of this method; optimizer state carries over, and the best-weights
        checkpoint restarts with each call.
        """
        return train_model(self, X, Y, validation_data, classes=classes, augmenter=augmenter, seed=seed,
                           epochs=epochs, steps_per_epoch=steps_per_epoch, workers=workers, dataset=dataset,
                           callbacks=callbacks, initial_epoch=initial_epoch, verbose=verbose,
                           early_stopping_monitor=early_stopping_monitor, normalize=normalize, strategy=strategy)

    def reinitialize_class_head(self, seed=None):
        """Re-draw the weights of the class head (``features_class`` and ``prob_class``).

        This is the transfer-learning baseline the paper argues against: keep the
        pre-trained backbone, start the last layers again.
        """
        for k, name in enumerate(("features_class", "prob_class")):
            try:
                layer = self.keras_model.get_layer(name)
            except ValueError:
                continue  # no separate class features when net_conv_after_unet == 0
            init_config = layer.kernel_initializer.get_config()
            init_config["seed"] = None if seed is None else seed + k
            initializer = type(layer.kernel_initializer).from_config(init_config)
            layer.kernel.assign(initializer(layer.kernel.shape, dtype=layer.kernel.dtype))
            if layer.bias is not None:
                layer.bias.assign(np.zeros(layer.bias.shape, dtype=layer.bias.dtype))

    def optimize_thresholds(self, X_val, Y_val, *args, **kwargs):
        """As :meth:`stardist.models.StarDist2D.optimize_thresholds` (object thresholds only; warns on raw images)."""
        if self.config.check_normalized_input:
            for x in X_val:
                if warn_if_unnormalized(x, "optimize_thresholds"):
                    break
        return super().optimize_thresholds(X_val, Y_val, *args, **kwargs)

    # -- prediction -----------------------------------------------------------------------

    def resolve_label_set(self, label_set=None):
        """The :class:`LabelSet` predictions answer in.

        ``None``: the config's ``default_label_set``, else the leaves; ``'leaves'``: the
        leaf label set (class id i = leaf channel i) unless the hierarchy defines a label set
        of that name; another name: that label set of the hierarchy.
        """
        if self.hierarchy is None:
            raise ValueError("label_set given, but this model has no classes (n_classes=None)")
        name = self.config.default_label_set if label_set is None else label_set
        if name is None or (name == LEAVES and LEAVES not in self.hierarchy.label_sets):
            return self.hierarchy.leaf_label_set()
        return self.hierarchy.label_set(name)

    def _scale_yx(self, img, axes, scale):
        if scale is None:
            return (1.0, 1.0)
        axes = self._normalize_axes(img, axes)
        if isinstance(scale, Number):
            scale = tuple(scale if a in "XYZ" else 1 for a in axes)
        s = dict(zip(axes, scale))
        return (float(s["Y"]), float(s["X"]))

    def _predict_instances_generator(self, img, *args, label_set=None, class_from=None, **kwargs):
        bound = _STOCK_GENERATOR.bind(self, img, *args, **kwargs)
        kw = {k: v for k, v in bound.arguments.items() if k not in ("self", "img")}
        if self.config.check_normalized_input and kw.get("normalizer") is None:
            warn_if_unnormalized(img, "predict_instances", stacklevel=4)
        if not self._is_multiclass():
            if label_set is not None:
                raise ValueError("label_set given, but this model has no classes (n_classes=None)")
            if class_from is not None:
                raise ValueError("class_from given, but this model has no classes (n_classes=None)")
            yield from super()._predict_instances_generator(img, **kw)
            return
        ls = self.resolve_label_set(label_set)
        class_from = self.config.predict_class_from if class_from is None else class_from
        if class_from not in CLASS_FROM:
            raise ValueError(f"class_from must be 'instance' or 'center', got {class_from!r}")
        want_predict = bool(kw.get("return_predict", False))
        want_labels = bool(kw.get("return_labels", True))
        if class_from == "instance":
            # the per-instance rule needs the dense maps and the label image
            kw.update(sparse=False, return_predict=True, return_labels=True)
        result = None
        for result in super()._predict_instances_generator(img, **kw):
            if isinstance(result, str):
                yield result  # 'predict', 'tile', 'nms': progress for stock's callers (napari)
        if kw.get("return_predict", False):
            (labels, details), predicted = result
        else:
            (labels, details), predicted = result, None
        if class_from == "instance":
            prob, _, prob_class = predicted
            details["class_prob"] = instance_class_prob(labels, prob, prob_class, details["class_prob"],
                                                        self.config.grid,
                                                        self._scale_yx(img, kw.get("axes"), kw.get("scale")))
        add_class_details(details, ls, self.hierarchy.leaf_label_set(), class_from,
                          label_counts=getattr(self.config, "trained_label_counts", None))
        if not want_labels:
            labels = None
        yield ((labels, details), predicted) if want_predict else (labels, details)

    def predict_instances(self, img, *args, label_set=None, class_from=None, **kwargs):
        """Predict instances as :meth:`stardist.models.StarDist2D.predict_instances`, plus:

        Parameters
        ----------
        img : numpy.ndarray
            A normalised image (:func:`stardist_hier.patches.normalize_image`), or pass
            ``normalizer=``; a raw-looking image gives an
            :class:`~stardist_hier.model.inputs.UnnormalizedInputWarning`.
        label_set : str or None
            Name of a label set of the hierarchy (e.g. ``'monusac'``): ``details['class_id']``
            is in that dataset's class ids (:meth:`stardist_hier.hierarchy.LabelSet.classify`
            of the leaf probabilities) and ``details['label_set_prob']`` holds the summed
            probabilities (``(n, max_id + 1)``, column = class id). ``None``: the model's
            ``default_label_set`` (its training dataset), else leaf ids; ``'leaves'``: leaf ids.
        class_from : {'instance', 'center'} or None
            How an instance gets its class (see ``HierConfig2D.predict_class_from``);
            ``None`` uses the config. ``'instance'`` predicts densely (``sparse=False``) and
            never returns class 0 for a detected instance; ``'center'`` is stock StarDist's
            rule, background included (at a label set too), and can return 0.

        Returns
        -------
        (numpy.ndarray, dict)
            Labels and details; ``details['class_prob']`` is at leaf level
            (``n_classes + 1`` columns, column 0 background), ``details['leaf_class_id']``
            the leaf id of each instance and ``details['label_set']`` the name of the label
            set of ``class_id``.
        """
        result = None
        for result in self._predict_instances_generator(img, *args, label_set=label_set, class_from=class_from,
                                                        **kwargs):
            pass
        return result

    def predict_instances_big(self, img, axes, block_size, min_overlap, context=None, labels_out=None,
                              labels_out_dtype=np.int32, show_progress=True, label_set=None, class_from=None,
                              **kwargs):
        """:meth:`stardist.models.StarDist2D.predict_instances_big` with every per-instance array complete.

        Blocks are predicted with :meth:`predict_instances` (``label_set`` and ``class_from``
        as there). Stock StarDist concatenates only its own per-instance arrays over the blocks;
        here ``class_id``, ``leaf_class_id`` and ``label_set_prob`` are computed from the
        concatenated ``class_prob`` with the same rule, so every per-instance array has one
        row per instance.
        """
        rule = {k: v for k, v in dict(label_set=label_set, class_from=class_from).items() if v is not None}
        labels, details = super().predict_instances_big(
            img, axes, block_size, min_overlap, context=context, labels_out=labels_out,
            labels_out_dtype=labels_out_dtype, show_progress=show_progress, **rule, **kwargs)
        if self._is_multiclass():
            for key in PER_INSTANCE_KEYS:
                details.pop(key, None)
            class_from = self.config.predict_class_from if class_from is None else class_from
            add_class_details(details, self.resolve_label_set(label_set), self.hierarchy.leaf_label_set(), class_from,
                              label_counts=getattr(self.config, "trained_label_counts", None))
        return labels, details
