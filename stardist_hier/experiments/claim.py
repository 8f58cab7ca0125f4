"""The claim study: does training with a second dataset beat training on the target alone?

The paper (Parulekar, Kanwat et al., BIOIMAGING 2024) claims that one hierarchy-aware model,
pre-trained on a dataset with another label set and fine-tuned on the target, beats training
on the target alone; its argument is data scarcity. The study (issue 12, section 4) asks at
which target training sizes, if any, combining helps, and which option makes the difference:

* every variant is trained **to convergence**: early stopping on the *target's* validation
  loss (``val_loss_<target>``, patience :attr:`BenchSettings.patience`) with a ceiling of
  :attr:`BenchSettings.max_epochs`, and the weights of the best epoch restored
  (:class:`~.claim_train.BestWeights`, the same rule for every variant and phase);
* a **learning curve** over the target's training size (the first N tiles of its train
  split; the source always full);
* several **seeds** (:func:`stardist_hier.model.build.seed_everything`), compared by paired
  differences against ``target_only`` with a 95% t-interval (:mod:`.claim_report`).

This module holds the definitions (:data:`VARIANTS`, :data:`SOURCES`,
:class:`BenchSettings`, which variant applies to which pair of datasets) and the scoring of a
flattened model (:class:`FlattenedModel`); :mod:`.claim_train` trains a variant,
:mod:`.claim_study` runs and resumes the study, :mod:`.claim_report` summarises it.

Variants
--------
``target_only`` (a)
    A fresh model trained on the target's N tiles alone.
``finetune`` (b), the paper's method
    Pre-trained on the source (its own label set) to convergence, then fine-tuned on the
    target, all layers, the optimizer state of the pre-training's best epoch carried over.
``mixed`` (c), batch-level mixing
    One training on the union of the source's tiles and the target's N tiles, each image at
    its own label set (batches mix the datasets); validated and stopped on the target's
    validation split alone.
``reinit_head`` (d), transfer learning
    (b)'s pre-trained model with the class head (``features_class``, ``prob_class``)
    re-initialised before the fine-tuning.
``flatten`` (e), coarsest common level
    Both datasets' labels replaced by their depth-1 ancestors (:mod:`.flatten`), a 4-class
    model pre-trained and fine-tuned as (b), scored through :class:`FlattenedModel`.

The options of issue 12, sections 1-3, each added to one of these (its ``base``):

``finetune_equal_logit``
    (b) with ``train_coarse_label_mode='equal_logit'`` in the fine-tuning: a coarse target
    label moves its node's mass and keeps the split among the leaves that the pre-training
    taught. Applies when the target labels a node above one the source labels (the target is
    coarser somewhere); the pre-training is (b)'s.
``mixed_per_sample``
    (c) with ``train_class_loss_normalization='per_sample'``. Applies only when some training
    image has pixels without class loss (ignore regions, nuclei of unknown class): without
    them every sample's scale is 1 and the option is (c) exactly.
``target_only_marginal``, ``finetune_marginal``, ``mixed_marginal``
    (a), (b), (c) with ``train_unannotated_mode='marginal'`` and
    ``train_focal_tversky_uncovered_fp=True``: background pixels of a non-exhaustive label set
    (MoNuSAC: ``exhaustive: false``) admit background or any leaf it does not annotate, and
    the focal Tversky term counts mass on leaves a sample's label set does not cover as false
    positives (under the marginal mode a non-exhaustive set has no such leaves, so this acts
    on the exhaustive dataset's uncovered leaves only, e.g. PanNuke's ``miscellaneous``). In
    ``finetune_marginal`` only the fine-tuning has the option (the pre-training is (b)'s, so
    the pair (b), (b-mg) differs in the option alone). Apply when a dataset trained with the
    option is non-exhaustive.

Which variant runs on which (target, source) is computed from the hierarchy and the data
(:func:`variant_applies`); a variant that cannot differ from its base there is skipped, and
the study's summary says why.

Evaluation: every variant on the target's test split at the target's own label set with
:func:`stardist_hier.metrics.evaluate_folder` (default thresholds 0.5 / 0.4 for all, no
threshold optimisation, no test-time augmentation), so that no variant gets a selection step
the others lack. At a non-exhaustive label set the nuclei mostly in classes it does not
annotate are set aside (``n_pred_unannotated``); a flattened model gives no leaf
probabilities, so nothing is set aside for it (``unannotated_set_aside='unavailable'``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..hierarchy import ClassHierarchy
from ..metrics.folder import HEADLINE_METRICS
from .flatten import coarse_node

__all__ = ["Variant", "VARIANTS", "BASE_VARIANTS", "SOURCES", "METRICS", "BenchSettings", "FlattenedModel",
           "load_split_data", "variant_applies", "applicable_variants"]

#: the options' config entries
_MARGINAL = (("train_unannotated_mode", "marginal"), ("train_focal_tversky_uncovered_fp", True))


@dataclass(frozen=True)
class Variant:
    """One way of using the source dataset (or not).

    Attributes
    ----------
    name, label, description : str
    kind : str
        ``'target'`` (target data only), ``'finetune'``, ``'reinit_head'``, ``'flatten'``
        (pre-train on the source, then train on the target) or ``'mixed'`` (both at once).
    overrides : tuple of (key, value)
        :class:`HierConfig2D` entries of the target phase (the only phase of ``'target'``
        and ``'mixed'``).
    pretrain_overrides : tuple of (key, value)
        Entries of the pre-training (variants with the same ones share it).
    base : str or None
        The variant this one adds an option to.
    """

    name: str
    label: str
    kind: str
    description: str
    overrides: tuple = ()
    pretrain_overrides: tuple = ()
    base: str | None = None

    @property
    def combines(self):
        """True when the variant uses the source dataset."""
        return self.kind != "target"

    @property
    def option(self):
        """The variant's option as ``key=value`` text ('' for the five base variants)."""
        keys = dict(self.pretrain_overrides, **dict(self.overrides))
        return ", ".join(f"{k}={v}" for k, v in keys.items())


