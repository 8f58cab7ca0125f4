"""The parallel, reproducible input pipeline: workers, streams, raw uint8 images normalised per patch."""

import os

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from stardist.models.model2d import StarDistData2D  # noqa: E402

from stardist_hier import HierConfig2D, HierStarDist2D  # noqa: E402
from stardist_hier.hierarchy import ClassHierarchy  # noqa: E402
from stardist_hier.model.build import derive_seed, seed_everything  # noqa: E402
from stardist_hier.model.inputs import UnnormalizedInputError  # noqa: E402
from stardist_hier.model.pipeline import DataWorkerError, ParallelBatches, worker_seed  # noqa: E402
from stardist_hier.model.sampling import PatchData2D, RawImages  # noqa: E402
from stardist_hier.model.sampling import derive_seed as sampling_derive_seed  # noqa: E402
from stardist_hier.model.targets import HierStarDistData2D  # noqa: E402
from stardist_hier.patches import normalize_image  # noqa: E402

from test_targets import make_images  # noqa: E402

H = ClassHierarchy.default()
TINY = dict(n_rays=8, n_channel_in=3, grid=(2, 2), unet_n_depth=1, unet_n_filter_base=4, net_conv_after_unet=8,
            train_patch_size=(32, 32), train_batch_size=2, train_reduce_lr=None)


def raw_images(n, size=48, seed=0):
    """uint8 RGB images with structure (so percentiles differ per channel and image) and their masks."""
    X, Y, C = make_images(n, size=size, seed=seed, classes=(1, 2), p_none=0)
    rng = np.random.default_rng(seed)
    Xu = [np.clip(x * rng.uniform(60, 120, 3) + rng.uniform(20, 80, 3), 0, 255).astype(np.uint8) for x in X]
    return Xu, Y, C


class Noise:
    """An augmenter with its own stream (reseeded by the pipeline)."""

    def reseed(self, seed):
        self.rng = np.random.default_rng(seed)

    def __call__(self, x, y):
        return x + self.rng.normal(0, 0.1, x.shape).astype(np.float32), y


def hier_data(X, Y, C, length=8, **kw):
    return HierStarDistData2D(X, Y, hierarchy=H, label_sets="monusac", classes=C, batch_size=2, n_rays=8,
                              length=length, patch_size=(32, 32), grid=(2, 2), **kw)


def flat(batch):
    (x,), ys = batch
    return [x] + list(ys)


def same(a, b):
    return all(np.array_equal(u, v) for u, v in zip(flat(a), flat(b)))


def collect(data, workers, seed, steps, **kw):
    with ParallelBatches(data, workers, seed, steps, timeout_s=120, **kw) as batches:
        return list(batches)


def test_seeds_are_one_rule():
    for parts in [(0,), (3, 1, 4), (2**40 + 5, 7)]:
        assert sampling_derive_seed(*parts) == derive_seed(*parts)
    # one stream per (worker, epoch): no two workers, and no two epochs of a worker, share a seed
    seeds = {worker_seed(11, w, e) for w in range(8) for e in range(50)}
    assert len(seeds) == 8 * 50


def test_workers_give_the_same_batches_for_a_seed_and_distinct_streams():
    # every image the same: if two workers (or two epochs of one) drew the same stream,
    # their batches would be identical
    X, Y, C = make_images(1, size=48, classes=(1, 2), p_none=0)
    X, Y, C = X * 4, Y * 4, C * 4
    runs = [collect(hier_data(X, Y, C, augmenter=Noise()), 2, seed=5, steps=2) for _ in range(2)]
    assert len(runs[0]) == 8 and all(same(a, b) for a, b in zip(*runs))  # reproducible
    b = runs[0]
    assert not same(b[0], b[1])  # workers 0 and 1, epoch 0
    assert not same(b[0], b[2])  # worker 0, epochs 0 and 1
    assert not same(b[1], b[3])  # worker 1, epochs 0 and 1
    other = collect(hier_data(X, Y, C, augmenter=Noise()), 2, seed=6, steps=2)
    assert not same(other[0], b[0])


def test_a_resumed_run_gets_the_batches_of_an_uninterrupted_one():
    X, Y, C = make_images(5, size=48, classes=(1, 2), p_none=0)
    full = collect(hier_data(X, Y, C, length=9, augmenter=Noise()), 2, seed=1, steps=3)
    resumed = collect(hier_data(X, Y, C, length=9, augmenter=Noise()), 2, seed=1, steps=3, start=3)
    assert len(resumed) == 6 and all(same(a, b) for a, b in zip(resumed, full[3:]))
    # the seeded order visits every image once per pass, as stock's does
    data = hier_data(X, Y, C, length=9)
    data.seed_batch_order(3)
    idx = np.concatenate([data.batch(i) for i in range(5)])
    assert sorted(idx[:5]) == list(range(5)) and sorted(idx[5:10]) == list(range(5))


