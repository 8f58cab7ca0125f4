"""Hierarchy-aware StarDist: :class:`HierStarDist2D`.

It subclasses :class:`stardist.models.StarDist2D` and keeps its constructor, so existing
pipelines can swap the class in. The network is stock StarDist's multi-class network with
``n_classes`` = the number of leaves of the hierarchy; what changes is the class target
(:mod:`.targets`), the class loss (:mod:`.losses`), training on several datasets, and how
predicted instances get their class.
"""

from __future__ import annotations

import warnings

import numpy as np
from stardist.models import Config2D, StarDist2D

from ..hierarchy import ClassHierarchy
from .callbacks import PerDatasetValidation
from .config import HierConfig2D
from .folder import read_config, write_config_files
from .losses import hierarchical_class_loss
from .targets import HierStarDistData2D, resolve_label_sets

__all__ = ["HierStarDist2D"]

class HierStarDist2D(StarDist2D):
    """StarDist2D trained on datasets whose label sets are cuts of one class hierarchy.

    Parameters
    ----------
    config : HierConfig2D, Config2D or None
        Configuration; a stock :class:`Config2D` is converted (flat hierarchy). ``None``
        loads the model folder ``basedir/name`` (saved by this class or by stock StarDist).
    name : str or None
        Model name (folder name under ``basedir``).
    basedir : str or None
        Parent folder of the model folder; ``None`` keeps everything in memory.

    Attributes
    ----------
    hierarchy : ClassHierarchy or None
        The class hierarchy (``None`` for a model without classes).
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

    def _set_logdir(self):
        if self.basedir is None:
            return
        self.logdir = self.basedir / self.name
        if self.config is None:
            self.config = read_config(self.logdir)
            return
        if self.logdir.exists():
            warnings.warn(f"output path for model already exists, files may be overwritten: {self.logdir.resolve()}")
        write_config_files(self.logdir, self.config)

    def load_weights(self, name="weights_best.h5"):
        """Load weights from the model folder, with a clear error if they do not fit."""
        try:
            super().load_weights(name)
        except ValueError as e:
            raise ValueError(f"the weights {self.logdir / name} do not fit this model "
                             f"(n_classes={self.config.n_classes}, n_rays={self.config.n_rays}, "
                             f"grid={self.config.grid}): {e}") from e

    # -- training -------------------------------------------------------------------------

    def class_loss(self):
        """The hierarchical class loss configured for this model."""
        c = self.config
        return hierarchical_class_loss(c.train_class_weights, c.n_classes + 1, ce_weight=c.train_class_ce_weight,
                                       focal_tversky_weight=c.train_focal_tversky_weight,
                                       alpha=c.train_focal_tversky_alpha, gamma=c.train_focal_tversky_gamma,
                                       mode=c.train_focal_tversky_mode)

    def prepare_for_training(self, optimizer=None):
        """Compile as stock StarDist, then swap the class loss for the hierarchical one."""
        if self.config.train_tensorboard:
            try:
                import tensorboard  # noqa: F401
            except ImportError:
                raise RuntimeError("train_tensorboard=True needs the 'tensorboard' package "
                                   "(pip install tensorboard), or set train_tensorboard=False") from None
        super().prepare_for_training(optimizer)
        if self._is_multiclass():
            compiled = self.keras_model._compile_config.config
            loss = list(compiled["loss"])
            loss[2] = self.class_loss()
            self.keras_model.compile(compiled["optimizer"], loss=loss, loss_weights=compiled["loss_weights"],
                                     metrics=compiled["metrics"])

    @staticmethod
    def _check_data(X, Y, what):
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

    def _parse_hier_classes(self, classes, n):
        return self._parse_classes_arg("auto" if classes is None else classes, n)

    def train(self, X, Y, validation_data, classes="auto", augmenter=None, seed=None, epochs=None,
              steps_per_epoch=None, workers=1, dataset=None, callbacks=None, initial_epoch=0, verbose=1,
              early_stopping_monitor="val_loss"):
        """Train on one dataset, or on several mixed within each batch.

        Same as :meth:`stardist.models.StarDist2D.train`, plus:

        Parameters
        ----------
        classes : sequence or 'auto'
            Per image a dict ``{instance id: class id or None}`` in the dataset's own class
            ids (its label set), a single id for all instances, or ``None`` (unknown: no
            class loss for those objects, as in StarDist).
        validation_data : tuple
            ``(X_val, Y_val)``, ``(X_val, Y_val, classes_val)`` or
            ``(X_val, Y_val, classes_val, dataset_val)``; without ``dataset_val`` the
            training ``dataset`` is used (it must then be a single name).
        dataset : str or sequence of str
            Label set of the training images: one name (e.g. ``'monusac'``) or one per image,
            which mixes datasets inside batches (each sample keeps its own label set).
            May be omitted when the hierarchy has a single label set.
        callbacks : list, optional
            Extra Keras callbacks.
        initial_epoch : int
            Epoch to start from (to resume an interrupted run).
        verbose : int
            Keras verbosity (1: progress bar).
        early_stopping_monitor : str
            Quantity watched when ``train_early_stopping_patience`` is set: ``'val_loss'``
            (all validation images) or ``'val_loss_<label set>'`` for one dataset.

        Returns
        -------
        keras.callbacks.History
            Besides Keras' ``loss`` and ``val_loss``, the history holds ``val_loss_<name>``
            for the validation images of each label set.

        Notes
        -----
        The paper's protocol (dataset A for some epochs, then dataset B, same layers) is
        two calls of this method; optimizer state carries over, and the best-weights
        checkpoint restarts with each call.
        """
        if not self._is_multiclass():
            return super().train(X, Y, validation_data, classes=classes, augmenter=augmenter, seed=seed,
                                 epochs=epochs, steps_per_epoch=steps_per_epoch, workers=workers)
        from csbdeep.utils.tf import IS_KERAS_3_PLUS
        from keras.callbacks import EarlyStopping, ModelCheckpoint

        if seed is not None:
            np.random.seed(seed)
        epochs = self.config.train_epochs if epochs is None else epochs
        steps_per_epoch = self.config.train_steps_per_epoch if steps_per_epoch is None else steps_per_epoch

        self._check_data(X, Y, "training data")
        classes = self._parse_hier_classes(classes, len(X))
        label_sets = resolve_label_sets(self.hierarchy, dataset, len(X))

        if not isinstance(validation_data, (list, tuple)) or not 2 <= len(validation_data) <= 4:
            raise ValueError("validation_data must be (X, Y), (X, Y, classes) or (X, Y, classes, dataset)")
        X_val, Y_val = validation_data[0], validation_data[1]
        self._check_data(X_val, Y_val, "validation data")
        classes_val = self._parse_hier_classes(validation_data[2] if len(validation_data) > 2 else "auto", len(X_val))
        if len(validation_data) > 3:
            dataset_val = validation_data[3]
        elif dataset is None or isinstance(dataset, str):
            dataset_val = dataset
        else:
            raise ValueError("validation_data needs a 4th entry (dataset per validation image) when "
                             "'dataset' names several datasets")
        label_sets_val = resolve_label_sets(self.hierarchy, dataset_val, len(X_val), what="validation dataset")

        patch_size = self.config.train_patch_size
        axes = self.config.axes.replace("C", "")
        b = self.config.train_completion_crop if self.config.train_shape_completion else 0
        for p, d, a in zip(patch_size, self._axes_div_by(axes), axes):
            if (p - 2 * b) % d != 0:
                raise ValueError(f"'train_patch_size' (minus 2*'train_completion_crop') must be divisible by {d} along axis '{a}'")

        if not self._model_prepared:
            self.prepare_for_training()

        data_kwargs = dict(n_rays=self.config.n_rays, patch_size=self.config.train_patch_size, grid=self.config.grid,
                           shape_completion=self.config.train_shape_completion, b=self.config.train_completion_crop,
                           use_gpu=self.config.use_gpu, foreground_prob=self.config.train_foreground_only,
                           sample_ind_cache=self.config.train_sample_cache, hierarchy=self.hierarchy)
        if IS_KERAS_3_PLUS:
            data_kwargs["keras_kwargs"] = dict(workers=workers, use_multiprocessing=workers > 1)

        # validation patches are drawn once per label set, so the per-dataset losses and the
        # overall val_loss are computed on the same patches
        val_by_set = {}
        for name in dict.fromkeys(ls.name for ls in label_sets_val):
            idx = [k for k, ls in enumerate(label_sets_val) if ls.name == name]
            n_take = len(idx) if self.config.train_n_val_patches is None else self.config.train_n_val_patches
            gen = HierStarDistData2D([X_val[k] for k in idx], [Y_val[k] for k in idx],
                                     classes=[classes_val[k] for k in idx], label_sets=name,
                                     batch_size=n_take, length=1, **data_kwargs)
            val_by_set[name] = gen[0]
        data_val = tuple(tuple(np.concatenate([v[part][j] for v in val_by_set.values()])
                               for j in range(len(next(iter(val_by_set.values()))[part]))) for part in (0, 1))

        self.data_train = HierStarDistData2D(X, Y, classes=classes, label_sets=label_sets,
                                             batch_size=self.config.train_batch_size, augmenter=augmenter,
                                             length=epochs * steps_per_epoch, **data_kwargs)

        # a fresh best-weights checkpoint per call: val_loss of a new dataset is not
        # comparable with the previous episode's best
        self.callbacks = [cb for cb in self.callbacks if not isinstance(cb, ModelCheckpoint)]
        self.callbacks += self._checkpoint_callbacks()
        fit_callbacks = [PerDatasetValidation(val_by_set, self.config.train_batch_size)] + list(self.callbacks)
        if self.config.train_early_stopping_patience is not None:
            known = {"val_loss"} | {f"val_loss_{name}" for name in val_by_set}
            if early_stopping_monitor not in known:
                raise ValueError(f"early_stopping_monitor={early_stopping_monitor!r}: use one of {sorted(known)}")
            fit_callbacks.append(EarlyStopping(monitor=early_stopping_monitor, mode="min",
                                               patience=self.config.train_early_stopping_patience, verbose=verbose))
        fit_callbacks += list(callbacks or [])

        history = self.keras_model.fit(iter(self.data_train), validation_data=data_val, epochs=epochs,
                                       initial_epoch=initial_epoch, steps_per_epoch=steps_per_epoch,
                                       callbacks=fit_callbacks, verbose=verbose,
                                       validation_batch_size=self.config.train_batch_size)
        self._training_finished()
        return history

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

    # -- prediction -----------------------------------------------------------------------

    def _predict_instances_generator(self, img, *args, label_set=None, class_from=None, **kwargs):
        if self._is_multiclass():
            if label_set is not None:
                label_set = self.hierarchy.label_set(label_set)
            class_from = class_from if class_from is not None else self.config.predict_class_from
            if class_from not in ("instance", "center"):
                raise ValueError(f"class_from must be 'instance' or 'center', got {class_from!r}")
            if class_from == "instance":
                # the per-instance rule needs the dense class map
                kwargs["sparse"] = False
            nms_kwargs = dict(kwargs.pop("nms_kwargs", None) or {})
            nms_kwargs.update(_hier_label_set=label_set, _hier_class_from=class_from)
            kwargs["nms_kwargs"] = nms_kwargs
        elif label_set is not None:
            raise ValueError("label_set given, but this model has no classes (n_classes=None)")
        yield from super()._predict_instances_generator(img, *args, **kwargs)

    def predict_instances(self, img, *args, label_set=None, class_from=None, **kwargs):
        """Predict instances as :meth:`stardist.models.StarDist2D.predict_instances`, plus:

        Parameters
        ----------
        label_set : str or None
            Name of a label set of the hierarchy (e.g. ``'monusac'``): ``details['class_id']``
            is then in that dataset's class ids, from the summed leaf probabilities of each
            label-set class, and ``details['label_set_prob']`` holds the summed
            probabilities (``(n, max_id + 1)``, column = class id). ``None``: leaf level.
        class_from : {'instance', 'center'} or None
            How an instance gets its class (see ``HierConfig2D.predict_class_from``);
            ``None`` uses the config. ``'instance'`` predicts densely (``sparse=False``) and
            never returns class 0 for a detected instance; ``'center'`` keeps stock
            StarDist's arg-max over all channels, background included (at a label set too).

        Returns
        -------
        (numpy.ndarray, dict)
            Labels and details; ``details['class_prob']`` is at leaf level
            (``n_classes + 1`` columns, column 0 background) and ``details['leaf_class_id']``
            the leaf channel of each instance.
        """
        result = None
        for result in self._predict_instances_generator(img, *args, label_set=label_set, class_from=class_from,
                                                        **kwargs):
            pass
        return result

    def _instances_from_prediction(self, img_shape, prob, dist, points=None, prob_class=None, prob_thresh=None,
                                   nms_thresh=None, overlap_label=None, return_labels=True, scale=None, **nms_kwargs):
        label_set = nms_kwargs.pop("_hier_label_set", None)
        class_from = nms_kwargs.pop("_hier_class_from", None) or self.config.predict_class_from
        per_instance = prob_class is not None and class_from == "instance" and points is None
        labels, details = super()._instances_from_prediction(
            img_shape, prob, dist, points=points, prob_class=prob_class, prob_thresh=prob_thresh,
            nms_thresh=nms_thresh, overlap_label=overlap_label, return_labels=return_labels or per_instance,
            scale=scale, **nms_kwargs)
        if prob_class is None:
            return labels, details
        if per_instance:
            details["class_prob"] = self._instance_class_prob(labels, prob, prob_class, details["class_prob"], scale)
            details["class_id"] = 1 + np.argmax(details["class_prob"][:, 1:], axis=-1)
        details["leaf_class_id"] = np.asarray(details["class_id"], int)
        if label_set is not None:
            collapsed = label_set.collapse(details["class_prob"])
            details["label_set_prob"] = collapsed
            details["label_set"] = label_set.name
            if per_instance:
                details["class_id"] = 1 + np.argmax(collapsed[:, 1:], axis=-1)
            else:
                details["class_id"] = np.argmax(collapsed, axis=-1)
        if not return_labels:
            labels = None
        return labels, details

    def _instance_class_prob(self, labels, prob, prob_class, center_prob, scale):
        """Object-probability-weighted mean class probabilities over each instance's pixels.

        The label image is read at the centre of each output grid cell; instances that
        cover no grid cell (tiny or hidden) keep the class probabilities at their centre.
        """
        n = len(center_prob)
        if n == 0:
            # reshape(0, -1) is ambiguous for an empty array: no instance, no class rows
            return np.zeros((0, prob_class.shape[-1]), np.float64)
        out = np.array(center_prob, dtype=np.float64, copy=True).reshape(n, -1)
        grid = np.asarray(self.config.grid, float)
        s = np.ones(2) if scale is None else np.array([scale["Y"], scale["X"]], float)
        rows = np.minimum((np.arange(prob.shape[0]) * grid[0] / s[0]).round().astype(int), labels.shape[0] - 1)
        cols = np.minimum((np.arange(prob.shape[1]) * grid[1] / s[1]).round().astype(int), labels.shape[1] - 1)
        lab = labels[np.ix_(rows, cols)].ravel()
        weight = prob.reshape(-1).astype(np.float64)
        keep = lab > 0
        lab, weight = lab[keep] - 1, weight[keep]
        pc = prob_class.reshape(-1, prob_class.shape[-1])[keep].astype(np.float64)
        sums = np.zeros((n, pc.shape[1]))
        np.add.at(sums, lab, weight[:, None] * pc)
        total = sums.sum(axis=1)
        have = total > 0
        out[have] = sums[have] / total[have, None]
        return out
