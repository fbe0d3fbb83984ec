"""What the simulated device writes to flash, by part: checkpoints (thumbnails, the rest of the teach
ledger, the agent's state), the state folder's lock file, and temp files torn by power cuts.

Every figure is measured on the files as written, never estimated: `checkpoint_parts` reads a
checkpoint's zip directory and its ``.npy`` headers right after `edge.checkpoint.CheckpointStore.save`
wrote it (the child calls it from the loop's ``checkpoint`` event). A checkpoint's bytes split into

* ``thumbnail_bytes``: the JPEG bytes of the teach ledger's thumbnails (the payload of
  ``knowledge.thumb_data``), 0 when thumbnails are off;
* ``ledger_bytes``: the other ``knowledge.*`` members (embedding rows, sample ids, thumbnail
  offsets, events) and the ``.npy`` header of ``knowledge.thumb_data``;
* the rest of the file (``bytes - thumbnail_bytes - ledger_bytes``): the strategy, replay buffer,
  labels, checkpoint header and the zip's own headers.

A checkpoint of schema 3 keeps the ledger's rows and thumbnails in segment files
(`edge.knowledge.segments`): the segments its save wrote (header ``segments_written``) count too,
their thumbnail bytes as ``thumbnail_bytes``, the rest as ``ledger_bytes`` (with the header's JSON
about the segments); the thumbnails it holds come from its header's ``ledger`` summary
(``thumbnail_bytes_stored``).

Example:
    >>> import tempfile, numpy as np
    >>> from edge.checkpoint import CheckpointStore
    >>> store = CheckpointStore(tempfile.mkdtemp(), fingerprint="ab" * 32)
    >>> path = store.save({"w": np.zeros(4), "knowledge.thumb_data": np.frombuffer(b"jpeg", np.uint8)}, {}, 1)
    >>> parts = checkpoint_parts(path)
    >>> parts["thumbnail_bytes"], parts["bytes"] > parts["ledger_bytes"] > 0
    (4, True)
    >>> writes = FlashWrites()
    >>> writes.add_checkpoint(parts); writes.total == parts["bytes"]
    True
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["FlashWrites", "checkpoint_parts"]

_LEDGER = "knowledge."
_THUMB_DATA = "knowledge.thumb_data"
_THUMB_OFFSETS = "knowledge.thumb_offsets"
_LEDGER_META = "knowledge.meta"


def checkpoint_parts(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The bytes a checkpoint's save wrote, by part (see the module docstring), the thumbnails it holds
    (``thumbnails``), the ledger's ``thumbnail_size`` and ``dropped_thumbnails`` (None without a
    ledger). A file already gone counts 0 bytes."""
    from edge.checkpoint import read_npy_header

    parts: dict[str, Any] = {"bytes": 0, "thumbnail_bytes": 0, "ledger_bytes": 0, "thumbnails": 0,
                             "thumbnail_bytes_stored": 0, "thumbnail_size": None, "dropped_thumbnails": None}
    try:
        parts["bytes"] = os.path.getsize(path)
        archive = zipfile.ZipFile(path)
    except FileNotFoundError:
        return parts
    with archive:
        for info in archive.infolist():
            name = info.filename.removesuffix(".npy")
            if not name.startswith(_LEDGER):
                continue
            stored = info.compress_size  # np.savez stores (no compression): the member's bytes in the file
            if name == _THUMB_DATA:
                with archive.open(info) as member:
                    header = read_npy_header(member)
                if header is not None:
                    shape, _, dtype = header
                    payload = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
                    parts["thumbnail_bytes"] += payload
                    stored -= payload
            elif name == _THUMB_OFFSETS:
                with archive.open(info) as member:
                    offsets = np.lib.format.read_array(member, allow_pickle=False)
                parts["thumbnails"] = int(np.count_nonzero(np.diff(offsets)))
            elif name == _LEDGER_META:
                with archive.open(info) as member:
                    meta = json.loads(np.lib.format.read_array(member, allow_pickle=False).tobytes())
                parts["thumbnail_size"] = meta.get("thumbnail_size")
                parts["dropped_thumbnails"] = meta.get("dropped_thumbnails")
            parts["ledger_bytes"] += stored
        with archive.open("__header__.npy") as member:
            header = json.loads(np.lib.format.read_array(member, allow_pickle=False).tobytes())
    parts["thumbnail_bytes_stored"] = parts["thumbnail_bytes"]
    ledger_fields = ("segments", "segments_written", "ledger")   # the header's JSON about the ledger
    rest = {k: v for k, v in header.items() if k not in ledger_fields}
    parts["ledger_bytes"] += len(json.dumps(header, sort_keys=True)) - len(json.dumps(rest, sort_keys=True))
    written = set(header.get("segments_written", []))
    for ref in header.get("segments", []):   # the ledger's segment files this save wrote
        if ref["name"] in written:
            parts["bytes"] += ref["bytes"]
            parts["thumbnail_bytes"] += ref["thumbnail_bytes"]
            parts["ledger_bytes"] += ref["bytes"] - ref["thumbnail_bytes"]
    if "ledger" in header:
        parts["thumbnails"] = header["ledger"]["thumbnails"]
        parts["thumbnail_bytes_stored"] = header["ledger"]["thumbnail_bytes"]
    return parts


