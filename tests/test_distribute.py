"""Several devices and machines: MirroredStrategy on two logical CPUs, MultiWorkerMirroredStrategy on loopback."""

import inspect
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from stardist_hier import HierConfig2D, HierStarDist2D  # noqa: E402
from stardist_hier.model.build import seed_everything  # noqa: E402
from stardist_hier.model.distribute import (check_batch_size, global_dist_loss, global_prob_loss, is_chief,  # noqa: E402
                                            resolve_strategy, tf_config)

from test_targets import make_images  # noqa: E402

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
MODEL = dict(n_rays=8, n_channel_in=3, grid=(2, 2), unet_n_depth=1, unet_n_filter_base=4, net_conv_after_unet=8,
             train_patch_size=(32, 32), train_batch_size=4, train_reduce_lr=None)

#: one training run per strategy, in a fresh process (logical devices must be set before TensorFlow starts)
COMMON = """
import json, os, sys, time
sys.path.insert(0, {tests!r})
os.environ["CUDA_VISIBLE_DEVICES"] = ""
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
"""
RUN = """
import numpy as np
from test_targets import make_images
from stardist_hier import HierConfig2D, HierStarDist2D
from stardist_hier.model.build import seed_everything

def run(strategy=None, **config):
    X, Y, C = make_images(4, size=32, n_obj=4, classes=(1, 2), p_none=0.2)  # ignore regions, unknown classes
    seed_everything(0)
    m = HierStarDist2D(HierConfig2D(hierarchy="default", **dict({model!r}, **config)), basedir=None)
    h = m.train(X, Y, classes=C, dataset="monusac", validation_data=(X, Y, C), epochs=1, steps_per_epoch=2,
                seed=1, verbose=0, strategy=strategy)
    return dict(history={{k: [float(v) for v in vs] for k, vs in h.history.items()}},
                weights=[w.tolist() for w in m.keras_model.get_weights()],
                replicas=int(m.keras_model.distribute_strategy.num_replicas_in_sync))
"""
MIRRORED = COMMON + """
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
""" + RUN + """
out = dict(single=run(), mirrored=run(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])))
print("RESULT " + json.dumps(out))
"""
WORKER = COMMON + """
index, ports, done = int(sys.argv[1]), sys.argv[2].split(","), sys.argv[3]
os.environ["TF_CONFIG"] = json.dumps({{"cluster": {{"worker": [f"localhost:{{p}}" for p in ports]}},
                                      "task": {{"type": "worker", "index": index}}}})
from stardist_hier.model.distribute import is_chief, multi_worker_strategy
multi_worker_strategy()  # first, before TensorFlow runs anything
""" + RUN + """
out = dict(multi=run(train_distribute="multi_worker"), chief=is_chief())
if index == 0:
    out["single"] = run(strategy=None)  # the reference, on one device
    open(done, "w").close()
else:  # keep sending heartbeats to the chief until it is done
    t = time.time()
    while not os.path.exists(done) and time.time() - t < 300:
        time.sleep(0.5)
print("RESULT " + json.dumps(out))
"""


def _script(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text.format(tests=str(TESTS), model=MODEL))
    return path


def _env():
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("TF_CONFIG", None)
    return env


def _result(out, err, what):
    lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
    assert lines, f"{what} printed no result:\n{err[-3000:]}"
    return json.loads(lines[-1][len("RESULT "):])


def _assert_same_step(a, b):
    """The losses of the steps, and the weights after them, of two runs on the same batches."""
    for key in ("loss", "prob_loss", "dist_loss", "prob_class_loss", "val_loss"):
        np.testing.assert_allclose(b["history"][key], a["history"][key], rtol=2e-5, err_msg=key)
    for wa, wb in zip(a["weights"], b["weights"]):
        np.testing.assert_allclose(np.asarray(wb), np.asarray(wa), rtol=1e-4, atol=1e-6)


def test_mirrored_on_two_devices_gives_the_losses_of_one(tmp_path):
    script = _script(tmp_path, "mirrored.py", MIRRORED)
    p = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=400, env=_env(),
                       cwd=tmp_path)
    r = _result(p.stdout, p.stderr, "the mirrored run")
    assert (r["single"]["replicas"], r["mirrored"]["replicas"]) == (1, 2)
    _assert_same_step(r["single"], r["mirrored"])


