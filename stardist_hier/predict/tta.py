"""8-fold test-time augmentation of StarDist's outputs: 4 rotations x 2 flips.

Each of the 8 transforms of the dihedral group is applied to the image, the network predicts,
and its outputs are mapped back: the maps are transformed back, and the distances of the
rays are permuted, because a ray of the transformed image points, in the original image, in
another of StarDist's equally spaced directions (angle ``2 pi k / n_rays``, direction
``(dy, dx) = (sin, cos)``, :func:`stardist.geometry.ray_angles`). The 8 predictions are merged
as in StarDist's CoNIC 2022 recipe: object probability by the median, distances and class
probabilities by the mean.

A transform is ``(k, flip)``: flip the columns (``np.flip(img, 1)``) when ``flip``, then rotate
by ``k`` quarter turns (``np.rot90(img, k)``).

With an output grid ``g > 1`` the network's output cell ``i`` sits at input pixel ``g * i``;
reversing an axis of length ``L`` would put the cells at ``L - 1 - g * i``, off the original
cells by ``g - 1`` pixels. :func:`predict_tta` therefore pads ``(1 - L) mod g`` pixels at the
end of every axis that a transform reverses, so that the cells of all 8 predictions fall on
the same pixels (see :func:`tta_pad`).

The merged prediction is then equivariant: predicting a rotated or flipped image gives the
rotated or flipped prediction, exactly (up to floating-point order) when each side is
``1 mod g`` (a transform then maps the cells of the image onto the cells of the transformed
image); for other sizes the transformed image's cells lie ``g - 1`` pixels off the image's,
and the two predictions agree only as well as the network does under that shift.

Plain numpy: the network is called through a function given by the caller.
"""

from __future__ import annotations

import numpy as np

__all__ = ["TRANSFORMS", "transform_image", "untransform_map", "vector_map", "ray_permutation",
           "reversed_axes", "tta_pad", "predict_tta", "merge"]

#: The 8 transforms ``(quarter turns, flip columns first)``; the identity first.
TRANSFORMS = tuple((k, f) for f in (False, True) for k in range(4))


def transform_image(img, t):
    """Apply transform ``t = (k, flip)`` to the two leading (spatial) axes of ``img``."""
    k, flip = t
    out = np.flip(img, axis=1) if flip else img
    return np.rot90(out, k, axes=(0, 1))


def untransform_map(arr, t):
    """Undo :func:`transform_image` on an array (its spatial axes only, channels untouched)."""
    k, flip = t
    out = np.rot90(arr, -k, axes=(0, 1))
    return np.flip(out, axis=1) if flip else out


def vector_map(t):
    """The 2x2 matrix taking a displacement ``(dy, dx)`` of the image to the transformed image.

    ``np.flip(img, 1)`` maps ``(dy, dx)`` to ``(dy, -dx)``; ``np.rot90(img)`` maps a pixel
    ``(y, x)`` to ``(W - 1 - x, y)``, i.e. ``(dy, dx)`` to ``(-dx, dy)``.
    """
    k, flip = t
    F = np.array([[1, 0], [0, -1]]) if flip else np.eye(2, dtype=int)
    R = np.array([[0, -1], [1, 0]])
    return np.linalg.matrix_power(R, k) @ F


def ray_permutation(n_rays, t):
    """Index map that undoes transform ``t`` on StarDist's rays.

    Returns
    -------
    numpy.ndarray
        ``perm`` of length ``n_rays``: ``dist_original[..., j] = dist_transformed[..., perm[j]]``,
        where ray ``perm[j]`` of the transformed image is the image of ray ``j``.

    Raises
    ------
    ValueError
        When the transform does not map rays onto rays (``n_rays`` not divisible by 4 for a
        quarter turn, odd for a flip).
    """
    from stardist.geometry import ray_angles

    phi = ray_angles(n_rays)
    u = np.stack([np.sin(phi), np.cos(phi)], axis=1)  # (n, 2) as (dy, dx), as dist_to_coord
    tu = u @ vector_map(t).T.astype(float)  # image of each ray
    dots = tu @ u.T  # (n, n)
    perm = dots.argmax(axis=1)
    if not np.allclose(dots[np.arange(n_rays), perm], 1, atol=1e-6):
        raise ValueError(f"test-time augmentation needs n_rays divisible by 4 (quarter turns map rays onto rays); "
                         f"this model has n_rays={n_rays}")
    return perm


