"""Hierarchy-aware class losses (paper Eqs. 2 and 4), written with Keras 3 ops.

Target layout
-------------
The class target of a batch has ``2 * n_out`` channels, ``n_out = n_classes + 1``
(see :class:`stardist_hier.model.targets.HierStarDistData2D`):

``[..., :n_out]`` -- *admitted leaves*
    Multi-hot over the output channels: 1 for every leaf under the pixel's label node
    (the set :math:`S_k` of Eq. 2), ``[1, 0, ..., 0]`` for background, and ``-1`` in the
    leaf channels of pixels whose class loss is switched off (all channels for negative
    labels, channels 1.. for objects of unknown class, as stock StarDist).
``[..., n_out:]`` -- *leaf groups of the sample's label set*
    The same value at every pixel of a sample: for each output channel, the index of the
    label-set class that contains it (0 = background, 1..m-1 = the dataset's classes in
    id order) or -1 if no class of the sample's label set covers it
    (:attr:`stardist_hier.hierarchy.LabelSet.leaf_group`). The losses read it at the
    first pixel; it lets one batch mix samples of different datasets. With
    ``unannotated_mode='marginal'`` the unannotated leaves of a non-exhaustive label set are
    in group 0 and admitted at its background pixels (see below); the layout is unchanged,
    so targets made before these options read the same.

With every label at a leaf (one-hot admitted leaves) the losses reduce to StarDist's
``weighted_categorical_crossentropy`` and to the focal Tversky loss of Eq. 3.

Gradients behind a super-class label
------------------------------------
A label at an inner node ``S`` enters both losses only through the summed probability
:math:`Y_S = \\sum_{j \\in S} y_j`, so every leaf under ``S`` receives the same gradient **at
the summed probability** (d loss / d y_j is the same for all j in S). It is not the same at
the network's logits: through the softmax, for the cross-entropy of Eq. 2,
``d loss / d z_k = w y_k (1 - 1 / Y_S)`` for ``k`` in ``S`` (and ``w y_k`` for the other
channels), i.e. proportional to each leaf's own probability: a leaf at 0.4 is pushed up 8 times
as hard as leaves at 0.05 under the same label. The rich get richer within a super-class.
``tests/test_losses.py`` pins both statements against a numpy reference.

Reduction
---------
Every loss returns one value per pixel, ``(batch, *spatial)``; Keras then averages over all
pixels of the batch, ignored pixels included as zeros, exactly as stock StarDist does for
its class loss (``normalization='pixels'``). An all-ignored batch therefore has loss 0, not
NaN. So a sample's weight in the batch grows with its number of valid (not ignored) pixels:
a dataset with large ignore regions or many nuclei of unknown class weighs less.
``normalization='per_sample'`` (:func:`hierarchical_class_loss`) scales each sample's
per-pixel values by ``n_pixels / n_valid_pixels`` of that sample, so that Keras' mean over
the batch is the mean over samples of each sample's mean over its valid pixels (a sample
without valid pixels adds 0 and still counts in the number of samples).

Options for labels above the leaves and for non-exhaustive label sets
---------------------------------------------------------------------
``coarse_label_mode='equal_logit'``
    Every label-set class of a sample (a group of the packed target) is trained as one
    node: the losses are computed on a view of the probabilities with the same values
    whose gradient reaches each leaf of a class as an equal share of the class's gradient
    at the logits (:func:`equal_logit_view`). A coarse or root label then moves the node's
    total probability and leaves the split among its leaves as it was, instead of pushing
    each leaf in proportion to its probability (``'sum'``, the default: the paper's loss,
    see "Gradients behind a super-class label"). Labels at leaves are unaffected.
``unannotated_mode='marginal'`` (:class:`stardist_hier.model.targets.ClassTargetEncoder`)
    At background pixels of a sample whose label set is non-exhaustive the admitted set is
    ``{0} + LabelSet.unannotated_channels`` and those channels join group 0 (background) in
    the sample's leaf groups: "background or a nucleus this dataset does not annotate",
    the marginal form of the label-set losses of Fidon et al. (2021). The losses need no
    change for it: Eq. 2 sums the admitted probabilities (with the background weight), the
    Tversky terms count the unannotated mass as part of the background class.
``uncovered_fp=True`` (focal Tversky, ``mode='pixelwise'``)
    Mass on leaves no class of the label set covers counts as a false positive (in the
    denominator), like mass on a wrong covered class; the literal Eq. 4 drops it.
"""

