"""A TensorFlow SavedModel folder, written by Keras 3's ``Model.export``.

The folder holds the network in QuPath's layout (:func:`~stardist_hier.export.layout.qupath_model`)
with the serving endpoints ``serve`` and ``serving_default``: input ``(batch, height, width,
channels)`` float32, output ``(batch, height / grid[0], width / grid[1], channels)``
(NHWC, TensorFlow's layout). It is made in a temporary folder beside the destination and
renamed, so an interrupted export never leaves a half-written SavedModel.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

__all__ = ["write_savedmodel", "load_savedmodel"]


def write_savedmodel(keras_model, path):
    """Export ``keras_model`` as a SavedModel folder at ``path`` (an existing one is replaced).

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        keras_model.export(str(tmp / "savedmodel"), format="tf_saved_model", verbose=False)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp / "savedmodel", path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def load_savedmodel(path):
    """A function ``f(x) -> numpy.ndarray`` running the SavedModel at ``path`` (its ``serve`` endpoint)."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))

    def run(x):
        return tf.nest.flatten(loaded.serve(tf.constant(x, tf.float32)))[0].numpy()

    run.loaded = loaded  # keep the trackable alive with the function
    return run
