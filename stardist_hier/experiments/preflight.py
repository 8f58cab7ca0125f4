"""Everything a run needs, checked before any training, and reported at once.

:func:`preflight` is the first thing :func:`stardist_hier.experiments.runner.run_experiment`
does. It lists, in one error:

* the config's problems (:func:`stardist_hier.experiments.config.config_problems`): unknown
  keys with the closest known key, missing episodes or test sets, bad epochs, mix weights
  that are not positive numbers, a ``monitor`` that is not one of its episode's validation
  losses, ``workers`` below 1, bad augmentation parameters;
* the model parameters' (:func:`model_problems`): names that are no
  :class:`~stardist_hier.model.HierConfig2D` parameter (with the closest one), values that
  ``HierConfig2D.is_valid`` refuses;
* the hierarchy's (a YAML that does not load);
* the data's (:func:`stardist_hier.experiments.data.data_problems`): datasets, splits or
  patches that are missing, each with the ``stardist-hier prepare`` command that makes it;
  a dataset whose label set the hierarchy lacks; class ids a dataset's label set does not
  cover;
* test sets with classes that no training dataset's label set labels at or below their
  node (:func:`untrained_test_classes`, the model's own rule,
  :func:`stardist_hier.model.class_rule.untrained_classes`): the model cannot score them.
  An error unless the config says ``untrained_test_classes: warn``; then a note in
  ``run.json`` and the summary.

Only data problems: :class:`~stardist_hier.experiments.data.MissingDataError` (a
``FileNotFoundError``), as before; otherwise
:class:`~stardist_hier.experiments.config.RunConfigError` with every problem.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..hierarchy import ClassHierarchy, HierarchyError
from .config import RunConfigError, closest, config_problems, episode_datasets
from .data import MissingDataError, data_problem_message, data_problems

__all__ = ["Preflight", "preflight", "model_problems", "run_hierarchy", "untrained_test_classes"]

#: HierConfig2D attributes that are derived from others, not parameters to set
_DERIVED = {"n_dim", "n_channel_out", "net_input_shape", "net_mask_shape", "trained_label_counts"}
_KNOWN_MODEL_KEYS = None


def known_model_keys():
    """Parameter names of :class:`~stardist_hier.model.HierConfig2D` (stock ``Config2D``'s and its own)."""
    global _KNOWN_MODEL_KEYS
    if _KNOWN_MODEL_KEYS is None:
        from ..model import HierConfig2D

        _KNOWN_MODEL_KEYS = frozenset(set(vars(HierConfig2D())) - _DERIVED - {"hierarchy", "n_classes"})
    return _KNOWN_MODEL_KEYS


def model_problems(params, hierarchy=None):
    """Problems of a run config's ``model`` section: unknown names (with the closest), invalid values."""
    known = known_model_keys()
    problems = [f"model: unknown key '{k}'{closest(k, known)}" for k in sorted(set(params) - known)]
    if problems:
        return problems
    from ..model import HierConfig2D

    try:
        conf = HierConfig2D(hierarchy=hierarchy, **params)
        ok, invalid = conf.is_valid(return_invalid=True)
    except (TypeError, ValueError) as e:  # HierarchyError is a ValueError
        return [f"model: {e}"]
    if not ok:
        return [f"model: invalid value(s) (HierConfig2D.is_valid): " + ", ".join(
            f"{k}={params.get(k, getattr(conf, k, None))!r}" for k in invalid)]
    return []


def run_hierarchy(h, label_sets):
    """``h`` with a label set named after each dataset whose prepared label set has another name.

    Parameters
    ----------
    h : ClassHierarchy
    label_sets : dict
        ``{dataset: label set name}`` (:func:`~stardist_hier.experiments.data.data_problems`).

    Returns
    -------
    ClassHierarchy
        ``h`` itself when every dataset's label set has its name; else a copy with the alias
        label sets (same classes, the dataset's name), so that losses, ``val_loss_<dataset>``
        and ``predict_instances(label_set=<dataset>)`` all use the dataset's name.
    """
    aliases = {d: ls for d, ls in label_sets.items() if d != ls and d not in h.label_sets}
    if not aliases:
        return h
    d = h.to_dict()
    for name, ls in sorted(aliases.items()):
        d["label_sets"][name] = dict(d["label_sets"][ls])
    return ClassHierarchy.from_dict(d, source=f"{h.source} (with label set(s) {sorted(aliases)} named after datasets)")


def untrained_test_classes(cfg, label_sets, h):
    """Per test set, the classes that no training label set labels at or below: the model cannot score them.

    The rule is the model's (:func:`stardist_hier.model.class_rule.untrained_classes`: a
    class is trained when some labelled node lies in its subtree), applied to the label sets
    of the datasets the run trains on rather than to counted nuclei: a test set may be finer
    than the training labels (MoNuSAC's immune cells after PanNuke's 'inflammatory'), which
    no amount of data fixes; a class that a small training split happens to lack is not
    reported here (the model warns about it when it predicts).

    Returns
    -------
    dict
        ``{test dataset: [(class id, node), ...]}`` for the test sets with such classes;
        empty when a training dataset's label set is unknown (reported elsewhere).
    """
    from ..model.class_rule import untrained_classes

    train = list(dict.fromkeys(d for ep in cfg["episodes"] for d in episode_datasets(ep)))
    if any(d not in label_sets for d in train):
        return {}
    labelled = {node: 1 for d in train for node in h.label_set(label_sets[d]).nodes.values()}
    out = {}
    for t in cfg["test"]:
        if t not in label_sets:
            continue
        ls = h.label_set(t if t in h.label_sets else label_sets[t])
        bad = untrained_classes(ls, labelled)
        if bad:
            out[t] = [(int(k), ls.nodes[k]) for k in bad]
    return out


def untrained_message(test, classes, cfg):
    train = ", ".join(dict.fromkeys(d for ep in cfg["episodes"] for d in episode_datasets(ep)))
    names = ", ".join(f"{k} = {node}" for k, node in classes)
    return (f"test set '{test}': class(es) {names} are finer than every training label set ({train}: none labels "
            f"a nucleus at or below their nodes), so the model cannot score them")


@dataclass
class Preflight:
    """What :func:`preflight` found: the run can start.

    Attributes
    ----------
    config : dict
        The normalised config.
    splits : dict
        ``{dataset: {role: split folder}}``.
    label_sets : dict
        ``{dataset: label set name}`` as prepared.
    hierarchy : ClassHierarchy
        The run's hierarchy (:func:`run_hierarchy`).
    aliased : bool
        The hierarchy has label sets named after datasets (it is not the config's as given).
    notes : list of str
        Warnings the run records (untrained test classes under ``untrained_test_classes: warn``).
    """

    config: dict
    splits: dict
    label_sets: dict
    hierarchy: ClassHierarchy
    aliased: bool = False
    notes: list = field(default_factory=list)


def preflight(config, data_root, source="run config"):
    """Check a run config and its data before any training; one error lists every problem.

    Parameters
    ----------
    config : dict
        Run config (:mod:`.config`).
    data_root : str or path-like
    source : str
        What the config is called in the error (e.g. its file).

    Returns
    -------
    Preflight

    Raises
    ------
    MissingDataError
        Only the data is at fault (missing datasets, splits, patches; label-set mismatches).
    RunConfigError
        The config is at fault (its problems and the data's, all listed).
    """
    root = Path(data_root)
    cfg, problems = config_problems(config)
    h = None
    try:
        h = ClassHierarchy.resolve(cfg.get("hierarchy", "default"))
    except (HierarchyError, OSError) as e:
        problems.append(f"hierarchy: {e}")
    if isinstance(cfg.get("model"), dict):
        problems += model_problems(cfg["model"], h if h is not None else "default")
    data_probs, splits, label_sets, notes = [], {}, {}, []
    run_h = h
    if h is not None and cfg:
        splits, label_sets, data_probs = data_problems(root, cfg, h)
        run_h = run_hierarchy(h, label_sets)
        for test, classes in untrained_test_classes(cfg, label_sets, run_h).items():
            msg = untrained_message(test, classes, cfg)
            if cfg.get("untrained_test_classes") == "warn":
                notes.append(msg)
            else:
                problems.append(msg + "; add a training dataset that labels them, or set "
                                      "untrained_test_classes: warn to run and report them anyway")
    if problems:
        raise RunConfigError(problems + data_probs, source=source)
    if data_probs:
        raise MissingDataError(data_problem_message(data_probs, root))
    return Preflight(cfg, splits, label_sets, run_h, aliased=run_h is not h, notes=notes)
