"""Atomic file writes: every output goes to a temporary name in its folder, then is renamed.

An interrupted job can leave a stray ``.*.tmp`` file but never a half-written output, and a
reader sees either the old file or the new one. Plain Python: no TensorFlow.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

__all__ = ["atomic_save", "atomic_write_text", "atomic_write_json"]


def atomic_save(path, save):
    """Call ``save(tmp_path)`` on a temporary path beside ``path``, then rename it to ``path``.

    Parameters
    ----------
    path : str or path-like
        Final location; its folder is created if needed.
    save : callable
        Writes the file at the temporary path it is given (a ``str``). The temporary name
        keeps the suffix, for writers that choose their format by it.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(fd)
    try:
        save(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path, text):
    """Write ``text`` to ``path`` atomically (UTF-8, newlines as given)."""
    def save(tmp):
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            f.write(text)

    return atomic_save(path, save)


def atomic_write_json(path, data, indent=2):
    """Write ``data`` as JSON atomically; numpy scalars and arrays become plain numbers/lists."""
    return atomic_write_text(path, json.dumps(data, indent=indent, default=_plain) + "\n")


def _plain(obj):
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)
