"""The TensorFlow side of stardist-hier: config, losses, targets, callbacks, model folders, the model.

* :mod:`.config`: :class:`HierConfig2D`, every parameter documented;
* :mod:`.losses`: the modified cross-entropy (paper Eq. 2) and focal Tversky (Eq. 4) losses;
* :mod:`.targets`: :class:`HierStarDistData2D`, stock training data with hierarchical class targets;
* :mod:`.callbacks`: per-dataset validation losses;
* :mod:`.folder`: model folders that stock StarDist loads, optimizer state;
* :mod:`.inputs`: the rule that decides whether an input image looks unnormalised;
* :mod:`.class_rule`: how a predicted instance gets its class (``class_from``, label sets);
* :mod:`.compiling`: the compile call with the hierarchical class loss;
* :mod:`.training`: the training loop of ``HierStarDist2D.train``;
* :mod:`.transfer`: weights from stock StarDist2D models (``from_stardist``);
* :mod:`.build`: seeding and building a model from parameters;
* :mod:`.model2d`: :class:`HierStarDist2D`.
"""

from .config import HIER_CONFIG_DEFAULTS, HierConfig2D
from .model2d import HierStarDist2D
from .targets import HierStarDistData2D

__all__ = ["HierConfig2D", "HierStarDist2D", "HierStarDistData2D", "HIER_CONFIG_DEFAULTS"]
