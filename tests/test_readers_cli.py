"""``stardist-hier prepare`` and the data_prep scripts: they only call the library."""

import subprocess
import sys

import pytest

from stardist_hier import patches as P
from stardist_hier.cli import main

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def test_prepare_command(realdata, tmp_path, capsys):
    rc = main(["prepare", "consep", "--src", str(realdata / "consep_format_tiles"), "--out", str(tmp_path),
               "--val-fraction", "0", "--no-progress"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "3 patches" in out and "nuclei per class" in out
    assert len(P.list_patches(tmp_path, "consep", "train")) == 3
    rc = main(["prepare", "consep", "--src", str(realdata / "consep_format_tiles"), "--out", str(tmp_path),
               "--val-fraction", "0", "--no-progress"])
    assert rc == 0 and "0 written, 3 already there" in capsys.readouterr().out


def test_prepare_bad_folder_exits_with_message(tmp_path, capsys):
    rc = main(["prepare", "monuseg", "--src", str(tmp_path / "MoNuSeg_typo"), "--out", str(tmp_path / "o"),
               "--no-progress"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "MoNuSeg_typo" in err and "not found" in err


@pytest.mark.parametrize("script", ["monuseg"])
def test_data_prep_script(realdata, tmp_path, script):
    r = subprocess.run([sys.executable, str(ROOT / "data_prep" / f"{script}.py"), "--src", str(realdata / "monuseg"),
                        "--out", str(tmp_path), "--no-progress", "--stride", "200", "--workers", "2"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "monuseg: 1 source images -> 25 patches" in r.stdout


def test_all_scripts_call_the_cli():
    for name in ["pannuke", "monusac", "consep", "monuseg", "lizard", "conic"]:
        text = (ROOT / "data_prep" / f"{name}.py").read_text()
        assert f'main(["prepare", "{name}", *sys.argv[1:]])' in text


def test_stride_larger_than_a_patch_is_refused(tmp_path, capsys):
    rc = main(["prepare", "monuseg", "--src", str(tmp_path), "--out", str(tmp_path / "o"), "--stride", "300"])
    assert rc == 2 and "gaps" in capsys.readouterr().err


def test_readers_convert_stays_the_function():
    """Importing the driver module must not turn ``readers.convert`` into that module."""
    import importlib

    import stardist_hier.readers as readers

    module = importlib.import_module("stardist_hier.readers.convert")
    assert callable(readers.convert) and readers.convert is module.convert


def test_realdata_folder_from_the_environment(tmp_path):
    from conftest import REALDATA, REALDATA_ENV, realdata_folder

    assert realdata_folder({REALDATA_ENV: str(tmp_path)}) == (tmp_path, "")
    with pytest.raises(FileNotFoundError, match=REALDATA_ENV):
        realdata_folder({REALDATA_ENV: str(tmp_path / "typo")})
    path, why = realdata_folder({})
    if REALDATA.is_dir():
        assert (path, why) == (REALDATA, "")
    else:
        assert path is None and REALDATA_ENV in why
