"""Configuration of a hierarchy-aware StarDist model: :class:`HierConfig2D`.

It takes every parameter of :class:`stardist.models.Config2D` and adds the hierarchy and the
class-loss and class-rule parameters listed in :data:`HIER_CONFIG_DEFAULTS`.

Drop-in rule
------------
With ``n_classes=N`` and no hierarchy, the defaults are stock StarDist2D's: the class loss is
the weighted cross-entropy alone (``train_focal_tversky_weight=0``) and an instance's class is
read at its centre pixel (``predict_class_from='center'``), so swapping
:class:`~stardist_hier.model.HierStarDist2D` in for :class:`stardist.models.StarDist2D`
changes no loss and no class. With a hierarchy, the hierarchical defaults apply: the focal
Tversky term of the paper's Eq. 4 with weight 1 and the per-instance class rule.
"""

from __future__ import annotations

from numbers import Integral, Real

from stardist.models import Config2D

from ..hierarchy import ClassHierarchy, HierarchyError
from .distribute import PRECISIONS, STRATEGIES
from .losses import COARSE_LABEL_MODES, FOCAL_TVERSKY_ALPHA, FOCAL_TVERSKY_GAMMA, NORMALIZATIONS, UNANNOTATED_MODES

__all__ = ["HierConfig2D", "HIER_CONFIG_DEFAULTS", "RESOLVED_DEFAULTS", "LEAVES"]

#: Parameters that :class:`HierConfig2D` adds to :class:`stardist.models.Config2D`, with
#: their defaults. They are saved to ``hier_config.json`` (and the hierarchy to
#: ``hierarchy.yaml``) beside ``config.json``, which keeps only stock keys so that stock
#: ``StarDist2D(None, name, basedir)`` loads the folder.
HIER_CONFIG_DEFAULTS = dict(
    hierarchy=None,
    train_class_ce_weight=1.0,
    train_focal_tversky_weight=None,
    train_focal_tversky_alpha=FOCAL_TVERSKY_ALPHA,
    train_focal_tversky_gamma=FOCAL_TVERSKY_GAMMA,
    train_focal_tversky_mode="pixelwise",
    train_class_loss_normalization="pixels",
    train_coarse_label_mode="sum",
    train_unannotated_mode="background",
    train_focal_tversky_uncovered_fp=False,
    trained_label_counts=None,
    train_early_stopping_patience=None,
    predict_class_from=None,
    default_label_set=None,
    pixel_size_um=None,
    check_normalized_input=True,
    train_mixed_precision=None,
    train_distribute=None,
)

#: What the ``None`` defaults of :data:`HIER_CONFIG_DEFAULTS` become: (with a hierarchy,
#: without one). Without a hierarchy they are stock StarDist's (see "Drop-in rule" above).
RESOLVED_DEFAULTS = dict(
    train_focal_tversky_weight=(1.0, 0.0),
    predict_class_from=("instance", "center"),
)

#: The name of the leaf label set in ``predict_instances(label_set=...)`` (class id i = leaf
#: channel i, :meth:`ClassHierarchy.leaf_label_set`), unless the hierarchy defines a label set
#: of that name itself.
LEAVES = "leaves"

HIER_CONFIG_FILE = "hier_config.json"
HIERARCHY_FILE = "hierarchy.yaml"


