"""Atomic, verified checkpoints of the agent's state: ``.npz`` arrays, never pickle.

One checkpoint is one file ``state-<step>.npz`` holding the state arrays and a ``__header__``
entry (UTF-8 JSON as uint8): schema version, backbone fingerprint, config, step, and the sha256 of
the array payload. Writing is atomic: a temp file in the same directory, flush + fsync,
``os.replace``, fsync of the directory. The two newest checkpoints are kept, so a torn or corrupt
newest file falls back to the previous one.

Example:
    >>> import tempfile, numpy as np
    >>> store = CheckpointStore(tempfile.mkdtemp(), fingerprint="ab" * 32)
    >>> store.latest() is None                  # first boot
    True
    >>> _ = store.save({"w": np.arange(3.0)}, config={"lr": 0.1}, step=1)
    >>> ckpt = store.latest()
    >>> ckpt.step, ckpt.state["w"].tolist(), ckpt.config
    (1, [0.0, 1.0, 2.0], {'lr': 0.1})
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge.atomic import atomic_write
from edge.errors import CheckpointError, IncompatibleCheckpointError

logger = logging.getLogger(__name__)

CHECKPOINT_SCHEMA_VERSION = 1
HEADER_KEY = "__header__"
KEEP = 2
_NAME = re.compile(r"^state-(\d{12})\.npz$")
_TMP_PREFIX = ".state-"
#: A temp file older than this is a crashed writer's leftover and is removed at the next save.
STALE_TMP_S = 60.0


@dataclass(frozen=True)
class Checkpoint:
    """A loaded, verified checkpoint."""

    path: Path
    step: int
    config: dict[str, Any]
    state: dict[str, np.ndarray]
    header: dict[str, Any]


def payload_sha256(state: dict[str, np.ndarray]) -> str:
    """sha256 over the arrays in key order: name, dtype, shape and bytes of each."""
    digest = hashlib.sha256()
    for key in sorted(state):
        arr = np.ascontiguousarray(state[key])
        digest.update(f"{key}|{arr.dtype.str}|{arr.shape}|".encode())
        digest.update(arr.tobytes())
    return digest.hexdigest()


class CheckpointStore:
    """Checkpoints of one backbone in one directory.

    Args:
        directory: created on the first `save` if missing.
        fingerprint: `Manifest.fingerprint` of the backbone the state belongs to; a checkpoint
            written for another backbone is refused with `CheckpointError`.
        keep: number of newest checkpoints kept (>= 2 so a corrupt newest one has a fallback).
    """

    def __init__(self, directory: str | os.PathLike[str], fingerprint: str, keep: int = KEEP) -> None:
        self.directory = Path(directory)
        self.fingerprint = fingerprint
        self.keep = max(2, int(keep))

    # ------------------------------------------------------------------ listing
    def paths(self) -> list[Path]:
        """Checkpoint files, newest (highest step) first."""
        if not self.directory.is_dir():
            return []
        found = []
        for entry in self.directory.iterdir():
            m = _NAME.match(entry.name)
            if m:
                found.append((int(m.group(1)), entry))
        return [p for _, p in sorted(found, reverse=True)]

    def disk_bytes(self) -> int:
        """Bytes of the checkpoint files on disk."""
        return sum(p.stat().st_size for p in self.paths())

    # ------------------------------------------------------------------ writing
    def save(self, state: dict[str, np.ndarray], config: dict[str, Any], step: int) -> Path:
        """Write a checkpoint atomically and prune old ones; returns its path.

        Raises `CheckpointError` when the directory cannot be created or written; the existing
        checkpoints are left untouched in that case.
        """
        if HEADER_KEY in state:
            raise CheckpointError(f"state key {HEADER_KEY!r} is reserved")
        if int(step) < 0:
            raise CheckpointError(f"step: expected >= 0, got {step}")
        arrays = {k: np.asarray(v) for k, v in state.items()}
        for key, arr in arrays.items():
            if arr.dtype == object:
                raise CheckpointError(f"state {key!r}: expected a numeric array, got dtype object")
        header = {
            "schema_version": CHECKPOINT_SCHEMA_VERSION,
            "fingerprint": self.fingerprint,
            "config": config,
            "step": int(step),
            "payload_sha256": payload_sha256(arrays),
            "keys": sorted(arrays),
        }
        blob = np.frombuffer(json.dumps(header, sort_keys=True).encode("utf-8"), dtype=np.uint8)
        target = self.directory / f"state-{int(step):012d}.npz"
        try:
            atomic_write(target, lambda handle: np.savez(handle, **{HEADER_KEY: blob}, **arrays),
                         tmp_prefix=_TMP_PREFIX)
        except OSError as exc:
            raise CheckpointError(f"cannot write checkpoint {target}: expected a writable directory, "
                                  f"got {type(exc).__name__}: {exc}") from exc
        self._prune(target)
        return target

    def _prune(self, newest: Path) -> None:
        """Keep the ``keep`` newest checkpoints; remove stale temp files of crashed writers."""
        for old in self.paths()[self.keep:]:
            if old != newest:
                try:
                    old.unlink()
                except OSError as exc:  # pragma: no cover
                    logger.warning("could not remove old checkpoint %s: %s", old, exc)
        now = time.time()
        for entry in self.directory.iterdir():
            if entry.name.startswith(_TMP_PREFIX) and entry.name.endswith(".tmp"):
                try:
                    if now - entry.stat().st_mtime > STALE_TMP_S:
                        entry.unlink()
                except OSError:  # pragma: no cover
                    pass

    # ------------------------------------------------------------------ reading
    def load(self, path: str | os.PathLike[str]) -> Checkpoint:
        """Read and verify one checkpoint file; `CheckpointError` (expected vs got) otherwise."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as npz:
                names = list(npz.files)
                if HEADER_KEY not in names:
                    raise CheckpointError(f"{path}: expected a {HEADER_KEY} entry, got keys {names[:8]}")
                header = json.loads(npz[HEADER_KEY].tobytes().decode("utf-8"))
                arrays = {k: npz[k] for k in names if k != HEADER_KEY}
        except CheckpointError:
            raise
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{path}: expected a complete checkpoint (.npz), got an unreadable "
                                  f"file ({type(exc).__name__}: {exc}); truncated or corrupt") from exc
        if not isinstance(header, dict):
            raise CheckpointError(f"{path}: expected a JSON object header, got {type(header).__name__}")
        version = header.get("schema_version")
        if version != CHECKPOINT_SCHEMA_VERSION:
            raise IncompatibleCheckpointError(f"{path}: checkpoint schema_version expected "
                                  f"{CHECKPOINT_SCHEMA_VERSION}, got {version!r}")
        if header.get("fingerprint") != self.fingerprint:
            raise IncompatibleCheckpointError(f"{path}: backbone fingerprint expected {self.fingerprint}, got "
                                  f"{header.get('fingerprint')} (this state was trained on another model)")
        got = payload_sha256(arrays)
        if got != header.get("payload_sha256"):
            raise CheckpointError(f"{path}: payload sha256 expected {header.get('payload_sha256')}, "
                                  f"got {got} (the file was changed or corrupted)")
        step = header.get("step")
        if not isinstance(step, int) or not isinstance(header.get("config"), dict):
            raise CheckpointError(f"{path}: expected an int step and a config object in the header, "
                                  f"got {step!r} and {type(header.get('config')).__name__}")
        return Checkpoint(path=path, step=step, config=header["config"], state=arrays, header=header)

    def latest(self) -> Checkpoint | None:
        """The newest valid checkpoint, or None when there is none yet (first boot).

        A corrupt or torn newest file is skipped with a warning in favour of the previous one.
        A checkpoint of another backbone or schema is never skipped silently: `CheckpointError`.
        If every file is corrupt, `CheckpointError` lists why.
        """
        errors = []
        for path in self.paths():
            try:
                ckpt = self.load(path)
            except IncompatibleCheckpointError:
                raise
            except CheckpointError as exc:
                text = str(exc)
                logger.warning("skipping invalid checkpoint: %s", text)
                errors.append(text)
                continue
            return ckpt
        if errors:
            raise CheckpointError("no valid checkpoint: " + " | ".join(errors))
        return None
