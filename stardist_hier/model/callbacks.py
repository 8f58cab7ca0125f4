"""Keras callbacks of :class:`stardist_hier.model.HierStarDist2D` training."""

from __future__ import annotations

import keras

__all__ = ["PerDatasetValidation"]


class PerDatasetValidation(keras.callbacks.Callback):
    """Keras callback adding ``val_loss_<label set>`` to the logs of each epoch.

    Parameters
    ----------
    data_by_set : dict
        Label-set name -> ``(inputs, targets)`` validation arrays.
    batch_size : int
        Batch size of the evaluation.
    """

    def __init__(self, data_by_set, batch_size):
        super().__init__()
        self.data_by_set = data_by_set
        self.batch_size = batch_size

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        if len(self.data_by_set) == 1 and "val_loss" in logs:
            logs[f"val_loss_{next(iter(self.data_by_set))}"] = logs["val_loss"]
            return
        for name, (x, y) in self.data_by_set.items():
            result = self.model.evaluate(x, y, batch_size=self.batch_size, verbose=0, return_dict=True)
            logs[f"val_loss_{name}"] = float(result["loss"])
