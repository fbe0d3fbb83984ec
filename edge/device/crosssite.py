"""Which requests the HTTP API serves at all: the ``Host`` it answers to, the ``Origin`` and the
``Content-Type`` a state-changing request must carry (cross-site request forgery, DNS rebinding).

A web page open in a browser on the device (a kiosk) or on a developer's laptop can send requests to
``http://127.0.0.1:8080``: "simple" ones (a ``<form enctype=text/plain>``, a ``fetch`` with a
``text/plain`` body) need no CORS preflight, and a page whose DNS name is rebound to 127.0.0.1 reads
the answers because the browser thinks they are its own. So, for every request (`RequestPolicy`):

* ``Host`` must name the agent as it was bound: ``127.0.0.1:PORT``, ``localhost:PORT``,
  ``[::1]:PORT`` or the bound address on loopback; on another bind also any IP literal (a
  rebinding page always sends a DNS name), the machine's host name (and ``NAME.local``); plus the
  names given with ``--allow-host``. Otherwise **421** (the page of a foreign name is never served);
* an ``Origin`` header, when present, must be the page's own (``http://`` + the ``Host`` sent) or
  one given with ``--allow-origin``. Otherwise **403**;
* a request other than ``GET``/``HEAD`` needs ``Content-Type: application/json`` (a browser sends
  it cross-origin only after a preflight that this API never answers); ``POST /import`` needs
  ``application/octet-stream`` (`BODY_TYPES`; not CORS-safelisted either). Otherwise **415**.

The token (``--token``), when set, still applies after these checks (`edge.device.http`).

Example:
    >>> policy = RequestPolicy("127.0.0.1", 8080)
    >>> policy.check("POST", {"host": "localhost:8080", "content-type": "text/plain"})
    (415, "content-type: expected 'application/json' for a POST, got 'text/plain'")
    >>> policy.check("GET", {"host": "evil.example:8080"})[0]
    421
    >>> policy.check("POST", {"host": "127.0.0.1:8080", "content-type": "application/json"}) is None
    True
"""

from __future__ import annotations

import ipaddress
import json
import socket
from typing import Any, Awaitable, Callable, Iterable, Mapping
from urllib.parse import urlsplit

from edge.errors import InputError

#: Methods that never change state (every other one needs the JSON content type).
SAFE_METHODS = frozenset({"GET", "HEAD"})
#: Paths whose body is not JSON, and the only content type they take (a knowledge pack's bytes).
BODY_TYPES = {"/import": "application/octet-stream"}
_LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")


def _split_host(value: str) -> tuple[str, int | None] | None:
    """``name[:port]`` / ``[v6][:port]`` -> (lower-case name, port or None); None when malformed."""
    value = value.strip().lower()
    if not value or any(c in value for c in "/\\@ ?#"):
        return None
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        name, rest = value[:end + 1], value[end + 1:]
        if rest and not rest.startswith(":"):
            return None
        port_text = rest[1:] if rest else None
    else:
        name, sep, port_text = value.partition(":")
        port_text = port_text if sep else None
    if port_text is not None:
        if not port_text.isascii() or not port_text.isdigit() or len(port_text) > 5 or int(port_text) > 65535:
            return None
        return name, int(port_text)
    return name, None


def _is_ip_literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return False
    return True


def check_allowed_host(value: str) -> str:
    """A ``--allow-host`` value (a name or ``name:port``), lower-case; `InputError` otherwise."""
    parsed = _split_host(value) if isinstance(value, str) and value.isascii() else None
    if parsed is None or not parsed[0]:
        raise InputError(f"--allow-host: expected a host name such as device.local (optionally NAME:PORT), "
                         f"got {value!r:.80}")
    return value.strip().lower()


def check_allowed_origin(value: str) -> str:
    """A ``--allow-origin`` value (``http[s]://name[:port]``, no path), normalised; `InputError` otherwise."""
    text = value.strip().lower().rstrip("/") if isinstance(value, str) else ""
    try:
        parts = urlsplit(text)
        ok = (text.isascii() and parts.scheme in ("http", "https") and bool(parts.hostname)
              and not parts.path and not parts.query and not parts.fragment and "@" not in parts.netloc)
        _ = parts.port  # ValueError on a bad port
    except ValueError:
        ok = False
    if not ok:
        raise InputError(f"--allow-origin: expected an origin such as http://kiosk.local:8080 (scheme, host, "
                         f"optional port, no path), got {value!r:.80}")
    return text


