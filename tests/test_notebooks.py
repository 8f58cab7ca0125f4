"""The notebooks run (nbclient) over run folders of a few rows and show all 17 rows."""

import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from stardist_hier.experiments.report import NOT_RUN, collect_table, format_table
from stardist_hier.experiments.config import make_row_config
from stardist_hier.experiments.runner import run_experiment

from experiment_data import TINY_RUN, make_tiny_data

pytest.importorskip("tensorflow")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
#: Table II row 4 and Table III row 5 share their only episode (MoNuSAC): one training
RUN_ROWS = [(2, 4), (3, 5)]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    data = make_tiny_data(tmp_path_factory.mktemp("data"), datasets=("monusac", "consep"))
    out = tmp_path_factory.mktemp("results")
    for row in RUN_ROWS:
        run_experiment(make_row_config(row, "smoke", **TINY_RUN), data, out, verbose=0)
    return dict(data=data, out=out)


def execute(name, results, tmp_path):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "notebooks are committed without outputs"
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1
    params[0].source = (f"data_root = {str(results['data'])!r}\nscale = 'smoke'\n"
                        f"results_dir = {str(results['out'])!r}\nrun_missing = False")
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    return nb


def outputs_text(nb):
    parts = []
    for c in nb.cells:
        for o in c.get("outputs", []):
            if "text" in o:
                parts.append(o["text"])
            for key in ("text/markdown", "text/html", "text/plain"):
                if key in o.get("data", {}):
                    parts.append(o["data"][key])
    return "\n".join(parts)


@pytest.mark.parametrize("table,n_rows", [(2, 9), (3, 8)])
def test_table_notebook(results, tmp_path, table, n_rows):
    nb = execute(f"table{table}.ipynb", results, tmp_path)
    text = outputs_text(nb)
    assert "SYNTHETIC DATA, SMOKE SCALE" in text
    first = next(c for c in nb.cells if c.cell_type == "code" and c.get("outputs"))
    assert "SYNTHETIC DATA" in json.dumps(first["outputs"]), "the banner is the first output"
    assert text.count(NOT_RUN) > 0
    # the same table the notebook shows: all rows, numbers where a run exists
    df = collect_table(results["out"], table)
    assert len(df) == n_rows and list(df["row"]) == list(range(1, n_rows + 1))
    done = df[df["status"] == "done"]
    assert list(done["row"]) == [4 if table == 2 else 5]
    assert done[["bPQ", "mPQ", "PQ (CoNIC)", "mPQ+", "Δ bPQ"]].notna().all(axis=None)
    assert (df.loc[df["status"] != "done", "status"] == NOT_RUN).all()
    assert df.loc[df["status"] != "done", "bPQ"].isna().all()
    shown = format_table(df, as_text=True)
    assert shown.count(NOT_RUN) >= 10 * (n_rows - 1)
    assert f"{done['paper PQ'].iloc[0]:.4f}" in text
    # the notebook shows the reproduced numbers of the row that ran, not only the paper's
    for col in ("bPQ", "mPQ+"):
        assert f"{done[col].iloc[0]:.4f}" in text and f"{done[f'Δ {col}'].iloc[0]:+.4f}" in text


def test_figures_notebook(results, tmp_path):
    nb = execute("figures.ipynb", results, tmp_path)
    text = outputs_text(nb)
    assert "SYNTHETIC DATA, SMOKE SCALE" in text
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 3  # Fig. 3, Fig. 2, Fig. 4 (rows not run are drawn as placeholders)


def _doc_texts():
    root = NOTEBOOKS.parent
    texts = {"experiments/README.md": (root / "experiments" / "README.md").read_text()}
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        texts[f"notebooks/{path.name}"] = "\n".join(c.source for c in nb.cells)
    return root, texts


def _resolves(dotted):
    import importlib

    parts = dotted.split(".")
    for k in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:k]))
        except ModuleNotFoundError:
            continue
        for attr in parts[k:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def test_experiment_docs_name_modules_and_files_that_exist():
    """experiments/README.md and the notebooks follow the package layout: every module,
    attribute and file they name exists, and they name the replay subcommand."""
    import re

    root, texts = _doc_texts()
    for where, text in texts.items():
        for dotted in re.findall(r"`(stardist_hier(?:\.\w+)+)", text):
            assert _resolves(dotted), f"{where}: {dotted} does not exist"
        for path in re.findall(r"`((?:stardist_hier|experiments|notebooks|benchmarks)/[\w/.*]+\.(?:py|ipynb|md))`", text):
            assert list(root.glob(path)), f"{where}: {path} does not exist"
        for old in ("stardist_hier.runner", "stardist_hier.report", "stardist_hier/paper_tables.py",
                    "stardist_hier/metrics.py"):
            assert old not in text, f"{where} still names {old}"
    assert "stardist-hier replay" in texts["experiments/README.md"]
