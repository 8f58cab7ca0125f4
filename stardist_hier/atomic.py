"""Atomic file writes: every output goes to a temporary name in its folder, then is renamed.

An interrupted job can leave a stray ``.*.tmp`` file but never a half-written output, and a
reader sees either the old file or the new one. Plain Python: no TensorFlow.
"""

from __future__ import annotations

import itertools
import json
import os
import secrets
from pathlib import Path

__all__ = ["atomic_save", "atomic_write_text", "atomic_write_json", "check_output_dir"]

_COUNTER = itertools.count()
_TOKEN = secrets.token_hex(4)


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
    # A temporary name in the same folder makes os.replace an atomic rename. The name is
    # unique without creating the file first (process id, a counter and a random token), so
    # the writer opens it once: mkstemp plus reopening by name costs a second open, which
    # is slow on some file systems and doubles the cost of writing many small patches.
    tmp = str(path.parent / f".{path.stem}.{os.getpid()}.{next(_COUNTER)}.{_TOKEN}.tmp{path.suffix}")
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


def check_output_dir(path, what="--out"):
    """Refuse an output folder that is an existing file, with a one-line message naming it.

    Returns
    -------
    pathlib.Path
        ``path`` (not created).

    Raises
    ------
    NotADirectoryError
        ``path`` or one of its parents is a file.
    """
    path = Path(path)
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                raise NotADirectoryError(f"{what} {path}: {p} is a file, not a folder")
            break
    return path