from __future__ import annotations

import numpy as np
from keras import ops

__all__ = [
    "modified_crossentropy",
    "modified_focal_tversky",
    "hierarchical_class_loss",
    "class_loss_from_config",
    "equal_logit_view",
    "NORMALIZATIONS",
    "COARSE_LABEL_MODES",
    "UNANNOTATED_MODES",
    "FOCAL_TVERSKY_ALPHA",
    "FOCAL_TVERSKY_GAMMA",
]

#: Weight of false negatives in the Tversky index. 0.7 is the value Abraham & Khan (2019)
#: report best and the one StarDist's CoNIC 2022 recipe uses.
FOCAL_TVERSKY_ALPHA = 0.7
#: Focal exponent applied to ``1 - TI``. Abraham & Khan (2019) write the loss as
#: ``(1 - TI)^(1/g)`` and recommend ``g = 4/3``, i.e. an exponent of 0.75.
FOCAL_TVERSKY_GAMMA = 0.75

_EPS = 1e-7  # = keras.config.epsilon(), the constant of stock StarDist's class loss
_TINY = 1e-30  # floor of the probabilities before their log in equal_logit_view (float32 normal)

#: ``normalization`` of :func:`hierarchical_class_loss` (config ``train_class_loss_normalization``)
NORMALIZATIONS = ("pixels", "per_sample")
#: ``coarse_label_mode`` of the losses (config ``train_coarse_label_mode``)
COARSE_LABEL_MODES = ("sum", "equal_logit")
#: ``unannotated_mode`` of :class:`stardist_hier.model.targets.ClassTargetEncoder` (config
#: ``train_unannotated_mode``): how background pixels of non-exhaustive label sets are encoded
UNANNOTATED_MODES = ("background", "marginal")


def _split_target(y_true, n_out):
    """Admitted leaves, ignore mask and per-sample leaf groups from the packed target."""
    y_true = ops.cast(y_true, "float32")
    admitted = y_true[..., :n_out]
    # ignored pixels have -1 in every leaf channel (channel 0 too for negative labels)
    valid = ops.cast(ops.min(admitted, axis=-1) >= 0, "float32")
    admitted = ops.maximum(admitted, 0.0)
    batch = ops.shape(y_true)[0]
    groups = ops.reshape(y_true, (batch, -1, 2 * n_out))[:, 0, n_out:]  # (B, n_out)
    return admitted, valid, groups


def _label_set_membership(groups, n_out):
    """``(B, K, n_out)`` 0/1 membership of output channels in the sample's label-set classes."""
    k = ops.arange(n_out, dtype="float32")  # a label set has at most n_out classes (with background)
    return ops.cast(ops.equal(groups[:, None, :], k[None, :, None]), "float32")


