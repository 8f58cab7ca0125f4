"""Drawing training patches: raw images normalised per patch, captured samples, a seeded batch order.

:class:`PatchData2D` is stock :class:`stardist.models.model2d.StarDistData2D` (patch
sampling, foreground sampling, augmenter, grid subsampling, ignore regions, shape completion
are the stock code, run unchanged) with three additions that the training loop
(:mod:`.training`) and the parallel pipeline (:mod:`.pipeline`) build on:

* **raw images, normalised as they are drawn** (``normalize=True``): the images are kept as
  given (``uint8`` from ``patches.load_split(..., normalize=False)``: a quarter of the memory
  of float32), and each drawn patch is normalised with the percentiles of its *whole* image,
  computed once per image and cached: exactly :func:`stardist_hier.patches.normalize_image`
  of the image, cropped (tested bit for bit). The normalised patch is what the augmenter
  sees, as before. Stock StarDist would convert every image to float32 when the data is
  built (``StarDistDataBase`` casts lists of arrays); the images are handed to it inside
  :class:`RawImages`, a sequence it does not cast.
* **captured samples**: every sample the stock ``__getitem__`` passes through the augmenter
  is captured, in order, and checked against the batch (else :class:`RuntimeError`: stock's
  data pipeline changed); :class:`~stardist_hier.model.targets.HierStarDistData2D` encodes
  its class targets from them.
* **a seeded batch order** (:meth:`PatchData2D.seed_batch_order`): stock draws the order of
  the images of each pass over the data (csbdeep's ``RollingSequence``) from numpy's global
  random state when a batch first needs it; seeded, the order of pass ``p`` is a permutation
  drawn from its own seed, the same in every process and whatever batches were built before,
  so batch ``i`` holds the same images in any worker.

Without ``normalize`` and without a seeded order, batches are exactly stock's (tested).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np
from stardist.models.model2d import StarDistData2D

from ..patches import NORMALIZE_PERCENTILES

__all__ = ["PatchData2D", "RawImages", "ORDER_STREAM", "WORKER_STREAM", "derive_seed"]

#: first part of the seeds of the batch order (:meth:`PatchData2D.seed_batch_order`)
ORDER_STREAM = 0x0DE5
#: first part of the seeds of the worker streams (:func:`stardist_hier.model.pipeline.worker_seed`)
WORKER_STREAM = 0x5EED


def derive_seed(*parts):
    """A seed in ``[0, 2**31 - 1)`` from integers: :func:`stardist_hier.model.build.derive_seed`'s rule.

    Repeated here (``build`` imports the model, which imports this module); a test checks
    that both give the same seeds.
    """
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1)[0] % (2**31 - 1))


class RawImages(Sequence):
    """Images kept as given (e.g. uint8), normalised per patch with cached whole-image percentiles.

    Parameters
    ----------
    images : sequence of numpy.ndarray
        ``(H, W)`` or ``(H, W, C)`` images of any dtype, not copied.
    what : str
        Name of the images in error messages.

    Notes
    -----
    :meth:`normalized` applies :func:`stardist_hier.patches.normalize_image`'s transform
    (per channel, the 1st and 99.8th percentiles of the whole image map to 0 and 1,
    ``csbdeep.utils.normalize_mi_ma`` in float32) to a patch of image ``k``; the percentiles
    are computed on first use and cached (per process). Indexing records the indices asked
    for while :meth:`start_recording` is active (per thread), so that a drawn patch can be
    matched to its image.
    """

    def __init__(self, images, what="training data"):
        self.images = list(images)
        if not self.images:
            raise ValueError(f"{what}: no images")
        first = np.asarray(self.images[0])
        for k, x in enumerate(self.images):
            if not isinstance(x, np.ndarray):
                raise ValueError(f"{what}: image {k} is a {type(x).__name__}, not a numpy array")
            if x.ndim != first.ndim or (x.ndim == 3 and x.shape[-1] != first.shape[-1]):
                raise ValueError(f"{what}: image {k} has shape {x.shape}, image 0 has {first.shape}: all images "
                                 f"need the same number of dimensions and channels")
        self._percentiles = {}
        self._local = threading.local()

    def __len__(self):
        return len(self.images)

    def __getitem__(self, k):
        asked = getattr(self._local, "asked", None)
        if asked is not None:
            asked.append(int(k))
        return self.images[k]

    def start_recording(self):
        """Record the indices asked for from now on (this thread); returns the list they go into."""
        self._local.asked = []
        return self._local.asked

    def stop_recording(self):
        self._local.asked = None

    @property
    def nbytes(self):
        """Bytes held by the images."""
        return int(sum(x.nbytes for x in self.images))

    def percentiles(self, k):
        """``(mi, ma)`` of image ``k``: ``np.percentile`` at :data:`NORMALIZE_PERCENTILES` over axes 0, 1 (cached)."""
        cached = self._percentiles.get(k)
        if cached is None:
            x = self.images[k]
            lo, hi = NORMALIZE_PERCENTILES
            # exactly csbdeep.utils.normalize(x, lo, hi, axis=(0, 1)), which normalize_image calls
            cached = (np.percentile(x, lo, axis=(0, 1), keepdims=True),
                      np.percentile(x, hi, axis=(0, 1), keepdims=True))
            self._percentiles[k] = cached
        return cached

    def normalized(self, k, patch):
        """A patch of image ``k`` normalised as :func:`~stardist_hier.patches.normalize_image` normalises the image."""
        from csbdeep.utils import normalize_mi_ma

        mi, ma = self.percentiles(k)
        return normalize_mi_ma(patch, mi, ma, clip=False, eps=1e-20, dtype=np.float32)


class PatchData2D(StarDistData2D):
    """Stock StarDist training data, with raw images normalised per patch and captured samples.

    Takes the arguments of :class:`stardist.models.StarDistData2D` plus:

    Parameters
    ----------
    normalize : bool
        ``True``: ``X`` are raw images (e.g. ``uint8``), kept as given and normalised per
        drawn patch (module docstring); ``False``: ``X`` are used as stock StarDist uses them
        (cast to float32).

    Attributes
    ----------
    user_augmenter : callable or None
        The augmenter given; ``augmenter`` is the wrapper that normalises and captures.
    """

    def __init__(self, X, Y, batch_size, n_rays, length, augmenter=None, normalize=False, patch_size=(256, 256),
                 **kwargs):
        self.normalize = bool(normalize)
        self.user_augmenter = augmenter
        self.order_seed = None
        self._captured = threading.local()
        if self.normalize:
            X = X if isinstance(X, RawImages) else RawImages(X)
            _check_shapes(X.images, Y, patch_size)
        super().__init__(X, Y, batch_size=batch_size, n_rays=n_rays, length=length, patch_size=patch_size,
                         augmenter=self._draw_augmenter, **kwargs)

    def _draw_augmenter(self, x, y):
        state = self._captured
        if self.normalize:
            x = self.X.normalized(state.asked[len(state.samples)], x)
        if self.user_augmenter is not None:
            x, y = self.user_augmenter(x, y)
        state.samples.append((x, y))
        return x, y

    # -- randomness -------------------------------------------------------------------------

    def reseed(self, seed):
        """Reseed the randomness of batch building, e.g. in each worker process at each epoch.

        Stock StarDist draws patches from numpy's global random state, which is seeded here;
        an augmenter with a ``reseed(seed)`` method (such as
        :class:`stardist_hier.augment.ClassAwareAugmenter`) is reseeded too. Nothing else is
        random: the caches kept are deterministic.
        """
        np.random.seed(seed)
        reseed = getattr(self.user_augmenter, "reseed", None)
        if callable(reseed):
            reseed(seed)

    def seed_batch_order(self, seed):
        """Draw the image order of pass ``p`` over the data from ``derive_seed(ORDER_STREAM, seed, p)``.

        After this, :meth:`batch` no longer touches numpy's global random state, and batch
        ``i`` holds the same images in every process (``None`` restores stock's order).
        """
        self.order_seed = None if seed is None else int(seed)
        self._orders = {}

    def _order(self, loop):
        order = self._orders.get(loop)
        if order is None:
            rng = np.random.default_rng(derive_seed(ORDER_STREAM, self.order_seed, loop))
            order = self._orders.setdefault(loop, rng.permutation(self.data_size))
        return order

    def batch(self, i):
        """Indices of the images of batch ``i`` (stock ``RollingSequence.batch``, or the seeded order)."""
        if self.order_seed is None:
            return super().batch(i)
        pos = i * self.batch_size
        loop, start = divmod(pos, self.data_size)
        index = self._order(loop)
        while start + self.batch_size > len(index):
            loop += 1
            index = np.concatenate((index, self._order(loop)))
        return index[start:start + self.batch_size]

    # -- batches ----------------------------------------------------------------------------

    def draw(self, i):
        """Stock batch ``i`` and the ``(x, y)`` samples that left the augmenter, checked against it.

        Returns
        -------
        (tuple, tuple, list of (numpy.ndarray, numpy.ndarray), numpy.ndarray)
            ``inputs``, ``outputs`` as stock's ``__getitem__`` returns them, the samples, and
            the image indices of the batch.

        Raises
        ------
        RuntimeError
            The samples are not the batch's images, in order (stardist's data pipeline changed).
        """
        state = self._captured
        state.samples = []
        state.asked = self.X.start_recording() if self.normalize else None
        try:
            inputs, outputs = super().__getitem__(i)
            samples, asked = state.samples, state.asked
        finally:
            state.samples, state.asked = [], None
            if self.normalize:
                self.X.stop_recording()
        idx = self.batch(i)
        images = inputs[0]
        same = len(samples) == len(idx) == len(images) and all(
            np.array_equal(np.asarray(x).reshape(img.shape), img, equal_nan=True)
            for (x, _), img in zip(samples, images))
        if self.normalize and list(asked) != [int(k) for k in idx]:
            same = False
        if not same:
            raise RuntimeError(f"batch {i}: stock StarDistData2D.__getitem__ passed {len(samples)} sample(s) through "
                               f"the augmenter for a batch of {len(idx)}, or not in the batch's order, so the "
                               f"samples cannot be matched to their images (stardist's data pipeline changed)")
        return inputs, outputs, samples, idx

    def __getitem__(self, i):
        inputs, outputs, _, _ = self.draw(i)
        return inputs, outputs


def _check_shapes(X, Y, patch_size):
    """Stock StarDistDataBase's checks, which it skips for a sequence that is not a list."""
    if len(X) != len(Y):
        raise ValueError(f"{len(X)} images but {len(Y)} masks")
    nd = len(patch_size)
    for k, (x, y) in enumerate(zip(X, Y)):
        if x.shape[:nd] != np.shape(y):
            raise ValueError(f"image {k} has shape {x.shape} but its mask has shape {np.shape(y)}")
        if any(s < p for s, p in zip(x.shape[:nd], patch_size)):
            raise ValueError(f"image {k} of shape {x.shape[:nd]} is smaller than the patch size {tuple(patch_size)}")
