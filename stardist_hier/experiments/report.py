"""Collect run folders into the paper's tables, and draw the paper's figures.

Used by ``notebooks/table2.ipynb``, ``notebooks/table3.ipynb`` and ``notebooks/figures.ipynb``
(which only call these functions) and by ``experiments/run_all.py``.

* :func:`collect_table`: Table II or III with the published PQ, the reproduced value in
  every convention (:data:`CONVENTIONS`) and the difference; rows without a complete run
  are marked :data:`NOT_RUN` (or ``incomplete``).
* :func:`plot_loss_curves`: training and validation loss across the dataset switch (Fig. 3).
* :func:`plot_overlays`: predicted versus annotated outlines on test images (Figs. 2 and 4).
* :func:`setup_notebook`: resolves a notebook's parameters (real data or synthetic smoke).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..metrics.folder import HEADLINE_METRICS
from .paper_tables import TABLE2, TABLE3, get_row

__all__ = ["CONVENTIONS", "NOT_RUN", "find_runs", "run_status", "collect_table", "format_table",
           "plot_loss_curves", "plot_overlays", "setup_notebook", "run_summary", "FIGURE_ROWS", "figure_panels"]

#: reproduced columns: (column label, metrics.csv key): the package's headline metrics
#: (:data:`stardist_hier.metrics.folder.HEADLINE_METRICS`) and StarDist's own PQ. The paper
#: reports one "PQ" (Eq. 5) without saying how it is averaged, so every convention is shown.
CONVENTIONS = [*HEADLINE_METRICS, ("PQ (StarDist)", "PQ_stardist_summed")]

#: mark of a row without a complete run
NOT_RUN = "not run"

#: rows drawn by the figures notebook: (figure, panel) -> (table, row)
FIGURE_ROWS = {
    ("Fig. 2", "a"): (2, 6),  # PanNuke 250 -> MoNuSAC 130, tested on MoNuSAC
    ("Fig. 2", "b"): (2, 4),  # MoNuSAC 175 only
    ("Fig. 3", "a"): (2, 4),
    ("Fig. 3", "b"): (2, 6),
    ("Fig. 4", "a"): (3, 2),  # CoNSeP 100 -> PanNuke 62, tested on (unseen) MoNuSAC
    ("Fig. 4", "b"): (3, 1),  # CoNSeP 100 only
}


def figure_panels(figure):
    """``((label, table, row), ...)`` of one figure of :data:`FIGURE_ROWS`, e.g. ``'Fig. 3'``."""
    panels = tuple((label, *tr) for (fig, label), tr in FIGURE_ROWS.items() if fig == figure)
    if not panels:
        raise ValueError(f"no panels for {figure!r}; figures: {sorted({f for f, _ in FIGURE_ROWS})}")
    return panels


def find_runs(results_dir):
    """``{run name: run folder}`` of every folder under ``results_dir`` with a ``config.yaml``."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        return {}
    return {p.name: p for p in sorted(results_dir.iterdir()) if (p / "config.yaml").is_file()}


def run_status(run_dir):
    """``'done'``, ``'incomplete'`` or :data:`NOT_RUN` for a run folder (or ``None``)."""
    if run_dir is None or not Path(run_dir).is_dir():
        return NOT_RUN
    if (Path(run_dir) / "run.json").is_file() and (Path(run_dir) / "metrics.csv").is_file():
        return "done"
    return "incomplete"


def collect_table(results_dir, table):
    """The paper's Table II or III beside the reproduced numbers.

    Parameters
    ----------
    results_dir : str or path-like
        The ``--out`` folder of the runs.
    table : int
        2 or 3.

    Returns
    -------
    pandas.DataFrame
        One row per paper row, in the paper's order: ``row``, ``pre-train``, ``epochs``,
        ``fine-tune``, ``fine-tune epochs``, ``test``, ``paper PQ``, ``status``, ``scale``,
        ``epochs run``, then per convention the reproduced value and ``Δ <convention>`` =
        reproduced - published. Values are NaN where the row has no complete run.
    """
    import pandas as pd
    import yaml

    rows = {2: TABLE2, 3: TABLE3}[int(table)]
    runs = find_runs(results_dir)
    out = []
    for r in rows:
        run_dir = runs.get(r.name)
        status = run_status(run_dir)
        rec = {"row": r.row, "pre-train": r.pretrain, "epochs": r.pretrain_epochs,
               "fine-tune": r.finetune or "-", "fine-tune epochs": r.finetune_epochs, "test": r.test,
               "paper PQ": r.pq, "status": status, "scale": None, "epochs run": None}
        for label, _ in CONVENTIONS:
            rec[label] = np.nan
            rec[f"Δ {label}"] = np.nan
        if run_dir is not None:
            try:
                cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
                rec["scale"] = cfg.get("scale")
                rec["epochs run"] = " + ".join(str(e["epochs"]) for e in cfg.get("episodes", []))
            except (OSError, yaml.YAMLError):
                pass
        if status == "done":
            m = pd.read_csv(run_dir / "metrics.csv")
            m = m[m["dataset"] == r.test]
            if len(m):
                for label, key in CONVENTIONS:
                    if key in m.columns:
                        rec[label] = float(m.iloc[0][key])
                        rec[f"Δ {label}"] = rec[label] - r.pq
        out.append(rec)
    return pd.DataFrame(out)


