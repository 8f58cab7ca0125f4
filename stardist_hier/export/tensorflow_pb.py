"""A frozen TensorFlow graph (``.pb``): what QuPath loads through OpenCV's DNN module.

The Keras network (:func:`~stardist_hier.export.layout.qupath_model`) is traced at any
input size (``[None, None, None, channels]``), its variables turned into constants, and the
graph simplified by TensorFlow's Grappler (constant folding: Keras 3 reshapes each bias
before adding it, a pattern OpenCV cannot import). Two details make the graph readable by
OpenCV's importer:

* every constant is written out in full (Grappler stores a constant whose values are all
  equal as one value, which OpenCV reads as a one-element tensor);
* the input placeholder is named :data:`INPUT_NAME` and the output node
  :data:`OUTPUT_NAME`.

TensorFlow has no public API for freezing a TF2 function or for running Grappler on a
graph; both internals are imported in one place, :func:`_tf_internals`, which raises
:class:`~stardist_hier.export.layout.ExportError` naming them if TensorFlow moves them.
"""

from __future__ import annotations

from ..atomic import atomic_save
from .layout import ExportError

__all__ = ["INPUT_NAME", "OUTPUT_NAME", "frozen_graph_def", "write_pb"]

#: name of the input placeholder of the exported graphs (``(batch, height, width, channels)``)
INPUT_NAME = "input"
#: name of the output node of the exported graphs
OUTPUT_NAME = "output"

#: Grappler passes run on the frozen graph: constant folding, function inlining and the
#: removal of control dependencies (the passes tf2onnx runs; none of them fuses ops into
#: ones OpenCV does not know, as the "remapper" pass would)
GRAPPLER_PASSES = ("constfold", "function", "dependency")


def _tf_internals():
    """TensorFlow's freezing and Grappler entry points (not public API: wrapped here only).

    Returns
    -------
    (callable, callable)
        ``convert_variables_to_constants_v2(concrete_function)`` and
        ``OptimizeGraph(config_proto, meta_graph_def)``.
    """
    try:
        from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2
        from tensorflow.python.grappler.tf_optimizer import OptimizeGraph
    except ImportError as e:  # pragma: no cover - only with a TensorFlow that moved them
        import tensorflow as tf

        raise ExportError(f"TensorFlow {tf.__version__} no longer has the internals the .pb export uses "
                          f"(convert_variables_to_constants_v2, grappler OptimizeGraph): {e}") from e
    return convert_variables_to_constants_v2, OptimizeGraph


def frozen_graph_def(keras_model, n_channel_in):
    """Freeze ``keras_model`` into a ``GraphDef`` that OpenCV's DNN module imports.

    Parameters
    ----------
    keras_model : keras.Model
        One input ``(batch, height, width, n_channel_in)`` and one output.
    n_channel_in : int
        Input channels.

    Returns
    -------
    tensorflow.compat.v1.GraphDef
        Input :data:`INPUT_NAME`, output :data:`OUTPUT_NAME`; height and width free.
    """
    import tensorflow as tf
    from tensorflow.core.protobuf import config_pb2, meta_graph_pb2

    freeze, optimize = _tf_internals()
    fn = tf.function(lambda x: keras_model(x, training=False))
    concrete = fn.get_concrete_function(tf.TensorSpec([None, None, None, int(n_channel_in)], tf.float32,
                                                      name=INPUT_NAME))
    frozen = freeze(concrete)
    graph_def = frozen.graph.as_graph_def()
    if len(frozen.outputs) != 1:
        raise ExportError(f"the network to export has {len(frozen.outputs)} outputs, expected 1")
    output = frozen.outputs[0].name.split(":")[0]

    config = config_pb2.ConfigProto()
    config.graph_options.rewrite_options.optimizers[:] = list(GRAPPLER_PASSES)
    with tf.Graph().as_default():
        meta = tf.compat.v1.train.export_meta_graph(graph_def=graph_def)
    fetch = meta_graph_pb2.CollectionDef()
    fetch.node_list.value.extend([INPUT_NAME, output])
    meta.collection_def["train_op"].CopyFrom(fetch)
    graph_def = optimize(config, meta)

    names = {n.name for n in graph_def.node}
    if INPUT_NAME not in names or output not in names:
        raise ExportError(f"Grappler dropped the input or output node ({INPUT_NAME}, {output}) of the graph")
    for node in graph_def.node:
        if node.op == "Const":
            # write constants in full: Grappler compresses a constant of equal values into
            # one value, which OpenCV's importer reads as a one-element tensor
            node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(tf.make_ndarray(node.attr["value"].tensor)))
        if node.name == output:
            node.name = OUTPUT_NAME
        for i, name in enumerate(node.input):
            if name.split(":")[0] == output:
                node.input[i] = OUTPUT_NAME + name[len(output):]
    return graph_def


def write_pb(graph_def, path):
    """Write ``graph_def`` to ``path`` (binary protobuf) atomically; returns ``path``."""
    data = graph_def.SerializeToString()

    def save(tmp):
        with open(tmp, "wb") as f:
            f.write(data)

    return atomic_save(path, save)