class RequestPolicy:
    """The hosts and origins the API answers to (module docstring).

    Args:
        bind_host: the address the server was bound to (``127.0.0.1``, ``0.0.0.0``, ``::1``, a name).
        port: the bound port (set again once a port 0 bind knows its port).
        allow_hosts: more ``Host`` names (``--allow-host``), with or without a port.
        allow_origins: more ``Origin`` values (``--allow-origin``).
    """

    def __init__(self, bind_host: str, port: int, allow_hosts: Iterable[str] = (),
                 allow_origins: Iterable[str] = ()) -> None:
        self.bind_host = bind_host.strip("[]").lower()
        self.port = int(port)
        self.allow_hosts = [check_allowed_host(h) for h in allow_hosts]
        self.allow_origins = {check_allowed_origin(o) for o in allow_origins}
        try:
            self.loopback = ipaddress.ip_address(self.bind_host).is_loopback
        except ValueError:
            self.loopback = self.bind_host == "localhost"
        names = set(_LOOPBACK_NAMES)
        names.add(f"[{self.bind_host}]" if ":" in self.bind_host else self.bind_host)
        if not self.loopback:
            hostname = socket.gethostname().lower()
            names.update({hostname, f"{hostname}.local"})
        self._names = names

    def host_ok(self, value: str) -> bool:
        """Whether a ``Host`` header names this agent."""
        parsed = _split_host(value)
        if parsed is None:
            return False
        name, port = parsed
        for extra in self.allow_hosts:
            extra_name, extra_port = _split_host(extra) or ("", None)
            if name == extra_name and (port or 80) == (extra_port or self.port):
                return True
        if (port if port is not None else 80) != self.port:
            return False
        if name in self._names:
            return True
        return not self.loopback and _is_ip_literal(name)

    def origin_ok(self, origin: str, host: str) -> bool:
        """Whether an ``Origin`` header is the page's own (``http://`` + ``host``) or an allowed one."""
        value = origin.strip().lower().rstrip("/")
        return value == f"http://{host.strip().lower()}" or value in self.allow_origins

    def check(self, method: str, headers: Mapping[str, str], path: str = "") -> tuple[int, str] | None:
        """None when the request may go on, else (status, message naming expected vs got)."""
        host = headers.get("host")
        if host is None or not self.host_ok(host):
            return 421, (f"host: expected this agent's address (127.0.0.1:{self.port}, localhost:{self.port} "
                         f"or an --allow-host name), got {host!r:.80}")
        origin = headers.get("origin")
        if origin is not None and not self.origin_ok(origin, host):
            return 403, (f"origin: expected this page's own (http://{host:.80}) or an --allow-origin one, "
                         f"got {origin!r:.80}")
        if method not in SAFE_METHODS:
            media = headers.get("content-type", "").split(";", 1)[0].strip().lower()
            wanted = BODY_TYPES.get(path, "application/json")
            if media != wanted:
                got = headers.get("content-type")
                where = f"{method:.10} {path}" if path in BODY_TYPES else method[:10]
                return 415, (f"content-type: expected {wanted!r} for a {where}, "
                             f"got {'none' if got is None else repr(got[:60])}")
        return None


ASGIApp = Callable[[dict[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]],
                   Awaitable[None]]


class RequestPolicyMiddleware:
    """ASGI middleware applying a `RequestPolicy` before the application sees a request."""

    def __init__(self, app: ASGIApp, policy: RequestPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[Any]],
                       send: Callable[[Any], Awaitable[None]]) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        headers: dict[str, str] = {}
        for key, value in scope.get("headers", []):
            name = key.decode("latin-1").lower()
            if name in ("host", "origin", "content-type"):
                if name in headers:  # two Host or Origin headers: ambiguous, refused
                    headers[name] = "\x00duplicate"
                else:
                    headers[name] = value.decode("latin-1")
        problem = self.policy.check(scope.get("method", "GET"), headers, scope.get("path", ""))
        if problem is None:
            await self.app(scope, receive, send)
            return
        status, message = problem
        body = json.dumps({"error": message}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
