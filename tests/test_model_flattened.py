"""The flattening baseline's class rule is the package's one rule, LabelSet.classify."""

import numpy as np

from stardist_hier.experiments.claim import FlattenedModel
from stardist_hier.experiments.flatten import flatten_hierarchy
from stardist_hier.hierarchy import ClassHierarchy


class _FakeCoarse:
    """Stands in for a model trained on the depth-1 hierarchy: fixed coarse probabilities."""

    def __init__(self, prob):
        self.prob = np.asarray(prob, float)

    def predict_instances(self, img, **kwargs):
        labels = np.zeros((4, 4), np.int32)
        labels[: len(self.prob), 0] = np.arange(1, len(self.prob) + 1)
        n = len(self.prob)
        return labels, {"class_prob": self.prob, "class_id": np.zeros(n, int), "label_set": "pannuke",
                        "leaf_class_id": np.zeros(n, int), "label_set_prob": self.prob}


def test_flattened_model_classifies_with_the_one_rule():
    flat = flatten_hierarchy()
    h = ClassHierarchy.default()
    # coarse channels: background, epithelial, inflammatory, connective, other
    prob = [[0.0, 0.5, 0.5, 0.0, 0.0],    # an exact tie between two coarse classes
            [0.1, 0.2, 0.3, 0.4, 0.0],
            [0.9, 0.05, 0.05, 0.0, 0.0]]  # background largest: still a nucleus class
    counts = {"pannuke": {1: 1, 5: 1, 2: 50, 3: 1, 4: 1}}
    m = FlattenedModel(_FakeCoarse(prob), flat, h, counts)
    _, d = m.predict_instances(None, label_set="pannuke")
    # reference: PanNuke's classes -> depth-1 nodes (1 malignant, 5 healthy -> epithelial, 2 inflammatory,
    # 3 connective, 4 dead -> other); arg-max over the coarse classes in id order, ties to the first
    # (epithelial), then epithelial's most frequent PanNuke class (1 vs 5: a tie of counts -> the smaller id)
    assert d["class_id"].tolist() == [1, 3, 1]
    assert d["label_set"] == "pannuke" and d["class_prob"] is None
    assert "leaf_class_id" not in d and "label_set_prob" not in d  # the coarse model's, not passed on
    np.testing.assert_array_equal(d["coarse_class_prob"], prob)
    _, none = FlattenedModel(_FakeCoarse(np.zeros((0, 5))), flat, h, counts).predict_instances(None, label_set="pannuke")
    assert none["class_id"].shape == (0,)