def _variants(*vs):
    return {v.name: v for v in vs}


#: every variant, in report order
VARIANTS = _variants(
    Variant("target_only", "a", "target", "target only"),
    Variant("finetune", "b", "finetune", "pre-train on source, fine-tune on target (paper)"),
    Variant("mixed", "c", "mixed", "batch-level mixing of source and target"),
    Variant("reinit_head", "d", "reinit_head", "pre-train, re-initialise class head, fine-tune"),
    Variant("flatten", "e", "flatten", "both flattened to depth-1 super-classes, pre-train + fine-tune"),
    Variant("finetune_equal_logit", "b-eq", "finetune", "(b), fine-tuned with equal-logit coarse labels",
            overrides=(("train_coarse_label_mode", "equal_logit"),), base="finetune"),
    Variant("mixed_per_sample", "c-ps", "mixed", "(c), class loss normalised per sample",
            overrides=(("train_class_loss_normalization", "per_sample"),), base="mixed"),
    Variant("target_only_marginal", "a-mg", "target", "(a), marginal loss at unannotated background",
            overrides=_MARGINAL, base="target_only"),
    Variant("finetune_marginal", "b-mg", "finetune", "(b), fine-tuned with the marginal loss at unannotated background",
            overrides=_MARGINAL, base="finetune"),
    Variant("mixed_marginal", "c-mg", "mixed", "(c), marginal loss at unannotated background",
            overrides=_MARGINAL, base="mixed"),
)

#: the five variants of the original benchmark
BASE_VARIANTS = ("target_only", "finetune", "mixed", "reinit_head", "flatten")

#: target -> source dataset: the pre-training dataset of the paper's best Table II row for
#: that target (rows 3, 6 and 9)
SOURCES = {"pannuke": "monusac", "monusac": "pannuke", "consep": "pannuke"}

#: reported metrics: (column, key of the evaluation summary), the package's headline list
METRICS = HEADLINE_METRICS


