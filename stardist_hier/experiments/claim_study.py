"""Running the claim study (:mod:`.claim`): every (seed, target, size, variant), resumable.

:func:`run_claim_study` trains each run with :func:`.claim_train.train_variant`, scores it on
the target's test split at the target's label set, and after every run

* rewrites ``<out>/results.jsonl`` (one line per finished run, the whole file replaced
  atomically, so an interrupted study leaves only whole lines);
* rewrites ``summary.md``, ``summary.csv`` and ``learning_curve_<target>.png``
  (:func:`.claim_report.write_report`).

A run's key is (target, size, variant, seed, settings fingerprint): the fingerprint
(:func:`fingerprint`) hashes the :class:`~.claim.BenchSettings`, the data (each dataset's
``synth.json`` and patch ids) and :data:`STUDY_VERSION`, so a rerun skips the finished runs of
the same settings, and lines of other settings stay in the file but are neither reused nor
summarised. Pre-trained states are cached in ``<out>/pretrain/<fingerprint>/``.

Runs go seed by seed (then target, size, variant), so an interrupted study has whole seeds.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from pathlib import Path

from ..atomic import atomic_write_json, atomic_write_text
from ..hierarchy import ClassHierarchy
from .claim import METRICS, SOURCES, VARIANTS, BenchSettings, applicable_variants, load_split_data

__all__ = ["STUDY_VERSION", "DEFAULT_TARGETS", "DEFAULT_SIZES", "DEFAULT_SEEDS", "fingerprint", "read_results",
           "plan_runs", "evaluate_model", "run_claim_study"]

#: part of every fingerprint: raise it when a change of the code changes results
STUDY_VERSION = 1
DEFAULT_TARGETS = ("monusac",)
DEFAULT_SIZES = (8, 16, 32, 64)
DEFAULT_SEEDS = (0, 1, 2, 3, 4)

#: evaluation summary key -> record column, besides METRICS
_EXTRA = {"precision_det": "precision", "recall_det": "recall", "n_pred_nuclei": "n_pred", "n_gt_nuclei": "n_gt",
          "n_pred_unannotated": "n_unannotated"}


def _data_identity(data_root, datasets):
    from .. import patches as P

    out = {}
    for ds in sorted(set(datasets)):
        meta = Path(data_root) / ds / "synth.json"
        ids = {split: P.list_patches(data_root, ds, split) for split in ("train", "val", "test")}
        out[ds] = dict(synth=json.loads(meta.read_text()) if meta.is_file() else None,
                       ids={k: hashlib.sha1("\n".join(v).encode()).hexdigest()[:12] for k, v in ids.items()})
    return out


def fingerprint(settings, data_root, datasets):
    """12 hex digits naming the settings, the data of ``datasets`` and :data:`STUDY_VERSION`."""
    doc = dict(version=STUDY_VERSION, settings=settings.to_dict(), data=_data_identity(data_root, datasets))
    return hashlib.sha1(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:12]


def run_key(rec):
    """(target, size, variant, seed, fingerprint) of a record."""
    return (rec["target"], int(rec["size"]), rec["variant"], int(rec["seed"]), rec["fingerprint"])


def read_results(path):
    """The records of a ``results.jsonl`` (none if it does not exist)."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for k, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except ValueError as e:
                raise ValueError(f"{path}, line {k}: not JSON ({e}); move the file away to start again") from None
    return rows


def plan_runs(targets, sizes, seeds, variants, sources, data, hierarchy):
    """``(runs, skipped)``: the (seed, target, size, variant) of the study in order, and per
    target ``{variant: reason}`` of the variants that do not apply (:func:`~.claim.applicable_variants`)."""
    per_target, skipped = {}, {}
    for t in targets:
        s = sources[t]
        per_target[t], skipped[t] = applicable_variants(t, s, hierarchy, {ds: data[ds]["train"] for ds in (s, t)},
                                                        variants)
    runs = [(seed, t, size, v) for seed in seeds for t in targets for size in sizes for v in per_target[t]]
    return runs, skipped


def evaluate_model(model, data_root, target, hierarchy):
    """Headline metrics, precision, recall and counts of a model on ``target``'s test split (its label set)."""
    from ..metrics import evaluate_folder
    from ..metrics.report import NO_SET_ASIDE

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # untrained classes of a small target, unnormalised-input checks
        res = evaluate_folder(data_root, split="test", dataset=target, model=model, hierarchy=hierarchy,
                              progress=False, centroid_radius=None)
    s = res.summary
    rec = {col: float(s[key]) for col, key in METRICS}
    rec.update({col: int(s[key]) if key.startswith("n_") else float(s[key]) for key, col in _EXTRA.items()})
    rec["set_aside"] = s.get("unannotated_set_aside")
    keys = dict(METRICS, precision="precision_det", recall="recall_det", n_pred="n_pred_nuclei")
    for col, key in keys.items():
        if key + NO_SET_ASIDE in s:
            rec[f"{col} (no set-aside)"] = float(s[key + NO_SET_ASIDE])
    return rec


def _load_data(data_root, datasets, hierarchy):
    data = {}
    for ds in sorted(set(datasets)):
        tr = load_split_data(data_root, ds, "train", hierarchy)
        va = load_split_data(data_root, ds, "val", hierarchy)
        data[ds] = {"train": tuple(tr), "val": tuple(va)}
    return data


