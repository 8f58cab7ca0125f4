"""The one-page summary of a run folder: its loss curves across episodes, and what was trained and scored.

:func:`write_training_summary` (called by the runner before it writes ``run.json``) adds to
the run folder

* ``loss_curves.png`` (:func:`plot_run_losses`): per epoch of the whole run the training
  loss, the validation loss over all validation images of the episode and the validation
  loss of each validation dataset (``val_loss_<dataset>``), a dashed line at each episode
  boundary labelled with the episode's datasets, and a marker at each episode's best epoch
  of its monitored quantity;
* ``summary.md`` and ``summary.html`` (:func:`summary_markdown`, :func:`summary_html`): the
  run, its datasets and their sizes, its episodes (datasets and mix weights, epochs planned
  and run, monitor, best value, stop reason, reuse from the cache), the detection
  thresholds, the headline metrics (:data:`stardist_hier.metrics.folder.HEADLINE_METRICS`)
  of each test set at its own label set, notes, and the exact config.

Matplotlib only (the Agg backend, no display needed); no TensorFlow.
"""

from __future__ import annotations

import html
import math
from pathlib import Path

import numpy as np
import yaml

from ..atomic import atomic_save, atomic_write_text
from ..metrics.folder import HEADLINE_METRICS

__all__ = ["LOSS_CURVES", "SUMMARY_MD", "SUMMARY_HTML", "plot_run_losses", "summary_tables", "summary_markdown",
           "summary_html", "write_training_summary"]

LOSS_CURVES = "loss_curves.png"
SUMMARY_MD = "summary.md"
SUMMARY_HTML = "summary.html"


def _fmt(v, digits=4):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, (float, np.floating)):
        return f"{v:.{digits}f}"
    if isinstance(v, bool):
        return "yes" if v else "no"
    return str(v)