@dataclass
class BenchSettings:
    """Everything a run's result depends on besides its data, target, size, variant and seed.

    The defaults are sized for the study's default run on one CPU core
    (``benchmarks/bench_claim.py``, which states the measured time).

    Attributes
    ----------
    max_epochs : int
        Ceiling of every training phase (epochs).
    patience : int
        Early stopping: a phase stops when the monitored validation loss (the target's; the
        source's in a pre-training) has not improved for this many epochs
        (``train_early_stopping_patience``); the best epoch's weights are restored.
    steps_per_epoch : int
    augment : bool
        Random flips and 90 degree rotations of every training patch (all variants alike).
    model : dict
        :class:`HierConfig2D` parameters of every variant (a tiny StarDist by default).
    """

    max_epochs: int = 24
    patience: int = 3
    steps_per_epoch: int = 25
    augment: bool = True
    model: dict = field(default_factory=lambda: dict(
        n_rays=16, grid=(2, 2), n_channel_in=3, unet_n_depth=2, unet_n_filter_base=16, net_conv_after_unet=32,
        train_patch_size=(48, 48), train_batch_size=4, train_learning_rate=3e-3, train_reduce_lr=None,
        use_gpu=False))

    def __post_init__(self):
        for key in ("max_epochs", "patience", "steps_per_epoch"):
            value = getattr(self, key)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"BenchSettings.{key} must be an integer >= 1, got {value!r}")
        if "train_early_stopping_patience" in self.model:
            raise ValueError("BenchSettings.model: set the patience with BenchSettings.patience, not "
                             "train_early_stopping_patience")

    def to_dict(self):
        """Plain dict (JSON-friendly)."""
        d = asdict(self)
        d["model"] = {k: list(v) if isinstance(v, tuple) else v for k, v in d["model"].items()}
        return d

    def model_params(self, overrides=()):
        """:class:`HierConfig2D` parameters of a phase with ``overrides``."""
        return dict(self.model, train_early_stopping_patience=int(self.patience), **dict(overrides))


# ----------------------------------------------------------------------------------------
# which variant can differ from its base on a pair of datasets


def _coarser_somewhere(h, target, source):
    """A node of the target's label set that is a strict ancestor of one of the source's."""
    src = set(h.label_set(source).nodes.values())
    for node in h.label_set(target).nodes.values():
        below = set(h.descendants(node)) & src
        if below:
            return node, sorted(below)
    return None


def _has_ignored_class_pixels(train):
    """Some image has negative ids (ignore regions) or a nucleus of unknown class (None)."""
    _, Y, C = train[:3]
    return any(np.any(np.asarray(y) < 0) for y in Y) or any(v is None for c in C for v in c.values())


def variant_applies(name, target, source, hierarchy="default", data=None):
    """Whether a variant can differ from its base on (target, source), and why.

    Parameters
    ----------
    name, target, source : str
    hierarchy : ClassHierarchy, str or dict
    data : dict, optional
        Dataset name -> ``(X, Y, C, ...)`` training data; ``mixed_per_sample`` needs it (without
        it the variant is assumed to apply).

    Returns
    -------
    (bool, str)
        The reason in words.
    """
    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; choose from {list(VARIANTS)}")
    h = ClassHierarchy.resolve(hierarchy)
    v = VARIANTS[name]
    if v.base is None:
        return True, "a base variant"
    if name == "finetune_equal_logit":
        hit = _coarser_somewhere(h, target, source)
        if hit is None:
            return False, f"{target} labels no node above a node {source} labels (never coarser than the source)"
        return True, f"{target} labels {hit[0]} above {source}'s {', '.join(hit[1])}"
    if name == "mixed_per_sample":
        if data is None:
            return True, "not checked (no data given)"
        ignored = [ds for ds in (source, target) if _has_ignored_class_pixels(data[ds])]
        if not ignored:
            return False, (f"no training image of {source} or {target} has pixels without class loss, so every "
                           f"sample's scale is 1 and the option is (c) exactly")
        return True, f"{', '.join(ignored)} has pixels without class loss"
    if dict(v.overrides).get("train_unannotated_mode") == "marginal":
        trained = {"target": [target], "finetune": [source, target], "mixed": [source, target]}[v.kind]
        if v.kind == "finetune" and not v.pretrain_overrides:
            trained = [target]
        partial = [ds for ds in trained if not h.label_set(ds).exhaustive]
        if not partial:
            one = len(trained) == 1
            return False, (f"{' and '.join(trained)} annotate{'s' if one else ''} every nucleus "
                           f"(exhaustive label set{'' if one else 's'})")
        return True, f"{' and '.join(partial)} {'is' if len(partial) == 1 else 'are'} not exhaustive"
    return True, "an option variant"


