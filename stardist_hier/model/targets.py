"""Training targets for datasets whose labels sit at different levels of a class hierarchy.

:class:`HierStarDistData2D` is StarDist's own :class:`stardist.models.StarDistData2D`
(patch sampling, foreground sampling, augmenter, grid subsampling, negative-label ignore
regions, shape completion are all the stock code) with the class target replaced by the
packed hierarchical target described in :mod:`stardist_hier.model.losses`: per pixel the leaves
its label admits, per sample the leaf groups of its label set. Samples of different
datasets can share a batch.
"""

from __future__ import annotations

import threading
from numbers import Integral

import numpy as np
from scipy.ndimage import zoom
from stardist.models.model2d import StarDistData2D

from ..hierarchy import ClassHierarchy, LabelSet

__all__ = ["HierStarDistData2D", "resolve_label_sets", "check_instance_classes", "ClassTargetEncoder"]


def resolve_label_sets(hierarchy, dataset, n_images, what="dataset"):
    """Per-image :class:`LabelSet` list from one name/LabelSet or a sequence of them.

    Parameters
    ----------
    hierarchy : ClassHierarchy
    dataset : str, LabelSet, sequence of those, or None
        ``None`` is allowed only when the hierarchy has exactly one label set.
    n_images : int
    what : str
        Argument name used in error messages.
    """
    if dataset is None:
        if len(hierarchy.label_sets) == 1:
            dataset = next(iter(hierarchy.label_sets))
        else:
            raise ValueError(f"'{what}' is required: name the label set of these images, one of "
                             f"{sorted(hierarchy.label_sets)} (or give one name per image)")
    if isinstance(dataset, (str, LabelSet)):
        return [hierarchy.label_set(dataset)] * n_images
    dataset = list(dataset)
    if len(dataset) != n_images:
        raise ValueError(f"'{what}' has {len(dataset)} entries but there are {n_images} images")
    cache = {}
    return [cache.setdefault(d if isinstance(d, str) else d.name, hierarchy.label_set(d)) for d in dataset]


def check_instance_classes(y, classes, label_set, where):
    """Check that every instance of label image ``y`` has a valid class entry.

    ``classes`` follows stock StarDist: a dict ``{instance id: class id or None}``, a single
    class id for all instances, or ``None`` (every class unknown). Class ids are the
    dataset's own ids; 0 means background, ``None`` means unknown (no class loss).
    """
    if classes is None:
        return
    if isinstance(classes, Integral):
        if classes != 0:
            label_set.check_class_ids([classes], where)
        return
    if not isinstance(classes, dict):
        raise ValueError(f"{where}: classes must be a dict {{instance id: class id}}, an int or None, "
                         f"got {type(classes).__name__}")
    ids = np.unique(y)
    ids = ids[ids > 0]
    missing = [int(i) for i in ids if int(i) not in classes]
    if missing:
        more = f" (and {len(missing) - 10} more)" if len(missing) > 10 else ""
        raise ValueError(f"{where}: instance id(s) {missing[:10]}{more} of the mask have no entry in classes")
    values = [v for v in classes.values() if v is not None]
    bad_type = [v for v in values if not isinstance(v, Integral)]
    if bad_type:
        raise ValueError(f"{where}: class ids must be integers or None, got {bad_type[:5]}")
    if values:
        label_set.check_class_ids(values, where)


class ClassTargetEncoder:
    """Turns instance label images plus per-instance classes into packed class targets.

    Parameters
    ----------
    n_out : int
        Output channels, ``n_classes + 1``.
    """

    def __init__(self, n_out):
        self.n_out = int(n_out)
        self._tables = {}

    def _table(self, label_set):
        """Rows: 0..max_id = admitted leaves of each class id, last row = unknown class.

        The unknown-class row is stock StarDist's: -1 in every channel but background.
        """
        table = self._tables.get(label_set.name)
        if table is None:
            unknown = np.full((1, self.n_out), -1, np.float32)
            unknown[0, 0] = 0
            table = np.vstack([label_set.membership.astype(np.float32), unknown])
            self._tables[label_set.name] = table
        return table

    def encode(self, y, classes, label_set, neg_mask=None):
        """Packed target ``(H, W, 2 * n_out)`` of one (already subsampled) label image.

        Parameters
        ----------
        y : numpy.ndarray
            Integer instance labels (negative values are treated as background here; pass
            their mask as ``neg_mask``).
        classes : dict, int or None
            Classes as in :func:`check_instance_classes`.
        label_set : LabelSet
        neg_mask : numpy.ndarray of bool, optional
            Pixels whose class loss is switched off.
        """
        table = self._table(label_set)
        ignore_row = table.shape[0] - 1
        y = np.maximum(y, 0)
        n_lut = int(y.max()) + 1
        if isinstance(classes, dict):
            lut = np.full(n_lut, ignore_row, np.intp)
            lut[0] = 0
            for inst, cls in classes.items():
                if 0 < inst < n_lut:
                    lut[inst] = ignore_row if cls is None else cls
        else:
            value = ignore_row if classes is None else int(classes)
            lut = np.full(n_lut, value, np.intp)
            lut[0] = 0
        out = np.empty(y.shape + (2 * self.n_out,), np.float32)
        out[..., : self.n_out] = table[lut[y]]
        if neg_mask is not None:
            out[neg_mask, : self.n_out] = -1
        out[..., self.n_out:] = label_set.leaf_group.astype(np.float32)
        return out