def plot_run_losses(history, episodes=None, title=None, figsize=(10, 4.5)):
    """Training and per-dataset validation losses across the episodes of a run.

    Parameters
    ----------
    history : pandas.DataFrame
        The run's ``history.csv``.
    episodes : list of dict, optional
        ``run.json``'s episodes (``monitor``, ``best_epoch``), for the best-epoch markers.
    title : str, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    ax = fig.add_subplot(1, 1, 1)
    per_set = [c for c in history.columns if c.startswith("val_loss_")]
    curves = [("loss", "training loss", "-o", "C0"), ("val_loss", "validation loss (all validation images)", "-o", "C1")]
    curves += [(c, f"validation loss, {c[len('val_loss_'):]}", "--s", f"C{k + 2}") for k, c in enumerate(per_set)]
    values = history[[c for c, *_ in curves]].to_numpy(float)
    ymax, ymin = np.nanmax(values), np.nanmin(values)
    pad = 0.05 * (ymax - ymin if np.isfinite(ymax - ymin) and ymax > ymin else 1.0)
    ax.set_ylim(ymin - pad, ymax + 6 * pad)
    first = history["episode"].min()
    labelled = set()
    for ep in sorted(history["episode"].unique()):
        rows = history[history["episode"] == ep]
        # one line per episode: its training data and validation sets are its own, so
        # the curves are not joined across a boundary
        for col, label, style, color in curves:
            if rows[col].notna().any():
                ax.plot(rows["epoch"], rows[col], style, ms=3, color=color, label=None if col in labelled else label)
                labelled.add(col)
        start = rows["epoch"].min()
        if ep != first:
            ax.axvline(start - 0.5, color="k", ls="--", lw=1)
        reused = bool(rows["reused"].any()) if "reused" in rows.columns else False
        ax.text(start - 0.45, ymax + 5 * pad, f"episode {ep}: {rows['dataset'].iloc[0]}" + (" (cache)" if reused else ""),
                va="top", ha="left", fontsize=8)
        if episodes and ep - 1 < len(episodes):
            e = episodes[ep - 1]
            mon, best = e.get("monitor", "val_loss"), e.get("best_epoch")
            if best and mon in rows.columns:
                at = rows[rows["episode_epoch"] == best]
                if len(at):
                    ax.plot(at["epoch"], at[mon], marker="*", ms=12, color="k", ls="none",
                            label=None if "best" in labelled else "best epoch of the episode's monitor")
                    labelled.add("best")
    x = history["epoch"].to_numpy()
    ax.set_xlim(x.min() - 0.5, x.max() + 0.5)
    ax.set_xlabel("epoch (whole run)")
    ax.set_ylabel("loss")
    if len(x) <= 20:
        ax.set_xticks(x)
    if title:
        ax.set_title(title, fontsize=10)
    handles, labels = ax.get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda k: labels[k].startswith("best"))  # the marker last
    ax.legend([handles[k] for k in order], [labels[k] for k in order], fontsize=8, loc="center left",
              bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return fig


def summary_tables(cfg, metrics, info):
    """The summary's tables as lists of rows: ``{'datasets', 'episodes', 'metrics'}``, each ``(header, rows)``."""
    sizes = info.get("datasets") or {}
    from .config import episode_datasets, validation_sets

    uses = {}
    for k, ep in enumerate(cfg["episodes"], 1):
        for d in episode_datasets(ep):
            uses.setdefault(d, {}).setdefault("trains in episode", []).append(str(k))
        for d in validation_sets(ep):
            uses.setdefault(d, {}).setdefault("validates episode", []).append(str(k))
    for t in cfg["test"]:
        uses.setdefault(t, {})["test set"] = []
    roles = {d: [f"{what} {', '.join(eps)}".strip() for what, eps in u.items()] for d, u in uses.items()}
    n_test = {r["dataset"]: r.get("n_images") for _, r in metrics.iterrows()} if len(metrics) else {}
    ds_rows = []
    for d, r in roles.items():
        s = sizes.get(d, {})
        ds_rows.append([d, s.get("label_set", d), _fmt(s.get("train")), _fmt(s.get("val")), _fmt(n_test.get(d)),
                        "; ".join(r)])
    datasets = (["dataset", "label set", "train images", "val images", "test images", "role"], ds_rows)
    ep_rows = []
    for k, e in enumerate(info.get("episodes", []), 1):
        what = e["dataset"]
        if e.get("mix"):
            real = e.get("mix_realised") or {}
            what = ", ".join(f"{d} p={p:.3f}" + (f" (realised {real[d]:.3f})" if d in real else "")
                             for d, p in e["mix"].items())
        best = "-" if e.get("best") is None else f"{e['best']:.4f} @ {e['best_epoch']}"
        stop = e.get("stop_reason") or ("-" if not e.get("stopped_early") else "stopped early")
        ep_rows.append([k, what, e["epochs"], e["epochs_run"], e.get("monitor", "val_loss"), best, stop,
                        "cache" if e.get("reused") else "trained"])
    episodes = (["#", "datasets", "epochs", "epochs run", "monitor", "best", "stop reason", "source"], ep_rows)
    cols = [label for label, _ in HEADLINE_METRICS]
    m_rows = []
    has_paper = "paper_pq" in metrics.columns
    for _, r in metrics.iterrows():
        m_rows.append([r["dataset"], r.get("label_set"), _fmt(r.get("n_images"))]
                      + [_fmt(r.get(key, float("nan"))) for _, key in HEADLINE_METRICS]
                      + ([_fmt(r["paper_pq"])] if has_paper else []))
    mets = (["test set", "label set", "images", *cols] + (["paper PQ"] if has_paper else []), m_rows)
    return dict(datasets=datasets, episodes=episodes, metrics=mets)


