import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("MPLBACKEND", "Agg")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
#: where the real H&E samples are looked for when REALDATA_ENV is not set
REALDATA = PROJECT_ROOT.parent / "shared" / "realdata"
#: environment variable naming another folder of the real samples (same layout as REALDATA)
REALDATA_ENV = "STARDIST_HIER_REALDATA"


def realdata_folder(environ=os.environ):
    """The folder of the real samples: ``$STARDIST_HIER_REALDATA`` if set, else ``../shared/realdata``.

    Returns
    -------
    (pathlib.Path or None, str)
        The folder, or ``None`` with the reason to skip when the default folder is absent.

    Raises
    ------
    FileNotFoundError
        The environment variable names a folder that does not exist (a typo there should
        fail the tests, not silently skip them).
    """
    given = environ.get(REALDATA_ENV, "").strip()
    if given:
        path = Path(given).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"{REALDATA_ENV}={given}: no such folder")
        return path, ""
    if not REALDATA.is_dir():
        return None, f"{REALDATA} not present (set {REALDATA_ENV} to a copy of it)"
    return REALDATA, ""


@pytest.fixture
def realdata():
    """The real H&E samples (``$STARDIST_HIER_REALDATA`` or ../shared/realdata); skipped only when absent."""
    try:
        path, why = realdata_folder()
    except FileNotFoundError as e:
        pytest.fail(str(e))
    if path is None:
        pytest.skip(why)
    return path
