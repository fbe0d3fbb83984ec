"""Events of the device loop as JSON lines: one object per line with an ``event`` field.

Kinds: ``started``, ``prediction``, ``teach``, ``learned``, ``checkpoint``, ``dropped``, ``error``,
``stopped``. Every line also has ``time`` (Unix seconds, wall clock). Lines are written whole and
flushed under a lock, so threads never interleave them.

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
import threading
import time
from typing import IO, Any, Callable

logger = logging.getLogger(__name__)

EVENT_KINDS = ("started", "prediction", "teach", "learned", "checkpoint", "dropped", "error", "stopped")


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

    def __init__(self, stream: IO[str] | None, wall_clock: Callable[[], float] = time.time) -> None:
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
