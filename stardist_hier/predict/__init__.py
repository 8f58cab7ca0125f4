"""Prediction on a user's own images and whole slides (issue 10).

Engine (no TensorFlow at import; the model brings it):

- :mod:`.engine`: :func:`predict_image`, :func:`predict_slide`, :func:`predict_path`, label sets
  and the hierarchy levels above them;
- :mod:`.blocks`: block-wise prediction with overlap, one block per nucleus, memory bounded
  by the block;
- :mod:`.tta`: 8-fold test-time augmentation of the network's outputs;
- :mod:`.slides`: images and whole-slide images (OpenSlide, tiffslide), :func:`open_input`,
  :class:`InputError`;
- :mod:`.tissue`: tissue mask of a thumbnail, user masks, slide-wide normalisation;
- :mod:`.synthetic`: synthetic pyramidal TIFF slides for tests and benchmarks;
- :mod:`.result`: :class:`Nuclei`, what the engine returns.

Outputs and the command: :mod:`.run` and the modules it uses.
"""
from .engine import predict_image, predict_path, predict_slide, resolve_label_set
from .result import Nuclei
from .slides import InputError, open_input

__all__ = ["Nuclei", "InputError", "open_input", "predict_image", "predict_slide", "predict_path",
           "resolve_label_set"]