def _md_table(header, rows):
    esc = lambda v: str(v).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(map(esc, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(esc(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _thresholds_line(info):
    t = info.get("thresholds") or {}
    where = f"tuned on {t['tuned_on']}" if t.get("tuned_on") else "the model's defaults (not tuned)"
    return f"prob {_fmt(t.get('prob'), 3)}, nms {_fmt(t.get('nms'), 2)}: {where}"


def _config_text(cfg):
    shown = {k: v for k, v in cfg.items() if not k.startswith("_")}
    return yaml.safe_dump(shown, sort_keys=False)


def summary_markdown(cfg, metrics, info):
    """The summary page in Markdown."""
    t = summary_tables(cfg, metrics, info)
    parts = [f"# Run `{cfg['name']}`", "",
             f"{info.get('status', 'complete')}, finished {info.get('finished', '-')} in {_fmt(info.get('seconds'), 1)} s; "
             f"seed {cfg['seed']}, {cfg['steps_per_epoch']} steps per epoch, batch "
             f"{cfg['model'].get('train_batch_size', '-')}, workers {cfg.get('workers', 1)}.", "",
             f"![loss curves]({LOSS_CURVES})", "",
             "## Metrics (each test set at its own label set)", "", _md_table(*t["metrics"]), "",
             f"Detection thresholds: {_thresholds_line(info)}.", "",
             "## Episodes", "", _md_table(*t["episodes"]), "",
             "## Datasets", "", _md_table(*t["datasets"]), ""]
    if info.get("notes"):
        parts += ["## Notes", ""] + [f"* {n}" for n in info["notes"]] + [""]
    parts += ["## Config", "", "```yaml", _config_text(cfg).rstrip(), "```", ""]
    return "\n".join(parts)


def _html_table(header, rows):
    e = html.escape
    head = "".join(f"<th>{e(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{e(str(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def summary_html(cfg, metrics, info):
    """The summary page as one HTML file (the PNG beside it)."""
    e = html.escape
    t = summary_tables(cfg, metrics, info)
    notes = "".join(f"<li>{e(n)}</li>" for n in info.get("notes") or [])
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{e(cfg['name'])}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:1em auto;font-size:14px}}
table{{border-collapse:collapse;margin:0.5em 0}}td,th{{border:1px solid #bbb;padding:2px 6px;text-align:left}}
th{{background:#eee}}img{{max-width:100%}}pre{{background:#f6f6f6;padding:0.5em;font-size:12px}}</style></head>
<body><h1>Run <code>{e(cfg['name'])}</code></h1>
<p>{e(str(info.get('status', 'complete')))}, finished {e(str(info.get('finished', '-')))} in
{e(_fmt(info.get('seconds'), 1))} s; seed {cfg['seed']}, {cfg['steps_per_epoch']} steps per epoch, batch
{e(str(cfg['model'].get('train_batch_size', '-')))}, workers {cfg.get('workers', 1)}.</p>
<img src="{LOSS_CURVES}" alt="loss curves">
<h2>Metrics (each test set at its own label set)</h2>{_html_table(*t['metrics'])}
<p>Detection thresholds: {e(_thresholds_line(info))}.</p>
<h2>Episodes</h2>{_html_table(*t['episodes'])}
<h2>Datasets</h2>{_html_table(*t['datasets'])}
{f'<h2>Notes</h2><ul>{notes}</ul>' if notes else ''}
<details><summary>Config</summary><pre>{e(_config_text(cfg))}</pre></details>
</body></html>
"""


def write_training_summary(run_dir, cfg, history, metrics, info):
    """Write ``loss_curves.png``, ``summary.md`` and ``summary.html`` into a run folder (each atomically).

    Returns
    -------
    dict
        ``{'loss_curves', 'markdown', 'html'}``: the paths.
    """
    run_dir = Path(run_dir)
    fig = plot_run_losses(history, info.get("episodes"), title=f"{cfg['name']}: losses per epoch across episodes")
    atomic_save(run_dir / LOSS_CURVES, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    atomic_write_text(run_dir / SUMMARY_MD, summary_markdown(cfg, metrics, info))
    atomic_write_text(run_dir / SUMMARY_HTML, summary_html(cfg, metrics, info))
    return dict(loss_curves=run_dir / LOSS_CURVES, markdown=run_dir / SUMMARY_MD, html=run_dir / SUMMARY_HTML)
