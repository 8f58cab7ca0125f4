"""The command line's one error rule: a user error is one line ``error: ...`` and exit 1,
Ctrl-C is ``interrupted`` and exit 130, a bug keeps its traceback."""

import argparse
import importlib
import warnings

import numpy as np
import pytest
import tifffile

from stardist_hier import patches as P
from stardist_hier.cli import main
from stardist_hier.commands import _common as C

from test_readers_monusac import imagescope, rect


def _monuseg_src(folder, names=("TCGA-AA-0001-01Z-00-DX1",)):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        tifffile.imwrite(folder / f"{name}.tif", np.zeros((64, 64, 3), np.uint8))
        (folder / f"{name}.xml").write_text(imagescope([(None, [rect(5.5, 5.5, 15.5, 15.5)])]))
    return folder


def _one_error_line(capsys, *needles):
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], (n, err)
    return lines[0]


@pytest.fixture
def a_file(tmp_path):
    path = tmp_path / "results.txt"
    path.write_text("not a folder")
    return path


def test_prepare_out_is_a_file(tmp_path, a_file, capsys):
    src = _monuseg_src(tmp_path / "src")
    assert main(["prepare", "monuseg", "--src", str(src), "--out", str(a_file), "-q"]) == 1
    _one_error_line(capsys, "--out", str(a_file), "is a file")
    assert a_file.read_text() == "not a folder"


def test_synth_out_is_a_file(a_file, capsys):
    assert main(["synth", "--out", str(a_file), "--datasets", "consep", "--n-train", "1", "--n-val", "0",
                 "--n-test", "0", "--size", "64", "-q"]) == 1
    _one_error_line(capsys, "--out", "is a file")


def test_synth_overlay_is_a_folder(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path / "o"), "--datasets", "consep", "--n-train", "1", "--n-val", "0",
                 "--n-test", "0", "--size", "64", "-q", "--overlay", str(tmp_path)]) == 1
    _one_error_line(capsys, "--overlay", "is a folder")
    assert not (tmp_path / "o").exists()  # refused before anything was made


def _tiny_eval(tmp_path):
    root, pdir = tmp_path / "data", tmp_path / "preds"
    P.write_patch(root, "pannuke", "test", "p0", np.zeros((256, 256, 3), np.uint8), np.zeros((256, 256, 2), np.int32))
    from stardist_hier.metrics.folder import write_prediction

    write_prediction(pdir / "p0.tif", np.zeros((256, 256), np.int32))
    return root, pdir


@pytest.mark.parametrize("flag", ["--out", "--save-predictions"])
def test_evaluate_out_is_a_file_is_refused_before_evaluating(tmp_path, a_file, capsys, monkeypatch, flag):
    from stardist_hier.metrics import folder as E

    root, pdir = _tiny_eval(tmp_path)
    called = []
    monkeypatch.setattr(E, "evaluate_folder", lambda *a, **k: called.append(1))
    args = ["evaluate", "--predictions", str(pdir), "--data", str(root), "--dataset", "pannuke", "-q"]
    args += [flag, str(a_file / "sub")]
    assert main(args) == 1
    _one_error_line(capsys, flag, "is a file")
    assert called == []


def test_ctrl_c_prints_one_line_and_exits_130(tmp_path, capsys, monkeypatch):
    conv = importlib.import_module("stardist_hier.readers.convert")

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(conv, "convert", interrupted)
    assert main(["prepare", "monuseg", "--src", str(tmp_path), "--out", str(tmp_path / "o"), "-q"]) == 130
    err = capsys.readouterr().err
    assert err.strip() == "interrupted"


def test_ctrl_c_mid_conversion_then_resume(tmp_path, capsys, monkeypatch):
    """Interrupted after the first image: exit 130, no half-written file, a rerun finishes the rest."""
    conv = importlib.import_module("stardist_hier.readers.convert")

    src = _monuseg_src(tmp_path / "src", [f"TCGA-AA-000{i}-01Z-00-DX1" for i in range(3)])
    real, calls = conv._process, []

    def process(task):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(task)

    monkeypatch.setattr(conv, "_process", process)
    argv = ["prepare", "monuseg", "--src", str(src), "--out", str(tmp_path / "o"), "-q", "--val-fraction", "0"]
    assert main(argv) == 130
    assert capsys.readouterr().err.strip() == "interrupted"
    out = tmp_path / "o" / "monuseg"
    assert len(P.list_patches(tmp_path / "o", "monuseg", "train")) == 1
    assert not list(out.rglob(".*.tmp")) and not (out / "index.csv").exists()
    monkeypatch.setattr(conv, "_process", real)
    assert main(argv) == 0
    assert "2 written, 1 already there" in capsys.readouterr().out


