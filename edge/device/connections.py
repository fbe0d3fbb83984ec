"""Connection limits of the HTTP API: a socket budget below the descriptor limit, header and idle
timeouts, and accept errors logged once per interval.

An agent that teaches and checkpoints must keep working while something opens sockets: thousands of
idle TCP connections (a buggy client, a scan, an attack on a shared network) would otherwise use up
the process's file descriptors, make the API unreachable and make checkpoint writes fail with
``EMFILE`` (a power cut would then lose what was learned meanwhile). So:

* `raise_nofile_limit` raises the soft ``RLIMIT_NOFILE`` to the hard limit at start;
* `ConnectionGuard` keeps `RESERVED_FDS` descriptors (checkpoints, the model, the source, logs) and
  two accept bursts (`ACCEPT_BURST`) out of the sockets' reach (`connection_budget`): a connection
  beyond ``max_connections`` is closed as soon as it is accepted, before it costs anything but the
  accept;
* a connection must finish its request line and headers within `HEADER_TIMEOUT_S` (slow and idle
  clients are closed; uvicorn's own keep-alive timeout closes idle connections between requests;
  `edge.device.http` bounds the body read with `BODY_TIMEOUT_S`);
* accept errors (``EMFILE``, ``ENFILE``, ``ENOBUFS``, ``ENOMEM``) and refused connections are logged
  as one line per `LOG_INTERVAL_S` with a count, never a traceback per accept.

Example:
    >>> guard = ConnectionGuard(max_connections=100)
    >>> guard.admit(99), guard.admit(100)
    (True, False)
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import threading
import time
from typing import Any

from edge.errors import ConfigError

logger = logging.getLogger(__name__)

#: Descriptors kept free for everything but sockets (checkpoint writes, the source, the model, logs).
RESERVED_FDS = 128
#: Connections the kernel queues for the listening socket (they cost the agent no descriptor).
LISTEN_BACKLOG = 1024
#: Connections the server accepts in one go (asyncio's accept loop); one more go may come before
#: the first is refused, so the budget leaves room for two.
ACCEPT_BURST = 64
#: Most simultaneous connections by default (lower when the descriptor limit is lower).
DEFAULT_MAX_CONNECTIONS = 8192
#: Seconds a new connection (or a kept-alive one that starts a request) has to send its headers.
HEADER_TIMEOUT_S = 10.0
#: Seconds a request has to send its whole body (`edge.device.http`).
BODY_TIMEOUT_S = 10.0
#: Seconds an idle kept-alive connection stays open between requests.
KEEP_ALIVE_S = 5.0
#: Largest request line + headers in bytes (h11's incomplete-event limit).
MAX_HEADER_BYTES = 16 * 1024
#: Seconds between two log lines about refused connections or accept errors.
LOG_INTERVAL_S = 10.0
_ACCEPT_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


def raise_nofile_limit() -> tuple[int, int]:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit (where the platform has one); returns
    (soft, hard) after the change (``(-1, -1)`` where there is no such limit)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Linux/macOS
        return -1, -1
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:  # pragma: no cover - a sandbox may refuse
            logger.warning("could not raise the open-file limit from %d to %d: %s", soft, hard, exc)
    return int(soft), int(hard)


def open_fds() -> int:
    """Descriptors open in this process now (Linux ``/proc/self/fd``; 64 where unknown)."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:  # pragma: no cover - not Linux
        return 64


