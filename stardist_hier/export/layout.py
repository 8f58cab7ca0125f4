"""The network in QuPath's layout: one output of object probability, rays, then classes.

QuPath's StarDist extension (``qupath.ext.stardist.StarDist2D``) runs the model through
OpenCV's DNN module and reads **one** output tensor. With a class-name map of ``n`` entries
(``StarDist2D.builder(...).classificationNames(map)``) it takes channel 0 as the object
probability, the last ``n`` channels as class probabilities (channel ``0`` of them is
background) and the channels between as the rays; a detection takes the arg-max class at
its centre pixel and is dropped when that is background. When a model has several outputs
QuPath tells rays from classes by their number of channels, so it needs more rays than class
channels; this module refuses a layout where that does not hold.

:func:`qupath_model` builds that network from a :class:`~stardist_hier.HierStarDist2D`:

* the object probability and the rays as the model predicts them (at the model's grid: QuPath
  scales the pixel indices by the ratio of input to output size);
* the class probabilities at the leaves (``n_classes + 1`` channels), or at a label set: the
  leaf probabilities summed by a fixed 1x1 convolution with the label set's membership
  matrix, background first, then the label set's class ids in increasing order.

The network is rewritten so that OpenCV's TensorFlow importer runs it exactly (checked
with OpenCV 4.7, 4.9, 4.10, 4.12, 4.14 and 5.0; QuPath 0.5/0.6 ship OpenCV 4.x):

* Keras 3's ``UpSampling2D`` repeats pixels with ``Tile``/``Reshape`` ops OpenCV cannot
  import; it is replaced by ``ResizeNearestNeighbor`` on a size computed as
  ``shape * factor``, the pattern tf.keras produced, which OpenCV recognises (same values
  for integer factors);
* OpenCV applies TensorFlow's ``Softmax`` to the last axis of its *own* NCHW layout (the
  image width), not to the channels; the class softmax is computed instead with 1x1
  convolutions only (:class:`ChannelSoftmax`).

Everything else (weights, convolutions, pooling) is the model's own.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import keras
import numpy as np
import tensorflow as tf

from ..hierarchy import HierarchyError

__all__ = ["ExportError", "ExportLayout", "qupath_model", "export_layout", "input_divisor", "QUPATH_TILE_MULTIPLE",
           "SOFTMAX_CLIP"]

#: QuPath pads every tile to a multiple of this (``2**6``, "a generous estimate" of the
#: number of poolings) before running the network.
QUPATH_TILE_MULTIPLE = 64

#: In :class:`ChannelSoftmax`, logit differences are clipped at this value before ``exp``
#: (``exp(60)`` times the number of classes stays far below float32's maximum); a class
#: whose probability is below ``exp(-60)`` gets at most that instead of 0.
SOFTMAX_CLIP = 60.0


class ExportError(ValueError):
    """A model that cannot be exported as asked (the message says why and what to do)."""


@dataclass
class ExportLayout:
    """What the exported network's single output holds, channel by channel.

    Attributes
    ----------
    n_rays : int
        Ray channels (1 .. n_rays); ray ``i`` points at angle ``2 pi i / n_rays``
        (``y = sin``, ``x = cos``), distances in input pixels.
    class_names : list of str
        Names of the class channels, background first (empty for a model without classes).
        This is the list QuPath's class-name map is built from: entry ``k`` names class
        channel ``k``.
    class_ids : list of int
        Class id of each class channel: the label set's ids, or leaf channels 0..n_classes.
    class_colors : list of list of int
        ``[r, g, b]`` of each class channel (the hierarchy's colours; background grey).
    label_set : str or None
        Label set of the class channels; ``None``: the model's leaves.
    grid : tuple of int
        Output pixel (i, j) is input pixel (i * grid[0], j * grid[1]).
    divisor : tuple of int
        Input height and width must be multiples of these (``unet_pool ** unet_n_depth *
        grid``).
    n_channel_in : int
        Input channels (3 for RGB H&E).
    prob_thresh, nms_thresh : float
        The model's thresholds (``thresholds.json``, else StarDist's defaults).
    """

    n_rays: int
    class_names: list = field(default_factory=list)
    class_ids: list = field(default_factory=list)
    class_colors: list = field(default_factory=list)
    label_set: str | None = None
    grid: tuple = (1, 1)
    divisor: tuple = (1, 1)
    n_channel_in: int = 1
    prob_thresh: float = 0.5
    nms_thresh: float = 0.4

    @property
    def n_classes(self):
        """Number of class channels (background included; 0 without classes)."""
        return len(self.class_names)

    @property
    def n_channels(self):
        """Channels of the output: 1 + n_rays + n_classes."""
        return 1 + self.n_rays + self.n_classes

    @property
    def qupath_compatible(self):
        """True when QuPath's padding of tiles to multiples of 64 satisfies :attr:`divisor`."""
        return all(QUPATH_TILE_MULTIPLE % d == 0 for d in self.divisor)

    def to_dict(self):
        """Plain-JSON description (written beside the export as ``<stem>.classes.json``)."""
        d = asdict(self)
        d["grid"], d["divisor"] = list(self.grid), list(self.divisor)
        d["n_channels"] = self.n_channels
        d["channels"] = {"prob": [0, 1], "rays": [1, 1 + self.n_rays], "classes": [1 + self.n_rays, self.n_channels]}
        return d