def applicable_variants(target, source, hierarchy="default", data=None, variants=None):
    """``(run, skipped)``: the variants (default every one) that apply, and ``{name: reason}`` of the rest."""
    names = list(VARIANTS) if variants is None else list(variants)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    run, skipped = [], {}
    for n in names:
        ok, why = variant_applies(n, target, source, hierarchy, data)
        if ok:
            run.append(n)
        else:
            skipped[n] = why
    return run, skipped


# ----------------------------------------------------------------------------------------
# scoring a flattened model at an original label set


class FlattenedModel:
    """A model trained on flattened labels, scored at an original (finer) label set.

    ``predict_instances(img, label_set=NAME)`` predicts with the coarse model and classifies
    each nucleus with the package's one class rule, :meth:`LabelSet.classify`, at the coarse
    image of label set ``NAME``: the label set whose classes are the depth-cut ancestors of
    ``NAME``'s classes (a class above the cut, such as MoNuSeg's root, keeps its node and so
    sums the coarse classes under it). The coarse class is then mapped to the original class
    under it that is most frequent in ``class_counts`` (ties: the smallest id): classes that
    share an ancestor cannot be told apart by a model that never saw the distinction. Coarse
    classes the label set does not cover get no class, as their probability is dropped.

    Parameters
    ----------
    model : HierStarDist2D
        Trained with the hierarchy of ``flat``.
    flat : FlatHierarchy
    hierarchy : ClassHierarchy
        The original hierarchy (what the evaluation reads GT ids with).
    class_counts : dict, optional
        Label-set name -> ``{class id: count}`` of training nuclei (the tie-break).
    """

    def __init__(self, model, flat, hierarchy, class_counts=None):
        self.model, self.flat, self.hierarchy = model, flat, ClassHierarchy.resolve(hierarchy)
        self.class_counts = class_counts or {}
        self.name = getattr(model, "name", "flattened")

    def coarse_label_set(self, label_set):
        """``(coarse LabelSet, table)``: the label set's image on the flat hierarchy, and
        ``table[coarse id]`` = the original class id a coarse class becomes."""
        from ..hierarchy import LabelSet

        ls = self.hierarchy.label_set(label_set)
        coarse = {cid: coarse_node(self.hierarchy, node, self.flat.depth) for cid, node in ls.nodes.items()}
        nodes = list(dict.fromkeys(coarse[c] for c in ls.ids))
        coarse_ls = LabelSet(f"{ls.name} at depth {self.flat.depth}", dict(enumerate(nodes, 1)), self.flat.hierarchy)
        counts = self.class_counts.get(ls.name, {})
        table = np.zeros(len(nodes) + 1, np.int64)
        for k, node in enumerate(nodes, 1):
            table[k] = max((c for c in ls.ids if coarse[c] == node), key=lambda c: (counts.get(c, 0), -c))
        return coarse_ls, table

    def predict_instances(self, img, label_set=None, **kwargs):
        labels, details = self.model.predict_instances(img, **kwargs)
        if label_set is None:
            return labels, details
        coarse_ls, table = self.coarse_label_set(label_set)
        prob = np.asarray(details["class_prob"], np.float64).reshape(-1, self.flat.hierarchy.n_classes + 1)
        cls = table[coarse_ls.classify(prob)]
        # the coarse model's own label-set entries describe the flat hierarchy: not passed on
        details = {k: v for k, v in details.items() if k not in ("label_set_prob", "leaf_class_id", "label_set")}
        details.update(class_id=cls, class_prob=None, coarse_class_prob=prob,
                       label_set=self.hierarchy.label_set(label_set).name)
        return labels, details


def load_split_data(data_root, dataset, split, hierarchy="default", max_images=None):
    """Normalised images, instance masks and class dicts of one split (the first ``max_images``)."""
    from .. import patches as P

    h = ClassHierarchy.resolve(hierarchy)
    ids = P.list_patches(data_root, dataset, split)
    if max_images is not None:
        ids = ids[:max_images]
    if not ids:
        raise FileNotFoundError(f"no patches in {Path(data_root) / dataset / split}")
    return P.load_split(data_root, dataset, split, ids=ids, label_set=h.label_set(dataset))

