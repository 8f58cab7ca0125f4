"""Export a trained model, class head included, for QuPath and other tools (issue 10, section 3).

:func:`export_model` writes the network in QuPath's layout (one output: object probability,
rays, then class probabilities with background first; see :mod:`.layout`) as

* ``pb``: a frozen TensorFlow graph, what QuPath's StarDist extension loads through OpenCV's
  DNN module on every OS (:mod:`.tensorflow_pb`);
* ``onnx``: ONNX through tf2onnx, NCHW in and out (:mod:`.onnx`);
* ``savedmodel``: a TensorFlow SavedModel folder from Keras 3's ``Model.export``
  (:mod:`.savedmodel`),

plus ``<stem>.classes.txt``/``.classes.json`` and, for ``pb``, a QuPath script
``<stem>.groovy`` (:mod:`.qupath`). Stock StarDist's ``export_TF`` cannot do this under
Keras 3 (it raises ``NotImplementedError``) and drops the class head anyway.

Input size: height and width must be multiples of ``unet_pool ** unet_n_depth * grid``
(``layout.divisor``, e.g. 16 for a depth-3 U-Net at grid 2); QuPath pads its tiles to
multiples of 64, which suits every network whose divisor divides 64.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..atomic import atomic_write_text, check_output_dir
from .layout import ExportError, ExportLayout, export_layout, input_divisor, qupath_model

__all__ = ["FORMATS", "ExportError", "ExportLayout", "ExportResult", "export_model", "export_layout",
           "qupath_model", "input_divisor", "default_stem", "VERIFY_ATOL"]

#: export format -> what is written into the output folder
FORMATS = {"pb": "{stem}.pb", "onnx": "{stem}.onnx", "savedmodel": "{stem}_savedmodel"}

#: largest difference allowed between an export and the Keras network when it is checked
#: right after writing (float32 through another engine)
VERIFY_ATOL = 1e-4


@dataclass
class ExportResult:
    """What :func:`export_model` wrote.

    Attributes
    ----------
    model : pathlib.Path
        The ``.pb``/``.onnx`` file or the SavedModel folder.
    layout : ExportLayout
        The channels of the output.
    files : dict
        Every file written, by role (``model``, ``classes_txt``, ``classes_json``, ``groovy``).
    max_abs_diff : float or None
        Largest difference from the Keras network on a random input, measured by running
        the written export (``None`` when not verified).
    """

    model: Path
    layout: ExportLayout
    files: dict = field(default_factory=dict)
    max_abs_diff: float | None = None


def default_stem(model, label_set=None):
    """File name stem of an export: the model's name, plus ``_<label set>`` at a label set."""
    name = str(getattr(model, "name", None) or "stardist_hier")
    return name if label_set is None else f"{name}_{label_set}"


def export_model(model, out, format="pb", label_set=None, stem=None, verify=True, pixel_size=None):
    """Export ``model`` in QuPath's layout into the folder ``out``.

    Parameters
    ----------
    model : HierStarDist2D
        The model (loaded with its weights).
    out : str or path-like
        Output folder (created; an existing file there is an error).
    format : {'pb', 'onnx', 'savedmodel'}
        What to write (see :data:`FORMATS`).
    label_set : str or None
        Label set of the class channels; ``None``: the model's leaves.
    stem : str or None
        File name stem (default :func:`default_stem`).
    verify : bool
        Run the written export (TensorFlow for ``pb``/``savedmodel``, onnxruntime for
        ``onnx`` when installed) on a random input and raise :class:`ExportError` if it
        differs from the Keras network by more than :data:`VERIFY_ATOL`.
    pixel_size : float or None
        Pixel size (µm) put into the Groovy snippet; ``None``: the model's ``pixel_size_um``
        (the training images'), else 0.5 µm (about 20x).

    Returns
    -------
    ExportResult

    Raises
    ------
    ExportError
        Unknown format, an impossible layout (no more rays than class channels),
        ``label_set`` on a model without classes, a missing converter, a failed check.
    HierarchyError
        Unknown label set.
    NotADirectoryError
        ``out`` is a file.
    """
    if format not in FORMATS:
        raise ExportError(f"unknown export format {format!r}: use one of {', '.join(FORMATS)}")
    out = check_output_dir(out)
    if pixel_size is None:
        pixel_size = getattr(model.config, "pixel_size_um", None) or 0.5
    keras_model, layout = qupath_model(model, label_set)  # checks the layout first
    stem = stem or default_stem(model, label_set)
    out.mkdir(parents=True, exist_ok=True)
    target = out / FORMATS[format].format(stem=stem)

    from .qupath import groovy_snippet, write_class_files

    files = write_class_files(layout, out, stem) if layout.n_classes else {}
    if format == "savedmodel":
        from .savedmodel import load_savedmodel, write_savedmodel

        write_savedmodel(keras_model, target)
        runner = load_savedmodel(target) if verify else None
    else:
        from .tensorflow_pb import frozen_graph_def, write_pb

        graph_def = frozen_graph_def(keras_model, layout.n_channel_in)
        if format == "pb":
            runner = _graph_def_runner(graph_def) if verify else None
            write_pb(graph_def, target)
            groovy = out / f"{stem}.groovy"
            classes_txt = files["classes_txt"].resolve() if "classes_txt" in files else None
            atomic_write_text(groovy, groovy_snippet(target.resolve(), classes_txt, layout, pixel_size))
            files["groovy"] = groovy
        else:
            from .onnx import graph_def_to_onnx, write_onnx

            proto = graph_def_to_onnx(graph_def)
            runner = _onnxruntime_runner(proto) if verify else None
            write_onnx(proto, target)
    files = {"model": target, **files}
    diff = _verify(keras_model, layout, runner, nchw=format == "onnx") if runner is not None else None
    return ExportResult(model=target, layout=layout, files=files, max_abs_diff=diff)


def _verify(keras_model, layout, runner, nchw=False):
    rs = np.random.RandomState(0)
    shape = (2 * layout.divisor[0], 3 * layout.divisor[1])
    x = rs.uniform(-0.2, 1.2, size=(1, *shape, layout.n_channel_in)).astype(np.float32)
    expected = np.asarray(keras_model(x, training=False))
    got = runner(np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if nchw else x)
    got = got.transpose(0, 2, 3, 1) if nchw else got
    if got.shape != expected.shape:
        raise ExportError(f"the written export returns shape {got.shape}, the network {expected.shape}")
    diff = float(np.abs(got - expected).max())
    if not diff <= VERIFY_ATOL:
        raise ExportError(f"the written export differs from the network by {diff:.3g} (> {VERIFY_ATOL}); "
                          f"this converter version is not supported")
    return diff


def _graph_def_runner(graph_def):
    """Run a frozen graph in TensorFlow: ``f(x_nhwc) -> numpy``."""
    import tensorflow as tf

    from .tensorflow_pb import INPUT_NAME, OUTPUT_NAME

    def imports():
        tf.compat.v1.import_graph_def(graph_def, name="")

    wrapped = tf.compat.v1.wrap_function(imports, [])
    fn = wrapped.prune(f"{INPUT_NAME}:0", f"{OUTPUT_NAME}:0")
    return lambda x: fn(tf.constant(x)).numpy()


def _onnxruntime_runner(proto):
    """Run an ONNX model in onnxruntime (``None`` when onnxruntime is not installed)."""
    try:
        import onnxruntime
    except ImportError:
        return None
    session = onnxruntime.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]
