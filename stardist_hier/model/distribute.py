"""Mixed precision and several devices or machines for ``HierStarDist2D.train``.

Mixed precision (config ``train_mixed_precision``)
------------------------------------------------
``'mixed_float16'`` or ``'mixed_bfloat16'``: the network is built under that Keras dtype
policy (float32 weights, 16-bit computation), except its output layers (``prob``, ``dist``,
``prob_class``), which compute in float32, so predictions are float32 and every loss is
computed in float32 (each compiled loss casts its inputs to float32, :func:`float32_loss`;
a sigmoid or softmax that saturates to exactly 0 or 1 gives finite losses, as they clip in
float32: tested with float16 inputs). With ``'mixed_float16'`` Keras wraps the optimizer in
a :class:`keras.optimizers.LossScaleOptimizer` (dynamic loss scaling); an optimizer that
cannot be wrapped is refused before training (:func:`check_optimizer`). ``'mixed_bfloat16'``
needs no loss scaling (float32's exponent range); it is what CPUs and recent GPUs/TPUs run
fast. The setting applies from the first ``train`` call; a model loaded from its folder is
built in float32 for prediction until it is trained again.

Several GPUs on one machine (config ``train_distribute='mirrored'`` or ``train(strategy=...)``)
--------------------------------------------------------------------------------------------
:class:`tf.distribute.MirroredStrategy` over every GPU TensorFlow sees (none: an error), or
any strategy object passed as ``train(strategy=...)`` (e.g.
``tf.distribute.MirroredStrategy(['/gpu:0', '/gpu:2'])``). The network is rebuilt inside
the strategy's scope at the first ``train`` call that asks for it (same weights; the
optimizer's state is carried over), and compiled there. Each batch of
``train_batch_size`` patches is split between the replicas, so it must be divisible by
their number; losses and gradients are averaged over the whole batch, so one step gives the
losses and weights a single device gives on the same batch (tested with two logical CPUs).

Several machines (config ``train_distribute='multi_worker'``)
-----------------------------------------------------------
:class:`tf.distribute.MultiWorkerMirroredStrategy`, configured by TensorFlow's ``TF_CONFIG``
environment variable, e.g. on machine 0 of two::

    TF_CONFIG='{"cluster": {"worker": ["host0:12345", "host1:12345"]}, "task": {"type": "worker", "index": 0}}'

and ``"index": 1`` on the other. Every machine runs the *same* training script with the same
``seed``, so every worker draws the same batches (:mod:`.pipeline`) and TensorFlow gives
each its share of every batch. TensorFlow requires the strategy to exist before any other
TensorFlow operation: call :func:`multi_worker_strategy` first thing in the script (before
building the model); ``train`` then uses it. Worker 0 is the chief; give the others their
own model folder (or ``basedir=None``), as every worker writes its checkpoints.

Keras 3.15 cannot run ``fit`` under ``MultiWorkerMirroredStrategy`` as shipped (keras-team/keras#20585: its
symbolic build and its per-step reduction of the logged scalars call ``strategy.reduce``
with arguments the collective strategy rejects). :func:`multi_worker_fixes` works around
both for the duration of a ``train`` call, in this one place; ``tests/test_distribute.py``
fails loudly if the Keras internals it relies on change, and runs two workers on loopback.
"""

from __future__ import annotations

import contextlib
import json
import os

__all__ = ["PRECISIONS", "STRATEGIES", "check_precision", "check_optimizer", "tf_config", "is_chief",
           "multi_worker_strategy", "resolve_strategy", "check_batch_size", "prepare_network", "multi_worker_fixes",
           "output_layer_names", "global_prob_loss", "global_dist_loss", "float32_loss", "recompile_for_training"]

#: values of ``train_mixed_precision`` (besides ``None``)
PRECISIONS = ("mixed_float16", "mixed_bfloat16")
#: values of ``train_distribute`` (besides ``None``)
STRATEGIES = ("mirrored", "multi_worker")

_MULTI_WORKER = None


def check_precision(value, what="train_mixed_precision"):
    """``value`` if it is ``None`` or one of :data:`PRECISIONS`, else a :class:`ValueError` naming ``what``."""
    if value is not None and value not in PRECISIONS:
        raise ValueError(f"{what}={value!r}: use one of {list(PRECISIONS)} or None (float32)")
    return value