def test_bad_input_files_are_all_named(tmp_path, capsys):
    names = [f"TCGA-AA-000{i}-01Z-00-DX1" for i in range(3)]
    src = _monuseg_src(tmp_path / "src", names)
    for n in names[:2]:
        (src / f"{n}.tif").write_bytes((src / f"{n}.tif").read_bytes()[:8])
    assert main(["prepare", "monuseg", "--src", str(src), "--out", str(tmp_path / "o"), "-q"]) == 1
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert lines[0].startswith("error: 2 bad input files") and "Traceback" not in err
    assert [any(n in line for line in lines[1:]) for n in names] == [True, True, False]
    # with --skip-bad: a one-line warning per bad file, the summary lists them
    assert main(["prepare", "monuseg", "--src", str(src), "--out", str(tmp_path / "o"), "-q", "--skip-bad",
                 "--val-fraction", "0"]) == 0
    cap = capsys.readouterr()
    warn = [line for line in cap.err.splitlines() if line.startswith("warning: ")]
    assert len(warn) == 2 and all("truncated or empty TIFF" in w for w in warn)
    assert "skipped 2 bad file(s)" in cap.out


def test_missing_source_is_one_line(tmp_path, capsys):
    assert main(["prepare", "monuseg", "--src", str(tmp_path / "MoNuSeg_typo"), "--out", str(tmp_path / "o")]) == 1
    _one_error_line(capsys, "MoNuSeg_typo", "not found")


def test_usage_errors_exit_2(tmp_path, capsys):
    assert main(["prepare", "monuseg", "--src", str(tmp_path), "--out", str(tmp_path / "o"), "--val-fraction", "1"]) == 2
    assert "--val-fraction" in capsys.readouterr().err


def _args(**kw):
    return argparse.Namespace(quiet=False, verbose=0, **kw)


@pytest.mark.parametrize("exc", [
    FileNotFoundError("no index for dataset 'x'"), NotADirectoryError("--out a: a is a file"),
    FileExistsError("x exists with other parameters"), IsADirectoryError("x is a folder"),
    PermissionError("cannot write x"),
])
def test_path_errors_are_user_errors(exc, capsys):
    def run(args):
        raise exc

    assert C.run_command(run, _args()) == 1
    assert capsys.readouterr().err == f"error: {exc}\n"


@pytest.mark.parametrize("name", C.USER_ERRORS)
def test_each_registered_error_is_reported_in_one_line(name, capsys):
    module, cls = name.split(":")
    typ = getattr(importlib.import_module(module), cls)  # a renamed class fails here, loudly
    assert issubclass(typ, Exception)
    try:
        exc = typ("what is wrong with bad.tif")
    except TypeError:  # the (path, problem) errors of the readers and the predictor
        exc = typ("bad.tif", "what is wrong")

    def run(args):
        raise exc

    assert C.run_command(run, _args()) == 1
    _one_error_line(capsys, "what is wrong", "bad.tif")


def test_the_error_modules_are_the_package_s():
    from stardist_hier.experiments.data import MissingDataError
    from stardist_hier.hierarchy import HierarchyError
    from stardist_hier.metrics import MetricsError
    from stardist_hier.metrics.folder import EvaluationError
    from stardist_hier.patches import PatchFormatError
    from stardist_hier.readers import BadFilesError, ReaderError

    for typ in (HierarchyError, MetricsError, EvaluationError, PatchFormatError, ReaderError, BadFilesError,
                MissingDataError):
        assert C.is_user_error(typ.__new__(typ)), typ


def test_a_bug_keeps_its_traceback():
    def run(args):
        return {}["missing key"]

    with pytest.raises(KeyError):
        C.run_command(run, _args())
    with pytest.raises(ValueError):  # a plain ValueError is not a user error
        C.run_command(lambda a: int("x"), _args())


def test_verbose_error_has_the_traceback(capsys):
    def run(args):
        raise FileNotFoundError("no such thing: x")

    assert C.run_command(run, argparse.Namespace(quiet=False, verbose=1)) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.rstrip().endswith("error: no such thing: x")


def test_warnings_are_one_line_and_restored(capsys):
    before = warnings.showwarning

    def run(args):
        warnings.warn("careful: one source image only", UserWarning)
        return 0

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert C.run_command(run, _args()) == 0
    assert capsys.readouterr().err == "warning: careful: one source image only\n"
    assert warnings.showwarning is before



def test_real_sigint_with_worker_processes(tmp_path):
    """SIGINT to the whole process group (what Ctrl-C sends), workers included: one line, 130."""
    import os
    import signal
    import subprocess
    import sys
    import time

    src = _monuseg_src(tmp_path / "src", [f"TCGA-AA-{i:04d}-01Z-00-DX1" for i in range(400)])
    out = tmp_path / "o"
    code = ("import sys; from stardist_hier.cli import main; "
            f"sys.exit(main(['prepare', 'monuseg', '--src', {str(src)!r}, '--out', {str(out)!r}, '-q', "
            "'--workers', '2', '--val-fraction', '0']))")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.time() + 60
        while not list((out / "monuseg" / "train" / "masks").glob("*.tif")) and proc.poll() is None:
            assert time.time() < deadline, "the conversion did not start"
            time.sleep(0.05)
        if proc.poll() is not None:
            pytest.skip("the conversion finished before it could be interrupted")
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    if proc.returncode == 0 and not err.strip():
        # the last image was written between the poll and the signal (seen on a loaded machine)
        pytest.skip("the conversion finished before the signal arrived")
    assert proc.returncode == 130, err
    assert err.strip() == "interrupted", err