def equal_logit_view(y_pred, groups, n_out):
    """The probabilities as they are, with the gradient of "one node per label-set class".

    The returned tensor has the values of ``y_pred``; its gradient is that of
    ``softmax(l~)`` where ``l = log y`` and, for every channel ``k`` of a group ``G`` of the
    sample (a label-set class: ``groups[b, k] = g >= 0``),
    ``l~_k = stop_gradient(l_k - mean_G l) + mean_G l``. Through StarDist's softmax the
    gradient of a loss at the logits is then, for each channel of ``G``, the mean over ``G``
    of its gradient at the logits without the view: every leaf of a class moves its logit by
    the same amount, which changes the class's total probability and keeps the split among
    its leaves (their logit differences). Channels of no group keep their own gradient.

    Parameters
    ----------
    y_pred : tensor
        ``(B, *spatial, n_out)`` probabilities (a softmax output).
    groups : tensor
        ``(B, n_out)`` leaf groups of each sample (the packed target's second half).
    n_out : int

    Notes
    -----
    Probabilities below ``1e-30`` are floored before the log, so a leaf that far down gets
    no gradient through the view (float32 softmax outputs reach it only for logit gaps over
    ~69).
    """
    y_pred = ops.cast(y_pred, "float32")
    shape = ops.shape(y_pred)
    batch = shape[0]
    membership = _label_set_membership(groups, n_out)  # (B, K, n_out)
    size = ops.maximum(ops.sum(membership, axis=-1), 1.0)  # (B, K)
    flat = ops.reshape(y_pred, (batch, -1, n_out))
    logp = ops.log(ops.maximum(flat, _TINY))
    mean = ops.einsum("bpj,bkj->bpk", logp, membership) / size[:, None, :]
    back = ops.einsum("bpk,bkj->bpj", mean, membership)  # each covered channel: its group's mean
    covered = ops.cast(groups >= 0, "float32")[:, None, :]
    surrogate_logp = covered * (ops.stop_gradient(logp - back) + back) + (1.0 - covered) * logp
    surrogate = ops.softmax(surrogate_logp, axis=-1)
    view = ops.stop_gradient(flat) + surrogate - ops.stop_gradient(surrogate)
    return ops.reshape(view, shape)


def _check_coarse_mode(coarse_label_mode):
    if coarse_label_mode not in COARSE_LABEL_MODES:
        raise ValueError(f"coarse_label_mode must be one of {COARSE_LABEL_MODES}, got {coarse_label_mode!r}")


def modified_crossentropy(class_weights, n_out, coarse_label_mode="sum"):
    """Modified cross-entropy, paper Eq. 2.

    Per pixel ``-w * log(sum_{j in S} y_j)`` where ``S`` is the set of admitted leaves of the
    pixel's label (``{0}`` for background) and ``y`` the predicted probabilities,
    renormalised as StarDist does. The sum is clipped to ``[eps, 1 - eps]`` (not the single
    probabilities), so every leaf under a super-class label receives the same gradient at
    the summed probability, as behind a sum node; at the logits the gradient of each leaf is
    proportional to its probability (see "Gradients behind a super-class label" in the
    module docstring).

    Parameters
    ----------
    class_weights : sequence of float
        One weight per output channel (``train_class_weights`` of the config). A label at
        an inner node is weighted by the mean weight of its admitted leaves, so a leaf
        label keeps its own weight exactly. A background pixel keeps the background weight
        also when it admits unannotated leaves too (``unannotated_mode='marginal'``).
    n_out : int
        Number of output channels, ``n_classes + 1``.
    coarse_label_mode : {'sum', 'equal_logit'}
        ``'equal_logit'``: computed on :func:`equal_logit_view` (same value, equal logit
        gradient for the leaves of each label-set class).

    Returns
    -------
    callable
        ``loss(y_true, y_pred) -> (batch, *spatial)`` per-pixel loss.
    """
    weights = np.asarray(class_weights, np.float32).reshape(-1)
    if weights.shape[0] != n_out:
        raise ValueError(f"class_weights has {weights.shape[0]} entries, expected n_classes + 1 = {n_out}")
    _check_coarse_mode(coarse_label_mode)
    equal_logit = coarse_label_mode == "equal_logit"

    def hier_cce(y_true, y_pred):
        admitted, valid, groups = _split_target(y_true, n_out)
        y_pred = ops.cast(y_pred, "float32")
        if equal_logit:
            y_pred = equal_logit_view(y_pred, groups, n_out)
        y_pred = y_pred / ops.sum(y_pred + _EPS, axis=-1, keepdims=True)
        merged = ops.clip(ops.sum(admitted * y_pred, axis=-1), _EPS, 1.0 - _EPS)
        n_admitted = ops.sum(admitted, axis=-1)
        w = ops.sum(admitted * ops.convert_to_tensor(weights), axis=-1) / ops.maximum(n_admitted, 1.0)
        w = ops.where(admitted[..., 0] > 0, float(weights[0]), w)  # background, marginal or not
        return -valid * w * ops.log(merged)

    return hier_cce