def _log_line(rec, i, n):
    m = "  ".join(f"{c} {rec[c]:.3f}" for c in ("bPQ", "mPQ", "mPQ+", "precision", "recall"))
    un = f"  set aside {rec['n_unannotated']}" if rec.get("n_unannotated") else ""
    pre = "" if rec["pretrain_epochs"] is None else (
        f" after {rec['pretrain_epochs']} pre-training epochs{' (cached)' if rec['pretrain_cached'] else ''}")
    return (f"[{i}/{n}] {rec['target']} {rec['size']:>3d} tiles seed {rec['seed']} {rec['variant']:<21s} {m}{un} | "
            f"{rec['epochs']} epochs (best {rec['best_epoch']}){pre}, {rec['train_seconds']:.0f} s")


def run_claim_study(data_root, out, targets=DEFAULT_TARGETS, sizes=DEFAULT_SIZES, seeds=DEFAULT_SEEDS,
                    variants=None, settings=None, sources=None, progress=True, log=None, report=True):
    """Train and score every (seed, target, size, variant); resumable (module docstring).

    Parameters
    ----------
    data_root : path-like
        Datasets with train/val/test splits (e.g. ``stardist-hier synth``); every target and
        its source.
    out : path-like
        Results folder.
    targets : sequence of str
    sizes : sequence of int
        Target training tiles (the first ones of its train split).
    seeds : sequence of int
    variants : sequence of str, optional
        Keys of :data:`~.claim.VARIANTS`; default every one. Variants that do not apply to a
        (target, source) are skipped and listed in the summary.
    settings : BenchSettings, optional
    sources : dict, optional
        Target -> source (default :data:`~.claim.SOURCES`).
    progress : bool
        A progress bar over the runs.
    log : callable, optional
        Receives one line per run (default: printed above the progress bar).
    report : bool
        Rewrite the summary and plots after every run.

    Returns
    -------
    list of dict
        The records of the current settings (finished earlier or now).
    """
    from tqdm import tqdm

    from .claim_report import write_report
    from .claim_train import ModelPool, PretrainCache, train_variant

    settings = BenchSettings() if settings is None else settings
    sources = dict(SOURCES, **(sources or {}))
    unknown = [t for t in targets if t not in sources]
    if unknown:
        raise ValueError(f"no source dataset for target(s) {unknown}; give sources={{target: source}}")
    sizes = sorted({int(s) for s in sizes})
    if not sizes or sizes[0] < 1:
        raise ValueError(f"sizes must be integers >= 1, got {sizes}")
    log = tqdm.write if log is None else log
    h = ClassHierarchy.default()
    used = sorted({*targets, *(sources[t] for t in targets)})
    data = _load_data(data_root, used, h)
    for t in targets:
        have = len(data[t]["train"][0])
        if have < sizes[-1]:
            raise ValueError(f"{Path(data_root) / t / 'train'}: {have} tiles, fewer than the largest size {sizes[-1]}")
    fp = fingerprint(settings, data_root, used)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs, skipped = plan_runs(targets, sizes, seeds, variants, sources, data, h)
    old_meta = out / "settings.json"
    if old_meta.is_file():  # targets of earlier calls with the same settings keep their notes
        old = json.loads(old_meta.read_text())
        if old.get("fingerprint") == fp:
            skipped = dict(old.get("skipped", {}), **skipped)
    meta = dict(fingerprint=fp, settings=settings.to_dict(), sources={t: sources[t] for t in targets},
                targets=list(targets), sizes=sizes, seeds=[int(s) for s in seeds], skipped=skipped,
                data_root=str(Path(data_root).resolve()), data=_data_identity(data_root, used))
    atomic_write_json(out / "settings.json", meta)
    rfile = out / "results.jsonl"
    rows = read_results(rfile)
    done = {run_key(r) for r in rows}
    current = [r for r in rows if r.get("fingerprint") == fp]
    pool, cache = ModelPool(settings, h), PretrainCache(out / "pretrain" / fp)
    todo = [r for r in runs if (r[1], r[2], r[3], int(r[0]), fp) not in done]
    log(f"claim study {fp}: {len(runs)} runs, {len(runs) - len(todo)} finished before, {len(todo)} to go")
    bar = tqdm(total=len(runs), initial=len(runs) - len(todo), desc="claim study", unit="run", disable=not progress)
    for i, (seed, target, size, name) in enumerate(todo, len(runs) - len(todo) + 1):
        source = sources[target]
        t0 = time.perf_counter()
        model, info = train_variant(name, target, source, data, size, seed, settings, pool, cache)
        t1 = time.perf_counter()
        scores = evaluate_model(model, data_root, target, h)
        ph, pre = info["target_phase"], info["pretrain"]
        rec = dict(target=target, source=source, size=int(size), variant=name, label=VARIANTS[name].label,
                   seed=int(seed), fingerprint=fp, **scores, epochs=ph["epochs"], best_epoch=ph["best_epoch"],
                   stopped_early=ph["epochs"] < settings.max_epochs,
                   best_val=ph["best_val"], pretrain_epochs=None if pre is None else pre["epochs"],
                   pretrain_best_epoch=None if pre is None else pre["best_epoch"],
                   pretrain_cached=None if pre is None else bool(pre.get("cached")),
                   train_seconds=round(ph["seconds"], 1),
                   pretrain_seconds=None if pre is None else round(pre["seconds"], 1),
                   run_seconds=round(t1 - t0, 1), eval_seconds=round(time.perf_counter() - t1, 1),
                   val_curve=ph["history"].get(f"val_loss_{target}"))
        rows.append(rec)
        current.append(rec)
        atomic_write_text(rfile, "".join(json.dumps(r) + "\n" for r in rows))
        if report:
            write_report(current, out, skipped=skipped, meta=meta, targets=[target])
        log(_log_line(rec, i, len(runs)))
        bar.update(1)
    bar.close()
    if report:
        write_report(current, out, skipped=skipped, meta=meta)
    return current