def check_optimizer(optimizer, precision):
    """Refuse an optimizer that cannot train under ``precision`` (a clear :class:`ValueError`).

    Parameters
    ----------
    optimizer : keras.optimizers.Optimizer, str or None
        What ``prepare_for_training`` got (``None``: Adam, which can).
    precision : str or None
        ``train_mixed_precision``.

    Raises
    ------
    ValueError
        Under mixed precision: an object that is not a Keras 3 optimizer (e.g. a ``tf.compat.v1``
        or ``tf_keras`` optimizer, which Keras cannot wrap or step); under ``'mixed_float16'``:
        an optimizer with a fixed ``loss_scale_factor`` (Keras' dynamic loss scaling would
        silently replace it).
    """
    if precision is None or optimizer is None or isinstance(optimizer, str):
        return
    import keras

    name = type(optimizer).__module__ + "." + type(optimizer).__qualname__
    if not isinstance(optimizer, keras.optimizers.Optimizer):
        raise ValueError(f"train_mixed_precision={precision!r} needs a Keras 3 optimizer (keras.optimizers.Optimizer), "
                         f"got {name}: pass e.g. keras.optimizers.Adam(...) to prepare_for_training, or set "
                         f"train_mixed_precision=None")
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    if precision == "mixed_float16" and getattr(inner, "loss_scale_factor", None) is not None:
        raise ValueError(f"train_mixed_precision='mixed_float16' scales the loss dynamically "
                         f"(keras.optimizers.LossScaleOptimizer), but the optimizer {name} has a fixed "
                         f"loss_scale_factor={inner.loss_scale_factor}: drop loss_scale_factor, or use "
                         f"'mixed_bfloat16' (no loss scaling)")


def tf_config(environ=None):
    """The parsed ``TF_CONFIG`` (checked: ``cluster`` with workers, ``task`` with type and index), or ``None`` if unset.

    Raises
    ------
    ValueError
        ``TF_CONFIG`` is not JSON or lacks what a multi-worker run needs; the message says what.
    """
    environ = os.environ if environ is None else environ
    raw = environ.get("TF_CONFIG", "").strip()
    if not raw:
        return None
    try:
        cfg = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"TF_CONFIG is not valid JSON ({e}): {raw[:80]}") from None
    cluster, task = (cfg.get("cluster"), cfg.get("task")) if isinstance(cfg, dict) else (None, None)
    workers = (cluster or {}).get("worker") if isinstance(cluster, dict) else None
    if not isinstance(workers, list) or not workers:
        raise ValueError(f"TF_CONFIG needs 'cluster': {{'worker': ['host:port', ...]}}, got {raw[:80]}")
    if not isinstance(task, dict) or task.get("type") not in cluster or not isinstance(task.get("index"), int):
        raise ValueError(f"TF_CONFIG needs 'task': {{'type': 'worker', 'index': i}} with a type of its cluster, "
                         f"got {raw[:80]}")
    if not 0 <= task["index"] < len(cluster[task["type"]]):
        raise ValueError(f"TF_CONFIG task index {task['index']} is outside its {len(cluster[task['type']])} "
                         f"'{task['type']}' address(es)")
    return cfg


def is_chief(environ=None):
    """True unless ``TF_CONFIG`` makes this process a non-chief worker (worker 0 is the chief without a 'chief' task)."""
    cfg = tf_config(environ)
    if cfg is None:
        return True
    task = cfg["task"]
    if "chief" in cfg["cluster"]:
        return task["type"] == "chief"
    return task["type"] == "worker" and task["index"] == 0


def multi_worker_strategy():
    """The process's :class:`tf.distribute.MultiWorkerMirroredStrategy`, from ``TF_CONFIG`` (made once).

    Call it at the start of the program, before any other TensorFlow operation (building a
    model included): TensorFlow configures its collective operations only then.

    Raises
    ------
    ValueError
        ``TF_CONFIG`` unset or malformed.
    RuntimeError
        Called after TensorFlow already ran something.
    """
    global _MULTI_WORKER
    if _MULTI_WORKER is not None:
        return _MULTI_WORKER
    if tf_config() is None:
        raise ValueError("train_distribute='multi_worker' needs the TF_CONFIG environment variable (cluster and task "
                         "of this machine, see stardist_hier.model.distribute); set it, or use train_distribute=None "
                         "or 'mirrored' on one machine")
    import tensorflow as tf

    try:
        _MULTI_WORKER = tf.distribute.MultiWorkerMirroredStrategy()
    except RuntimeError as e:
        if "program startup" not in str(e):
            raise
        raise RuntimeError("train_distribute='multi_worker': TensorFlow sets up a multi-worker strategy only before "
                           "it runs anything else; call stardist_hier.model.distribute.multi_worker_strategy() at the "
                           "start of the script, before building the model") from None
    return _MULTI_WORKER


