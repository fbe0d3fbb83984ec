"""Events of the device loop as JSON lines: one object per line with an ``event`` field.

Kinds: ``started``, ``prediction``, ``teach``, ``learned``, ``checkpoint``, ``dropped``, ``error``,
``stopped``; about the source: ``source_waiting`` (one per failed attempt to open it, with
``--wait-for-source``), ``source_opened``, ``source_ended`` (a file or folder source is exhausted) and
``skipped`` (a folder entry that is not read: ``file``, ``reason``). Every line also has ``time``
(Unix seconds, wall clock). Lines are written whole and flushed under a lock, so threads never
interleave them. `RotatingFile` is an events file that rotates by size (``--events-max-bytes``).

Example:
    >>> import io, json
    >>> out = io.StringIO()
    >>> EventWriter(out).emit("teach", label="cup", frames=30)
    >>> json.loads(out.getvalue())["label"]
    'cup'
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from pathlib import Path
from typing import IO, Any, Callable, Protocol

logger = logging.getLogger(__name__)

EVENT_KINDS = ("started", "prediction", "teach", "learned", "checkpoint", "dropped", "error", "stopped",
               "source_waiting", "source_opened", "source_ended", "skipped")
#: Rotated files kept by default (``FILE.1`` .. ``FILE.K``).
DEFAULT_KEEP = 3


class TextSink(Protocol):
    """Where event lines go: a text file, stdout, a `RotatingFile`."""

    def write(self, text: str, /) -> int: ...

    def flush(self) -> None: ...


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return _plain(value.item())
    return value


class EventWriter:
    """Writes events to a text stream (stdout or a file opened by the caller).

    Args:
        stream: where the lines go (None: nowhere, events are only handed to ``listeners``).
        wall_clock: seconds since the epoch for the ``time`` field.
    """

    def __init__(self, stream: TextSink | None, wall_clock: Callable[[], float] = time.time) -> None:
        self.stream = stream
        self.wall_clock = wall_clock
        self.listeners: list[Callable[[dict[str, Any]], None]] = []
        self._lock = threading.Lock()

    def emit(self, event: str, **fields: Any) -> None:
        """Write one event line (``event`` must be one of `EVENT_KINDS`)."""
        if event not in EVENT_KINDS:
            raise ValueError(f"event: expected one of {EVENT_KINDS}, got {event!r}")
        record = {"event": event, "time": round(self.wall_clock(), 6)}
        record.update({k: _plain(v) for k, v in fields.items()})
        line = json.dumps(record, ensure_ascii=False, allow_nan=False, default=str)
        with self._lock:
            if self.stream is not None:
                try:
                    self.stream.write(line + "\n")
                    self.stream.flush()
                except (OSError, ValueError) as exc:  # a closed pipe must not stop the device
                    logger.warning("events: could not write (%s)", exc)
            for listener in self.listeners:
                listener(record)


class RotatingFile:
    """An append-only text file that rotates by size: when a write would take it past ``max_bytes``,
    ``FILE.K-1`` -> ``FILE.K`` ... ``FILE`` -> ``FILE.1`` and a new ``FILE`` is started (``FILE.K``
    is dropped). A line is never split across two files; a single line longer than ``max_bytes`` gets
    a file of its own. ``max_bytes`` 0: never rotate.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "events.jsonl"
        >>> f = RotatingFile(path, max_bytes=10, keep=2)
        >>> for line in ("aaaa\\n", "bbbb\\n", "cccc\\n", "dddd\\n"):
        ...     _ = f.write(line)
        >>> f.close()
        >>> [p.read_text() for p in (path, path.with_name(path.name + ".1"))]
        ['cccc\\ndddd\\n', 'aaaa\\nbbbb\\n']
    """

    def __init__(self, path: str | os.PathLike[str], max_bytes: int = 0, keep: int = DEFAULT_KEEP) -> None:
        if max_bytes < 0 or keep < 1:
            raise ValueError(f"events rotation: expected max_bytes >= 0 and keep >= 1, got {max_bytes}, {keep}")
        self.path = Path(path)
        self.max_bytes = int(max_bytes)
        self.keep = int(keep)
        self._file: IO[str] = open(self.path, "a", encoding="utf-8")
        self._size = self.path.stat().st_size

    def _rotated(self, k: int) -> Path:
        return self.path.with_name(f"{self.path.name}.{k}")

    def _rotate(self) -> None:
        self._file.close()
        for k in range(self.keep - 1, 0, -1):
            if self._rotated(k).exists():
                os.replace(self._rotated(k), self._rotated(k + 1))
        os.replace(self.path, self._rotated(1))
        self._file = open(self.path, "a", encoding="utf-8")
        self._size = 0

    def write(self, text: str) -> int:
        """Append ``text`` (whole lines), rotating first if it would not fit."""
        size = len(text.encode("utf-8"))
        if self.max_bytes and self._size and self._size + size > self.max_bytes:
            self._rotate()
        written = self._file.write(text)
        self._size += size
        return written

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()
