"""Atomic file writes: a reader sees the old file or the new one, never a torn one.

The data goes to a temp file in the target's folder, is flushed and fsynced, gets the target's
permissions (rw-r--r-- for a new file), replaces the target with `os.replace`, and the folder is
fsynced so the rename itself survives a power cut.

Example:
    >>> import tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "note.txt"
    >>> atomic_write(target, lambda f: f.write(b"hello")).read_bytes()
    b'hello'
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable

TMP_SUFFIX = ".tmp"


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    """fsync a directory so a rename inside it is durable (no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(folder: str | os.PathLike[str]) -> Path:
    """Create ``folder`` and any missing parents durably: each new folder's parent is fsynced.

    A first boot that creates the state folder and then loses power keeps the folder (and so the
    checkpoint written into it). Returns the folder as a `Path`.
    """
    target = Path(folder)
    missing = []
    probe = target
    while not probe.exists():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    target.mkdir(parents=True, exist_ok=True)
    for created in reversed(missing):
        fsync_dir(created.parent)
    return target


def _mode_for(path: Path) -> int:
    try:
        return path.stat().st_mode & 0o777
    except FileNotFoundError:
        return 0o644


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[Any]], Any], *, text: bool = False,
                 tmp_prefix: str | None = None) -> Path:
    """Write ``path`` through ``write(fileobj)`` atomically; returns the path.

    ``text=True`` opens the temp file as UTF-8 text (no newline translation), otherwise binary.
    On any error the temp file is removed and the previous ``path`` is left as it was.
    """
    target = Path(path)
    make_dirs(target.parent)
    fd, tmp = tempfile.mkstemp(prefix=tmp_prefix or f".{target.name}.", suffix=TMP_SUFFIX, dir=target.parent)
    try:
        opened = os.fdopen(fd, "w", encoding="utf-8", newline="") if text else os.fdopen(fd, "wb")
        with opened as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, _mode_for(target))
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(target.parent)
    return target