class HierStarDistData2D(StarDistData2D):
    """Stock StarDist training data with hierarchical class targets.

    Takes the arguments of :class:`stardist.models.StarDistData2D` plus:

    Parameters
    ----------
    hierarchy : ClassHierarchy
        The class hierarchy of the model (``n_classes`` = its number of leaves).
    label_sets : str, LabelSet or sequence
        Label set of all images, or one per image (a batch may then mix datasets).
    classes : sequence
        Per image: dict ``{instance id: dataset class id or None}``, a single class id, or
        ``None`` (unknown class for every object).

    Notes
    -----
    The stock ``__getitem__`` runs unchanged (built with ``n_classes=None`` so it does not
    make its own one-hot class target); the label patches it samples are captured as they
    leave the augmenter and encoded here, with the same subsampling (``zoom``, order 0) and
    the same negative-label mask as stock StarDist uses for its class target.
    """

    def __init__(self, X, Y, batch_size, n_rays, length, hierarchy, label_sets, classes=None,
                 patch_size=(256, 256), b=32, grid=(1, 1), shape_completion=False, augmenter=None,
                 foreground_prob=0, n_classes=None, **kwargs):
        if not isinstance(hierarchy, ClassHierarchy):
            raise TypeError("hierarchy must be a ClassHierarchy")
        if n_classes is not None and n_classes != hierarchy.n_classes:
            raise ValueError(f"n_classes={n_classes} does not match the hierarchy's {hierarchy.n_classes} leaves")
        self.hierarchy = hierarchy
        self.label_sets = resolve_label_sets(hierarchy, label_sets, len(X), what="label_sets")
        self.classes = (None,) * len(X) if classes is None else tuple(classes)
        if len(self.classes) != len(X):
            raise ValueError(f"classes has {len(self.classes)} entries but there are {len(X)} images")
        for k, (y, c, ls) in enumerate(zip(Y, self.classes, self.label_sets)):
            check_instance_classes(y, c, ls, where=f"image {k} (label set '{ls.name}')")
        self.encoder = ClassTargetEncoder(hierarchy.n_classes + 1)
        self._outside_cache = {}
        self._captured = threading.local()
        user_augmenter = augmenter if augmenter is not None else (lambda x, y: (x, y))

        def recording_augmenter(x, y):
            x, y = user_augmenter(x, y)
            self._captured.labels.append(y)
            return x, y

        super().__init__(X, Y, batch_size=batch_size, n_rays=n_rays, length=length,
                         n_classes=None, classes=None, patch_size=patch_size, b=b, grid=grid,
                         shape_completion=shape_completion, augmenter=recording_augmenter,
                         foreground_prob=foreground_prob, **kwargs)
        # the stock constructor resets ``classes``; ``n_classes`` must stay None there so that
        # the stock ``__getitem__`` skips its own one-hot class target
        self.classes = (None,) * len(X) if classes is None else tuple(classes)
        self.n_leaf_classes = hierarchy.n_classes

    def _outside_mask(self, shape):
        """Grid cells where stock StarDist's class target is all zeros (so no class loss).

        Stock StarDist subsamples its one-hot class map with ``zoom(..., order=0)`` on the
        whole ``(batch, y, x, channel)`` array; that call maps the last row/column of some
        patch sizes just outside the patch and fills them with zeros. Those cells are
        marked ignored here, which gives the same (zero) class loss.
        """
        key = tuple(shape)
        if key not in self._outside_cache:
            ones = np.ones((1,) + key + (1,), np.float32)
            self._outside_cache[key] = zoom(ones, (1,) + tuple(1 / g for g in self.grid) + (1,), order=0)[0, ..., 0] == 0
        return self._outside_cache[key]

    def class_target(self, labels, idx):
        """Packed class targets ``(B, H', W', 2 * n_out)`` for the label patches of a batch."""
        subsample = tuple(1 / g for g in self.grid)
        same_grid = all(g == 1 for g in self.grid)
        out = []
        for y, k in zip(labels, idx):
            y_b = y[self.b]
            neg = y_b[self.ss_grid[1:3]] < 0
            if same_grid:
                y_sub = y_b
            else:
                y_sub = zoom(y_b, subsample, order=0)
                neg = neg | self._outside_mask(y_b.shape)
            out.append(self.encoder.encode(y_sub, self.classes[k], self.label_sets[k],
                                           neg_mask=neg if neg.any() else None))
        return np.stack(out)

    def __getitem__(self, i):
        self._captured.labels = []
        inputs, (prob, dist_and_mask) = super().__getitem__(i)
        labels, self._captured.labels = self._captured.labels, []
        prob_class = self.class_target(labels, self.batch(i))
        return inputs, (prob, dist_and_mask, prob_class)