def format_table(df, as_text=False, digits=4):
    """The table for display: numbers with ``digits`` decimals, missing values as :data:`NOT_RUN`.

    Returns a DataFrame of strings (a notebook shows it as an HTML table) or, with
    ``as_text``, a string.
    """
    shown = df.copy()
    num = [c for c in shown.columns if c == "paper PQ" or any(c in (lab, f"Δ {lab}") for lab, _ in CONVENTIONS)]
    for c in num:
        signed = c.startswith("Δ")
        shown[c] = [NOT_RUN if (v is None or (isinstance(v, float) and np.isnan(v)))
                    else (f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}") for v in shown[c]]
    shown = shown.fillna("-")
    if as_text:
        return shown.to_string(index=False)
    return shown.set_index("row")


# ----------------------------------------------------------------------------------------
# figures


def _run_dir_of(results_dir, table, row):
    r = get_row(table, row)
    d = Path(results_dir) / r.name
    return r, (d if run_status(d) == "done" else None)


def _panel_title(label, r, run_dir):
    """``(a) pannuke 250 -> monusac 130`` (paper epochs), plus the epochs actually run."""
    title = f"({label}) " + " -> ".join(f"{ds} {e}" for ds, e in r.episodes)
    if run_dir is not None:
        import yaml

        cfg = yaml.safe_load((Path(run_dir) / "config.yaml").read_text()) or {}
        run = " + ".join(str(e["epochs"]) for e in cfg.get("episodes", []))
        if run != " + ".join(str(e) for _, e in r.episodes):
            title += f" [paper epochs; run: {run}]"
    return title


def _placeholder(ax, text):
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#888", wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_loss_curves(results_dir, panels=None, figsize=(11, 4)):
    """Training and validation loss per epoch across the dataset switch (the paper's Fig. 3).

    Parameters
    ----------
    results_dir : str or path-like
    panels : sequence of (label, table, row)
        Default ``figure_panels('Fig. 3')``: (a) MoNuSAC only (Table II row 4), (b) PanNuke
        then MoNuSAC (row 6).

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt
    import pandas as pd

    panels = figure_panels("Fig. 3") if panels is None else panels
    fig, axes = plt.subplots(1, len(panels), figsize=figsize, squeeze=False)
    for ax, (label, table, row) in zip(axes[0], panels):
        r, d = _run_dir_of(results_dir, table, row)
        ax.set_title(_panel_title(label, r, d), fontsize=10)
        if d is None:
            _placeholder(ax, f"{r.name}: {NOT_RUN}")
            continue
        h = pd.read_csv(d / "history.csv")
        ax.plot(h["epoch"], h["loss"], label="training loss", color="C0")
        ax.plot(h["epoch"], h["val_loss"], label="validation loss", color="C1")
        for ep in sorted(h["episode"].unique())[1:]:
            x = h.loc[h["episode"] == ep, "epoch"].min() - 0.5
            ax.axvline(x, color="k", ls="--", lw=1)
            ax.text(x, ax.get_ylim()[1], f" switch to {h.loc[h['episode'] == ep, 'dataset'].iloc[0]}",
                    va="top", fontsize=8)
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss (validation: the episode's dataset)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _outline(lbl):
    from skimage.segmentation import find_boundaries

    return find_boundaries(lbl, mode="inner")


def plot_overlays(results_dir, panels=None, n_images=3, data_root=None, figsize=None):
    """Predicted (yellow) and annotated (green) outlines on test images (the paper's Figs. 2, 4).

    Parameters
    ----------
    results_dir : str or path-like
    panels : sequence of (label, table, row)
        One figure row per panel; default ``figure_panels('Fig. 2')`` (PanNuke -> MoNuSAC vs
        MoNuSAC only).
    n_images : int
        Test images per panel (the first ones of the test split, the same for all panels).
    data_root : str or path-like, optional
        Default: the data root recorded in each run's ``config.yaml``.

    Returns
    -------
    matplotlib.figure.Figure
    """
    import contextlib
    import io

    import matplotlib.pyplot as plt
    import yaml

    from .. import patches as P
    from ..patches import normalize_image

    import textwrap

    panels = figure_panels("Fig. 2") if panels is None else panels
    figsize = figsize or (max(3 * n_images, 6), 3.4 * len(panels))
    fig, axes = plt.subplots(len(panels), n_images, figsize=figsize, squeeze=False)
    # a row title spans the row: wrap it to the figure's width (about 11 characters per inch
    # at font size 9) so that it is not cut off with few images per row
    wrap = max(int(figsize[0] * 11), 30)
    for axrow, (label, table, row) in zip(axes, panels):
        r, d = _run_dir_of(results_dir, table, row)
        name = _panel_title(label, r, d) + f", test {r.test}"
        if d is None:
            for ax in axrow:
                _placeholder(ax, NOT_RUN)
            axrow[0].set_title(textwrap.fill(f"{name}: {NOT_RUN}", wrap), fontsize=9, loc="left")
            continue
        from ..model import HierStarDist2D

        cfg = yaml.safe_load((d / "config.yaml").read_text())
        root = Path(data_root or cfg["data_root"])
        split = cfg["splits_used"][r.test]["test"]
        ids = P.list_patches(root, r.test, split)[:n_images]
        with contextlib.redirect_stdout(io.StringIO()):  # stock StarDist prints what it loads
            model = HierStarDist2D(None, "model", str(d))
        for k, ax in enumerate(axrow):
            ax.set_xticks([])
            ax.set_yticks([])
            if k >= len(ids):
                ax.axis("off")
                continue
            image, mask = P.read_patch(root, r.test, split, ids[k])
            pred, _ = model.predict_instances(normalize_image(image), label_set=r.test)
            rgb = image.astype(float) / 255
            rgb[_outline(np.maximum(mask[..., 0], 0))] = (0.1, 0.9, 0.1)
            rgb[_outline(pred)] = (1.0, 0.9, 0.0)
            ax.imshow(rgb)
            ax.set_xlabel(ids[k], fontsize=7)
        axrow[0].set_title(textwrap.fill(name, wrap), fontsize=9, loc="left")
    fig.text(0.5, 0.005, "green: annotation, yellow: prediction", ha="center", va="bottom", fontsize=8)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return fig


# ----------------------------------------------------------------------------------------
# notebooks


def setup_notebook(data_root=None, scale=None, results_dir=None, run_missing=None, rows=None, verbose=0):
    """Resolve a notebook's parameters and say what the numbers are.

    Parameters
    ----------
    data_root : str or None
        Root of the prepared real datasets; ``None``: synthetic stand-ins at smoke scale
        (made under ``<results_dir>/synthetic-data`` if missing).
    scale : {'paper', 'smoke'} or None
        Default ``'paper'`` with real data, ``'smoke'`` without.
    results_dir : str or None
        Run folders; default ``results/<scale>`` (``results/smoke-synthetic`` without data).
    run_missing : bool or None
        Run the rows (``rows``, default all 17) that have no complete run. Default: only on
        synthetic data (minutes on a CPU); real runs belong in ``experiments/``.
    rows : sequence of (table, row), optional

    Returns
    -------
    dict
        ``data_root``, ``scale``, ``results_dir``, ``synthetic`` (bool) and ``banner``
        (markdown text to show at the top of the notebook).
    """
    synthetic = data_root is None or _is_synthetic(data_root)
    scale = scale or ("smoke" if synthetic else "paper")
    if results_dir is None:
        results_dir = Path("results") / ("smoke-synthetic" if synthetic else scale)
    results_dir = Path(results_dir)
    if data_root is None:
        data_root = results_dir / "synthetic-data"
    if run_missing is None:
        run_missing = synthetic
    if run_missing:
        from .paper_tables import ROWS
        from .data import ensure_synthetic
        from .runner import run_rows

        if synthetic and not _is_synthetic(data_root):
            ensure_synthetic(data_root)
        todo = [r for r in ([get_row(*x) for x in rows] if rows else ROWS)
                if run_status(results_dir / r.name) != "done"]
        if todo:
            run_rows(todo, data_root, results_dir, scale=scale, verbose=verbose)
    if synthetic:
        banner = (f"**SYNTHETIC DATA, {scale.upper()} SCALE.** No real data: these results come from the "
                  f"synthetic stand-in datasets in `{data_root}` with the `{scale}` configuration "
                  f"(runs in `{results_dir}`). "
                  "They exercise the pipeline; they are **not** comparable to the paper's numbers.")
    else:
        banner = f"Real data from `{data_root}`, scale `{scale}`, runs in `{results_dir}`."
        if scale != "paper":
            banner += " **Not the paper's scale: numbers are not comparable to the paper's.**"
    return dict(data_root=str(data_root), scale=scale, results_dir=str(results_dir), synthetic=synthetic,
                banner=banner)


def _is_synthetic(root):
    """True if the data root holds the synthetic stand-ins (``stardist-hier synth`` writes synth.json)."""
    return any((Path(root) / ds / "synth.json").is_file() for ds in ("pannuke", "monusac", "consep"))


def run_summary(results_dir):
    """One line per run folder: name, status, epochs, seconds (for a notebook's footer)."""
    import pandas as pd

    out = []
    for name, d in find_runs(results_dir).items():
        info = {}
        if (d / "run.json").is_file():
            info = json.loads((d / "run.json").read_text())
        out.append(dict(run=name, status=run_status(d), seconds=info.get("seconds"),
                        reused=", ".join(e["dataset"] for e in info.get("episodes", []) if e.get("reused"))))
    return pd.DataFrame(out, columns=["run", "status", "seconds", "reused"])