def resolve_strategy(spec, what="train_distribute"):
    """A :class:`tf.distribute.Strategy` (or ``None``: the default device) from a config value or an object.

    Parameters
    ----------
    spec : None, 'mirrored', 'multi_worker' or tf.distribute.Strategy

    Raises
    ------
    ValueError
        An unknown value, ``'mirrored'`` on a machine where TensorFlow sees no GPU, or a
        multi-worker setting without ``TF_CONFIG``.
    """
    if spec is None:
        return None
    import tensorflow as tf

    if isinstance(spec, tf.distribute.Strategy):
        if spec.num_replicas_in_sync < 1:
            raise ValueError(f"{what}: the strategy {type(spec).__name__} has no devices")
        return spec
    if spec == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        if not gpus:
            raise ValueError(f"{what}='mirrored' trains on every GPU of this machine, but TensorFlow sees none "
                             f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')!r}, "
                             f"CPU-only TensorFlow?): set {what}=None to train on one device, or pass "
                             f"strategy=tf.distribute.MirroredStrategy([...devices...])")
        return tf.distribute.MirroredStrategy([d.name for d in gpus])
    if spec == "multi_worker":
        return multi_worker_strategy()
    raise ValueError(f"{what}={spec!r}: use one of {list(STRATEGIES)}, None, or a tf.distribute.Strategy object")


def _is_multi_worker(strategy):
    import tensorflow as tf

    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def check_batch_size(batch_size, strategy):
    """Refuse a batch size that the strategy's replicas cannot share equally (the losses would differ)."""
    if strategy is None:
        return
    n = int(strategy.num_replicas_in_sync)
    if batch_size % n:
        raise ValueError(f"train_batch_size={batch_size} cannot be split equally between the {n} replicas of "
                         f"{type(strategy).__name__}: use a multiple of {n}")


def output_layer_names(keras_model):
    """Names of the layers that make the network's outputs (``prob``, ``dist`` and ``prob_class`` for StarDist)."""
    return list(keras_model.output_names)


@contextlib.contextmanager
def _dtype_policy(precision):
    import keras

    old = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision or "float32")
    try:
        yield
    finally:
        keras.config.set_dtype_policy(old)


def _network_setup(model):
    return getattr(model, "_network_setup", (None, None))


def _unwrap(optimizer):
    return getattr(optimizer, "inner_optimizer", optimizer)


def prepare_network(model, strategy, precision):
    """Rebuild ``model``'s network inside ``strategy``'s scope and under ``precision`` if it was built otherwise.

    The weights are copied; a prepared model is compiled again inside the scope with a fresh
    optimizer of the same configuration, and the old optimizer's state (moments, iteration
    count) copied into it. Output layers compute in float32. Nothing happens when the network
    already fits (e.g. the second ``train`` call of an episode protocol).

    Returns
    -------
    bool
        True if the network was rebuilt.
    """
    if _network_setup(model) == (strategy, precision):
        return False
    old = model.keras_model
    old_opt = _unwrap(old.optimizer) if model._model_prepared and getattr(old, "optimizer", None) is not None else None
    check_optimizer(old_opt, precision)
    scope = strategy.scope() if strategy is not None else contextlib.nullcontext()
    with scope:
        with _dtype_policy(precision):
            new = model._build()  # stock StarDist's network builder, the one it calls in __init__
        if precision is not None:
            for name in output_layer_names(new):
                new.get_layer(name).dtype_policy = "float32"
        new.set_weights(old.get_weights())
        model.keras_model = new
        model._network_setup = (strategy, precision)
        if old_opt is not None:
            opt = type(old_opt).from_config(old_opt.get_config())
            model._model_prepared = False
            model.prepare_for_training(opt)
            if old_opt.built:
                model.keras_model.optimizer.build(model.keras_model.trainable_variables)
                new_opt = _unwrap(model.keras_model.optimizer)
                if len(new_opt.variables) != len(old_opt.variables):
                    raise RuntimeError(f"optimizer state of {len(old_opt.variables)} variables cannot be carried "
                                       f"into the rebuilt network's {len(new_opt.variables)}")
                for a, b in zip(old_opt.variables, new_opt.variables):
                    b.assign(a.numpy())
        else:
            model._model_prepared = False
    return True


def _replica_mean(x):
    """Mean of ``x`` over the replicas of the current strategy (``x`` itself on one device)."""
    import tensorflow as tf

    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return x
    return ctx.all_reduce("MEAN", x)


def global_prob_loss():
    """Stock StarDist's object loss, averaged over the whole batch when the batch is split between replicas.

    Stock's loss is the mean binary cross-entropy over the pixels that are not ignored, a
    scalar; Keras does not divide a scalar loss by the number of replicas (it does for a
    per-pixel loss), so under a strategy with N replicas stock's object loss would count N
    times, and its per-replica means would weigh replicas with fewer ignored pixels more.
    Here each replica returns ``(1,)``: its sum over the batch-wide count, so that the
    average over replicas is the single-device value exactly.
    """
    from csbdeep.utils.tf import BACKEND as K
    from keras import ops

    def prob_loss(y_true, y_pred):
        y_true = K.cast(y_true, K.floatx())
        mask = y_true >= 0
        bce = K.binary_crossentropy(y_true[mask], y_pred[mask])
        count = _replica_mean(ops.cast(ops.size(bce), "float32"))
        return ops.reshape(ops.sum(bce) / count, (1,))

    return prob_loss


