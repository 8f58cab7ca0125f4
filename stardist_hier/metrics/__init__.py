"""Instance segmentation and classification metrics for nucleus images.

Plain numpy/scipy: scoring predictions never imports TensorFlow.

Matching
--------
A ground-truth (GT) and a predicted instance are a candidate pair when their IoU exceeds the
threshold (0.5). Two rules are in use and both are computed for every image:

* ``">"`` (``RULE_HOVERNET``): IoU strictly above 0.5, as HoVer-Net's ``get_fast_pq``, the
  PanNuke and CoNIC challenge code.
* ``">="`` (``RULE_STARDIST``): IoU at or above 0.5, as ``stardist.matching.matching``.

Above 0.5 each instance has at most one candidate, so the matching is the set of candidates.
At exactly 0.5 an instance can have two candidates, its two exact halves; any one of them is a
maximum matching and all give the same counts and summed IoU, so one is kept. Below 0.5 the
matching maximises the number of pairs, then the summed IoU (Hungarian algorithm, as
StarDist). Pairwise overlaps come from one ``np.bincount`` over paired labels per image.

Per-class matching matches GT instances of class ``c`` with predicted instances of class ``c``
only (CoNIC's and PanNuke's per-class instance maps): a nucleus with the wrong class is a false
negative of its true class and a false positive of its predicted class.

Classes and ignore regions
--------------------------
An instance's class is the most frequent non-zero class id among its pixels (ties: the smallest
id); an instance whose pixels all have class 0 is *unlabelled*: it counts in class-agnostic
metrics and in no class. Negative GT instance ids mark ignore regions (MoNuSAC "Ambiguous"):
they are not GT instances, and a predicted instance with more than half of its pixels on
negative-id pixels is dropped (counted in ``n_pred_ignored``) before matching.
:func:`evaluate_image` can also set aside given predicted instances that match no GT nucleus
(``set_aside``, counted in ``n_pred_unannotated``): :func:`evaluate_folder` does so for nuclei
predicted mostly in classes a non-exhaustive label set does not annotate.

Conventions and their empty-case rules
--------------------------------------
With ``den = TP + FP/2 + FN/2``: ``DQ = TP/den``, ``SQ = sum_IoU/TP``, ``PQ = DQ*SQ =
sum_IoU/den``. Values are exact: the reference codes' ``1e-6`` epsilons (CoNIC's
``tp / (tp + fp/2 + fn/2 + 1e-6)`` and ``sum_iou / (tp + 1e-6)``) are not reproduced; they
move one image's PQ by up to about 2e-6 (one perfect match: ``1 / (1 + 1e-6)**2``), and less
for sums over many nuclei.

Each entry: name (matching rule) -- aggregation; empty-case rule.

* ``bPQ_pannuke_tissue`` (``>``) -- class-agnostic PQ per image, nanmean per tissue, nanmean
  over tissues (PanNuke). An image without GT gives nan and is skipped, so its false
  positives are ignored.
* ``bPQ_pannuke_image`` (``>``) -- the same per-image values, nanmean over images.
* ``mPQ_pannuke_tissue`` (``>``) -- per image, nanmean of the per-class PQ over the classes
  with GT in that image; nanmean per tissue; nanmean over tissues (PanNuke). A class without
  GT in an image gives nan there (its false positives in that image are ignored).
* ``mPQ_pannuke_image`` (``>``) -- the same per-image mPQ, nanmean over images.
* ``PQ_pannuke_<class>`` (``>``) -- per-class per-image PQ, nanmean over images; nan where an
  image has no GT of the class.
* ``PQ_conic`` (``>``) -- class-agnostic PQ per image, mean over images (CoNIC's "PQ"); 0 when
  ``den = 0`` (no GT and no prediction).
* ``mPQ+_conic`` (``>``) -- per class, TP/FP/FN/sum_IoU summed over all images, PQ per class,
  mean over *all* classes of the label set; a class absent from the whole set (GT and
  prediction) scores 0. That holds when the label set's class ids are passed (as
  :func:`evaluate_folder` does); ``evaluate_arrays(class_ids=None)`` takes the classes found in
  the data, so an absent class is left out of the mean instead. ``PQ+_<class>``: that
  class's value.
* ``PQ_stardist_image`` (``>=``) -- class-agnostic PQ per image, mean over images
  (``matching_dataset(by_image=True)``); 0 when ``den = 0``.
* ``PQ_stardist_summed`` (``>=``) -- from TP/FP/FN/sum_IoU summed over the set
  (``matching_dataset(by_image=False)``); 0 when ``den = 0``.
* ``DQ_summed``, ``SQ_summed`` (``>``) -- from the summed class-agnostic counts; 0 when the
  denominator is 0.
* ``F1_det``, ``precision_det``, ``recall_det`` (``>``) -- detection from the summed
  class-agnostic counts, ``F1 = 2TP/(2TP+FP+FN)``; nan when the denominator is 0.
* ``F1_class_<class>`` (``>``) -- HoVer-Net's classification F1 over the set,
  ``2TPc/(2TPc + 2FPc + 2FNc + FPd + FNd)``; nan when the class appears nowhere.
  ``F1_class_mean``: nanmean over classes.
* ``acc_class`` (``>``) -- share of matched pairs with a labelled GT nucleus whose classes
  agree; nan without such pairs.
* ``F1_det_centroid``, ``F1_class_centroid_<class>``, ``acc_class_centroid`` -- the same with
  HoVer-Net's own pairing (optimal assignment of centroids, pairs at most ``centroid_radius``
  pixels apart), reported when a radius is given.
* ``R2_<class>`` -- coefficient of determination of the per-image counts of the class (CoNIC);
  constant GT counts give 1 if predicted exactly, else 0 (scikit-learn's rule); nan with fewer
  than 2 images. ``R2_conic``: mean over classes. Counts are over the whole image (CoNIC
  counted the central 224x224 of its 256x256 patches).

In ``F1_class``: ``TPc`` matched pairs with GT and prediction of class ``c``; ``FPc`` matched
pairs predicted ``c`` with another GT class; ``FNc`` matched pairs of GT class ``c`` predicted
otherwise; ``FPd``/``FNd`` unmatched predictions/GT of class ``c`` (weights 2, 2, 1, 1 of
HoVer-Net's ``compute_stats.py``). ``F1_class`` pairs nuclei by the IoU matching that the PQ
counts use; ``F1_class_centroid`` by centroid distance as HoVer-Net does (12 px at 40x).

Without tissue labels, all images form one tissue and the tissue-averaged values equal the
image-averaged ones.

Modules
-------
* :mod:`~stardist_hier.metrics.matching` -- the matching rules and the instance matching of
  one image (:func:`match_instances`, :func:`image_pq`), :class:`MetricsError`;
* :mod:`~stardist_hier.metrics.classes` -- instance classes, label-set class ids and the maps
  between label sets;
* :mod:`~stardist_hier.metrics.counts` -- :class:`ImageCounts` of one image
  (:func:`evaluate_image`, with HoVer-Net's centroid pairing);
* :mod:`~stardist_hier.metrics.conventions` -- the conventions over a set of images
  (:func:`summarize`, :func:`per_image_frame`, :func:`evaluate_arrays`, :func:`r2_score`);
* :mod:`~stardist_hier.metrics.folder` -- scoring a split of the patch folders against a model
  or saved predictions (:func:`evaluate_folder`), nuclei of classes a dataset does not
  annotate set aside (``n_pred_unannotated``);
* :mod:`~stardist_hier.metrics.report` -- its outputs (:func:`write_results`,
  :func:`format_summary`) and the names of the conventions.
"""

from .classes import class_id_map, instance_classes, label_set_class_ids
from .conventions import evaluate_arrays, per_image_frame, r2_score, summarize
from .counts import ImageCounts, evaluate_image
from .folder import (CONVENTIONS, HEADLINE_METRICS, EvaluationError, EvaluationResult, evaluate_folder, find_datasets,
                     format_summary, read_prediction, write_prediction, write_results)
from .matching import RULE_HOVERNET, RULE_STARDIST, RULES, MetricsError, image_pq, match_instances

__all__ = [
    "MetricsError", "RULES", "RULE_HOVERNET", "RULE_STARDIST",
    "match_instances", "image_pq", "ImageCounts", "evaluate_image", "evaluate_arrays",
    "summarize", "per_image_frame", "instance_classes", "label_set_class_ids", "class_id_map",
    "r2_score",
    # scoring the patch folders (formerly stardist_hier.evaluation)
    "EvaluationError", "EvaluationResult", "read_prediction", "write_prediction",
    "find_datasets", "evaluate_folder", "write_results", "format_summary", "CONVENTIONS",
    "HEADLINE_METRICS",
]
