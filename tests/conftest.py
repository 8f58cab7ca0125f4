import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("MPLBACKEND", "Agg")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
REALDATA = PROJECT_ROOT.parent / "shared" / "realdata"


@pytest.fixture
def realdata():
    """The real H&E samples in ../shared/realdata (skipped only where that folder is absent)."""
    if not REALDATA.is_dir():
        pytest.skip(f"{REALDATA} not present")
    return REALDATA