def reversed_axes(t):
    """Which axes of the original image a transform reverses, as ``(rows, cols)`` bools."""
    M = vector_map(t)
    # original axis a ends up as transformed axis b with sign M[b, a]; reversed when negative
    return tuple(bool((M[:, a] < 0).any()) for a in range(2))


def tta_pad(shape, t, grid):
    """Pixels to pad at the end of each axis before transform ``t`` (see the module notes)."""
    rev = reversed_axes(t)
    return tuple(((1 - int(L)) % int(g)) if r and g > 1 else 0 for L, r, g in zip(shape[:2], rev, grid))


def merge(probs, dist_sum, class_sum, n):
    """CoNIC 2022 merge: median of the object probabilities, mean of distances and classes."""
    prob = np.median(np.stack(probs, axis=0), axis=0).astype(np.float32)
    dist = np.asarray(dist_sum, np.float32) / np.float32(n)
    prob_class = None if class_sum is None else np.asarray(class_sum, np.float32) / np.float32(n)
    return prob, dist, prob_class


def predict_tta(predict, img, n_rays, grid, transforms=TRANSFORMS):
    """Predict with test-time augmentation.

    Parameters
    ----------
    predict : callable
        ``predict(image) -> (prob, dist[, prob_class])`` as :meth:`StarDist2D.predict`: maps
        of ``ceil(H / g) x ceil(W / g)`` cells, ``dist`` with ``n_rays`` channels last.
    img : numpy.ndarray
        ``(H, W, C)`` normalised image.
    n_rays : int
    grid : tuple of int
        The model's output grid ``(gy, gx)``.
    transforms : sequence
        Transforms to average (default: all 8; ``[(0, False)]`` is plain prediction).

    Returns
    -------
    tuple
        ``(prob, dist, prob_class)`` merged; ``prob_class`` is None for a model without classes.
        Memory: the object probabilities of all transforms, plus one float32 running sum of
        the distances and one of the class probabilities.
    """
    H, W = img.shape[:2]
    out_shape = tuple(-(-s // g) for s, g in zip((H, W), grid))
    if list(transforms) == [(0, False)]:  # plain prediction: the maps as they are, no copies
        res = predict(img)
        return res[0], res[1], (res[2] if len(res) > 2 else None)
    probs, dist_sum, class_sum = [], None, None
    for t in transforms:
        pad = tta_pad((H, W), t, grid)
        x = img
        if any(pad):
            x = np.pad(img, ((0, pad[0]), (0, pad[1])) + ((0, 0),) * (img.ndim - 2), mode="reflect")
        res = predict(np.ascontiguousarray(transform_image(x, t)))
        prob, dist = res[0], res[1]
        prob_class = res[2] if len(res) > 2 else None
        crop = (slice(0, out_shape[0]), slice(0, out_shape[1]))
        prob = untransform_map(prob, t)[crop]
        dist = untransform_map(dist, t)[crop][..., ray_permutation(n_rays, t)]
        if prob.shape != out_shape:
            raise RuntimeError(f"test-time augmentation: a transformed prediction has {prob.shape} cells, "
                               f"expected {out_shape}")
        probs.append(np.ascontiguousarray(prob, np.float32))
        # float32 running sums: 8 terms lose nothing that matters, and float64 would double a
        # block's largest array
        if dist_sum is None:
            dist_sum = np.array(dist, np.float32)
        else:
            dist_sum += dist
        del dist, res
        if prob_class is not None:
            pc = untransform_map(prob_class, t)[crop]
            if class_sum is None:
                class_sum = np.array(pc, np.float32)
            else:
                class_sum += pc
            del pc, prob_class
    return merge(probs, dist_sum, class_sum, len(transforms))