def test_workers_run_after_the_parent_used_openmp():
    """GNU OpenMP hangs in a forked child once the parent ran a parallel region (star distances)."""
    X, Y, C = make_images(3, size=48, classes=(1, 2), p_none=0)
    data = hier_data(X, Y, C, length=4)
    data[0]  # StarDist's star_dist (OpenMP) in this process
    batches = collect(data, 2, seed=0, steps=4)
    assert len(batches) == 4


def test_a_worker_error_names_the_batch_and_carries_its_traceback():
    X, Y, C = make_images(3, size=48, classes=(1, 2), p_none=0)

    def broken(x, y):
        raise ZeroDivisionError("augmenter bug")

    with pytest.raises(DataWorkerError, match=r"(?s)worker 0 failed on batch 0: ZeroDivisionError: augmenter bug.*"
                                              r"worker traceback.*broken"):
        collect(hier_data(X, Y, C, augmenter=broken), 2, seed=0, steps=4)


def test_raw_images_are_normalised_per_patch_as_normalize_image_normalises_the_image():
    Xu, Y, C = raw_images(4)
    Xf = [normalize_image(x) for x in Xu]
    raw, ref = hier_data(Xu, Y, C, normalize=True), hier_data(Xf, Y, C)
    for i in range(4):
        np.random.seed(i)
        a = raw[i]
        np.random.seed(i)
        b = ref[i]
        assert same(a, b), i  # bit for bit
    # the images are kept as given (uint8, not copied) and each image's percentiles computed once
    assert isinstance(raw.X, RawImages) and all(x is u for x, u in zip(raw.X.images, Xu))
    assert raw.X.nbytes == sum(x.nbytes for x in Xu) and len(raw.X._percentiles) == 4
    # independent numpy reference of the transform on a crop
    k, crop = 1, (slice(5, 37), slice(9, 41))
    lo = np.percentile(Xu[k], 1.0, axis=(0, 1))
    hi = np.percentile(Xu[k], 99.8, axis=(0, 1))
    expected = (Xu[k][crop].astype(np.float32) - lo.astype(np.float32)) / (hi - lo + 1e-20).astype(np.float32)
    np.testing.assert_allclose(raw.X.normalized(k, Xu[k][crop]), expected, rtol=1e-6, atol=1e-6)


def test_without_classes_the_data_is_stock():
    X, Y, _ = make_images(4, size=48)
    kw = dict(batch_size=2, n_rays=8, length=3, patch_size=(32, 32), grid=(2, 2))
    ours, stock = PatchData2D(X, Y, **kw), StarDistData2D(X, Y, **kw)
    for i in range(3):
        np.random.seed(10 + i)
        a = ours[i]
        np.random.seed(10 + i)
        b = stock[i]
        assert all(np.array_equal(u, v) for u, v in zip(a[0] + a[1], b[0] + b[1]))


def small_model():
    seed_everything(0)
    return HierStarDist2D(HierConfig2D(hierarchy="default", **TINY), basedir=None)


def test_train_builds_batches_in_worker_processes(tmp_path):
    """Under Keras 3, stock's workers= had no effect (iter(generator)); here N processes build the batches."""
    Xu, Y, C = raw_images(4)
    log = tmp_path / "pids.txt"

    def record_pid(x, y):
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        return x, y

    model = small_model()
    hist = model.train(Xu, Y, classes=C, dataset="monusac", validation_data=(Xu[:2], Y[:2], C[:2]), epochs=1,
                       steps_per_epoch=3, seed=2, verbose=0, workers=2, normalize=True, augmenter=record_pid)
    assert np.isfinite(hist.history["loss"]).all()
    pids = {int(p) for p in log.read_text().split()}
    # every training batch was built in one of two other processes (validation has no augmenter)
    assert len(pids) == 2 and os.getpid() not in pids


def test_raw_images_need_to_be_declared():
    Xu, Y, C = raw_images(2)
    model = small_model()
    kw = dict(classes=C, dataset="monusac", validation_data=(Xu, Y, C), epochs=1, steps_per_epoch=1, verbose=0)
    with pytest.raises(UnnormalizedInputError, match=r"image 0 \(dtype uint8\).*normalize=True"):
        model.train(Xu, Y, **kw)
    with pytest.raises(ValueError, match="normalize='yes'"):
        model.train(Xu, Y, normalize="yes", **kw)
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match=rf"workers={bad!r}: .* integer >= 1"):
            model.train(Xu, Y, workers=bad, normalize=True, **kw)
    assert not model._model_prepared  # refused before anything was built or compiled
