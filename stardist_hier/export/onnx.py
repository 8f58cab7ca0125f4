"""ONNX export through tf2onnx, from the same frozen graph as the ``.pb``.

The ONNX model takes and returns **NCHW** tensors (``inputs_as_nchw``/``outputs_as_nchw``):
input ``(batch, channels, height, width)``, output ``(batch, channels, height / grid[0],
width / grid[1])``, the layout OpenCV's DNN module (QuPath) feeds and reads for every model
format, and the usual one for ONNX. Height and width are free (multiples of the network's
divisor): onnxruntime and OpenCV 5 run it at any such size, but OpenCV 4's ONNX importer
cannot import free input sizes, so QuPath (OpenCV 4.x) should be given the ``.pb``.

tf2onnx >= 1.17 converts the graph as it is under TensorFlow 2.21, numpy 2 and protobuf 7
(tf2onnx 1.16 pins protobuf 3.20, which TensorFlow 2.21 cannot use).
"""

from __future__ import annotations

from ..atomic import atomic_save
from .layout import ExportError
from .tensorflow_pb import INPUT_NAME, OUTPUT_NAME

__all__ = ["ONNX_OPSET", "graph_def_to_onnx", "write_onnx"]

#: ONNX opset of the exported models (Resize with ``sizes`` needs >= 11; onnxruntime and
#: OpenCV 5 read 13)
ONNX_OPSET = 13


def graph_def_to_onnx(graph_def, opset=ONNX_OPSET):
    """Convert a frozen graph (:func:`~stardist_hier.export.tensorflow_pb.frozen_graph_def`) to an ONNX model.

    Returns
    -------
    onnx.ModelProto
        Input ``input`` and output ``output``, both NCHW.
    """
    try:
        import tf2onnx
    except ImportError:
        raise ExportError("--format onnx needs tf2onnx: pip install 'stardist-hier[export]'") from None
    model_proto, _ = tf2onnx.convert.from_graph_def(
        graph_def, name="stardist_hier", input_names=[f"{INPUT_NAME}:0"], output_names=[f"{OUTPUT_NAME}:0"],
        opset=opset, inputs_as_nchw=[f"{INPUT_NAME}:0"], outputs_as_nchw=[f"{OUTPUT_NAME}:0"],
        tensors_to_rename={f"{INPUT_NAME}:0": INPUT_NAME, f"{OUTPUT_NAME}:0": OUTPUT_NAME})
    return model_proto


def write_onnx(model_proto, path):
    """Write an ONNX model to ``path`` atomically; returns ``path``."""
    data = model_proto.SerializeToString()

    def save(tmp):
        with open(tmp, "wb") as f:
            f.write(data)

    return atomic_save(path, save)