def input_divisor(config):
    """Height and width an input must be a multiple of: ``unet_pool ** unet_n_depth * grid``.

    StarDist's own ``_axes_div_by`` rule for the U-Net backbone (the only one StarDist2D
    builds).
    """
    if config.backbone != "unet":
        raise ExportError(f"backbone {config.backbone!r}: only StarDist's 'unet' backbone can be exported")
    return tuple(int(p) ** int(config.unet_n_depth) * int(g) for p, g in zip(config.unet_pool, config.grid))


def export_layout(model, label_set=None):
    """The :class:`ExportLayout` of ``model`` at ``label_set`` (checks that QuPath can read it).

    Raises
    ------
    ExportError
        ``label_set`` on a model without classes, or no more rays than class channels.
    HierarchyError
        Unknown label set (the message lists the known ones).
    """
    config = model.config
    names, ids, colors = [], [], []
    if config.n_classes is None:
        if label_set is not None:
            raise ExportError(f"--label-set {label_set}: the model{_where(model)} has no classes (n_classes=None); "
                              f"export it without --label-set")
    else:
        try:
            ls = model.hierarchy.leaf_label_set() if label_set is None else model.hierarchy.label_set(label_set)
        except HierarchyError as e:
            raise HierarchyError(f"the model{_where(model)}: {e}") from None
        ids = [0, *ls.ids]
        names = [ls.node(k) for k in ids]
        colors = [list(ls.color(k)) for k in ids]
        if config.n_rays <= len(ids):
            what = "leaves" if label_set is None else f"classes of label set '{ls.name}'"
            raise ExportError(
                f"QuPath needs more rays than class channels, but the model{_where(model)} has {config.n_rays} rays "
                f"and {len(ids)} class channels (background + {len(ids) - 1} {what}); export at a label set with "
                f"fewer than {config.n_rays - 1} classes (--label-set, one of "
                f"{', '.join(sorted(model.hierarchy.label_sets)) or 'none'}) or train with more rays")
    thresholds = getattr(model, "thresholds", None)
    return ExportLayout(n_rays=int(config.n_rays), class_names=names, class_ids=[int(k) for k in ids],
                        class_colors=colors, label_set=None if label_set is None else str(label_set),
                        grid=tuple(int(g) for g in config.grid), divisor=input_divisor(config),
                        n_channel_in=int(config.n_channel_in),
                        prob_thresh=float(getattr(thresholds, "prob", 0.5)),
                        nms_thresh=float(getattr(thresholds, "nms", 0.4)))


