"""Tiny synthetic datasets and a tiny model config for the experiment-runner tests."""

from stardist_hier.synth import generate_all

#: a model that trains in about a second per epoch on a CPU (as TINY in test_model.py)
TINY_MODEL = dict(n_rays=8, n_channel_in=3, grid=(2, 2), unet_n_depth=2, unet_n_filter_base=8,
                  net_conv_after_unet=16, train_patch_size=(64, 64), train_batch_size=2)

#: smoke-scale overrides: one epoch per episode, two steps, the tiny model, all images
TINY_RUN = dict(model=TINY_MODEL, epoch_factor=0.001, steps_per_epoch=2,
                max_images=dict(train=None, val=None, test=None))


def make_tiny_data(root, datasets=("monusac", "pannuke", "consep")):
    """64 px synthetic stand-ins: 4 train, 2 val, 2 test tiles per dataset."""
    generate_all(root, list(datasets), counts=dict(train=4, val=2, test=2), size=64, seed=0, progress=False)
    return root