class HierConfig2D(Config2D):
    """Configuration of a :class:`HierStarDist2D` model.

    Takes every parameter of :class:`stardist.models.Config2D` (same positional order) and:

    Parameters
    ----------
    hierarchy : str, path, dict, ClassHierarchy or None
        Class hierarchy (YAML path, ``'default'`` for the one shipped with the package, a
        dict as in the YAML, or a :class:`ClassHierarchy`). Sets ``n_classes`` to its number
        of leaves; a different explicit ``n_classes`` is an error. ``None``: a flat
        hierarchy of ``n_classes`` leaves with one label set ``'default'`` (ids 1..n_classes),
        i.e. stock multi-class StarDist, with stock StarDist's defaults (module docstring,
        "Drop-in rule").

    Attributes
    ----------
    hierarchy : dict or None
        The hierarchy as a plain dict (see :meth:`ClassHierarchy.to_dict`).
    train_class_ce_weight : float
        Weight of the modified cross-entropy (paper Eq. 2) in the class loss (default 1).
    train_focal_tversky_weight : float or None
        Weight of the modified focal Tversky loss (paper Eq. 4) in the class loss; the paper
        uses "a positive combination" of the two. ``None`` (default): 1 with a hierarchy, 0
        without one (stock StarDist). 0 switches it off, and with a flat hierarchy the class
        loss is then exactly stock StarDist's.
    train_focal_tversky_alpha : float
        Weight of false negatives in the Tversky index (default 0.7, Abraham & Khan 2019,
        also StarDist's CoNIC recipe).
    train_focal_tversky_gamma : float
        Exponent applied to ``1 - TI`` (default 0.75 = 1/(4/3), Abraham & Khan 2019).
    train_focal_tversky_mode : str
        ``'pixelwise'`` (paper Eq. 4, per pixel) or ``'classwise'`` (per label-set class,
        summed over the pixels of each image, Abraham & Khan 2019).
    train_class_loss_normalization : str
        ``'pixels'`` (default): the class loss is a mean over every pixel of the batch,
        ignored pixels counted as zeros (stock StarDist), so a sample's weight grows with
        its number of valid pixels (a dataset with large ignore regions or unknown classes
        weighs less). ``'per_sample'``: the mean over samples of each sample's mean over its
        valid pixels (:func:`stardist_hier.model.losses.hierarchical_class_loss`). The
        weight of the class loss against the object and distance losses is the third entry
        of ``train_loss_weights``.
    train_coarse_label_mode : str
        ``'sum'`` (default, the paper's loss): a label at an inner node pushes each leaf
        under it in proportion to its probability at the logits, so the leading leaf takes
        the node over. ``'equal_logit'``: the leaves of every class of a sample's label set
        receive equal shares of the class's gradient at the logits, so a coarse or root label
        moves the node's total probability and keeps the split among its leaves
        (:func:`stardist_hier.model.losses.equal_logit_view`). Leaf labels train the same in
        both modes.
    train_unannotated_mode : str
        ``'background'`` (default): background pixels are background, also for a label set
        that declares nuclei it does not annotate (``exhaustive: false`` or
        ``unannotated:``). ``'marginal'``: at background pixels of such a sample the class
        loss admits background or any unannotated leaf (Fidon et al.'s marginal label-set
        loss; :class:`stardist_hier.model.targets.ClassTargetEncoder`).
    train_focal_tversky_uncovered_fp : bool
        ``False`` (default, paper Eq. 4 as written): probability on leaves the sample's
        label set does not cover is no false positive of the pixelwise focal Tversky term.
        ``True``: it counts as one (needs ``train_focal_tversky_mode='pixelwise'``).
    trained_label_counts : dict or None
        Written by :meth:`HierStarDist2D.train`, not a parameter to set: per hierarchy node,
        the number of nuclei labelled at that node in the training images of every ``train``
        call so far (:func:`stardist_hier.model.class_rule.count_training_labels`). A class
        of a label set with no count at or below its node was never trained: predictions
        list it in ``details['untrained_classes']`` and warn
        (:class:`stardist_hier.model.class_rule.UntrainedClassWarning`). ``None``: no record
        (a model trained before the record existed, or never trained); no marking.
    train_early_stopping_patience : int or None
        Stop a :meth:`HierStarDist2D.train` call when ``val_loss`` has not improved for
        this many epochs (the paper monitors validation loss); ``None`` disables it.
    predict_class_from : str or None
        ``'instance'``: an instance's class probabilities are the object-probability-weighted
        mean of the class map over its pixels, background excluded from the arg-max
        (StarDist's CoNIC 2022 rule), so a detected nucleus never gets class 0.
        ``'center'``: stock StarDist's rule (class map at the polygon centre, arg-max over
        all channels, background included: it can return class 0 for a detected nucleus,
        and only this rule can). ``None`` (default): ``'instance'`` with a hierarchy,
        ``'center'`` without one (stock StarDist). At a label set both rules sum the leaf
        probabilities per class first (:meth:`stardist_hier.hierarchy.LabelSet.classify`).
    default_label_set : str or None
        Label set ``predict_instances`` answers in when called without ``label_set``:
        each :meth:`HierStarDist2D.train` call whose images all belong to one label set sets
        it to that label set (the model's most recent training data); set it by hand to
        change it. ``None``: leaf ids (label set ``'leaves'``, class id i = leaf channel i).
    pixel_size_um : float or None
        Micrometres per pixel of the training images (e.g. 0.25 at 40x, 0.5 at 20x). The model
        only stores it; ``stardist-hier predict`` resamples slides to it and ``export`` writes it
        into the QuPath script. ``stardist-hier train`` sets it when every training dataset is a
        published one of the same pixel size (:func:`stardist_hier.experiments.runner.model_params`).
        ``None``: unknown.
    check_normalized_input : bool
        ``True`` (default): the model is trained on normalised images
        (:func:`stardist_hier.patches.normalize_image`), ``train`` refuses images that look
        raw and ``predict_instances`` warns about them (the rule is
        :func:`stardist_hier.model.inputs.looks_unnormalized`). ``False``: no check, for a
        model trained on another intensity scale on purpose. Raw images are accepted when
        declared: ``train(..., normalize=True)`` keeps them as given (e.g. uint8) and
        normalises every drawn patch with its image's percentiles.
    train_mixed_precision : str or None
        ``'mixed_float16'`` or ``'mixed_bfloat16'``: train with 16-bit computation and float32
        weights; the output layers, the predictions and every loss stay float32, and
        ``'mixed_float16'`` scales the loss dynamically (Keras' ``LossScaleOptimizer``).
        ``None`` (default): float32. Applied from the first ``train`` call
        (:mod:`stardist_hier.model.distribute`).
    train_distribute : str or None
        ``'mirrored'``: train on every GPU of this machine (``tf.distribute.MirroredStrategy``;
        an error without a GPU); ``'multi_worker'``: on several machines
        (``tf.distribute.MultiWorkerMirroredStrategy`` from ``TF_CONFIG``). ``None``
        (default): one device. ``train(strategy=...)`` overrides it for one call, also with
        a strategy object. ``train_batch_size`` must be a multiple of the replicas.
    train_tensorboard : bool
        As in StarDist, but off by default: TensorFlow >= 2.21 no longer installs
        TensorBoard, and StarDist's callback would fail at the first epoch without it.
    """

    def __init__(self, axes="YX", n_rays=32, n_channel_in=1, grid=(1, 1), n_classes=None, backbone="unet",
                 hierarchy=None, **kwargs):
        """See class docstring."""
        if hierarchy is not None:
            h = ClassHierarchy.resolve(hierarchy)
            if n_classes is not None and int(n_classes) != h.n_classes:
                raise HierarchyError(f"n_classes={n_classes} but the hierarchy ({h.source}) has {h.n_classes} leaves")
            n_classes = h.n_classes
            hierarchy = h.to_dict()
        for key, value in HIER_CONFIG_DEFAULTS.items():
            setattr(self, key, value)
        self.hierarchy = hierarchy
        kwargs.setdefault("train_tensorboard", False)
        super().__init__(axes=axes, n_rays=n_rays, n_channel_in=n_channel_in, grid=grid,
                         n_classes=n_classes, backbone=backbone, **kwargs)
        with_hierarchy = self.hierarchy is not None
        for key, (hier_value, stock_value) in RESOLVED_DEFAULTS.items():
            if getattr(self, key) is None:
                setattr(self, key, hier_value if with_hierarchy else stock_value)

    def is_valid(self, return_invalid=False):
        ok, invalid = super().is_valid(True)
        checks = {
            "train_class_ce_weight": self.train_class_ce_weight >= 0,
            "train_focal_tversky_weight": self.train_focal_tversky_weight >= 0
            and self.train_class_ce_weight + self.train_focal_tversky_weight > 0,
            "train_focal_tversky_alpha": 0 < self.train_focal_tversky_alpha < 1,
            "train_focal_tversky_gamma": self.train_focal_tversky_gamma > 0,
            "train_focal_tversky_mode": self.train_focal_tversky_mode in ("pixelwise", "classwise"),
            "train_class_loss_normalization": self.train_class_loss_normalization in NORMALIZATIONS,
            "train_coarse_label_mode": self.train_coarse_label_mode in COARSE_LABEL_MODES,
            "train_unannotated_mode": self.train_unannotated_mode in UNANNOTATED_MODES,
            "train_focal_tversky_uncovered_fp": isinstance(self.train_focal_tversky_uncovered_fp, bool)
            and not (self.train_focal_tversky_uncovered_fp and self.train_focal_tversky_weight > 0
                     and self.train_focal_tversky_mode != "pixelwise"),
            "trained_label_counts": self._label_counts_ok(),
            "train_early_stopping_patience": self.train_early_stopping_patience is None
            or (isinstance(self.train_early_stopping_patience, Integral) and self.train_early_stopping_patience >= 1),
            "predict_class_from": self.predict_class_from in ("instance", "center"),
            "default_label_set": self._default_label_set_ok(),
            "pixel_size_um": self.pixel_size_um is None
            or (isinstance(self.pixel_size_um, Real) and not isinstance(self.pixel_size_um, bool)
                and 0 < self.pixel_size_um < float("inf")),
            "check_normalized_input": isinstance(self.check_normalized_input, bool),
            "train_mixed_precision": self.train_mixed_precision is None or self.train_mixed_precision in PRECISIONS,
            "train_distribute": self.train_distribute is None or self.train_distribute in STRATEGIES,
        }
        invalid = tuple(invalid) + tuple(k for k, good in checks.items() if not good)
        ok = len(invalid) == 0
        return (ok, invalid) if return_invalid else ok

    def _label_counts_ok(self):
        counts = self.trained_label_counts
        if counts is None:
            return True
        if not isinstance(counts, dict):
            return False
        if not all(isinstance(k, str) and isinstance(v, Integral) and not isinstance(v, bool) and v >= 0
                   for k, v in counts.items()):
            return False
        if self.n_classes is None:
            return False
        h = ClassHierarchy.from_dict(self.hierarchy) if self.hierarchy is not None else ClassHierarchy.flat(self.n_classes)
        return set(counts) <= set(h.nodes)

    def _default_label_set_ok(self):
        name = self.default_label_set
        if name is None:
            return True
        if not isinstance(name, str) or self.n_classes is None:
            return False
        if name == LEAVES:
            return True
        if self.hierarchy is None:
            return name == "default"  # the flat hierarchy's one label set
        return name in (self.hierarchy.get("label_sets") or {})

    @classmethod
    def from_config2d(cls, config, **kwargs):
        """Convert a stock :class:`Config2D` (same network and training parameters)."""
        params = {k: v for k, v in vars(config).items() if k not in ("n_dim", "n_channel_out")}
        params.update(kwargs)
        return cls(**params)