def modified_focal_tversky(n_out, alpha=FOCAL_TVERSKY_ALPHA, gamma=FOCAL_TVERSKY_GAMMA, mode="pixelwise", eps=1e-6,
                           coarse_label_mode="sum", uncovered_fp=False):
    """Modified focal Tversky loss, paper Eq. 4, and a class-wise variant.

    ``mode='pixelwise'`` is Eq. 4 per pixel ``i``, summing over the ``m`` classes of the
    sample's label set (background included) with merged probabilities
    :math:`Y_{ik} = \\sum_{j \\in S_k} y_{ij}`::

        TI_i = (sum_k (t_ik Y_ik + eps)) / (alpha sum_k t_ik + (1 - alpha) sum_k Y_ik + eps)
        L_i  = max(1 - TI_i, eps) ** gamma

    ``mode='classwise'`` is the focal Tversky loss of Abraham & Khan (2019) with merged
    probabilities: for each class ``k`` of the label set, TP, FN and FP are summed over the
    valid pixels of each image, ``TI_k = (TP + eps) / (TP + alpha FN + (1 - alpha) FP + eps)``,
    and the image's loss is the mean over the label set's classes of
    ``max(1 - TI_k, eps) ** gamma``, spread evenly over its pixels.

    The floor ``max(., eps)`` keeps loss and gradient finite for probabilities of exactly
    0 and 1 (``TI`` can exceed 1 by ``O(eps)`` there) and for ``gamma < 1``.

    Leaves the label set does not cover: as in the paper's Eq. 4 read literally, the sums
    over ``k`` run over the label set's classes only, so probability on a leaf no class of
    the label set covers is neither a true nor a false positive: it lowers the denominator
    instead of counting against the pixel. Example (``alpha=0.7, gamma=0.75``, MoNuSAC, whose
    label set leaves fibroblasts out): a lymphocyte pixel with 0.5 on lymphocyte and 0.5 on
    fibroblast has ``TI = 0.5 / (0.7 + 0.3 * 0.5) = 0.588`` and loss ``0.514``; with the
    wrong 0.5 on neutrophil (a MoNuSAC class) ``TI = 0.5 / 1.0`` and loss ``0.595``. The
    uncovered mistake costs less. ``mode='classwise'`` drops uncovered mass in the same way
    (the merged probabilities cover the label set's classes only). ``uncovered_fp=True``
    (``mode='pixelwise'`` only) counts it: the denominator sums the probabilities of all
    output channels, ``alpha + (1 - alpha) * sum_j y_j`` (so ``0.595`` in both cases of the
    example). In both modes the uncovered mass is already a false negative of the true
    class (it is missing from ``Y`` of that class).

    Parameters
    ----------
    n_out : int
        Number of output channels, ``n_classes + 1``.
    alpha : float
        Weight of false negatives (``1 - alpha`` weighs false positives).
    gamma : float
        Focal exponent.
    mode : {'pixelwise', 'classwise'}
        Which variant.
    eps : float
        Smoothing constant of the Tversky index.
    coarse_label_mode : {'sum', 'equal_logit'}
        ``'equal_logit'``: computed on :func:`equal_logit_view`.
    uncovered_fp : bool
        Count probability on uncovered leaves as false positives (``mode='pixelwise'``).

    Returns
    -------
    callable
        ``loss(y_true, y_pred) -> (batch, *spatial)`` per-pixel loss.
    """
    if mode not in ("pixelwise", "classwise"):
        raise ValueError(f"focal Tversky mode must be 'pixelwise' or 'classwise', got {mode!r}")
    if not 0 < alpha < 1 or not gamma > 0:
        raise ValueError(f"focal Tversky needs 0 < alpha < 1 and gamma > 0, got alpha={alpha}, gamma={gamma}")
    _check_coarse_mode(coarse_label_mode)
    if uncovered_fp and mode != "pixelwise":
        raise ValueError("uncovered_fp (train_focal_tversky_uncovered_fp) needs focal Tversky mode 'pixelwise': the "
                         "classwise index has no class to count mass on uncovered leaves against")
    equal_logit = coarse_label_mode == "equal_logit"

    def pixelwise(y_true, y_pred):
        admitted, valid, groups = _split_target(y_true, n_out)
        y_pred = ops.cast(y_pred, "float32")
        if equal_logit:
            y_pred = equal_logit_view(y_pred, groups, n_out)
        # (B, n_out): leaves under some class of the label set (all channels with uncovered_fp)
        covered = ops.ones_like(groups) if uncovered_fp else ops.cast(groups >= 0, "float32")
        # groups are dense class indices 0..m-1 and every class covers a leaf, so m = max + 1
        n_label_classes = ops.max(groups, axis=-1) + 1.0  # (B,)
        expand = (slice(None),) + (None,) * (len(y_pred.shape) - 2)
        true_pos = ops.sum(admitted * y_pred, axis=-1)
        merged_total = ops.sum(covered[expand] * y_pred, axis=-1)
        index = (true_pos + n_label_classes[expand] * eps) / (alpha + (1.0 - alpha) * merged_total + eps)
        return valid * ops.power(ops.maximum(1.0 - index, eps), gamma)

    def classwise(y_true, y_pred):
        admitted, valid, groups = _split_target(y_true, n_out)
        y_pred = ops.cast(y_pred, "float32")
        if equal_logit:
            y_pred = equal_logit_view(y_pred, groups, n_out)
        batch = ops.shape(y_pred)[0]
        membership = _label_set_membership(groups, n_out)  # (B, K, n_out)
        class_size = ops.sum(membership, axis=-1)  # (B, K)
        present = ops.cast(class_size > 0, "float32")
        flat_pred = ops.reshape(y_pred, (batch, -1, n_out))
        flat_adm = ops.reshape(admitted, (batch, -1, n_out))
        flat_valid = ops.reshape(valid, (batch, -1, 1))
        merged = ops.einsum("bpj,bkj->bpk", flat_pred, membership) * flat_valid
        onehot = ops.einsum("bpj,bkj->bpk", flat_adm, membership) / ops.maximum(class_size, 1.0)[:, None, :]
        onehot = onehot * flat_valid
        tp = ops.sum(onehot * merged, axis=1)
        fn = ops.sum(onehot * (1.0 - merged), axis=1)
        fp = ops.sum((1.0 - onehot) * merged, axis=1)
        index = (tp + eps) / (tp + alpha * fn + (1.0 - alpha) * fp + eps)
        per_class = ops.power(ops.maximum(1.0 - index, eps), gamma) * present
        any_valid = ops.cast(ops.sum(flat_valid[..., 0], axis=1) > 0, "float32")
        per_image = any_valid * ops.sum(per_class, axis=-1) / ops.maximum(ops.sum(present, axis=-1), 1.0)
        expand = (slice(None),) + (None,) * (len(y_pred.shape) - 2)
        return ops.ones_like(valid) * per_image[expand]

    return pixelwise if mode == "pixelwise" else classwise


