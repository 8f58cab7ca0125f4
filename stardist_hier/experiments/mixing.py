"""The training data of an episode: one dataset, or several mixed inside every batch by weight.

An episode ``{mix: {pannuke: 0.6, lizard: 0.4}, epochs: 200}`` trains on the ``train`` splits
of both datasets at once; each image keeps its own label set
(``HierStarDist2D.train(dataset=[one name per image])``). The weights, divided by their sum,
are **the probability that a drawn training patch comes from each dataset**, independent of
the datasets' sizes.

How the weights are realised: repeated indices
----------------------------------------------
StarDist's data generator draws the images of its list in a fresh random order on every
pass over the list, each listed image once per pass (csbdeep's ``RollingSequence``), so a
dataset's share of the drawn patches is its share of the list. :func:`mix_indices` builds a
list of ``N`` entries in which dataset ``k`` has ``c_k`` entries, ``c_k / N`` equal to its
probability ``p_k`` up to rounding (largest remainders, so ``|c_k / N - p_k| < 1 / N``);
within each pass over the list the shares are exact. ``N`` is the smallest length in which
every dataset gets at least as many entries as it has images, ``N = max_k ceil(n_k / p_k)``,
so no image is left out; each image of dataset ``k`` is listed ``floor(c_k / n_k)`` or one
more times (the extra ones a seeded random choice). The list holds references, not copies:
``N`` costs memory only for the per-image bookkeeping of the generator, and the checks at
the start of an episode take time proportional to ``N`` (a large dataset given a small
weight makes ``N`` a multiple of the data's size).

Augmentation
------------
The augmenter (:class:`stardist_hier.augment.ClassAwareAugmenter`) decides from a patch's
class ids whether the patch holds a rare class. Class ids of different label sets mean
different things, so in a mix each dataset's ids are moved to a range of their own before
they are encoded into the instance ids (:func:`stardist_hier.augment.encode_class_ids`), and
the rare classes are found per dataset, as a one-dataset episode would find them; the
``classes`` handed to training are the datasets' own ids again. The rare-class
oversampling (``oversample_rare``) repeats images within each dataset before the mix, so it
changes which images of a dataset are drawn, not the dataset's share. An episode of one
dataset is built exactly as before mixing existed (same lists, same augmenter).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["apportion", "mix_indices", "episode_training_data"]


def apportion(total, probs):
    """Split ``total`` entries by ``probs`` (largest remainders): integers summing to ``total``.

    Ties of the remainders go to the earlier entry.
    """
    probs = np.asarray(probs, float)
    exact = probs / probs.sum() * int(total)
    counts = np.floor(exact + 1e-9).astype(int)
    rest = int(total) - int(counts.sum())
    order = sorted(range(len(probs)), key=lambda k: (-(exact[k] - counts[k]), k))
    for k in order[:max(rest, 0)]:
        counts[k] += 1
    return [int(c) for c in counts]


def mix_indices(groups, probs, seed=None):
    """Indices in which each group's share is its probability (see the module docstring).

    Parameters
    ----------
    groups : sequence of sequence of int
        Per dataset, the indices (into the combined image list) of its images; an index may
        appear more than once (rare-class oversampling).
    probs : sequence of float
        Per dataset, the probability that a drawn patch comes from it (positive; divided
        by their sum).
    seed : int, optional
        Seed of the choice of the images listed once more than the others.

    Returns
    -------
    list of int
        Sorted indices. With one group: that group, unchanged.
    """
    groups = [list(g) for g in groups]
    probs = np.asarray(probs, float)
    if len(groups) != len(probs) or not groups:
        raise ValueError(f"{len(groups)} groups but {len(probs)} probabilities")
    if not np.all(np.isfinite(probs)) or np.any(probs <= 0):
        raise ValueError(f"mixing probabilities must be positive, got {probs.tolist()}")
    if any(not g for g in groups):
        raise ValueError("every dataset of a mix needs at least one training image")
    if len(groups) == 1:
        return groups[0]
    probs = probs / probs.sum()
    n = max(math.ceil(len(g) / p - 1e-9) for g, p in zip(groups, probs))
    counts = apportion(n, probs)
    rng = np.random.default_rng(seed)
    out = []
    for g, c in zip(groups, counts):
        c = max(c, len(g))  # (rounding never takes a dataset below its size; kept as a guard)
        whole, extra = divmod(c, len(g))
        out += g * whole
        if extra:
            out += [g[k] for k in sorted(rng.choice(len(g), size=extra, replace=False).tolist())]
    return sorted(out)


def _offsets(class_lists):
    """Per dataset, the offset that moves its class ids into a range of their own (0 for the first)."""
    offsets, top = [], 0
    for classes in class_lists:
        offsets.append(top)
        ids = [v for c in classes for v in (c.values() if isinstance(c, dict) else [c]) if v is not None]
        top += max((int(v) for v in ids), default=0)
    return offsets


def episode_training_data(parts, probs, augment, seed):
    """Training images, masks, classes, per-image datasets and augmenter of an episode.

    Parameters
    ----------
    parts : sequence of (str, list, list, list)
        Per dataset ``(name, X, Y, classes)`` of its training split.
    probs : sequence of float
        Per dataset, its probability (:func:`stardist_hier.experiments.config.mix_probabilities`).
    augment : dict or None
        :class:`~stardist_hier.augment.AugmentConfig` parameters; ``None``: no augmentation.
    seed : int
        Seed of the augmenter, the oversampling and the mix.

    Returns
    -------
    X, Y, classes : list
    dataset : str or list of str
        The dataset's name for one dataset, else one name per image.
    augmenter : ClassAwareAugmenter or None
    info : dict
        Per dataset ``{'images', 'entries', 'share'}``: its training images, its entries in
        the list and their share of the list (the realised probability).
    """
    from ..augment import (AugmentConfig, ClassAwareAugmenter, encode_class_ids, find_rare_classes,
                           oversample_indices, rare_image_indices)
    from ..model.build import derive_seed

    if len(parts) == 1:  # as the runner has always built it
        name, X, Y, C = parts[0]
        augmenter = None
        if augment is not None:
            Y, C, augmenter = ClassAwareAugmenter.for_dataset(Y, C, augment, seed=seed)
            factor = augment["oversample_rare"]
            if factor > 1:
                idx = oversample_indices(len(X), rare_image_indices(C, augmenter.rare_classes), factor, seed)
                X, Y, C = [X[k] for k in idx], [Y[k] for k in idx], [C[k] for k in idx]
        return X, Y, C, name, augmenter, {name: dict(images=len(parts[0][1]), entries=len(X), share=1.0)}

    names = [p[0] for p in parts]
    X = [x for p in parts for x in p[1]]
    Y = [y for p in parts for y in p[2]]
    C = [c for p in parts for c in p[3]]
    starts = np.cumsum([0] + [len(p[1]) for p in parts])
    groups = [list(range(starts[k], starts[k + 1])) for k in range(len(parts))]
    augmenter = None
    if augment is not None:
        config = AugmentConfig.from_dict(augment)
        offsets = _offsets([p[3] for p in parts])
        owner = np.repeat(np.arange(len(parts)), [len(p[1]) for p in parts])

        def shift(c, off):  # a dict, one class id for every nucleus, or None (no class)
            if isinstance(c, dict):
                return {i: (None if v is None else int(v) + off) for i, v in c.items()}
            return c if c is None else int(c) + off

        coded = [shift(c, offsets[owner[j]]) for j, c in enumerate(C)]
        Y, coded, stride = encode_class_ids(Y, coded)
        C = [shift(c, -offsets[owner[j]]) for j, c in enumerate(coded)]
        rare_codes = []
        for k, (_, Xk, _, Ck) in enumerate(parts):
            rare = (find_rare_classes(Ck, config.rare_share) if config.rare_classes == "auto"
                    else list(config.rare_classes or ()))
            rare_codes += [offsets[k] + int(c) for c in rare]
            if config.oversample_rare > 1:
                local = oversample_indices(len(Xk), rare_image_indices(Ck, rare), config.oversample_rare,
                                           derive_seed(seed, k))
                groups[k] = [int(starts[k]) + i for i in local]
        augmenter = ClassAwareAugmenter(config, rare_codes, stride, seed)
    idx = mix_indices(groups, probs, derive_seed(seed, len(parts)))
    owner = np.repeat(np.arange(len(parts)), [len(p[1]) for p in parts])
    entries = np.bincount(owner[idx], minlength=len(parts))
    info = {n: dict(images=len(p[1]), entries=int(e), share=float(e) / len(idx))
            for n, p, e in zip(names, parts, entries)}
    return ([X[k] for k in idx], [Y[k] for k in idx], [C[k] for k in idx], [names[owner[k]] for k in idx],
            augmenter, info)
