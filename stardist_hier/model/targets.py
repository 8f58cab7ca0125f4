"""Training targets for datasets whose labels sit at different levels of a class hierarchy.

:class:`HierStarDistData2D` is StarDist's own :class:`stardist.models.StarDistData2D`
(patch sampling, foreground sampling, augmenter, grid subsampling, negative-label ignore
regions, shape completion are all the stock code) with the class target replaced by the
packed hierarchical target described in :mod:`stardist_hier.model.losses`: per pixel the leaves
its label admits, per sample the leaf groups of its label set. Samples of different
datasets can share a batch.
"""

from __future__ import annotations

from numbers import Integral

import numpy as np
from scipy.ndimage import zoom

from ..hierarchy import ClassHierarchy, LabelSet
from .losses import UNANNOTATED_MODES
from .sampling import PatchData2D

__all__ = ["HierStarDistData2D", "resolve_label_sets", "check_instance_classes", "ClassTargetEncoder",
           "UNANNOTATED_MODES"]


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


def _is_int(v):
    return isinstance(v, Integral) and not isinstance(v, bool)


def _shown(values, n=10):
    values = list(values)
    return f"{values[:n]}" + (f" (and {len(values) - n} more)" if len(values) > n else "")


def check_instance_classes(y, classes, label_set, where):
    """Check that every instance of label image ``y`` has a valid class entry.

    ``classes`` follows stock StarDist: a dict ``{instance id: class id or None}``, a single
    class id for all instances, or ``None`` (every class unknown). Class ids are the
    dataset's own ids; ``None`` means unknown (no class loss for that nucleus).

    Stricter than stock StarDist, each of these is an error naming the image (``where``):
    class id 0 for a nucleus (0 is background: use ``None`` for an unknown class), dict keys
    that are not integers (e.g. strings from a JSON file), entries for instance ids the mask
    does not contain, instances without an entry, and ids outside the label set.

    Raises
    ------
    ValueError, stardist_hier.hierarchy.HierarchyError
    """
    if classes is None:
        return
    if _is_int(classes):
        if classes == 0:
            raise ValueError(f"{where}: classes=0 gives every nucleus class 0, which is background; give a class "
                             f"id of label set '{label_set.name}' {list(label_set.ids)} or None (unknown class)")
        label_set.check_class_ids([classes], where)
        return
    if not isinstance(classes, dict):
        raise ValueError(f"{where}: classes must be a dict {{instance id: class id}}, an int or None, "
                         f"got {type(classes).__name__}")
    bad_keys = [k for k in classes if not _is_int(k)]
    if bad_keys:
        hint = (" (a dict read from JSON has string keys: convert it with {int(k): v for k, v in d.items()})"
                if any(isinstance(k, str) for k in bad_keys) else "")
        raise ValueError(f"{where}: instance ids (the keys of classes) must be integers, got "
                         f"{_shown(map(repr, bad_keys), 5)}{hint}")
    ids = np.unique(y)
    ids = ids[ids > 0]
    present = set(int(i) for i in ids)
    missing = [int(i) for i in ids if int(i) not in classes]
    if missing:
        raise ValueError(f"{where}: instance id(s) {_shown(missing)} of the mask have no entry in classes")
    extra = sorted(int(k) for k in classes if int(k) not in present)
    if extra:
        raise ValueError(f"{where}: classes has entries for instance id(s) {_shown(extra)} that are not in the mask "
                         f"(classes of another image, or of the mask before cropping?)")
    bad_type = [v for v in classes.values() if v is not None and not _is_int(v)]
    if bad_type:
        hint = " (strings from a JSON file? convert them with int())" if any(isinstance(v, str) for v in bad_type) else ""
        raise ValueError(f"{where}: class ids must be integers or None, got {_shown(map(repr, bad_type), 5)}{hint}")
    zero = sorted(int(k) for k, v in classes.items() if v is not None and int(v) == 0)
    if zero:
        raise ValueError(f"{where}: class id 0 (background) for instance id(s) {_shown(zero)}: a nucleus needs a "
                         f"class id of label set '{label_set.name}' {list(label_set.ids)}, or None if its class "
                         f"is unknown")
    values = [v for v in classes.values() if v is not None]
    if values:
        label_set.check_class_ids(values, where)


