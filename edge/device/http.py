"""The HTTP API of a running agent (Starlette on uvicorn) and its Prometheus ``/metrics``.

Routes (JSON in and out; errors are ``{"error": "..."}`` with a 4xx status):

* ``GET /status``: model fingerprint, classes (names, sample counts), buffer and state bytes, RSS,
  fps, dropped frames, latency, last checkpoint;
* ``GET /prediction``: the latest answer, `edge.device.labels.LabelMap.answer_fields` (``label``,
  ``index``, ``score``, ``novelty``, ``unknown``, ``top``: the keys of ``edge-agent predict --json``)
  and ``frame``, ``frame_time``, ``name`` (404 before the first);
* ``POST /teach`` ``{"label": "cup", "frames": 30}`` or ``{"label": "cup", "seconds": 2}``;
* ``POST /teach/finish`` ``{"label": "cup"}``: end that class's waiting teach now and learn what it
  collected (the page's hold-to-record button: press ``{"label": "cup", "seconds": 60}``, release);
* ``POST /classes/<name>/rename`` ``{"to": "mug"}``; ``POST /classes/<name>/forget``;
* what the device learned: ``GET /classes``, samples, thumbnails, ``DELETE``, ``POST /undo``,
  ``GET /export`` and ``POST /import`` (a knowledge pack's bytes): `edge.device.knowledge_http`;
* ``GET /metrics``: Prometheus text format (``prometheus_client``);
* the teach page: ``GET /``, ``/stream.mjpg``, ``/frame.jpg``, ``/events`` (`edge.device.page`).

Before any route: ``Host`` must name this agent (421), an ``Origin`` must be the page's own (403)
and a ``POST`` needs ``Content-Type: application/json`` (``POST /import``: ``application/octet-stream``)
(415): `edge.device.crosssite` (cross-site requests, DNS rebinding). JSON bodies are limited to
`MAX_BODY_BYTES` (413 beyond; read in chunks, never trusted from ``Content-Length`` alone), must arrive
within `edge.device.connections.BODY_TIMEOUT_S` (408) and may nest JSON `MAX_JSON_DEPTH` deep (400);
an imported pack has its own limit (``max_import``, `edge.device.knowledge_http`). With a token every request needs
``Authorization: Bearer <token>`` (401 otherwise); `HTTPServer` refuses to bind anything but a
loopback address without one. Connections are limited and timed out (`edge.device.connections`).

Why Starlette + uvicorn: both are small pure-Python packages with aarch64-neutral wheels (uvicorn's
optional C speedups are not needed), the server runs in a thread of the agent's process, and the
measured cost is in the README (RSS of the running agent with and without the server).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import socket
import threading
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Sequence
from urllib.parse import unquote

from edge.device.connections import (ACCEPT_BURST, BODY_TIMEOUT_S, KEEP_ALIVE_S, LISTEN_BACKLOG, MAX_HEADER_BYTES,
                                     ConnectionGuard, OncePerInterval, connection_budget, guarded_protocol,
                                     raise_nofile_limit)
from edge.device.crosssite import RequestPolicy, RequestPolicyMiddleware
from edge.device.labels import UnknownClassError
from edge.device.loop import DeviceLoop, TeachQueueFull
from edge.device.knowledge_http import IMPORT_TIMEOUT_S, knowledge_routes
from edge.device.page import TOKEN_COOKIE, page_routes
from edge.errors import EdgeError, InputError
from edge.knowledge.pack import MAX_PACK_BYTES

if TYPE_CHECKING:
    from starlette.requests import Request

logger = logging.getLogger(__name__)

#: Largest request body accepted, in bytes.
MAX_BODY_BYTES = 4096
#: Deepest nesting of JSON arrays/objects accepted in a body (the API's bodies are flat).
MAX_JSON_DEPTH = 16


def json_depth(raw: bytes) -> int:
    """Deepest nesting of ``[``/``{`` in JSON text (brackets inside strings do not count).

    >>> json_depth(b'{"a": [1, {"b": "[[["}]}')
    3
    """
    depth = deepest = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest


class HTTPError(EdgeError, ValueError):
    """A request the API refuses (status and message)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (``localhost`` counts)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_bind(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (or ``PORT``, or ``[v6]:PORT``) -> (host, port); host defaults to 127.0.0.1."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", text
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise InputError(f"--http: expected HOST:PORT with a port in [0, 65535], got {text!r:.60}")
    return host, int(port)


def _metrics_collector(loop: DeviceLoop) -> Any:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    class LoopCollector:
        """Reads the loop's counters at scrape time (nothing is updated per frame)."""

        def collect(self) -> Any:
            status = loop.status()
            counters = {"frames": ("Frames processed", status["frames"]),
                        "predictions": ("Predictions made", status["predictions"]),
                        "dropped_frames": ("Frames dropped by the latest-frame reader", status["dropped_frames"]),
                        "learned_batches": ("Teach batches learned", status["learned_batches"])}
            for name, (doc, value) in counters.items():
                yield CounterMetricFamily(f"edge_agent_{name}", doc, value=value)
            latency = status["latency_ms"]
            gauges = {"fps": ("Frames per second", status["fps"]),
                      "rss_bytes": ("Resident set size of the agent process", status["rss_bytes"]),
                      "buffer_bytes": ("Replay buffer bytes", status["buffer"]["bytes"]),
                      "buffer_fill": ("Replay buffer rows", status["buffer"]["fill"]),
                      "state_bytes": ("Learned state bytes in memory", status["state_bytes"]),
                      "step": ("Learning steps so far", status["step"]),
                      "classes": ("Classes known", len(status["classes"])),
                      "prediction_latency_p99_seconds": ("Prediction latency p99 (last 1000)",
                                                         (latency["p99"] or 0.0) / 1000.0)}
            for name, (doc, value) in gauges.items():
                yield GaugeMetricFamily(f"edge_agent_{name}", doc, value=value)
            unknown, per_class = loop.answer_counts()
            yield CounterMetricFamily("edge_agent_unknown_answers", "Answers that were 'unknown'", value=unknown)
            answers = CounterMetricFamily("edge_agent_answers", "Answers per class (known classes)",
                                          labels=["index", "label"])
            for index, (name, count) in sorted(per_class.items()):
                answers.add_metric([str(index), name], count)
            yield answers
            ckpt = status["last_checkpoint"]
            yield GaugeMetricFamily("edge_agent_last_checkpoint_step", "Step of the last checkpoint",
                                    value=-1 if ckpt is None else ckpt["step"])

    return LoopCollector()


def build_app(loop: DeviceLoop, token: str | None = None, max_body: int = MAX_BODY_BYTES,
              policy: RequestPolicy | None = None, max_import: int = MAX_PACK_BYTES,
              import_timeout_s: float = IMPORT_TIMEOUT_S) -> Any:
    """The ASGI application of the API over ``loop``: the Starlette routes behind the
    `edge.device.crosssite.RequestPolicy` (default: loopback, port 8080). ``max_body``: the largest
    JSON body; ``max_import``, ``import_timeout_s``: the largest ``POST /import`` body and the
    seconds it may take."""
    import anyio
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    from starlette.requests import ClientDisconnect
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    registry = CollectorRegistry(auto_describe=True)
    registry.register(_metrics_collector(loop))
    expected = None if token is None else f"Bearer {token}".encode()

    def check_token(request: Request, cookie: bool = False) -> None:
        if expected is None:
            return
        given = request.headers.get("authorization", "").encode("latin-1", "replace")
        if not given and cookie and TOKEN_COOKIE in request.cookies:  # <img>, EventSource: no headers
            given = ("Bearer " + unquote(request.cookies[TOKEN_COOKIE])).encode("utf-8", "replace")
        if not hmac.compare_digest(given, expected):
            raise HTTPError(401, "authorization: expected 'Authorization: Bearer <token>'"
                            + (f" or the {TOKEN_COOKIE} cookie" if cookie else "") + ", got "
                            + ("a wrong token" if given else "none"))

    async def body_json(request: Request) -> dict[str, Any]:
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > max_body):
            raise HTTPError(413, f"body: expected at most {max_body} bytes, got Content-Length {length:.20}")
        chunks, size = [], 0
        try:
            with anyio.fail_after(BODY_TIMEOUT_S):
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > max_body:
                        raise HTTPError(413, f"body: expected at most {max_body} bytes, got more")
                    chunks.append(chunk)
        except TimeoutError:
            raise HTTPError(408, f"body: expected it within {BODY_TIMEOUT_S:g} s, got {size} bytes by then") from None
        except ClientDisconnect:  # the client left mid-body: nobody reads the answer, nothing to log
            raise HTTPError(400, "body: expected a whole body, got a closed connection") from None
        raw = b"".join(chunks)
        if not raw.strip():
            return {}
        if json_depth(raw) > MAX_JSON_DEPTH:
            raise HTTPError(400, f"body: expected JSON nested at most {MAX_JSON_DEPTH} deep, got deeper")
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise HTTPError(400, f"body: expected a JSON object, got malformed JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise HTTPError(400, f"body: expected a JSON object, got {type(data).__name__}")
        return data

    def only(data: dict[str, Any], allowed: set[str]) -> None:
        extra = sorted(set(data) - allowed)
        if extra:
            raise HTTPError(400, f"body: expected keys among {sorted(allowed)}, got {extra}")

    def endpoint(fn: Callable[[Request], Awaitable[Any]],
                 cookie: bool = False) -> Callable[[Request], Awaitable[Response]]:
        async def handle(request: Request) -> Response:
            try:
                check_token(request, cookie)
                result = await fn(request)
            except HTTPError as exc:
                return JSONResponse({"error": str(exc)}, status_code=exc.status)
            except UnknownClassError as exc:
                return JSONResponse({"error": str(exc)}, status_code=404)
            except TeachQueueFull as exc:
                return JSONResponse({"error": str(exc)}, status_code=429)
            except (EdgeError, ValueError) as exc:   # an error may name its status (an import: 409, 413, ...)
                close = {"Connection": "close"} if getattr(exc, "close", None) is True else None  # body left unread
                return JSONResponse({"error": str(exc)}, status_code=int(getattr(exc, "http_status", 400)),
                                    headers=close)
            if isinstance(result, Response):
                return result
            return JSONResponse(result)
        return handle

    async def status(request: Request) -> Any:
        return await run_in_threadpool(loop.status)

    async def prediction(request: Request) -> Any:
        latest = loop.latest_prediction()
        if latest is None:
            raise HTTPError(404, "prediction: expected a learned class and a frame, got none yet (teach first)")
        return latest

    async def teach(request: Request) -> Any:
        data = await body_json(request)
        only(data, {"label", "frames", "seconds"})
        if "label" not in data:
            raise HTTPError(400, "teach: expected a 'label' (a class name), got none")
        return await run_in_threadpool(loop.teach, data["label"], data.get("frames"), data.get("seconds"))

    async def teach_finish(request: Request) -> Any:
        data = await body_json(request)
        only(data, {"label"})
        if "label" not in data:
            raise HTTPError(400, "teach finish: expected a 'label' (a class name), got none")
        return await run_in_threadpool(loop.finish_teach, data["label"])

    async def rename(request: Request) -> Any:
        data = await body_json(request)
        only(data, {"to"})
        if not isinstance(data.get("to"), str):
            raise HTTPError(400, f"rename: expected {{\"to\": NEW_NAME}}, got {data!r:.80}")
        return await run_in_threadpool(loop.rename, request.path_params["name"], data["to"])

    async def forget(request: Request) -> Any:
        data = await body_json(request)
        only(data, set())
        return await run_in_threadpool(loop.forget, request.path_params["name"])

    async def metrics(request: Request) -> Any:
        text = await run_in_threadpool(generate_latest, registry)
        return Response(text, media_type=CONTENT_TYPE_LATEST)

    routes = [Route("/status", endpoint(status), methods=["GET"]),
              Route("/prediction", endpoint(prediction), methods=["GET"]),
              Route("/teach", endpoint(teach), methods=["POST"]),
              Route("/teach/finish", endpoint(teach_finish), methods=["POST"]),
              Route("/classes/{name}/rename", endpoint(rename), methods=["POST"]),
              Route("/classes/{name}/forget", endpoint(forget), methods=["POST"]),
              Route("/metrics", endpoint(metrics), methods=["GET"]),
              *page_routes(loop, endpoint),
              *knowledge_routes(loop, endpoint, body_json, max_import,   # /classes, /samples, /undo,
                                import_timeout_s)]                        # /export, /import (issue 25)
    policy = policy if policy is not None else RequestPolicy("127.0.0.1", 8080)
    return RequestPolicyMiddleware(Starlette(routes=routes), policy)


class HTTPServer:
    """uvicorn serving `build_app` in a daemon thread.

    Args:
        loop: the `DeviceLoop`.
        host, port: where to listen (port 0: any free port, see ``port`` after `start`).
        token: required bearer token (mandatory for a non-loopback host).
        allow_hosts, allow_origins: more ``Host`` names and ``Origin`` values to serve
            (`edge.device.crosssite.RequestPolicy`).
        max_connections: connections open at once at most (default and ceiling:
            `edge.device.connections.connection_budget`).
        max_import, import_timeout_s: the largest ``POST /import`` body in bytes (a knowledge pack)
            and the seconds it may take.
    """

    def __init__(self, loop: DeviceLoop, host: str = "127.0.0.1", port: int = 8080,
                 token: str | None = None, max_body: int = MAX_BODY_BYTES, *,
                 allow_hosts: Sequence[str] = (), allow_origins: Sequence[str] = (),
                 max_connections: int | None = None, max_import: int = MAX_PACK_BYTES,
                 import_timeout_s: float = IMPORT_TIMEOUT_S) -> None:
        if not is_loopback(host) and not token:
            raise InputError(f"--http {host}:{port}: expected --token for a non-loopback address, got none "
                             "(anyone on the network could teach the device)")
        if token is not None and (len(token) < 8 or not token.isprintable() or " " in token):
            raise InputError("--token: expected at least 8 printable characters without spaces, got "
                             f"{len(token)} characters")
        self.host, self.port = host, int(port)
        self.policy = RequestPolicy(host, self.port, allow_hosts, allow_origins)
        self.max_connections = max_connections
        self.guard: ConnectionGuard | None = None
        self.app = build_app(loop, token, max_body, self.policy, max_import, import_timeout_s)
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> HTTPServer:
        """Bind (errors surface here, in the caller's thread) and serve in a thread; returns self."""
        import uvicorn

        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError as exc:
            sock.close()
            raise InputError(f"--http {self.host}:{self.port}: expected a free address, got {exc.strerror or exc}") from exc
        sock.listen(LISTEN_BACKLOG)
        self.port = self.policy.port = sock.getsockname()[1]
        raise_nofile_limit()
        self.guard = guard = ConnectionGuard(connection_budget(self.max_connections))
        for name in ("uvicorn.error", "asyncio"):  # one line per message and interval, not per request
            if not any(isinstance(f, OncePerInterval) for f in logging.getLogger(name).filters):
                logging.getLogger(name).addFilter(OncePerInterval())
        config = uvicorn.Config(self.app, log_level="warning", lifespan="off", access_log=False,
                                timeout_graceful_shutdown=2, http=guarded_protocol(guard),
                                limit_concurrency=guard.max_connections + 1, timeout_keep_alive=int(KEEP_ALIVE_S),
                                h11_max_incomplete_event_size=MAX_HEADER_BYTES, backlog=ACCEPT_BURST)

        class Server(uvicorn.Server):
            async def serve(self, sockets: Any = None) -> None:
                import asyncio

                asyncio.get_running_loop().set_exception_handler(guard.exception_handler)
                await super().serve(sockets)

            async def startup(self, sockets: Any = None) -> None:
                await super().startup(sockets)
                for listening in sockets or ():  # asyncio set ACCEPT_BURST as the kernel's queue too
                    listening.listen(LISTEN_BACKLOG)

        self._server = Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]},
                                        name="edge-http", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving (waits up to ``timeout``)."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