def _where(model):
    logdir = getattr(model, "logdir", None)
    return f" in {logdir}" if logdir is not None else ""


def qupath_model(model, label_set=None):
    """The Keras network of ``model`` with one output in QuPath's layout.

    Parameters
    ----------
    model : HierStarDist2D
        A model (its weights are copied; the model is not changed).
    label_set : str or None
        Label set of the class channels (leaf probabilities summed inside the network);
        ``None``: the leaves.

    Returns
    -------
    (keras.Model, ExportLayout)
        Input ``(batch, height, width, n_channel_in)`` float32, normalised as for
        ``predict_instances``; output ``(batch, height / grid[0], width / grid[1],
        layout.n_channels)``.
    """
    layout = export_layout(model, label_set)
    source = model.keras_model
    has_classes = layout.n_classes > 0
    class_layer = _class_layer(source) if has_classes else None

    def clone_layer(layer):
        if isinstance(layer, keras.layers.UpSampling2D):
            cfg = layer.get_config()
            if cfg.get("interpolation", "nearest") != "nearest" or cfg.get("data_format") == "channels_first":
                raise ExportError(f"layer {layer.name}: only channels-last nearest-neighbour UpSampling2D can be "
                                  f"exported (got {cfg.get('interpolation')}, {cfg.get('data_format')})")
            return NearestUpSampling2D(tuple(cfg["size"]), name=layer.name)
        cfg = layer.get_config()
        if layer is class_layer:
            cfg["activation"] = "linear"  # the softmax is applied by ChannelSoftmax below
        return layer.__class__.from_config(cfg)

    clone = keras.models.clone_model(source, clone_function=clone_layer)
    for layer in source.layers:
        if layer.weights:
            clone.get_layer(layer.name).set_weights(layer.get_weights())
    parts = [clone.outputs[0], clone.outputs[1]]
    if has_classes:
        probs = ChannelSoftmax(name="class_softmax")(clone.outputs[2])
        if label_set is not None:
            ls = model.hierarchy.label_set(label_set)
            membership = ls.membership[layout.class_ids].T.astype(np.float32)  # (n_classes + 1, n label-set channels)
            probs = ChannelSum(membership, name="label_set_sum")(probs)
        parts.append(probs)
    output = keras.layers.Concatenate(axis=-1, name="qupath")(parts)
    return keras.Model(clone.inputs[0], output, name="stardist_hier_qupath"), layout


def _class_layer(keras_model):
    """StarDist's class head, the layer ``prob_class`` (a softmax convolution); fails loudly if that changes."""
    try:
        layer = keras_model.get_layer("prob_class")
    except ValueError:
        raise ExportError("the network has no layer 'prob_class' (StarDist's class head): this StarDist version "
                          "builds its network differently; the export needs updating") from None
    activation = layer.get_config().get("activation")
    if activation != "softmax" or len(keras_model.outputs) != 3 or keras_model.outputs[2] is not layer.output:
        raise ExportError(f"StarDist's class head 'prob_class' has activation {activation!r} and the network "
                          f"{len(keras_model.outputs)} outputs (expected 'softmax', and 3 outputs with the class "
                          f"head last): the export needs updating")
    return layer


class NearestUpSampling2D(keras.layers.Layer):
    """Nearest-neighbour upsampling by integer factors as one ``ResizeNearestNeighbor`` op.

    Same values as ``keras.layers.UpSampling2D(interpolation='nearest')``, whose Keras 3
    implementation (``repeat``) OpenCV's importer cannot read.
    """

    def __init__(self, size=(2, 2), **kwargs):
        super().__init__(**kwargs)
        self.size = tuple(int(s) for s in size)

    def call(self, x):
        hw = tf.shape(x)[1:3] * tf.constant(self.size, tf.int32)
        return tf.raw_ops.ResizeNearestNeighbor(images=x, size=hw, align_corners=False, half_pixel_centers=False)

    def compute_output_shape(self, s):
        return (s[0], None if s[1] is None else s[1] * self.size[0],
                None if s[2] is None else s[2] * self.size[1], s[3])

    def get_config(self):
        return {**super().get_config(), "size": self.size}


