"""Visual check: tiles with their instance outlines coloured by leaf or class, into a PNG."""

from __future__ import annotations

import math

from ..hierarchy import ClassHierarchy


def save_overlay(tiles, path, ncols=4, by="leaf", title=True):
    """Draw tiles with their instance outlines coloured by class into a PNG.

    Parameters
    ----------
    tiles : list of SynthTile
        Tiles to show (one panel per tile, the image next to its outlined copy).
    path : str or Path
        PNG to write.
    ncols : int
        Tiles per row.
    by : {'leaf', 'class'}
        Colour outlines by the hidden leaf (to judge morphology) or by the dataset class id.
    title : bool
        Put dataset and tissue above each panel.

    Returns
    -------
    pathlib.Path
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    from pathlib import Path
    from skimage.segmentation import find_boundaries

    from matplotlib.colors import to_rgb

    h = ClassHierarchy.default()
    # saturated colours that stay visible on both pink stroma and dark nuclei; siblings in
    # related hues so the super-classes read at a glance
    palette = {"healthy_epithelial": "#1f5fff", "malignant_epithelial": "#00e5ff", "lymphocyte": "#ff8c00",
               "plasma_cell": "#ffd700", "neutrophil": "#00c000", "eosinophil": "#a0ff40",
               "macrophage": "#ff2020", "fibroblast": "#ff1493", "muscle": "#a0522d", "endothelial": "#b000ff",
               "dead": "#000000", "miscellaneous": "#ffffff"}
    hidden_colour = (0.72, 0.72, 0.72)
    spare = iter(plt.cm.tab20.colors)
    leaf_colour = {leaf: to_rgb(palette[leaf]) if leaf in palette else next(spare) for leaf in h.leaves}
    ncols = max(1, min(ncols, len(tiles)))
    nrows = int(math.ceil(len(tiles) / ncols))
    # panels at about one screen pixel per image pixel, so 2-pixel outlines survive
    px = max(t.image.shape[0] for t in tiles) / 100
    fig, axes = plt.subplots(nrows, 2 * ncols, figsize=(2 * px * ncols, (px + 0.25) * nrows + 0.5), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i, tile in enumerate(tiles):
        r, c = divmod(i, ncols)
        over = tile.image.astype(float) / 255
        inst, cls = tile.mask[..., 0], tile.mask[..., 1]
        for k in range(1, int(inst.max()) + 1):
            edge = find_boundaries(inst == k, mode="thick") & (inst == k)
            colour = leaf_colour[tile.leaves[k - 1]] if by == "leaf" else plt.cm.tab10(int(cls[inst == k][0]) % 10)[:3]
            over[edge] = colour
        for j in range(1, int(tile.hidden.max()) + 1):
            over[find_boundaries(tile.hidden == j, mode="thick") & (tile.hidden == j)] = hidden_colour
        axes[r, 2 * c].imshow(tile.image)
        axes[r, 2 * c + 1].imshow(over)
        if title:
            axes[r, 2 * c].set_title(f"{tile.dataset} / {tile.tissue}", fontsize=7)
    if by == "leaf":
        handles = [Patch(color=leaf_colour[l], label=l) for l in h.leaves] + [Patch(color=hidden_colour, label="unannotated")]
        ncol = 7 if ncols > 1 else 4
        fig.legend(handles=handles, loc="lower center", ncol=ncol, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.5 / fig.get_size_inches()[1] if by == "leaf" else 0, 1, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
