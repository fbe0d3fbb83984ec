"""Frame sources of the device loop and the latest-frame reader thread.

A source yields `Frame` objects (uint8 RGB ``(H, W, 3)``, a timestamp in seconds, and, for files, a
name and possibly a teach label) from ``read()``, which returns None once the source is exhausted.
``realtime`` sources (cameras, streams) keep producing whether or not anyone reads: the
`FrameGrabber` keeps only the newest frame and counts the ones it had to drop. File sources (a video
file, a folder) are read at the loop's pace and never drop.

Specs accepted by `open_source` (the ``--source`` of ``edge-agent run``):

* ``camera:N`` or ``/dev/videoN``: a V4L2 camera through OpenCV;
* ``rtsp://...`` (and ``http(s)://``) streams, and any video file path, through OpenCV;
* ``gst:PIPELINE``: a GStreamer pipeline ending in ``appsink`` (Jetson CSI cameras);
* ``folder:DIR``: the image files already in DIR, then new ones as they appear; files in
  ``DIR/<label>/`` teach that label;
* ``picamera2`` or ``picamera2:N``: the Raspberry Pi camera (the package is imported only here).

Another process (``edge-sim device``) drives the loop with an `IterableSource` over its own
simulated camera: any iterable of `Frame` or ``(frame, timestamp)`` pairs.

OpenCV and picamera2 are imported lazily, so ``import edge.device`` needs neither.

Example:
    >>> import numpy as np
    >>> frames = [(np.zeros((8, 8, 3), np.uint8), i / 30) for i in range(3)]
    >>> grabber = FrameGrabber(IterableSource(frames)).start()
    >>> [round(grabber.get(1.0).timestamp, 3) for _ in range(3)], grabber.get(1.0), grabber.dropped
    ([0.0, 0.033, 0.067], None, 0)
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol

import numpy as np

from edge.errors import InputError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
#: Seconds between two scans of a watched folder.
FOLDER_POLL_S = 0.1


@dataclass
class Frame:
    """One frame: uint8 RGB ``image`` (H, W, 3), ``timestamp`` in seconds, for a file its ``name``,
    and a ``label`` when the source teaches it (a folder's ``DIR/<label>/`` files, a simulated teacher)."""

    image: np.ndarray
    timestamp: float
    name: str | None = None
    label: str | None = None


class Source(Protocol):
    """What the loop reads frames from."""

    #: True for sources that do not wait for the reader (cameras, streams): frames may be dropped.
    realtime: bool

    def read(self) -> Frame | None:
        """The next frame (may block), or None once the source is exhausted."""

    def close(self) -> None:
        """Release the device or file."""


class IterableSource:
    """Frames from any iterable of `Frame` or ``(image, timestamp)`` pairs (simulated cameras, tests)."""

    def __init__(self, frames: Iterable[Frame | tuple[np.ndarray, float]], realtime: bool = False) -> None:
        self._it: Iterator[Frame | tuple[np.ndarray, float]] = iter(frames)
        self.realtime = bool(realtime)

    def read(self) -> Frame | None:
        try:
            item = next(self._it)
        except StopIteration:
            return None
        if isinstance(item, Frame):
            return item
        image, timestamp = item
        return Frame(np.asarray(image), float(timestamp))

    def close(self) -> None:
        close = getattr(self._it, "close", None)
        if callable(close):
            close()


def _import_cv2() -> Any:
    try:
        import cv2
    except ImportError as exc:
        raise InputError("video sources need OpenCV: expected the opencv-python-headless package "
                         "(pip install 'edge-continual[edge]'), got none") from exc
    return cv2


class OpenCVSource:
    """A camera, stream, GStreamer pipeline or video file through ``cv2.VideoCapture``.

    Args:
        spec: the ``--source`` text (see the module docstring).
        clock: timestamps of live frames (files use the position OpenCV reports).
        pace: play a video file at its own frame rate, as a camera delivers frames (it becomes a
            realtime source: frames the loop cannot keep up with are dropped).
    """

    def __init__(self, spec: str, clock: Callable[[], float] = time.monotonic, pace: bool = False) -> None:
        cv2 = _import_cv2()
        self.spec = spec
        self.clock = clock
        if spec.startswith("camera:"):
            index = spec.partition(":")[2]
            if not index.isdigit():
                raise InputError(f"source {spec!r}: expected camera:N with N a number, got {index!r}")
            target: Any = int(index)
            self.realtime = True
            cap = cv2.VideoCapture(target)
        elif spec.startswith("/dev/video"):
            self.realtime = True
            cap = cv2.VideoCapture(spec, cv2.CAP_V4L2)
        elif spec.startswith("gst:"):
            self.realtime = True
            cap = cv2.VideoCapture(spec[4:], cv2.CAP_GSTREAMER)
        elif "://" in spec:
            self.realtime = True
            cap = cv2.VideoCapture(spec)
        else:
            if not Path(spec).is_file():
                raise InputError(f"source {spec!r}: expected a video file, camera:N, /dev/videoN, rtsp://, "
                                 "gst:PIPELINE, folder:DIR or picamera2, got no such file")
            self.realtime = False
            cap = cv2.VideoCapture(spec)
        if not cap.isOpened():
            cap.release()
            raise InputError(f"source {spec!r}: expected a source OpenCV can open, got a failure "
                             "(no such device, unsupported codec, or no GStreamer/FFmpeg backend)")
        self._cap = cap
        self._cv2 = cv2
        self._count = 0
        self.fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.pace = bool(pace) and not self.realtime
        self._t0: float | None = None
        if self.pace:
            self.realtime = True

    def read(self) -> Frame | None:
        if self._cap is None:
            return None
        ok, bgr = self._cap.read()
        if not ok or bgr is None:
            return None
        if self.realtime and not self.pace:
            timestamp = self.clock()
        else:  # position of the frame in the file; frame count / fps where the container has none
            msec = float(self._cap.get(self._cv2.CAP_PROP_POS_MSEC) or 0.0)
            timestamp = msec / 1000.0 if msec > 0 or self._count == 0 or self.fps <= 0 else self._count / self.fps
        self._count += 1
        if self.pace:
            now = time.monotonic()
            if self._t0 is None:
                self._t0 = now - timestamp
            delay = self._t0 + timestamp - now
            if delay > 0:
                time.sleep(delay)
        if bgr.ndim == 2:
            rgb = np.repeat(bgr[:, :, None], 3, axis=2)
        else:
            rgb = np.ascontiguousarray(bgr[:, :, 2::-1])
        return Frame(rgb, timestamp)

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class FolderSource:
    """Image files in a folder: those there at start (sorted), then new ones as they appear.

    A file is read once its size is the same on two scans (so a half-copied file is not read); names
    starting with ``.`` are skipped (temp files). Files in ``DIR/<label>/`` carry that teach label.

    Args:
        directory: the folder (must exist).
        watch: keep watching for new files; False: exhausted once a scan finds nothing new.
        poll_s: seconds between scans.
        clock: frame timestamps.

    ``decode_size`` (the model's input ``(height, width)``, set by `edge.device.loop.DeviceLoop`) is
    handed to `edge.images.load_image` as ``target_size``, so a JPEG decodes at the reduced scale
    that ``edge-agent learn``/``predict`` use (`edge.preprocess.load_frame`): the same pixels.
    """

    realtime = False

    def __init__(self, directory: str | os.PathLike[str], watch: bool = True, poll_s: float = FOLDER_POLL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise InputError(f"source folder:{directory}: expected a directory, got none")
        self.watch = bool(watch)
        self.poll_s = float(poll_s)
        self.clock = clock
        self._done: set[str] = set()
        self._sizes: dict[str, int] = {}
        self._ready: list[tuple[str, str | None]] = []
        self._closed = threading.Event()
        self.errors = 0
        self.decode_size: tuple[int, int] | None = None

    def _scan(self) -> list[tuple[str, str | None]]:
        """Stable, not yet read files: (path, label or None), ordered by name."""
        found: list[tuple[str, str | None]] = []
        sizes: dict[str, int] = {}
        try:
            top = list(os.scandir(self.directory))
        except OSError as exc:
            logger.warning("folder source %s: cannot list (%s)", self.directory, exc)
            return []
        entries: list[tuple[os.DirEntry[str], str | None]] = [(e, None) for e in top]
        for entry in top:
            if entry.name.startswith(".") or not entry.is_dir(follow_symlinks=False):
                continue
            try:
                entries.extend((sub, entry.name) for sub in os.scandir(entry.path))
            except OSError:
                continue
        for entry, label in entries:
            if (entry.name.startswith(".") or not entry.name.lower().endswith(IMAGE_SUFFIXES)
                    or entry.path in self._done):
                continue
            try:
                if not entry.is_file(follow_symlinks=False):
                    continue
                size = entry.stat(follow_symlinks=False).st_size
            except OSError:
                continue
            sizes[entry.path] = size
            if self._sizes.get(entry.path) == size:
                found.append((entry.path, label))
        self._sizes = sizes
        return sorted(found)

    def read(self) -> Frame | None:
        from edge.images import load_image

        idle_scans = 0
        while not self._closed.is_set():
            if not self._ready:
                self._ready = self._scan()
            if self._ready:
                path, label = self._ready.pop(0)
                self._done.add(path)
                self._sizes.pop(path, None)
                try:
                    image = load_image(path, target_size=self.decode_size)
                except InputError as exc:
                    self.errors += 1
                    logger.warning("folder source: skipping %s (%s)", path, exc)
                    continue
                rel = os.path.relpath(path, self.directory)
                return Frame(image, self.clock(), name=rel, label=label)
            idle_scans += 1
            # Two scans are needed to see a new file as stable; a third finding nothing means no more.
            if not self.watch and idle_scans >= 3:
                return None
            self._closed.wait(self.poll_s)
        return None

    def close(self) -> None:
        self._closed.set()


class Picamera2Source:
    """The Raspberry Pi camera through ``picamera2`` (imported here only)."""

    realtime = True

    def __init__(self, camera: int = 0, size: tuple[int, int] = (640, 480),
                 clock: Callable[[], float] = time.monotonic) -> None:
        try:
            from picamera2 import Picamera2
        except ImportError as exc:
            raise InputError("source picamera2: expected the picamera2 package (Raspberry Pi OS: "
                             "apt install python3-picamera2), got none") from exc
        self.clock = clock
        self._cam = Picamera2(camera)
        # "RGB888" is stored B, G, R in memory (libcamera's naming); read() flips it to RGB.
        self._cam.configure(self._cam.create_video_configuration(main={"format": "RGB888", "size": size}))
        self._cam.start()

    def read(self) -> Frame | None:
        if self._cam is None:
            return None
        array = self._cam.capture_array()
        return Frame(np.ascontiguousarray(array[:, :, 2::-1]), self.clock())

    def close(self) -> None:
        if self._cam is not None:
            self._cam.stop()
            self._cam.close()
            self._cam = None


def open_source(spec: str, *, watch: bool = True, pace: bool = False,
                clock: Callable[[], float] = time.monotonic) -> Source:
    """A source from a ``--source`` spec (see the module docstring). ``watch`` applies to folders,
    ``pace`` to video files (`OpenCVSource`)."""
    if not isinstance(spec, str) or not spec:
        raise InputError(f"source: expected a spec such as camera:0 or folder:DIR, got {spec!r}")
    if spec.startswith("folder:"):
        return FolderSource(spec[len("folder:"):], watch=watch, clock=clock)
    if spec == "picamera2" or spec.startswith("picamera2:"):
        index = spec.partition(":")[2] or "0"
        if not index.isdigit():
            raise InputError(f"source {spec!r}: expected picamera2 or picamera2:N, got {index!r}")
        return Picamera2Source(int(index), clock=clock)
    return OpenCVSource(spec, clock=clock, pace=pace)


class FrameGrabber:
    """Reads a source in its own thread; the loop takes frames with `get`.

    Realtime sources keep only the newest frame: one not taken before the next arrives is dropped
    and counted (``dropped``). Other sources wait for the loop (at most one frame is held).

    Args:
        source: a `Source`.
        drop: override the source's ``realtime`` (True: latest-frame semantics).
    """

    def __init__(self, source: Source, drop: bool | None = None) -> None:
        self.source = source
        self.drop = bool(source.realtime if drop is None else drop)
        self.dropped = 0
        self.read_count = 0
        self.error: BaseException | None = None
        self._slot: Frame | None = None
        self._exhausted = False
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="edge-frames", daemon=True)

    def start(self) -> FrameGrabber:
        """Start the reader thread; returns self."""
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                frame = self.source.read()
                if frame is None:
                    break
                with self._cond:
                    self.read_count += 1
                    if self.drop:
                        if self._slot is not None:
                            self.dropped += 1
                    else:
                        while self._slot is not None and not self._stop.is_set():
                            self._cond.wait(0.1)
                    self._slot = frame
                    self._cond.notify_all()
        except Exception as exc:  # noqa: BLE001 - reported by the loop as an error event
            logger.warning("frame source failed: %s", exc)
            self.error = exc
        finally:
            with self._cond:
                self._exhausted = True
                self._cond.notify_all()
            try:
                self.source.close()
            except Exception as exc:  # noqa: BLE001 - closing must not mask the reason we stopped
                logger.warning("frame source close failed: %s", exc)

    @property
    def exhausted(self) -> bool:
        """The source has ended and every frame was taken."""
        with self._cond:
            return self._exhausted and self._slot is None

    def get(self, timeout: float | None = None) -> Frame | None:
        """The next frame, or None on timeout or when the source is exhausted."""
        with self._cond:
            if self._slot is None and not self._exhausted:
                self._cond.wait_for(lambda: self._slot is not None or self._exhausted, timeout)
            frame, self._slot = self._slot, None
            self._cond.notify_all()
            return frame

    def stop(self, timeout: float = 2.0) -> None:
        """Stop reading and close the source (waits up to ``timeout`` for the thread)."""
        self._stop.set()
        close = getattr(self.source, "close", None)
        if isinstance(self.source, FolderSource) and callable(close):
            close()  # wakes a folder scan; cameras are closed by the reader thread itself
        with self._cond:
            self._cond.notify_all()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)