def hierarchical_class_loss(class_weights, n_out, ce_weight=1.0, focal_tversky_weight=1.0,
                            alpha=FOCAL_TVERSKY_ALPHA, gamma=FOCAL_TVERSKY_GAMMA, mode="pixelwise",
                            normalization="pixels", coarse_label_mode="sum", uncovered_fp=False):
    """The class loss of the paper: a positive combination of Eq. 2 and Eq. 4.

    ``ce_weight * modified_crossentropy + focal_tversky_weight * modified_focal_tversky``.
    With ``focal_tversky_weight=0`` and every label at a leaf it equals stock StarDist's
    class loss.

    Parameters
    ----------
    class_weights, n_out
        As :func:`modified_crossentropy`.
    ce_weight, focal_tversky_weight : float
        Weights of the two terms (>= 0, not both 0).
    alpha, gamma, mode, uncovered_fp
        As :func:`modified_focal_tversky`.
    normalization : {'pixels', 'per_sample'}
        ``'pixels'``: per-pixel values as they are (Keras averages over every pixel of the
        batch). ``'per_sample'``: the per-pixel terms (Eq. 2, pixelwise Eq. 4) of each sample
        are scaled by ``n_pixels / n_valid_pixels`` of that sample, so the batch loss is the
        mean over samples of each sample's mean over its valid pixels (module docstring,
        "Reduction"). The classwise term is one value per image already and is left as is.
    coarse_label_mode : {'sum', 'equal_logit'}
        As :func:`modified_crossentropy` (both terms).
    """
    if ce_weight < 0 or focal_tversky_weight < 0 or ce_weight + focal_tversky_weight <= 0:
        raise ValueError(f"class loss weights must be >= 0 and not both 0, got "
                         f"ce={ce_weight}, focal_tversky={focal_tversky_weight}")
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    ce = modified_crossentropy(class_weights, n_out, coarse_label_mode=coarse_label_mode)
    ft = (modified_focal_tversky(n_out, alpha=alpha, gamma=gamma, mode=mode, coarse_label_mode=coarse_label_mode,
                                 uncovered_fp=uncovered_fp) if focal_tversky_weight > 0 else None)
    per_sample = normalization == "per_sample"

    def sample_scale(y_true):
        """``(B, *1)``: pixels per sample over valid pixels per sample (0 without valid pixels)."""
        _, valid, _ = _split_target(y_true, n_out)
        batch = ops.shape(valid)[0]
        flat = ops.reshape(valid, (batch, -1))
        n_valid = ops.sum(flat, axis=1)
        n_pix = ops.cast(ops.shape(flat)[1], "float32")
        scale = ops.where(n_valid > 0, n_pix / ops.maximum(n_valid, 1.0), 0.0)
        return ops.reshape(scale, (batch,) + (1,) * (len(valid.shape) - 1))

    def hier_class_loss(y_true, y_pred):
        scale = sample_scale(y_true) if per_sample else 1.0
        loss = ce_weight * scale * ce(y_true, y_pred) if ce_weight > 0 else 0.0
        if ft is not None:
            term = ft(y_true, y_pred)
            loss = loss + focal_tversky_weight * (scale * term if mode == "pixelwise" else term)
        return loss

    return hier_class_loss


def class_loss_from_config(config):
    """:func:`hierarchical_class_loss` with the parameters of a :class:`HierConfig2D`.

    Keys that a config from before an option existed lacks take the option's default.
    """
    c = config
    return hierarchical_class_loss(
        c.train_class_weights, c.n_classes + 1, ce_weight=c.train_class_ce_weight,
        focal_tversky_weight=c.train_focal_tversky_weight, alpha=c.train_focal_tversky_alpha,
        gamma=c.train_focal_tversky_gamma, mode=c.train_focal_tversky_mode,
        normalization=getattr(c, "train_class_loss_normalization", "pixels"),
        coarse_label_mode=getattr(c, "train_coarse_label_mode", "sum"),
        uncovered_fp=bool(getattr(c, "train_focal_tversky_uncovered_fp", False)))