class ClassTargetEncoder:
    """Turns instance label images plus per-instance classes into packed class targets.

    Parameters
    ----------
    n_out : int
        Output channels, ``n_classes + 1``.
    unannotated_mode : {'background', 'marginal'}
        Background pixels of a sample whose label set is non-exhaustive
        (:attr:`LabelSet.unannotated_channels` not empty): ``'background'`` (default) admits
        background only, as the dataset's masks say; ``'marginal'`` admits background or any
        unannotated leaf (``{0} + unannotated_channels``), and the sample's leaf groups put
        those leaves in group 0 (the label set's background class), see
        :mod:`stardist_hier.model.losses`. Exhaustive label sets are encoded the same way in
        both modes, so are all other pixels; the layout (``2 * n_out`` channels) is the same.
    """

    def __init__(self, n_out, unannotated_mode="background"):
        if unannotated_mode not in UNANNOTATED_MODES:
            raise ValueError(f"unannotated_mode must be one of {UNANNOTATED_MODES}, got {unannotated_mode!r}")
        self.n_out = int(n_out)
        self.unannotated_mode = unannotated_mode
        self._tables = {}

    def _marginal(self, label_set):
        return self.unannotated_mode == "marginal" and bool(label_set.unannotated_channels)

    def _table(self, label_set):
        """Rows: 0..max_id = admitted leaves of each class id, last row = unknown class.

        The unknown-class row is stock StarDist's: -1 in every channel but background.
        """
        table = self._tables.get(label_set.name)
        if table is None:
            unknown = np.full((1, self.n_out), -1, np.float32)
            unknown[0, 0] = 0
            table = np.vstack([label_set.membership.astype(np.float32), unknown])
            if self._marginal(label_set):
                table[0, list(label_set.unannotated_channels)] = 1
            self._tables[label_set.name] = table
        return table

    def leaf_groups(self, label_set):
        """``(n_out,)`` float32: the leaf groups of a sample of ``label_set`` (second half of the target)."""
        groups = label_set.leaf_group.astype(np.float32)
        if self._marginal(label_set):
            groups[list(label_set.unannotated_channels)] = 0
        return groups

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
        out[..., self.n_out:] = self.leaf_groups(label_set)
        return out


class HierStarDistData2D(PatchData2D):
    """Stock StarDist training data with hierarchical class targets.

    Takes the arguments of :class:`stardist.models.StarDistData2D` and of
    :class:`~stardist_hier.model.sampling.PatchData2D` (``normalize``: raw images normalised
    per drawn patch; :meth:`~.PatchData2D.reseed`, :meth:`~.PatchData2D.seed_batch_order`) plus:

    Parameters
    ----------
    hierarchy : ClassHierarchy
        The class hierarchy of the model (``n_classes`` = its number of leaves).
    label_sets : str, LabelSet or sequence
        Label set of all images, or one per image (a batch may then mix datasets).
    classes : sequence
        Per image: dict ``{instance id: dataset class id or None}``, a single class id, or
        ``None`` (unknown class for every object).
    unannotated_mode : {'background', 'marginal'}
        Background pixels of non-exhaustive label sets (:class:`ClassTargetEncoder`;
        config ``train_unannotated_mode``).

    Notes
    -----
    The stock ``__getitem__`` runs unchanged (built with ``n_classes=None`` so it does not
    make its own one-hot class target); each sample it draws is captured as it leaves the
    augmenter (:meth:`.PatchData2D.draw`) and its label patch encoded here, with the same
    subsampling (``zoom``, order 0) and the same negative-label mask as stock StarDist uses for
    its class target. Every batch checks that the captured samples are exactly the batch's
    images, in order (else :class:`RuntimeError`: stock's data pipeline changed). The capture
    is per thread, so batches may be built in several threads; in worker processes
    (:mod:`stardist_hier.model.pipeline`) each has its own copy. :meth:`reseed` reseeds a worker.
    """

    def __init__(self, X, Y, batch_size, n_rays, length, hierarchy, label_sets, classes=None,
                 patch_size=(256, 256), b=32, grid=(1, 1), shape_completion=False, augmenter=None,
                 foreground_prob=0, n_classes=None, unannotated_mode="background", **kwargs):
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
        self.encoder = ClassTargetEncoder(hierarchy.n_classes + 1, unannotated_mode=unannotated_mode)
        self._outside_cache = {}
        super().__init__(X, Y, batch_size=batch_size, n_rays=n_rays, length=length,
                         n_classes=None, classes=None, patch_size=patch_size, b=b, grid=grid,
                         shape_completion=shape_completion, augmenter=augmenter,
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
        inputs, (prob, dist_and_mask), samples, idx = self.draw(i)
        prob_class = self.class_target([y for _, y in samples], idx)
        return inputs, (prob, dist_and_mask, prob_class)
