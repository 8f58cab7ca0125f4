"""Ways of using a second dataset, side by side: the benchmark of the paper's claim.

The paper (Parulekar, Kanwat et al., BIOIMAGING 2024) claims that one hierarchy-aware model,
pre-trained on a dataset with another label set and then fine-tuned on the target dataset,
beats training on the target alone. :func:`run_claim_benchmark` trains, for each target
dataset and seed, five variants with the same network, the same data and the same number
of training steps on target data where a variant has a fine-tuning phase:

``target_only`` (a)
    A fresh model trained on the target dataset alone, for as many steps as the
    pre-training and fine-tuning phases of the other variants together (so that no variant
    wins by training longer).
``finetune`` (b), the paper's method
    Pre-train on the source dataset (its own label set), then fine-tune all layers on the
    target; optimizer state carries over (two :meth:`HierStarDist2D.train` calls).
``mixed`` (c), batch-level mixing
    One training call on the union of both training sets with a per-image label set (each
    batch mixes the datasets), for the same total number of steps.
``reinit_head`` (d), transfer learning
    The pre-trained model of (b) (weights and optimizer state copied) with the class head
    (``features_class``, ``prob_class``) re-initialised before the fine-tuning.
``flatten`` (e), coarsest common level
    Every label of both datasets is replaced by its ancestor at depth 1 of the hierarchy
    (epithelial, inflammatory, connective, other; :mod:`.flatten`), a model with
    those four leaves is pre-trained and fine-tuned as in (b). It is scored at the target's
    label set through :class:`FlattenedModel`: each target class receives the predicted
    probability of its depth-1 ancestor (a target class above depth 1, such as MoNuSeg's
    root label, receives the sum over the depth-1 classes under it); target classes that
    share an ancestor (PanNuke's healthy and malignant epithelium) are told apart only by
    their frequency in the target's training split, the best a model that never saw the
    distinction can do. As for the hierarchical model, probability of depth-1 classes the
    target does not annotate is dropped.

Every variant is evaluated on the target's test split at the target's own label set with
:func:`stardist_hier.metrics.evaluate_folder` (default thresholds 0.5 / 0.4 for all, no
threshold optimisation, no augmentation, final weights, so that no variant gets a
selection step the others lack).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..atomic import atomic_write_text
from ..augment import class_counts_of
from ..hierarchy import ClassHierarchy
from ..metrics.folder import HEADLINE_METRICS
from .flatten import coarse_node, flatten_classes, flatten_hierarchy

__all__ = ["VARIANTS", "SOURCES", "METRICS", "BenchSettings", "FlattenedModel", "load_split_data", "train_variants",
           "run_claim_benchmark", "summarize_claim", "format_claim_table"]

#: variant key -> (letter, description)
VARIANTS = {
    "target_only": ("a", "target only"),
    "finetune": ("b", "pre-train on source, fine-tune on target (paper)"),
    "mixed": ("c", "batch-level mixing of source and target"),
    "reinit_head": ("d", "pre-train, re-initialise class head, fine-tune"),
    "flatten": ("e", "both flattened to depth-1 super-classes, pre-train + fine-tune"),
}

#: target -> source dataset: the pre-training dataset of the paper's best Table II row for
#: that target (rows 3, 6 and 9)
SOURCES = {"pannuke": "monusac", "monusac": "pannuke", "consep": "pannuke"}

#: reported metrics: (column, key of the evaluation summary), the package's headline list
METRICS = HEADLINE_METRICS


# ----------------------------------------------------------------------------------------
# scoring a flattened model at an original label set


class FlattenedModel:
    """A model trained on flattened labels, scored at an original (finer) label set.

    ``predict_instances(img, label_set=NAME)`` predicts with the coarse model and classifies
    each nucleus with the package's one class rule, :meth:`LabelSet.classify`, at the coarse
    image of label set ``NAME``: the label set whose classes are the depth-cut ancestors of
    ``NAME``'s classes (a class above the cut, such as MoNuSeg's root, keeps its node and so
    sums the coarse classes under it). The coarse class is then mapped to the original class
    under it that is most frequent in ``class_counts`` (ties: the smallest id): classes that
    share an ancestor cannot be told apart by a model that never saw the distinction. Coarse
    classes the label set does not cover get no class, as their probability is dropped.

    Parameters
    ----------
    model : HierStarDist2D
        Trained with the hierarchy of ``flat``.
    flat : FlatHierarchy
    hierarchy : ClassHierarchy
        The original hierarchy (what the evaluation reads GT ids with).
    class_counts : dict, optional
        Label-set name -> ``{class id: count}`` of training nuclei (the tie-break).
    """

    def __init__(self, model, flat, hierarchy, class_counts=None):
        self.model, self.flat, self.hierarchy = model, flat, ClassHierarchy.resolve(hierarchy)
        self.class_counts = class_counts or {}
        self.name = getattr(model, "name", "flattened")

    def coarse_label_set(self, label_set):
        """``(coarse LabelSet, table)``: the label set's image on the flat hierarchy, and
        ``table[coarse id]`` = the original class id a coarse class becomes."""
        from ..hierarchy import LabelSet

        ls = self.hierarchy.label_set(label_set)
        coarse = {cid: coarse_node(self.hierarchy, node, self.flat.depth) for cid, node in ls.nodes.items()}
        nodes = list(dict.fromkeys(coarse[c] for c in ls.ids))
        coarse_ls = LabelSet(f"{ls.name} at depth {self.flat.depth}", dict(enumerate(nodes, 1)), self.flat.hierarchy)
        counts = self.class_counts.get(ls.name, {})
        table = np.zeros(len(nodes) + 1, np.int64)
        for k, node in enumerate(nodes, 1):
            table[k] = max((c for c in ls.ids if coarse[c] == node), key=lambda c: (counts.get(c, 0), -c))
        return coarse_ls, table

    def predict_instances(self, img, label_set=None, **kwargs):
        labels, details = self.model.predict_instances(img, **kwargs)
        if label_set is None:
            return labels, details
        coarse_ls, table = self.coarse_label_set(label_set)
        prob = np.asarray(details["class_prob"], np.float64).reshape(-1, self.flat.hierarchy.n_classes + 1)
        cls = table[coarse_ls.classify(prob)]
        # the coarse model's own label-set entries describe the flat hierarchy: not passed on
        details = {k: v for k, v in details.items() if k not in ("label_set_prob", "leaf_class_id", "label_set")}
        details.update(class_id=cls, class_prob=None, coarse_class_prob=prob,
                       label_set=self.hierarchy.label_set(label_set).name)
        return labels, details


# ----------------------------------------------------------------------------------------
# training the variants


@dataclass
class BenchSettings:
    """Sizes of the claim benchmark (defaults: ~35 minutes on 2 CPU cores for 3 targets x 3 seeds).

    Attributes
    ----------
    epochs_pretrain, epochs_finetune : int
        Epochs of the two phases; ``target_only`` and ``mixed`` train for their sum.
    steps_per_epoch : int
    max_train, max_val : int or None
        Images per dataset (the first ones of each split; ``None``: all).
    model : dict
        :class:`HierConfig2D` parameters.
    """

    epochs_pretrain: int = 6
    epochs_finetune: int = 6
    steps_per_epoch: int = 25
    max_train: int | None = None
    max_val: int | None = None
    model: dict = field(default_factory=lambda: dict(
        n_rays=32, grid=(2, 2), n_channel_in=3, unet_n_depth=2, unet_n_filter_base=32, net_conv_after_unet=64,
        train_patch_size=(128, 128), train_batch_size=4, train_learning_rate=3e-4, train_reduce_lr=None,
        use_gpu=False))

    def to_dict(self):
        """Plain dict (JSON-friendly)."""
        d = asdict(self)
        d["model"] = {k: list(v) if isinstance(v, tuple) else v for k, v in d["model"].items()}
        return d


def load_split_data(data_root, dataset, split, hierarchy="default", max_images=None):
    """Normalised images, instance masks and class dicts of one split (the first ``max_images``)."""
    from .. import patches as P

    h = ClassHierarchy.resolve(hierarchy)
    ids = P.list_patches(data_root, dataset, split)
    if max_images is not None:
        ids = ids[:max_images]
    if not ids:
        raise FileNotFoundError(f"no patches in {Path(data_root) / dataset / split}")
    return P.load_split(data_root, dataset, split, ids=ids, label_set=h.label_set(dataset))


def _seed(seed):
    from ..model.build import seed_everything

    seed_everything(seed)


def _new_model(settings, hierarchy, seed):
    from ..model.build import build_model

    return build_model(hierarchy, settings.model, seed=seed)


def _clone(model):
    """Same config, weights and optimizer state, as a new model (to fork after pre-training)."""
    from ..model import HierStarDist2D
    from ..model.folder import copy_optimizer_state

    twin = HierStarDist2D(model.config, basedir=None)
    twin.keras_model.set_weights(model.keras_model.get_weights())
    copy_optimizer_state(model, twin)
    return twin


def _train(model, data, dataset, epochs, steps, seed):
    """One :meth:`HierStarDist2D.train` call; ``data`` = (X, Y, C, Xv, Yv, Cv[, names, names_v])."""
    X, Y, C, Xv, Yv, Cv = data[:6]
    ds, ds_v = (data[6], data[7]) if len(data) > 6 else (dataset, dataset)
    _seed(seed)
    hist = model.train(X, Y, validation_data=(Xv, Yv, Cv, ds_v), classes=C, dataset=ds, seed=int(seed) % (2**31 - 1),
                       epochs=epochs, steps_per_epoch=steps, verbose=0)
    return {k: [float(x) for x in v] for k, v in hist.history.items()}


def train_variants(target, source, data, settings, seed, variants=None, hierarchy="default", on_model=None):
    """Train the requested variants for one target and seed, sharing the pre-training.

    Parameters
    ----------
    target, source : str
        Dataset (label-set) names.
    data : dict
        Dataset name -> ``(X, Y, C, Xv, Yv, Cv)`` (train and val of :func:`load_split_data`).
    settings : BenchSettings
    seed : int
    variants : sequence of str, optional
        Keys of :data:`VARIANTS` (default all).
    on_model : callable
        ``on_model(variant, model, history, seconds)`` for each trained variant (the caller
        evaluates and frees it), in the order of :data:`VARIANTS`.
    """
    variants = list(VARIANTS) if variants is None else list(variants)
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise ValueError(f"unknown variant(s) {sorted(unknown)}; choose from {list(VARIANTS)}")
    h = ClassHierarchy.resolve(hierarchy)
    s = settings
    total = s.epochs_pretrain + s.epochs_finetune
    steps = s.steps_per_epoch
    seeds = {k: int(seed) * 1000 + j for j, k in enumerate(("init", "pre", "fine", "long", "head"))}
    # the same initial weights (seed "init") for every variant with the full hierarchy

    if "target_only" in variants:
        t0 = time.perf_counter()
        m = _new_model(s, h, seeds["init"])
        hist = _train(m, data[target], target, total, steps, seeds["long"])
        on_model("target_only", m, hist, time.perf_counter() - t0)

    if "finetune" in variants or "reinit_head" in variants:
        t0 = time.perf_counter()
        m = _new_model(s, h, seeds["init"])
        hist_pre = _train(m, data[source], source, s.epochs_pretrain, steps, seeds["pre"])
        t_pre = time.perf_counter() - t0
        if "reinit_head" in variants:
            t1 = time.perf_counter()
            twin = _clone(m)
            twin.reinitialize_class_head(seed=seeds["head"])
            hist = _train(twin, data[target], target, s.epochs_finetune, steps, seeds["fine"])
            reinit = (twin, {"pretrain": hist_pre, "finetune": hist}, t_pre + time.perf_counter() - t1)
        if "finetune" in variants:
            t1 = time.perf_counter()
            hist = _train(m, data[target], target, s.epochs_finetune, steps, seeds["fine"])
            on_model("finetune", m, {"pretrain": hist_pre, "finetune": hist}, t_pre + time.perf_counter() - t1)
        if "reinit_head" in variants:
            on_model("reinit_head", *reinit)

    if "mixed" in variants:
        t0 = time.perf_counter()
        Xs, Ys, Cs, Xvs, Yvs, Cvs = data[source]
        Xt, Yt, Ct, Xvt, Yvt, Cvt = data[target]
        mixed = (Xs + Xt, Ys + Yt, Cs + Ct, Xvs + Xvt, Yvs + Yvt, Cvs + Cvt,
                 [source] * len(Xs) + [target] * len(Xt), [source] * len(Xvs) + [target] * len(Xvt))
        m = _new_model(s, h, seeds["init"])
        hist = _train(m, mixed, None, total, steps, seeds["long"])
        on_model("mixed", m, hist, time.perf_counter() - t0)

    if "flatten" in variants:
        t0 = time.perf_counter()
        flat = flatten_hierarchy(h, depth=1)
        fdata = {}
        for ds in (source, target):
            X, Y, C, Xv, Yv, Cv = data[ds]
            tab = flat.lookup[ds]
            fdata[ds] = (X, Y, flatten_classes(C, tab), Xv, Yv, flatten_classes(Cv, tab))
        m = _new_model(s, flat.hierarchy, seeds["init"])
        hist_pre = _train(m, fdata[source], source, s.epochs_pretrain, steps, seeds["pre"])
        hist = _train(m, fdata[target], target, s.epochs_finetune, steps, seeds["fine"])
        wrapped = FlattenedModel(m, flat, h, {target: class_counts_of(data[target][2])})
        on_model("flatten", wrapped, {"pretrain": hist_pre, "finetune": hist}, time.perf_counter() - t0)


# ----------------------------------------------------------------------------------------
# the benchmark


def _evaluate(model, data_root, target, hierarchy):
    from ..metrics import evaluate_folder

    res = evaluate_folder(data_root, split="test", dataset=target, model=model, hierarchy=hierarchy, progress=False,
                          centroid_radius=None)
    return {col: float(res.summary[key]) for col, key in METRICS}


def run_claim_benchmark(data_root, out, targets=("pannuke", "monusac", "consep"), seeds=(0, 1, 2), settings=None,
                        variants=None, sources=None, progress=True, log=print):
    """Train and score every (target, seed, variant); resumable.

    Each finished (target, seed) group is appended to ``<out>/results.jsonl`` (one line per
    variant); a rerun skips the groups already there, so an interrupted benchmark continues
    where it stopped. ``<out>/settings.json`` records the settings; a rerun with other
    settings is refused.

    Parameters
    ----------
    data_root : path-like
        Synthetic (or prepared) datasets with train/val/test splits.
    out : path-like
    targets, seeds : sequences
    settings : BenchSettings, optional
    variants : sequence of str, optional
    sources : dict, optional
        Target -> source dataset (default :data:`SOURCES`).
    progress : bool
        A progress bar over (target, seed) groups.
    log : callable

    Returns
    -------
    pandas.DataFrame
        One row per (target, source, seed, variant): the :data:`METRICS` columns and
        ``seconds`` (training).
    """
    import pandas as pd
    from tqdm import tqdm

    settings = settings or BenchSettings()
    sources = dict(SOURCES, **(sources or {}))
    variants = list(VARIANTS) if variants is None else list(variants)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sfile = out / "settings.json"
    sdict = dict(settings.to_dict(), variants=variants, sources={t: sources[t] for t in targets},
                 data_root=str(Path(data_root).resolve()))
    if sfile.is_file():
        old = json.loads(sfile.read_text())
        if {k: v for k, v in old.items() if k != "data_root"} != {k: v for k, v in sdict.items() if k != "data_root"}:
            raise FileExistsError(f"{out} holds results made with other settings; use another output folder")
    else:
        atomic_write_text(sfile, json.dumps(sdict, indent=1))
    rfile = out / "results.jsonl"
    rows = [json.loads(line) for line in rfile.read_text().splitlines() if line.strip()] if rfile.is_file() else []
    done = {(r["target"], r["seed"]) for r in rows}
    h = ClassHierarchy.default()
    groups = [(t, s) for t in targets for s in seeds]
    cache = {}
    bar = tqdm(total=len(groups), desc="claim benchmark", unit="group", disable=not progress)
    for target, seed in groups:
        if (target, seed) in done:
            bar.update(1)
            continue
        source = sources[target]
        for ds in (source, target):
            if ds not in cache:
                cache[ds] = (load_split_data(data_root, ds, "train", h, settings.max_train)
                             + load_split_data(data_root, ds, "val", h, settings.max_val))
        group = []

        def on_model(variant, model, history, seconds, target=target, source=source, seed=seed, group=group):
            t0 = time.perf_counter()
            scores = _evaluate(model, data_root, target, h)
            rec = dict(target=target, source=source, seed=int(seed), variant=variant,
                       label=VARIANTS[variant][0], **scores, seconds=round(seconds, 1),
                       eval_seconds=round(time.perf_counter() - t0, 1))
            group.append(rec)
            log(f"  {target} seed {seed} ({VARIANTS[variant][0]}) {variant:12s} "
                + "  ".join(f"{c} {scores[c]:.4f}" for c, _ in METRICS) + f"  [{seconds:.0f} s train]")

        train_variants(target, source, cache, settings, seed, variants=variants, hierarchy=h, on_model=on_model)
        rows += group
        # one group at a time, the file replaced whole: a crash never leaves half a group
        atomic_write_text(rfile, "".join(json.dumps(r) + "\n" for r in rows))
        bar.update(1)
        import keras

        keras.backend.clear_session()  # models of finished groups are not needed any more
    bar.close()
    return pd.DataFrame(rows)


def summarize_claim(df):
    """Mean, standard deviation and per-seed values per (target, variant).

    Also ``Δ bPQ`` / ``Δ mPQ`` against ``target_only`` (mean of per-seed differences, and
    how many seeds the variant beats target-only in mPQ).

    Returns
    -------
    pandas.DataFrame
    """
    import pandas as pd

    out = []
    for (target, variant), g in df.groupby(["target", "variant"], sort=False):
        rec = dict(target=target, source=g["source"].iloc[0], variant=f"({VARIANTS[variant][0]}) {variant}",
                   n_seeds=len(g))
        for col, _ in METRICS:
            rec[f"{col} mean"] = g[col].mean()
            rec[f"{col} sd"] = g[col].std(ddof=1) if len(g) > 1 else float("nan")
        base = df[(df["target"] == target) & (df["variant"] == "target_only")].set_index("seed")
        gi = g.set_index("seed")
        common = gi.index.intersection(base.index)
        for col in ("bPQ", "mPQ"):
            d = gi.loc[common, col] - base.loc[common, col]
            rec[f"Δ{col} vs (a)"] = d.mean() if len(d) else float("nan")
        rec["seeds beating (a) in mPQ"] = (f"{int((gi.loc[common, 'mPQ'] > base.loc[common, 'mPQ']).sum())}/{len(common)}"
                                          if len(common) else "-")
        rec["train s"] = g["seconds"].mean()
        out.append(rec)
    res = pd.DataFrame(out)
    order = {k: i for i, k in enumerate(VARIANTS)}
    res["_o"] = [order[v.split(") ")[1]] for v in res["variant"]]
    return res.sort_values(["target", "_o"], kind="stable").drop(columns="_o").reset_index(drop=True)


def format_claim_table(summary, markdown=True):
    """The summary as a markdown (or plain) table with ``mean ± sd`` cells."""
    head = ["target", "source", "variant"] + [c for c, _ in METRICS] + ["ΔbPQ vs (a)", "ΔmPQ vs (a)",
                                                                         "seeds > (a) in mPQ", "train s"]
    lines = []
    for _, r in summary.iterrows():
        cells = [r["target"], r["source"], r["variant"]]
        cells += [f"{r[f'{c} mean']:.4f} ± {r[f'{c} sd']:.4f}" for c, _ in METRICS]
        cells += [("-" if r["variant"].startswith("(a)") else f"{r['ΔbPQ vs (a)']:+.4f}"),
                  ("-" if r["variant"].startswith("(a)") else f"{r['ΔmPQ vs (a)']:+.4f}"),
                  ("-" if r["variant"].startswith("(a)") else r["seeds beating (a) in mPQ"]), f"{r['train s']:.0f}"]
        lines.append(cells)
    if markdown:
        return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
                         + ["| " + " | ".join(map(str, c)) + " |" for c in lines])
    import pandas as pd

    return pd.DataFrame(lines, columns=head).to_string(index=False)
