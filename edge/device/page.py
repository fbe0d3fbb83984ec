"""The teach page of a running agent (``edge-agent run``), served next to its HTTP API.

Routes (mounted by `edge.device.http.build_app`):

* ``GET /``: one page (``edge/device/static/index.html``, ``page.css``, ``page.js``: plain files, no
  build step, no CDN, no external font; a Content-Security-Policy keeps every request on the device);
* ``GET /stream.mjpg[?fps=N]``: the live view, MJPEG (``multipart/x-mixed-replace``);
* ``GET /frame.jpg``: the newest frame as one JPEG (``X-Frame`` / ``X-Frame-Time`` headers);
* ``GET /events``: Server-Sent Events, ``prediction`` (what ``GET /prediction`` answers, sent when it
  changes) and, once a second, ``view`` (the live view's frames per second and clients).

The page itself uses only the public API (``/status``, ``/teach``, ``/teach/finish``,
``/classes/<name>/rename`` and ``/forget``, the routes above), so everything it does can be scripted.

Live view cost: frames are JPEG-encoded (Pillow) in the server's threads, never in the loop's, once
per new frame however many clients watch, and at most `VIEW_FPS` times a second, so streaming takes
a bounded share of the CPU from prediction. Nothing is encoded while nobody watches.

Token: the page, the CSS and the JS carry no secret and are served without one. With a token the
page asks for it once, keeps it in the browser's local storage and sends it as
``Authorization: Bearer``; ``<img>`` and ``EventSource`` cannot set headers, so the three read-only
streaming routes also accept it in the `TOKEN_COOKIE` cookie (``SameSite=Strict``, set by the page).
Every route that changes state still needs the header.
"""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from collections import deque
from importlib import resources
from typing import TYPE_CHECKING, Any, AsyncIterator, Awaitable, Callable

import numpy as np

from edge.errors import InputError

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from edge.device.loop import DeviceLoop

logger = logging.getLogger(__name__)

#: Most JPEG frames encoded per second for the live view (all clients together), and the default
#: rate of one ``/stream.mjpg`` client; a client may ask for fewer with ``?fps=``.
VIEW_FPS = 10.0
#: The live view's longest side in pixels (larger camera frames are scaled down before encoding).
VIEW_MAX_SIDE = 640
#: JPEG quality of the live view.
JPEG_QUALITY = 80
#: Predictions sent per second at most on ``/events``.
EVENTS_HZ = 10.0
#: Cookie that may carry the token for the streaming routes (``<img>`` and ``EventSource``).
TOKEN_COOKIE = "edge_token"
#: The files of the page, served from the package (name -> media type).
STATIC_FILES = {"index.html": "text/html; charset=utf-8", "page.css": "text/css; charset=utf-8",
                "page.js": "text/javascript; charset=utf-8"}
#: Every request of the page stays on the device.
CONTENT_SECURITY_POLICY = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
                           "connect-src 'self'; font-src 'none'; object-src 'none'; base-uri 'none'; "
                           "form-action 'self'; frame-ancestors 'none'")

Endpoint = Callable[..., Callable[["Request"], Awaitable["Response"]]]


def encode_jpeg(image: np.ndarray, max_side: int = VIEW_MAX_SIDE, quality: int = JPEG_QUALITY) -> bytes:
    """An RGB uint8 (H, W, 3) image as JPEG bytes, scaled down to ``max_side`` (Pillow).

    >>> data = encode_jpeg(np.zeros((480, 1280, 3), np.uint8), max_side=640)
    >>> data[:2] == b"\\xff\\xd8"
    True
    """
    from PIL import Image

    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise InputError(f"live view: expected a uint8 (H, W, 3) RGB frame, got {image.dtype} {image.shape}")
    picture = Image.fromarray(np.ascontiguousarray(image))
    if max(picture.size) > max_side:
        picture.thumbnail((max_side, max_side))
    out = io.BytesIO()
    picture.save(out, format="JPEG", quality=quality)
    return out.getvalue()


class LiveView:
    """JPEGs of the loop's newest frame for the live view, encoded at a bounded rate.

    Args:
        loop: the `DeviceLoop` (read through `DeviceLoop.latest_frame`).
        max_fps: most encodes per second, whatever the number of clients.
        max_side, quality: see `encode_jpeg`.
    """

    def __init__(self, loop: DeviceLoop, max_fps: float = VIEW_FPS, max_side: int = VIEW_MAX_SIDE,
                 quality: int = JPEG_QUALITY) -> None:
        if not 0.0 < max_fps <= 60.0:
            raise InputError(f"live view fps: expected a number in (0, 60], got {max_fps!r}")
        self.loop = loop
        self.max_fps = float(max_fps)
        self.max_side = int(max_side)
        self.quality = int(quality)
        self.encoded = 0
        self.clients = 0
        self._lock = threading.Lock()
        self._cached: tuple[bytes, int, float] | None = None
        self._encoded_at = -1e9
        self._sent_times: deque[float] = deque(maxlen=60)

    def jpeg(self) -> tuple[bytes, int, float] | None:
        """``(JPEG bytes, frame number, source time)`` of the newest frame (None before the first).

        A new frame is encoded only once ``1 / max_fps`` has passed since the last encode; until
        then the previous JPEG is answered."""
        with self._lock:
            now = time.monotonic()
            cached = self._cached
            if cached is not None and now - self._encoded_at < 1.0 / self.max_fps:
                return cached
            latest = self.loop.latest_frame()
            if latest is None:
                return cached
            image, frame, timestamp = latest
            if cached is not None and cached[1] == frame:
                return cached
            self._cached = (encode_jpeg(image, self.max_side, self.quality), frame, float(timestamp))
            self._encoded_at = now
            self.encoded += 1
            return self._cached

    def sent(self) -> None:
        """Count one frame sent to a client (for `fps`)."""
        self._sent_times.append(time.monotonic())

    def fps(self) -> float:
        """Frames per second each live-view client gets (the last 60 sends; 0 when none recently)."""
        times = list(self._sent_times)
        if len(times) < 2 or time.monotonic() - times[-1] > 2.0:
            return 0.0
        return (len(times) - 1) / max(times[-1] - times[0], 1e-9) / max(self.clients, 1)

    def stats(self) -> dict[str, Any]:
        """What the ``view`` event carries."""
        return {"fps": round(self.fps(), 2), "clients": self.clients, "encoded": self.encoded,
                "max_fps": self.max_fps}