def global_dist_loss(config):
    """Stock StarDist's distance loss (``'mae'``/``'mse'``), normalised by the object pixels of the whole batch.

    Stock divides by the mean of the object mask of the batch it sees; split between
    replicas, each would divide by its own share. Here the mean of the mask is averaged over
    the replicas first, so the loss equals the single-device one. ``train_dist_loss='iou'``
    keeps stock's loss (normalised per replica).
    """
    from csbdeep.utils.tf import BACKEND as K
    from keras import ops

    penalty = {"mae": K.abs, "mse": K.square}[config.train_dist_loss]
    n_rays, reg = config.n_rays, float(config.train_background_reg)

    def dist_loss(dist_true_mask, dist_pred):
        dist_true, mask = ops.split(dist_true_mask, [n_rays], axis=-1)
        mask = K.cast(mask, K.floatx())
        actual = K.mean(mask * penalty(K.cast(dist_true, K.floatx()) - dist_pred), axis=-1)
        norm = _replica_mean(K.mean(mask)) + K.epsilon()
        if reg > 0:
            return actual / norm + reg * K.mean((1 - mask) * K.abs(dist_pred), axis=-1)
        return actual / norm

    return dist_loss


def float32_loss(loss):
    """``loss`` computed in float32 whatever the dtype of its inputs (the losses under mixed precision)."""
    from keras import ops

    def float32(y_true, y_pred):
        return loss(ops.cast(y_true, "float32"), ops.cast(y_pred, "float32"))

    float32.__name__ = getattr(loss, "__name__", "loss")
    return float32


def recompile_for_training(model):
    """Compile again for a multi-replica strategy and for mixed precision; returns True if it did.

    * inside the scope of a strategy with several replicas: :func:`global_prob_loss` and
      :func:`global_dist_loss` replace stock's object and distance losses;
    * with ``train_mixed_precision``: every loss is computed in float32 (:func:`float32_loss`).

    Otherwise nothing changes (the losses stay stock's objects). Keeps the optimizer, the
    class loss, the loss weights and stock's metrics.
    """
    import tensorflow as tf

    km, config = model.keras_model, model.config
    replicas = tf.distribute.has_strategy() and tf.distribute.get_strategy().num_replicas_in_sync > 1
    precision = config.train_mixed_precision
    if not replicas and precision is None:
        return False
    from .compiling import stock_metrics

    losses = list(km.loss)
    if replicas:
        losses[0] = global_prob_loss()
        if config.train_dist_loss in ("mae", "mse"):
            losses[1] = global_dist_loss(config)
    if precision is not None:
        losses = [float32_loss(f) for f in losses]
    km.compile(km.optimizer, loss=losses, loss_weights=list(config.train_loss_weights), metrics=stock_metrics(config))
    return True


@contextlib.contextmanager
def multi_worker_fixes(keras_model, strategy, batch):
    """Let Keras 3 ``fit`` run under ``MultiWorkerMirroredStrategy`` (keras-team/keras#20585), for one ``train`` call.

    * ``Model._maybe_symbolic_build`` reduces a distributed input batch with
      ``strategy.reduce('MEAN', ...)``, which the collective strategy cannot do; here it is
      given ``batch`` (a local ``(x, y)`` batch, e.g. the validation batch) instead.
    * the train/test steps reduce the logged scalars with ``strategy.reduce('MEAN', v,
      axis=0)``, which fails on a scalar; here they are reduced with ``axis=None`` (the
      mean over all replicas of all workers, what Keras means to log).

    Other strategies pass through unchanged.
    """
    if strategy is None or not _is_multi_worker(strategy):
        yield
        return
    import keras
    from keras.src.backend.tensorflow import trainer as tf_trainer

    original_reduce = tf_trainer.reduce_per_replica
    original_build = keras_model._maybe_symbolic_build

    def reduce_per_replica(values, strategy, reduction="auto"):
        if reduction == "auto" and tf_trainer._collective_all_reduce_multi_worker(strategy):
            return keras.tree.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), values)
        return original_reduce(values, strategy, reduction=reduction)

    def symbolic_build(iterator=None, data_batch=None):
        return original_build(iterator=None, data_batch=batch)

    tf_trainer.reduce_per_replica = reduce_per_replica
    keras_model._maybe_symbolic_build = symbolic_build
    try:
        yield
    finally:
        tf_trainer.reduce_per_replica = original_reduce
        del keras_model._maybe_symbolic_build