def softmax_kernels(n):
    """The fixed 1x1 kernels of :class:`ChannelSoftmax` for ``n`` channels.

    Returns
    -------
    (numpy.ndarray, numpy.ndarray)
        ``pair`` ``(n, n * n)``: column ``k * n + j`` computes ``z_j - z_k``; ``sums``
        ``(n * n, n)``: column ``k`` adds the ``n`` columns of group ``k``.
    """
    pair = np.zeros((n, n * n), np.float32)
    sums = np.zeros((n * n, n), np.float32)
    for k in range(n):
        for j in range(n):
            pair[j, k * n + j] += 1
            pair[k, k * n + j] -= 1
            sums[k * n + j, k] = 1
    return pair, sums


class ChannelSoftmax(keras.layers.Layer):
    """Softmax over channels from 1x1 convolutions: ``p_k = 1 / sum_j exp(min(z_j - z_k, clip))``.

    Equal to ``softmax(z)`` up to float rounding (and ``exp(-clip)`` for vanishing
    classes), with no reduction or broadcast over channels, which OpenCV's importers get
    wrong (its TensorFlow importer applies ``Softmax`` to the image width, and broadcasts
    over channels fail): ``z_j - z_k`` for all pairs is one 1x1 convolution, the sums over
    ``j`` a second, and ``min(d, clip) = d - relu(d - clip)``. No overflow reaches the
    sums (where ``0 * inf`` would be NaN), so a class far below the best gets a tiny
    probability, never NaN. The cost is ``3 n**3`` multiply-adds per output pixel (6600 for
    the default hierarchy's 13 channels), small beside the U-Net's convolutions.
    """

    def __init__(self, clip=SOFTMAX_CLIP, **kwargs):
        super().__init__(**kwargs)
        self.clip = float(clip)

    def build(self, input_shape):
        n = int(input_shape[-1])
        pair, sums = softmax_kernels(n)
        self._pair, self._sums = pair[None, None], sums[None, None]
        self._shift = np.full(n * n, -self.clip, np.float32)

    def call(self, z):
        pair = tf.constant(self._pair)
        d = tf.nn.conv2d(z, pair, 1, "SAME")
        over = tf.nn.relu(tf.nn.bias_add(tf.nn.conv2d(z, pair, 1, "SAME"), tf.constant(self._shift)))
        s = tf.nn.conv2d(tf.exp(d - over), tf.constant(self._sums), 1, "SAME")
        # 1 / s as exp(-log s), s >= 1: OpenCV 5's ONNX engine miscomputes a convolution fed by
        # Reciprocal, and OpenCV's TensorFlow importer has no Neg (a scalar Mul it has)
        return tf.exp(tf.math.log(s) * -1.0)

    def compute_output_shape(self, s):
        return s

    def get_config(self):
        return {**super().get_config(), "clip": self.clip}


class ChannelSum(keras.layers.Layer):
    """A fixed 1x1 convolution: output channel ``c`` is ``sum_k x_k * kernel[k, c]``.

    With a label set's membership matrix it sums leaf probabilities into the label
    set's classes (:meth:`stardist_hier.hierarchy.LabelSet.collapse`).
    """

    def __init__(self, kernel, **kwargs):
        super().__init__(**kwargs)
        self.kernel_values = np.asarray(kernel, np.float32)

    def call(self, x):
        return tf.nn.conv2d(x, tf.constant(self.kernel_values[None, None]), 1, "SAME")

    def compute_output_shape(self, s):
        return (*s[:-1], self.kernel_values.shape[1])

    def get_config(self):
        return {**super().get_config(), "kernel": self.kernel_values.tolist()}