def connection_budget(requested: int | None = None) -> int:
    """How many connections may be open at once: ``requested`` (or `DEFAULT_MAX_CONNECTIONS`),
    at most the soft descriptor limit less the descriptors open now, `RESERVED_FDS` and two accept
    bursts (`ACCEPT_BURST`)."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except ImportError:  # pragma: no cover
        soft = -1
    want = DEFAULT_MAX_CONNECTIONS if requested is None else int(requested)
    if soft < 0:
        return want
    room = int(soft) - open_fds() - RESERVED_FDS - 2 * ACCEPT_BURST
    if room < 16:
        raise ConfigError(f"open-file limit: expected room for at least 16 connections after "
                          f"{RESERVED_FDS + 2 * ACCEPT_BURST} reserved descriptors, got a limit of {soft} "
                          "(raise LimitNOFILE / ulimit -n)")
    return max(1, min(want, room))


class ConnectionGuard:
    """Counts refused connections and accept errors and logs them once per interval.

    Args:
        max_connections: connections open at once at most (`connection_budget`).
        log_interval_s: seconds between two log lines of the same kind.
    """

    def __init__(self, max_connections: int, log_interval_s: float = LOG_INTERVAL_S) -> None:
        if max_connections < 1:
            raise ConfigError(f"max_connections: expected >= 1, got {max_connections}")
        self.max_connections = int(max_connections)
        self.log_interval_s = float(log_interval_s)
        self.refused = 0
        self.accept_errors = 0
        self.timed_out = 0
        self._lock = threading.Lock()
        self._last_log: dict[str, float] = {}
        self._unlogged: dict[str, int] = {}

    def admit(self, open_now: int) -> bool:
        """Whether one more connection may stay open while ``open_now`` are (counts a refusal)."""
        if open_now < self.max_connections:
            return True
        self.refused += 1
        self.note("refused", f"connections: expected at most {self.max_connections} open at once, got more; "
                  "closing new ones")
        return False

    def note(self, kind: str, message: str) -> None:
        """Log ``message`` at most once per interval per ``kind`` (with how many were not logged)."""
        now = time.monotonic()
        with self._lock:
            self._unlogged[kind] = self._unlogged.get(kind, 0) + 1
            last = self._last_log.get(kind)
            if last is not None and now - last < self.log_interval_s:
                return
            count, self._unlogged[kind] = self._unlogged[kind], 0
            self._last_log[kind] = now
        logger.warning("%s (%d in the last %gs)", message, count, self.log_interval_s)

    def exception_handler(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """The server's event-loop exception handler: accept errors -> one line per interval."""
        exc = context.get("exception")
        if isinstance(exc, OSError) and exc.errno in _ACCEPT_ERRNOS:
            self.accept_errors += 1
            self.note("accept", f"accept: expected a free descriptor, got {errno.errorcode.get(exc.errno, exc.errno)} "
                      "(too many connections; retrying)")
            return
        loop.default_exception_handler(context)


class OncePerInterval(logging.Filter):
    """A logging filter that lets each distinct message through once per interval (uvicorn logs
    "Invalid HTTP request received." once per bad request: a flood of them must not flood the log)."""

    def __init__(self, interval_s: float = LOG_INTERVAL_S) -> None:
        super().__init__()
        self.interval_s = float(interval_s)
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        key = f"{record.name}:{record.levelno}:{record.msg}"
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.interval_s:
                return False
            if len(self._last) > 1000:
                self._last.clear()
            self._last[key] = now
        return True


def guarded_protocol(guard: ConnectionGuard, header_timeout_s: float = HEADER_TIMEOUT_S) -> type:
    """uvicorn's h11 protocol with the connection budget of ``guard`` and a header timeout."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None
        _refused = False

        def connection_made(self, transport: Any) -> None:
            if not guard.admit(len(self.connections)):
                self._refused = True
                self.transport = transport
                transport.abort()
                return
            super().connection_made(transport)
            self._arm_header_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_header_timer()
            if self._refused:
                return
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return
            super().data_received(data)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm_header_timer()  # the next request's headers get the same time

        def _arm_header_timer(self) -> None:
            self._cancel_header_timer()
            self._header_timer = self.loop.call_later(header_timeout_s, self._header_timeout)

        def _cancel_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _header_timeout(self) -> None:
            self._header_timer = None
            idle = self.cycle is None or self.cycle.response_complete
            if idle and not self.transport.is_closing():  # no request line + headers in time
                guard.timed_out += 1
                self.transport.close()

    return GuardedH11Protocol
