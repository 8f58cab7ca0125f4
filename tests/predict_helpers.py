"""Shared by the predict tests: a tiny random model with nucleus-sized output, synthetic images."""

import numpy as np

from stardist_hier import synth

TINY = dict(n_rays=16, n_channel_in=3, unet_n_depth=2, unet_n_filter_base=8, net_conv_after_unet=16)


def tiny_model(grid=(2, 2), hierarchy="default", seed=3, **kw):
    """A randomly initialised tiny model whose heads are rescaled to give nucleus-sized output.

    Untrained StarDist heads give distances of ~0.001 px and probabilities of ~0.5
    everywhere; scaling the head kernels (and a distance bias of 6 px) keeps the network
    random but makes its polygons nucleus-sized and its probabilities and classes vary.
    """
    from stardist_hier.model.build import build_model

    params = dict(TINY, grid=grid, **kw)
    if hierarchy is None:
        params["n_classes"] = None
    m = build_model(hierarchy, params, seed=seed)
    for name, scale, bias in (("prob", 60.0, 0.0), ("dist", 300.0, 6.0), ("prob_class", 300.0, 0.0)):
        try:
            layer = m.keras_model.get_layer(name)
        except ValueError:
            continue
        w = layer.get_weights()
        layer.set_weights([w[0] * scale, w[1] * 0 + bias])
    return m


def image(size=(129, 160), k=0):
    t = synth.generate_tile("consep", synth.tile_seed(0, "consep", "test", k), size=max(size))
    return t.image[: size[0], : size[1]]