def _loopback_ports(n):
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("localhost", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _no_loopback():
    if os.environ.get("STARDIST_HIER_SKIP_MULTIWORKER"):
        return "STARDIST_HIER_SKIP_MULTIWORKER is set"
    try:
        _loopback_ports(1)
    except OSError as e:
        return f"no loopback sockets here ({e})"
    return ""


@pytest.mark.skipif(bool(_no_loopback()), reason=_no_loopback() or "loopback available")
def test_two_workers_on_loopback_train_as_one_device(tmp_path):
    """``MultiWorkerMirroredStrategy`` from ``TF_CONFIG``: two processes, a global batch split between them."""
    script = _script(tmp_path, "worker.py", WORKER)
    ports = ",".join(map(str, _loopback_ports(2)))
    done = str(tmp_path / "done")
    procs = [subprocess.Popen([sys.executable, str(script), str(i), ports, done], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=_env(), cwd=tmp_path) for i in range(2)]
    results = []
    deadline = time.time() + 500
    try:
        for i, p in enumerate(procs):
            out, err = p.communicate(timeout=max(deadline - time.time(), 1))
            results.append(_result(out, err, f"worker {i}"))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    w0, w1 = results
    assert (w0["chief"], w1["chief"]) == (True, False)
    assert w0["multi"]["replicas"] == w1["multi"]["replicas"] == 2
    _assert_same_step(w0["multi"], w1["multi"])  # the workers agree ...
    _assert_same_step(w0["single"], w0["multi"])  # ... and train as one device on the same batches


def test_keras_internals_of_the_multi_worker_fixes_are_there():
    """:func:`multi_worker_fixes` wraps two Keras internals; a Keras that changes them fails here, loudly."""
    import keras
    from keras.src.backend.tensorflow import trainer as tf_trainer

    assert list(inspect.signature(tf_trainer.reduce_per_replica).parameters) == ["values", "strategy", "reduction"]
    assert callable(tf_trainer._collective_all_reduce_multi_worker)
    build = inspect.signature(keras.Model._maybe_symbolic_build)
    assert list(build.parameters) == ["self", "iterator", "data_batch"]


def test_a_strategy_without_devices_and_bad_settings_are_refused_before_training(monkeypatch):
    X, Y, C = make_images(4, size=32, n_obj=4, classes=(1, 2), p_none=0)
    seed_everything(0)
    m = HierStarDist2D(HierConfig2D(hierarchy="default", train_distribute="mirrored", **MODEL), basedir=None)
    kw = dict(classes=C, dataset="monusac", validation_data=(X, Y, C), epochs=1, steps_per_epoch=1, verbose=0)
    with pytest.raises(ValueError, match=r"train_distribute='mirrored' trains on every GPU .* sees none"):
        m.train(X, Y, **kw)  # the tests hide the GPUs (CUDA_VISIBLE_DEVICES='')
    with pytest.raises(ValueError, match=r"strategy='bogus': use one of \['mirrored', 'multi_worker'\]"):
        m.train(X, Y, strategy="bogus", **kw)
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match=r"'multi_worker' needs the TF_CONFIG environment variable"):
        m.train(X, Y, strategy="multi_worker", **kw)
    assert not m._model_prepared

    class TwoReplicas:
        num_replicas_in_sync = 2

    check_batch_size(4, TwoReplicas())
    with pytest.raises(ValueError, match=r"train_batch_size=5 cannot be split equally between the 2 replicas"):
        check_batch_size(5, TwoReplicas())
    assert resolve_strategy(None) is None
    ok, invalid = HierConfig2D(n_classes=2, train_distribute="gpus").is_valid(return_invalid=True)
    assert not ok and invalid == ("train_distribute",)


def test_tf_config_is_checked():
    worker = {"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}}
    assert tf_config({}) is None and is_chief({})
    assert tf_config({"TF_CONFIG": json.dumps(worker)})["task"]["index"] == 1
    assert not is_chief({"TF_CONFIG": json.dumps(worker)})
    assert is_chief({"TF_CONFIG": json.dumps(dict(worker, task={"type": "worker", "index": 0}))})
    with_chief = {"cluster": {"chief": ["c:0"], "worker": ["a:1"]}, "task": {"type": "worker", "index": 0}}
    assert not is_chief({"TF_CONFIG": json.dumps(with_chief)})
    for bad, msg in [("{not json", "not valid JSON"), (json.dumps({"cluster": {}}), "needs 'cluster'"),
                     (json.dumps({"cluster": {"worker": ["a:1"]}}), "needs 'task'"),
                     (json.dumps(dict(worker, task={"type": "worker", "index": 2})), "index 2 is outside")]:
        with pytest.raises(ValueError, match=msg):
            tf_config({"TF_CONFIG": bad})


def test_batch_wide_losses_equal_stock_losses_on_one_device():
    """:func:`global_prob_loss` and :func:`global_dist_loss` against numpy (one device: no replicas to average)."""
    from keras import ops

    rng = np.random.default_rng(0)
    prob_t = (rng.random((3, 8, 8, 1)) < 0.4).astype(np.float32)
    prob_t[0, :3] = -1  # ignored pixels
    prob_p = rng.uniform(0.01, 0.99, prob_t.shape).astype(np.float32)
    m = prob_t >= 0
    t, p = prob_t[m], prob_p[m]
    eps = 1e-7
    pc = np.clip(p, eps, 1 - eps)
    expected = np.mean(-(t * np.log(pc) + (1 - t) * np.log(1 - pc)))
    got = ops.convert_to_numpy(global_prob_loss()(prob_t, prob_p))
    assert got.shape == (1,)  # not a scalar: Keras divides it between replicas
    np.testing.assert_allclose(got[0], expected, rtol=1e-5)

    class Conf:
        n_rays, train_background_reg = 4, 1e-3

    dist = rng.uniform(0, 5, (3, 8, 8, 4)).astype(np.float32)
    mask = (rng.random((3, 8, 8, 1)) < 0.5).astype(np.float32)
    pred = rng.uniform(0, 5, dist.shape).astype(np.float32)
    for name, penalty in (("mae", np.abs), ("mse", np.square)):
        Conf.train_dist_loss = name
        got = ops.convert_to_numpy(global_dist_loss(Conf)(np.concatenate([dist, mask], -1), pred))
        expected = (np.mean(mask * penalty(dist - pred), -1) / (mask.mean() + eps)
                    + 1e-3 * np.mean((1 - mask) * np.abs(pred), -1))
        np.testing.assert_allclose(got, expected, rtol=1e-5)
