"""Embedded streams shared by the cells of a sweep: a content-addressed on-disk cache.

A stream's embeddings depend only on the backbone (fingerprint, resolved runtime, precision) and the
data (the stream's ``identity``, scenario, run and the exact frames of every batch), so its key is
the hash of those. Each entry is one ``.npz`` (training batches, test set, and a JSON ``meta``
member), written atomically; every embedding pass also appends one line to ``passes.jsonl`` so a sweep
(and a test) can count that no stream was embedded twice.

Example:
    >>> import tempfile
    >>> cache = StreamCache(tempfile.mkdtemp())
    >>> cache.put("k", [np.ones((2, 3), np.float32)], np.zeros((4, 3), np.float32), {"fps": 1.0})
    >>> train, test, meta = cache.get("k")
    >>> [t.shape for t in train], test.shape, meta["fps"], cache.get("other") is None
    ([(2, 3)], (4, 3), 1.0, True)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from edge.atomic import atomic_write, make_dirs

if TYPE_CHECKING:
    from edge.runtimes import Backbone
    from firmware_sim.data.stream import Stream

log = logging.getLogger(__name__)

__all__ = ["PASSES_LOG", "StreamCache", "count_passes", "open_cell_stream", "stream_key"]

PASSES_LOG = "passes.jsonl"


def _digest(stream: Stream) -> str:
    """sha256 of every batch's frame indices and labels, and the test set's: the stream's exact content."""
    h = hashlib.sha256()
    for batch in [*stream.train_batches, stream.test]:
        h.update(np.ascontiguousarray(batch.indices, np.int64).tobytes())
        h.update(np.ascontiguousarray(batch.labels, np.int64).tobytes())
        h.update(b"|")
    return h.hexdigest()


def stream_key(backbone: Backbone, stream: Stream, spec: Mapping[str, Any]) -> str:
    """Content address of an embedded stream: backbone fingerprint, runtime, precision, data and frames."""
    info = backbone.info
    text = json.dumps({"fingerprint": backbone.manifest.fingerprint, "runtime": info.runtime,
                       "precision": info.precision, "identity": stream.identity, "scenario": spec["scenario"],
                       "run": spec["run"], "frames": _digest(stream)}, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def open_cell_stream(spec: Mapping[str, Any], image_size: int) -> Stream:
    """The stream a cell's ``stream_spec`` names (the same call `edge-sim run` makes)."""
    from firmware_sim.data.streams import open_stream

    return open_stream(spec["data"], spec["scenario"], spec["run"], test=spec["test"], labels=spec["labels"],
                       image_size=image_size, seed=spec["seed"], params=dict(spec["protocol_params"]),
                       progress=False, test_split=spec["test_split"])


class StreamCache:
    """Embedded streams on disk under ``directory``: ``<key>.npz`` plus the ``passes.jsonl`` count."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def path(self, key: str) -> Path:
        return self.directory / f"{key}.npz"

    def has(self, key: str) -> bool:
        return self.path(key).is_file()

    def get(self, key: str) -> tuple[list[np.ndarray], np.ndarray, dict[str, Any]] | None:
        """(training embeddings per batch, test embeddings, meta), or None when absent or unreadable."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(bytes(z["meta"]).decode("utf-8"))
                train = [z[f"train_{i}"] for i in range(int(meta["n_batches"]))]
                test = z["test"]
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            log.warning("ignoring unreadable embedded stream %s (%s)", path, exc)
            return None
        return train, test, meta

    def put(self, key: str, train: list[np.ndarray], test: np.ndarray, meta: Mapping[str, Any]) -> None:
        """Store an embedded stream atomically (a reader sees the whole entry or none)."""
        arrays: dict[str, Any] = {f"train_{i}": np.asarray(t, np.float32) for i, t in enumerate(train)}
        info = {**meta, "n_batches": len(train)}
        arrays["meta"] = np.frombuffer(json.dumps(info, sort_keys=True).encode("utf-8"), np.uint8)
        arrays["test"] = np.asarray(test, np.float32)
        atomic_write(self.path(key), lambda handle: np.savez(handle, **arrays))

    def record_pass(self, key: str, seconds: float) -> None:
        """Append one line per embedding pass (O_APPEND: lines from parallel workers never interleave)."""
        make_dirs(self.directory)
        line = json.dumps({"key": key, "seconds": seconds, "pid": os.getpid(), "time": time.time()}) + "\n"
        fd = os.open(self.directory / PASSES_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode("utf-8"))
        finally:
            os.close(fd)


def count_passes(directory: str | os.PathLike[str]) -> dict[str, int]:
    """Embedding passes per stream key recorded in ``directory/passes.jsonl`` (empty when none)."""
    path = Path(directory) / PASSES_LOG
    counts: dict[str, int] = {}
    if not path.is_file():
        return counts
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            key = json.loads(line)["key"]
            counts[key] = counts.get(key, 0) + 1
    return counts
