"""The pipe between ``edge-sim device`` and its child device: length-prefixed messages.

One message = an 8-byte prefix (JSON header length, payload length, both unsigned 32-bit big-endian),
the UTF-8 JSON header (an object with a ``kind``), then the raw payload (frame pixels, or nothing).
Frames go parent -> child on the child's stdin; acknowledgements and events come back on its stdout.

Example:
    >>> import io
    >>> buf = io.BytesIO()
    >>> write_message(buf, {"kind": "frame", "i": 3}, b"abc")
    >>> _ = buf.seek(0)
    >>> read_message(buf)
    ({'kind': 'frame', 'i': 3}, b'abc')
    >>> read_message(buf) is None
    True
"""

from __future__ import annotations

import json
import struct
import threading
from typing import IO, Any

__all__ = ["MAX_HEADER_BYTES", "MAX_PAYLOAD_BYTES", "Channel", "ProtocolError", "read_message", "write_message"]

_PREFIX = struct.Struct(">II")
MAX_HEADER_BYTES = 1 << 20
MAX_PAYLOAD_BYTES = 64 << 20


class ProtocolError(ValueError):
    """A malformed or truncated message on the device pipe."""


def write_message(stream: IO[bytes], header: dict[str, Any], payload: bytes = b"") -> None:
    """Write one message and flush."""
    data = json.dumps(header, separators=(",", ":"), allow_nan=False).encode("utf-8")
    stream.write(_PREFIX.pack(len(data), len(payload)) + data + payload)
    stream.flush()


def _read_exact(stream: IO[bytes], n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = stream.read(n - got)
        if not chunk:
            raise ProtocolError(f"device pipe: expected {n} bytes, got {got} (the other end closed)")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def read_message(stream: IO[bytes]) -> tuple[dict[str, Any], bytes] | None:
    """The next ``(header, payload)``; None at a clean end of stream (EOF before a message)."""
    prefix = stream.read(_PREFIX.size)
    if not prefix:
        return None
    if len(prefix) < _PREFIX.size:
        prefix += _read_exact(stream, _PREFIX.size - len(prefix))
    n_header, n_payload = _PREFIX.unpack(prefix)
    if n_header > MAX_HEADER_BYTES or n_payload > MAX_PAYLOAD_BYTES:
        raise ProtocolError(f"device pipe: expected a header <= {MAX_HEADER_BYTES} and a payload <= "
                            f"{MAX_PAYLOAD_BYTES} bytes, got {n_header} and {n_payload}")
    header = json.loads(_read_exact(stream, n_header).decode("utf-8"))
    if not isinstance(header, dict) or "kind" not in header:
        raise ProtocolError(f"device pipe: expected a JSON object with a 'kind', got {header!r:.80}")
    return header, _read_exact(stream, n_payload) if n_payload else b""


class Channel:
    """Both directions of the pipe; `send` is thread-safe (the loop and learner threads both send)."""

    def __init__(self, incoming: IO[bytes], outgoing: IO[bytes]) -> None:
        self.incoming = incoming
        self.outgoing = outgoing
        self._lock = threading.Lock()

    def send(self, header: dict[str, Any], payload: bytes = b"") -> None:
        with self._lock:
            write_message(self.outgoing, header, payload)

    def recv(self) -> tuple[dict[str, Any], bytes] | None:
        return read_message(self.incoming)