@dataclass
class FlashWrites:
    """Bytes one run wrote to flash, by part; ``total`` is their sum. ``writes``: ``(step, bytes)`` of
    every checkpoint in order; ``newest``: the last checkpoint's `checkpoint_parts`."""

    checkpoints: int = 0
    checkpoint_bytes: int = 0
    thumbnail_bytes: int = 0
    ledger_bytes: int = 0
    lock_bytes: int = 0
    torn_bytes: int = 0
    newest: dict[str, Any] | None = None
    writes: list[tuple[int, int]] = field(default_factory=list)

    def add_checkpoint(self, parts: dict[str, Any], step: int = 0) -> None:
        """One checkpoint of agent step ``step`` written (``parts``: `checkpoint_parts` of it)."""
        self.writes.append((int(step), int(parts["bytes"])))
        self.checkpoints += 1
        self.checkpoint_bytes += int(parts["bytes"])
        self.thumbnail_bytes += int(parts["thumbnail_bytes"])
        self.ledger_bytes += int(parts["ledger_bytes"])
        self.newest = dict(parts)

    @property
    def total(self) -> int:
        return self.checkpoint_bytes + self.lock_bytes + self.torn_bytes

    def entry(self, taught: int) -> dict[str, Any]:
        """The report's ``flash``: bytes written by part, the thumbnails' share, and the thumbnails the
        newest checkpoint holds with their bytes per 1,000 (``taught``: taught frames received)."""
        newest = self.newest or {}
        stored = int(newest.get("thumbnails", 0))
        stored_bytes = int(newest.get("thumbnail_bytes_stored", newest.get("thumbnail_bytes", 0)))
        total = self.total
        return {
            "bytes_written": total,
            "parts": {"thumbnails": self.thumbnail_bytes, "ledger": self.ledger_bytes,
                      "state": self.checkpoint_bytes - self.thumbnail_bytes - self.ledger_bytes,
                      "lock": self.lock_bytes, "torn": self.torn_bytes},
            "checkpoints": self.checkpoints,
            "thumbnail_share": self.thumbnail_bytes / total if total else None,
            "thumbnail_size": newest.get("thumbnail_size"),
            "thumbnails_stored": stored, "thumbnail_bytes_stored": stored_bytes,
            "thumbnails_dropped": newest.get("dropped_thumbnails"),
            "thumbnail_bytes_per_1000": 1000.0 * stored_bytes / stored if stored else None,
            "thumbnail_bytes_written_per_1000_taught": 1000.0 * self.thumbnail_bytes / taught if taught else None,
            "checkpoint_writes": [list(w) for w in self.writes],
        }
