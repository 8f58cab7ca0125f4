"""The compile call of :class:`~stardist_hier.model.HierStarDist2D`, built from public pieces.

Stock :meth:`stardist.models.StarDist2D.prepare_for_training` compiles the network with its
object, distance and class losses, its metrics and the optimizer, and makes the callbacks.
:func:`recompile_with_class_loss` compiles it again with the class loss replaced, reading
only public pieces: the optimizer and the losses from Keras' ``Model.optimizer`` and
``Model.loss`` (what stock passed to ``compile``), the loss weights from the config, and the
metrics rebuilt by :func:`stock_metrics` from the metric functions StarDist's ``base``
module exports, under stock's names (so ``history`` has the same keys). A test compares
every logged value with stock StarDist's on the same batch, so a change in stock fails
loudly.
"""

from __future__ import annotations

__all__ = ["stock_metrics", "recompile_with_class_loss"]


def stock_metrics(config):
    """Stock StarDist's compile metrics: ``{'prob': kld, 'dist': [relevant_mae, relevant_mse, dist_iou_metric]}``."""
    from keras import ops
    from stardist.models.base import kld, masked_metric_iou, masked_metric_mae, masked_metric_mse

    n_rays = config.n_rays

    def split(dist_true_mask):
        return ops.split(dist_true_mask, [n_rays], axis=-1)

    def relevant_mae(dist_true_mask, dist_pred):
        dist_true, dist_mask = split(dist_true_mask)
        return masked_metric_mae(dist_mask)(dist_true, dist_pred)

    def relevant_mse(dist_true_mask, dist_pred):
        dist_true, dist_mask = split(dist_true_mask)
        return masked_metric_mse(dist_mask)(dist_true, dist_pred)

    def dist_iou_metric(dist_true_mask, dist_pred):
        dist_true, dist_mask = split(dist_true_mask)
        return masked_metric_iou(dist_mask, reg_weight=0)(dist_true, dist_pred)

    return {"prob": kld, "dist": [relevant_mae, relevant_mse, dist_iou_metric]}


def recompile_with_class_loss(model, class_loss):
    """Compile a stock-compiled multi-class StarDist network again with ``class_loss`` as its class loss.

    Parameters
    ----------
    model : stardist.models.StarDist2D
        Compiled by stock ``prepare_for_training`` (three outputs: prob, dist, prob_class).
    class_loss : callable
        ``loss(y_true, y_pred)`` of the class output.

    Raises
    ------
    RuntimeError
        The network was not compiled with three losses (stock StarDist changed).
    """
    km = model.keras_model
    losses = getattr(km, "loss", None)
    if not isinstance(losses, (list, tuple)) or len(losses) != 3:
        raise RuntimeError(f"expected stock StarDist to compile three losses (prob, dist, prob_class), found "
                           f"{losses!r}: stardist's prepare_for_training changed")
    losses = [losses[0], losses[1], class_loss]
    km.compile(km.optimizer, loss=losses, loss_weights=list(model.config.train_loss_weights),
               metrics=stock_metrics(model.config))
