"""Weights from a stock StarDist2D model into a :class:`~stardist_hier.model.HierStarDist2D`.

:func:`stock_model` opens a stock model folder (e.g. a downloaded ``2D_versatile_he``) or takes
a :class:`stardist.models.StarDist2D` instance; :func:`copy_weights` copies the backbone, the
object-probability and the distance heads layer by layer (in the network's layer order, which
does not depend on the automatic names Keras gives unnamed layers), and the class head
(``features_class``, ``prob_class``) too when asked.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["CLASS_HEAD_LAYERS", "stock_model", "stock_config_params", "copy_weights"]

#: layers of the class head of StarDist's multi-class network
CLASS_HEAD_LAYERS = ("features_class", "prob_class")

_NOT_COPIED = ("n_dim", "n_channel_out", "n_classes", "train_class_weights")


def stock_model(model_or_folder):
    """A :class:`stardist.models.StarDist2D` from an instance or a model folder.

    Raises
    ------
    FileNotFoundError
        The folder does not exist, has no ``config.json`` or no weights; the message names it.
    TypeError
        Neither a StarDist2D nor a path.
    """
    from stardist.models import StarDist2D

    from .folder import weights_files

    if isinstance(model_or_folder, StarDist2D):
        return model_or_folder
    if not isinstance(model_or_folder, (str, Path)):
        raise TypeError(f"expected a StarDist2D model or a model folder, got {type(model_or_folder).__name__}")
    folder = Path(model_or_folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder not found: {folder}")
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} is not a StarDist model folder: config.json is missing")
    if not weights_files(folder):
        raise FileNotFoundError(f"model folder {folder} has no network weights (*.h5, *.hdf5)")
    return StarDist2D(None, name=folder.name, basedir=str(folder.parent))


def stock_config_params(config):
    """The parameters of a stock :class:`Config2D` that carry over to a new class head."""
    return {k: v for k, v in vars(config).items() if k not in _NOT_COPIED}


def copy_weights(source, target, class_head=False, where="source model"):
    """Copy layer weights from one Keras StarDist network into another of the same architecture.

    Parameters
    ----------
    source, target : keras.Model
        Stock StarDist2D networks (``model.keras_model``); they must have the same backbone.
    class_head : bool
        Also copy ``features_class`` and ``prob_class`` (both must have them, same shapes).
    where : str
        Name of the source in error messages.

    Raises
    ------
    ValueError
        Different architectures; the message names the first layer that differs.
    """
    skip = () if class_head else CLASS_HEAD_LAYERS
    src = [layer for layer in source.layers if layer.weights and layer.name not in skip]
    dst = [layer for layer in target.layers if layer.weights and layer.name not in skip]
    if len(src) != len(dst):
        raise ValueError(f"{where}: {len(src)} layers with weights to copy, the new model has {len(dst)} "
                         f"(different unet_n_depth, grid or net_conv_after_unet?)")
    for a, b in zip(src, dst):
        wa, wb = a.get_weights(), b.get_weights()
        shapes_a, shapes_b = [w.shape for w in wa], [w.shape for w in wb]
        if shapes_a != shapes_b:
            raise ValueError(f"{where}: layer '{a.name}' has weights of shapes {shapes_a}, the new model's "
                             f"'{b.name}' {shapes_b}")
        b.set_weights(wa)
