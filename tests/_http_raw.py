"""A raw HTTP/1.1 request with exactly the headers given (no Host or Content-Type added)."""

from __future__ import annotations

import http.client
import json
from typing import Any


def raw_request(port: int, method: str, path: str, headers: dict[str, str] | None = None,
                body: bytes | None = None, timeout: float = 20.0) -> tuple[int, Any]:
    """One request on a fresh connection to 127.0.0.1:``port``; returns (status, JSON or text).

    ``headers`` are sent as given (add ``Host`` yourself: none is added)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for key, value in (headers or {}).items():
            conn.putheader(key, value)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        text = resp.read().decode("utf-8", "replace")
        status = resp.status
    finally:
        conn.close()
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text