def static_file(name: str) -> bytes:
    """The bytes of one of the page's `STATIC_FILES` (from the installed package)."""
    if name not in STATIC_FILES:
        raise InputError(f"page file: expected one of {sorted(STATIC_FILES)}, got {name!r:.60}")
    return resources.files("edge.device").joinpath("static", name).read_bytes()


def _view_fps(request: Request, default: float) -> float:
    text = request.query_params.get("fps")
    if text is None:
        return default
    try:
        fps = float(text)
    except ValueError:
        fps = float("nan")
    if not 0.1 <= fps <= default:
        from edge.device.http import HTTPError

        raise HTTPError(400, f"fps: expected a number in [0.1, {default:g}], got {text!r:.20}")
    return fps


def page_routes(loop: DeviceLoop, endpoint: Endpoint, view: LiveView | None = None) -> list[Route]:
    """The page's routes; ``endpoint(fn, cookie=True)`` wraps a handler with the API's token check
    and error mapping (`edge.device.http.build_app`)."""
    import anyio
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import Response, StreamingResponse
    from starlette.routing import Route

    live = view if view is not None else LiveView(loop)
    files = {name: static_file(name) for name in STATIC_FILES}
    headers = {"Content-Security-Policy": CONTENT_SECURITY_POLICY, "X-Content-Type-Options": "nosniff",
               "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"}
    stream_headers = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}

    def serve(name: str) -> Response:
        return Response(files[name], media_type=STATIC_FILES[name], headers=headers)

    async def index(request: Request) -> Response:
        return serve("index.html")

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in files:
            return Response(json.dumps({"error": f"page file: expected one of {sorted(files)}, got {name!r:.60}"}),
                            status_code=404, media_type="application/json")
        return serve(name)

    async def frame(request: Request) -> Any:
        item = await run_in_threadpool(live.jpeg)
        if item is None:
            from edge.device.http import HTTPError

            raise HTTPError(404, "frame: expected a frame from the source, got none yet")
        data, number, timestamp = item
        return Response(data, media_type="image/jpeg",
                        headers={**stream_headers, "X-Frame": str(number), "X-Frame-Time": f"{timestamp:.6f}"})

    async def stream(request: Request) -> Any:
        period = 1.0 / _view_fps(request, live.max_fps)

        async def parts() -> AsyncIterator[bytes]:
            live.clients += 1
            last = None
            try:
                yield b"--frame\r\n"
                while True:
                    began = time.monotonic()
                    item = await run_in_threadpool(live.jpeg)
                    if item is not None and item[1] != last:
                        data, last, timestamp = item
                        # The boundary follows each part: browsers show a part once its end is seen.
                        yield (b"Content-Type: image/jpeg\r\nContent-Length: %d\r\nX-Frame: %d\r\n\r\n"
                               % (len(data), last) + data + b"\r\n--frame\r\n")
                        live.sent()
                    await anyio.sleep(max(0.0, period - (time.monotonic() - began)))
            finally:
                live.clients -= 1

        return StreamingResponse(parts(), media_type="multipart/x-mixed-replace; boundary=frame",
                                 headers=stream_headers)

    async def events(request: Request) -> Any:
        async def messages() -> AsyncIterator[str]:
            yield "retry: 2000\n\n"
            last_frame, last_view, last_ping = None, 0.0, time.monotonic()
            while True:
                latest = loop.latest_prediction()
                now = time.monotonic()
                if latest is not None and latest["frame"] != last_frame:
                    last_frame = latest["frame"]
                    yield f"event: prediction\ndata: {json.dumps(latest)}\n\n"
                    last_ping = now
                if now - last_view >= 1.0:
                    yield f"event: view\ndata: {json.dumps(live.stats())}\n\n"
                    last_view = last_ping = now
                elif now - last_ping >= 15.0:
                    yield ": ping\n\n"
                    last_ping = now
                await anyio.sleep(1.0 / EVENTS_HZ)

        return StreamingResponse(messages(), media_type="text/event-stream",
                                 headers={**stream_headers, "X-Accel-Buffering": "no"})

    return [Route("/", index, methods=["GET"]),
            Route("/static/{name}", static, methods=["GET"]),
            Route("/frame.jpg", endpoint(frame, cookie=True), methods=["GET"]),
            Route("/stream.mjpg", endpoint(stream, cookie=True), methods=["GET"]),
            Route("/events", endpoint(events, cookie=True), methods=["GET"])]
