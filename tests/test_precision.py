"""Mixed precision: 16-bit computation, float32 outputs and losses, optimizers that cannot take it refused."""

import numpy as np
import pytest

pytest.importorskip("tensorflow")

import keras  # noqa: E402

from stardist_hier import HierConfig2D, HierStarDist2D  # noqa: E402
from stardist_hier.model.build import seed_everything  # noqa: E402
from stardist_hier.model.distribute import check_optimizer, check_precision, prepare_network  # noqa: E402

from test_targets import make_images  # noqa: E402

TINY = dict(n_rays=8, n_channel_in=3, grid=(2, 2), unet_n_depth=1, unet_n_filter_base=4, net_conv_after_unet=8,
            train_patch_size=(32, 32), train_batch_size=2, train_reduce_lr=None)


def model(**kw):
    seed_everything(0)
    return HierStarDist2D(HierConfig2D(hierarchy="default", **dict(TINY, **kw)), basedir=None)


def test_bfloat16_trains_with_float32_outputs_and_finite_losses():
    X, Y, C = make_images(3, size=48, classes=(1, 2), p_none=0)
    m = model(train_mixed_precision="mixed_bfloat16")
    hist = m.train(X, Y, classes=C, dataset="monusac", validation_data=(X, Y, C), epochs=1, steps_per_epoch=3,
                   seed=0, verbose=0)
    assert all(np.isfinite(v).all() for v in hist.history.values())
    km = m.keras_model
    outputs = ["prob", "dist", "prob_class"]
    assert km.output_names == outputs
    assert {km.get_layer(n).dtype_policy.name for n in outputs} == {"float32"}
    inner = [layer for layer in km.layers if layer.weights and layer.name not in outputs]
    assert inner and {layer.dtype_policy.name for layer in inner} == {"mixed_bfloat16"}
    assert all(w.dtype == "float32" for w in km.weights)  # float32 weights
    assert [o.dtype for o in km.predict(X[0][None], verbose=0)] == [np.float32] * 3
    assert type(km.optimizer).__name__ == "Adam"  # bfloat16 needs no loss scaling
    assert keras.config.dtype_policy().name == "float32"  # the global policy is left alone


def test_float16_losses_stay_finite_at_probabilities_0_and_1():
    m = model(train_mixed_precision="mixed_float16")
    prepare_network(m, None, "mixed_float16")
    m.prepare_for_training()
    km = m.keras_model
    assert type(km.optimizer).__name__ == "LossScaleOptimizer"
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
    assert [o.dtype for o in km.predict(x, verbose=0)] == [np.float32] * 3
    # targets with objects, background and ignored pixels; predictions saturated at exactly 0 and 1
    rng = np.random.default_rng(1)
    prob_t = (rng.random((2, 16, 16, 1)) < 0.5).astype(np.float32)
    prob_t[:, :2] = -1
    dist_t = np.concatenate([rng.uniform(0, 5, (2, 16, 16, 8)), prob_t.clip(0, 1)], -1).astype(np.float32)
    n_out = 13
    admitted = np.zeros((2, 16, 16, n_out), np.float32)
    admitted[..., 0] = 1 - prob_t[..., 0].clip(0, 1)
    admitted[..., 3] = prob_t[..., 0].clip(0, 1)
    groups = np.broadcast_to(np.arange(n_out, dtype=np.float32), (2, 16, 16, n_out))
    class_t = np.concatenate([admitted, groups], -1)
    class_p = np.zeros((2, 16, 16, n_out), np.float32)
    class_p[..., 5] = 1  # all mass on a leaf the label admits nowhere: log(0) without clipping
    preds = [(prob_t.clip(0, 1) == 0).astype(np.float32), np.zeros((2, 16, 16, 8), np.float32), class_p]
    for dtype in ("float32", "float16"):
        for fn, t, p in zip(km.loss, [prob_t, dist_t, class_t], preds):
            value = keras.ops.convert_to_numpy(fn(t, p.astype(dtype)))
            assert np.isfinite(value).all(), (fn, dtype)
    # and a training step in float16 gives finite losses
    logs = km.train_on_batch(x, [prob_t, dist_t, class_t], return_dict=True)
    assert all(np.isfinite(v) for v in logs.values())


class NotKeras:
    """An optimizer from another framework (e.g. tf.compat.v1 or tf_keras)."""


def test_optimizers_that_cannot_take_mixed_precision_are_refused():
    check_optimizer(NotKeras(), None)  # float32: not our business
    with pytest.raises(ValueError, match=r"mixed_bfloat16.*Keras 3 optimizer.*test_precision.NotKeras"):
        check_optimizer(NotKeras(), "mixed_bfloat16")
    fixed = keras.optimizers.Adam(1e-3, loss_scale_factor=128.0)
    with pytest.raises(ValueError, match=r"mixed_float16.*fixed loss_scale_factor=128"):
        check_optimizer(fixed, "mixed_float16")
    check_optimizer(fixed, "mixed_bfloat16")
    check_optimizer(keras.optimizers.SGD(), "mixed_float16")
    m = model(train_mixed_precision="mixed_float16")
    with pytest.raises(ValueError, match="fixed loss_scale_factor"):
        m.prepare_for_training(fixed)  # before anything is compiled
    assert not m._model_prepared
    with pytest.raises(ValueError, match=r"train_mixed_precision='float8': use one of"):
        check_precision("float8")
    ok, invalid = HierConfig2D(hierarchy="default", train_mixed_precision="float16").is_valid(return_invalid=True)
    assert not ok and invalid == ("train_mixed_precision",)


def test_rebuilt_network_keeps_weights_and_optimizer_state():
    """The one use of stock's private ``_build``: the rebuilt network is the same network."""
    X, Y, C = make_images(2, size=48, classes=(1, 2), p_none=0)
    m = model()
    m.train(X, Y, classes=C, dataset="monusac", validation_data=(X, Y, C), epochs=1, steps_per_epoch=2, seed=0,
            verbose=0)
    old = m.keras_model
    kinds, weights = [type(layer).__name__ for layer in old.layers], old.get_weights()
    moments = [v.numpy() for v in old.optimizer.variables]
    assert prepare_network(m, None, "mixed_bfloat16")
    new = m.keras_model
    # same layers (unnamed ones get new automatic names, as in any second model of a session)
    assert new is not old and [type(layer).__name__ for layer in new.layers] == kinds
    assert [new.get_layer(n).name for n in ("features", "features_class", "prob", "dist", "prob_class")]
    assert all(np.array_equal(a, b) for a, b in zip(new.get_weights(), weights))
    assert int(new.optimizer.iterations.numpy()) == 2
    assert all(np.array_equal(v.numpy(), w) for v, w in zip(new.optimizer.variables, moments))
    assert not prepare_network(m, None, "mixed_bfloat16")  # nothing to do the second time
