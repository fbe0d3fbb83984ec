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
* ``folder:DIR``: the image files already in DIR (the ``DIR/<label>/`` ones, which teach that
  label, first), then new ones in the order they arrive; with a ``memory`` file (``edge-agent run``
  keeps it in the state folder) files learned before a restart are not learned again;
* ``picamera2`` or ``picamera2:N``: the Raspberry Pi camera (the package is imported only here).

Another process (``edge-sim device``) drives the loop with an `IterableSource` over its own
simulated camera: any iterable of `Frame` or ``(frame, timestamp)`` pairs.

A source that is well formed but cannot be opened now (no camera yet, no such file or folder, a
stream that is down) raises `SourceUnavailable`; `WaitingSource` retries such a source with capped
exponential backoff (``edge-agent run --wait-for-source``).

OpenCV and picamera2 are imported lazily, so ``import edge.device`` needs neither.

Example:
    >>> import numpy as np
    >>> frames = [(np.zeros((8, 8, 3), np.uint8), i / 30) for i in range(3)]
    >>> grabber = FrameGrabber(IterableSource(frames)).start()
    >>> [round(grabber.get(1.0).timestamp, 3) for _ in range(3)], grabber.get(1.0), grabber.dropped
    ([0.0, 0.033, 0.067], None, 0)
"""

from __future__ import annotations

import json
import logging
import os
import stat
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
#: `WaitingSource` backoff: the first retry after this many seconds, doubling up to the cap.
WAIT_FIRST_S = 1.0
WAIT_CAP_S = 30.0
#: Files a folder source remembers as learned at most (the oldest are forgotten first).
MAX_REMEMBERED_FILES = 20_000
#: The folder source's memory file in the state folder (``edge-agent run``).
FOLDER_MEMORY_NAME = "folder-source-learned.json"

#: Called by a source to report something as an event: ``(kind, **fields)`` (`EventWriter.emit`).
EventSink = Callable[..., None]


class SourceUnavailable(InputError):
    """The source is well formed but cannot be opened now (no such device, file or folder yet, a
    stream that is down): `WaitingSource` retries it."""


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
    # OpenCV's own "[ WARN:0@0.015] ... can't open camera by index" lines would come before (and
    # say less than) our error; an environment that sets OPENCV_LOG_LEVEL keeps its choice.
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    try:
        import cv2
    except ImportError as exc:
        raise InputError("video sources need OpenCV: expected the opencv-python-headless package "
                         "(pip install '.[edge]' in the project folder), got none") from exc
    return cv2


def _open_capture(cv2: Any, target: Any, *backend: int) -> Any:
    """``cv2.VideoCapture(target, *backend)`` with OpenCV's log silenced while it probes backends
    (a failure is reported by the caller, in one line)."""
    log: Any = getattr(getattr(cv2, "utils", None), "logging", None)
    previous = None
    if log is not None and hasattr(log, "setLogLevel"):
        previous = log.getLogLevel()
        log.setLogLevel(log.LOG_LEVEL_SILENT)
    try:
        return cv2.VideoCapture(target, *backend)
    finally:
        if previous is not None:
            log.setLogLevel(previous)


def check_spec(spec: object) -> str:
    """``spec`` if it is a well-formed ``--source`` (see the module docstring); `InputError` naming
    the expected form otherwise. Whether it can be opened is not checked.

    Example:
        >>> check_spec("camera:0")
        'camera:0'
    """
    if not isinstance(spec, str) or not spec:
        raise InputError(f"source: expected a spec such as camera:0 or folder:DIR, got {spec!r}")
    if spec.startswith("camera:") and not spec.partition(":")[2].isdigit():
        raise InputError(f"source {spec!r}: expected camera:N with N a number, got {spec.partition(':')[2]!r}")
    if spec.startswith("picamera2:") and not spec.partition(":")[2].isdigit():
        raise InputError(f"source {spec!r}: expected picamera2 or picamera2:N, got {spec.partition(':')[2]!r}")
    if spec == "folder:":
        raise InputError("source 'folder:': expected folder:DIR with a directory, got none")
    return spec


def is_live(spec: str) -> bool:
    """Whether ``spec`` is a camera or a stream (not a file or folder): its end is a fault, not the end."""
    return spec.startswith(("camera:", "/dev/video", "gst:", "picamera2")) or "://" in spec


def is_realtime(spec: str, pace: bool = True) -> bool:
    """Whether the source of ``spec`` keeps producing frames without waiting for the reader (cameras,
    streams, a video file played at its own rate): frames the loop cannot take are dropped."""
    if spec.startswith("folder:"):
        return False
    if (spec.startswith(("camera:", "/dev/video", "gst:", "picamera2")) or "://" in spec):
        return True
    return bool(pace)


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
        check_spec(spec)
        if spec.startswith("camera:"):
            self.realtime = True
            cap = _open_capture(cv2, int(spec.partition(":")[2]))
        elif spec.startswith("/dev/video"):
            self.realtime = True
            if not os.path.exists(spec):
                raise SourceUnavailable(f"source {spec!r}: expected a camera device, got no such device")
            cap = _open_capture(cv2, spec, cv2.CAP_V4L2)
        elif spec.startswith("gst:"):
            self.realtime = True
            cap = _open_capture(cv2, spec[4:], cv2.CAP_GSTREAMER)
        elif "://" in spec:
            self.realtime = True
            cap = _open_capture(cv2, spec)
        else:
            if not Path(spec).is_file():
                raise SourceUnavailable(f"source {spec!r}: expected a video file, camera:N, /dev/videoN, rtsp://, "
                                        "gst:PIPELINE, folder:DIR or picamera2, got no such file")
            self.realtime = False
            cap = _open_capture(cv2, spec)
        if not cap.isOpened():
            cap.release()
            what = "a video file OpenCV can decode" if not self.realtime else "a source OpenCV can open"
            error = SourceUnavailable if self.realtime else InputError  # a bad file stays bad
            raise error(f"source {spec!r}: expected {what}, got a failure "
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


class FolderMemory:
    """The files a folder source has learned, by path relative to the folder, size and mtime, with
    the step of the checkpoint that first held them: a JSON file written atomically (temp file, fsync,
    rename), at most `MAX_REMEMBERED_FILES` entries (the oldest go first; 1.1 MB at the cap). A
    missing or unreadable file means nothing was learned yet (logged). `forget_after` drops the files
    of checkpoints newer than the one resumed (a corrupt newest checkpoint: they are learned again).

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / FOLDER_MEMORY_NAME
        >>> FolderMemory(path).add([("cup/1.png", 10, 5)])
        >>> FolderMemory(path).knows("cup/1.png", 10, 5), FolderMemory(path).knows("cup/1.png", 11, 5)
        (True, False)
    """

    def __init__(self, path: str | os.PathLike[str] | None, limit: int = MAX_REMEMBERED_FILES) -> None:
        self.path = None if path is None else Path(path)
        self.limit = int(limit)
        self._files: dict[str, tuple[int, int]] = {}
        self._steps: dict[str, int] = {}
        if self.path is not None:
            self._load()

    def _load(self) -> None:
        assert self.path is not None
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            rows = data["files"] if isinstance(data, dict) and data.get("version") == 1 else None
            if not isinstance(rows, list):
                raise ValueError("expected {'version': 1, 'files': [...]}")
            for row in rows[-self.limit:]:
                rel, size, mtime_ns, step = (*row, 0) if len(row) == 3 else row
                if isinstance(rel, str) and all(isinstance(v, int) for v in (size, mtime_ns, step)):
                    self._files[rel], self._steps[rel] = (size, mtime_ns), step
        except FileNotFoundError:
            return
        except (OSError, ValueError, TypeError, KeyError) as exc:
            logger.warning("folder source memory %s: expected the list of learned files, got an unreadable "
                           "file (%s); files there may be learned again", self.path, exc)
            self._files, self._steps = {}, {}

    def __len__(self) -> int:
        return len(self._files)

    def knows(self, rel: str, size: int, mtime_ns: int) -> bool:
        """Whether this file, with this size and mtime, was learned."""
        return self._files.get(rel) == (size, mtime_ns)

    def keep_only(self, present: set[str]) -> None:
        """Forget the files no longer in the folder (in memory; saved with the next `add`)."""
        self._files = {rel: meta for rel, meta in self._files.items() if rel in present}

    def forget_after(self, step: int) -> int:
        """Forget the files first held by a checkpoint with a step above ``step`` (the resumed one);
        returns how many (saved at once when any)."""
        newer = [rel for rel in self._files if self._steps.get(rel, 0) > step]
        for rel in newer:
            del self._files[rel]
        if newer:
            logger.warning("folder source memory: %d files were learned after step %d (the checkpoint "
                           "resumed); they will be learned again", len(newer), step)
            self.save()
        return len(newer)

    def add(self, files: Iterable[tuple[str, int, int]], step: int = 0) -> None:
        """Remember ``(relative path, size, mtime_ns)`` rows, held since checkpoint ``step``, and save."""
        for rel, size, mtime_ns in files:
            self._files.pop(rel, None)
            self._files[rel], self._steps[rel] = (int(size), int(mtime_ns)), int(step)
        while len(self._files) > self.limit:
            self._files.pop(next(iter(self._files)))
        self.save()

    def save(self) -> None:
        """Write the file atomically (a power cut leaves the old or the new list, never a torn one)."""
        if self.path is None:
            return
        rows = [[rel, size, mtime_ns, self._steps.get(rel, 0)] for rel, (size, mtime_ns) in self._files.items()]
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump({"version": 1, "files": rows}, f, ensure_ascii=False, separators=(",", ":"))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:  # a full disk: the files may be learned again after a restart
            logger.warning("folder source memory %s: could not save (%s)", self.path, exc)


class FolderSource:
    """Image files in a folder: those there at start, then new ones in the order they arrive.

    At start the ``DIR/<label>/`` files (which teach that label) come first, grouped by label, then
    the other files by modification time: nothing is answered before what was there to learn is
    learned. Later, each scan's new files come by modification time (then name). A file is read once
    its size and mtime are the same on two scans (a half-copied file is not read); names starting
    with ``.`` are ignored (temp files). Every other entry is read once or reported once through
    ``on_event("skipped", file=..., reason=...)``: symlinks, FIFOs and other non-regular files, names
    that are not images, unreadable images, and files the ``memory`` says were learned already.

    Args:
        directory: the folder.
        watch: keep watching for new files; False: exhausted once a scan finds nothing new.
        poll_s: seconds between scans.
        clock: frame timestamps.
        memory: a `FolderMemory` file path (None: nothing is remembered across runs). Learned files
            are added once a checkpoint holds them (`note_event`, fed the loop's events).

    Raises `SourceUnavailable` when ``directory`` is not a directory (yet).

    ``decode_size`` (the model's input ``(height, width)``, set by `edge.device.loop.DeviceLoop`) is
    handed to `edge.images.load_image` as ``target_size``, so a JPEG decodes at the reduced scale
    that ``edge-agent learn``/``predict`` use (`edge.preprocess.load_frame`): the same pixels.
    """

    realtime = False

    def __init__(self, directory: str | os.PathLike[str], watch: bool = True, poll_s: float = FOLDER_POLL_S,
                 clock: Callable[[], float] = time.monotonic,
                 memory: str | os.PathLike[str] | None = None) -> None:
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise SourceUnavailable(f"source folder:{directory}: expected a directory, got none")
        self.watch = bool(watch)
        self.poll_s = float(poll_s)
        self.clock = clock
        self.memory = FolderMemory(memory)
        self._done: set[str] = set()
        self._seen: dict[str, tuple[int, int]] = {}  # path -> (size, mtime_ns) at the last scan
        self._ready: list[tuple[str, str | None]] = []
        self._meta: dict[str, tuple[int, int]] = {}  # rel -> (size, mtime_ns) of labelled files read
        self._pending_learned: list[str] = []
        self._meta_lock = threading.Lock()
        self._scans = 0
        self._closed = threading.Event()
        self.errors = 0
        self.skipped = 0
        self.decode_size: tuple[int, int] | None = None
        #: Where skipped files are reported (`edge.device.events.EventWriter.emit`); None: log only.
        self.on_event: EventSink | None = None

    def _rel(self, path: str) -> str:
        return os.path.relpath(path, self.directory)

    def _skip(self, path: str, reason: str) -> None:
        self._done.add(path)
        self.skipped += 1
        logger.info("folder source: skipping %s (%s)", path, reason)
        if self.on_event is not None:
            self.on_event("skipped", file=self._rel(path), reason=reason)

    def _entries(self) -> list[tuple[os.DirEntry[str], str | None]]:
        """The folder's and its label folders' entries: (entry, label or None); others reported."""
        top = list(os.scandir(self.directory))
        entries: list[tuple[os.DirEntry[str], str | None]] = []
        for entry in top:
            if entry.name.startswith(".") or entry.path in self._done:
                continue
            if entry.is_dir(follow_symlinks=False):
                try:
                    entries.extend((sub, entry.name) for sub in os.scandir(entry.path))
                except OSError as exc:
                    self._skip(entry.path, f"unreadable label folder: {exc.strerror or exc}")
            else:
                entries.append((entry, None))
        return entries

    def _scan(self) -> list[tuple[str, str | None]]:
        """Stable files not yet read or reported: (path, label or None), in reading order."""
        try:
            entries = self._entries()
        except OSError as exc:
            logger.warning("folder source %s: cannot list (%s)", self.directory, exc)
            return []
        self._scans += 1
        found: list[tuple[bool, int, str, str | None]] = []
        seen: dict[str, tuple[int, int]] = {}
        present: set[str] = set()
        for entry, label in entries:
            path = entry.path
            if entry.name.startswith(".") or path in self._done:
                continue
            try:
                if entry.is_symlink():
                    self._skip(path, "a symlink (not followed)")
                    continue
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue  # gone since the listing
            if stat.S_ISDIR(st.st_mode):
                self._skip(path, "a folder below a label folder (not read)")
                continue
            if not stat.S_ISREG(st.st_mode):
                self._skip(path, "not a regular file (a FIFO, socket or device)")
                continue
            if not entry.name.lower().endswith(IMAGE_SUFFIXES):
                self._skip(path, f"not an image file name (expected one of {', '.join(IMAGE_SUFFIXES)})")
                continue
            rel = self._rel(path)
            present.add(rel)
            meta = (st.st_size, st.st_mtime_ns)
            if label is not None and self.memory.knows(rel, *meta):
                self._skip(path, "already learned (the state remembers it)")
                continue
            seen[path] = meta
            if self._seen.get(path) == meta:
                found.append((label is None, st.st_mtime_ns, path, label))
        if self._scans == 1 and len(self.memory):
            self.memory.keep_only(present | {self._rel(p) for p in self._done})
        self._seen = seen
        if self._scans <= 2:  # present at start: every DIR/<label>/ file first, grouped by label
            found.sort(key=lambda f: (f[0], f[3] or "", f[2]) if not f[0] else (f[0], "", f[1], f[2]))
        else:  # arrival order
            found.sort(key=lambda f: (f[1], f[2]))
        return [(path, label) for _, _, path, label in found]

    def read(self) -> Frame | None:
        from edge.images import load_image

        idle_scans = 0
        while not self._closed.is_set():
            if not self._ready:
                self._ready = self._scan()
            if self._ready:
                path, label = self._ready.pop(0)
                meta = self._seen.pop(path, None)
                self._done.add(path)
                try:
                    image = load_image(path, target_size=self.decode_size)
                except InputError as exc:
                    self.errors += 1
                    self._skip(path, f"unreadable: {exc}")
                    continue
                rel = self._rel(path)
                if label is not None and meta is not None:
                    with self._meta_lock:
                        self._meta[rel] = meta
                return Frame(image, self.clock(), name=rel, label=label)
            idle_scans += 1
            # Two scans are needed to see a new file as stable; a third finding nothing means no more.
            if not self.watch and idle_scans >= 3:
                return None
            self._closed.wait(self.poll_s)
        return None

    def note_event(self, record: dict[str, Any]) -> None:
        """Fed the loop's events: files of a ``learned`` event are remembered once a ``checkpoint``
        holds them (a crash in between learns them again, it never skips an unlearned file); at
        ``started`` (its ``step``: the checkpoint resumed) files of newer checkpoints are forgotten."""
        kind = record.get("event")
        with self._meta_lock:
            if kind == "started" and isinstance(record.get("step"), int):
                self.memory.forget_after(record["step"])
            elif kind == "learned" and record.get("files"):
                self._pending_learned.extend(str(f) for f in record["files"])
            elif kind == "checkpoint" and self._pending_learned and self.memory.path is not None:
                rows = [(rel, *self._meta.pop(rel)) for rel in self._pending_learned if rel in self._meta]
                self._pending_learned = []
                self.memory.add(rows, step=int(record.get("step") or 0))

    def close(self) -> None:
        self._closed.set()

    interrupt = close


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
        try:
            self._cam = Picamera2(camera)
        except (IndexError, RuntimeError, OSError) as exc:  # no camera attached (yet), or it is busy
            raise SourceUnavailable(f"source picamera2:{camera}: expected a connected camera, got {exc}") from exc
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


def open_source(spec: str, *, watch: bool = True, pace: bool = True,
                clock: Callable[[], float] = time.monotonic,
                memory: str | os.PathLike[str] | None = None) -> Source:
    """A source from a ``--source`` spec (see the module docstring). ``watch`` and ``memory`` (a
    `FolderMemory` file) apply to folders, ``pace`` to video files (`OpenCVSource`).

    Raises `InputError` for a malformed spec, `SourceUnavailable` (an `InputError`) for one that
    cannot be opened now (`WaitingSource` retries those)."""
    check_spec(spec)
    if spec.startswith("folder:"):
        return FolderSource(spec[len("folder:"):], watch=watch, clock=clock, memory=memory)
    if spec == "picamera2" or spec.startswith("picamera2:"):
        return Picamera2Source(int(spec.partition(":")[2] or "0"), clock=clock)
    return OpenCVSource(spec, clock=clock, pace=pace)


def backoff_delays(first_s: float = WAIT_FIRST_S, cap_s: float = WAIT_CAP_S, factor: float = 2.0) -> Iterator[float]:
    """Seconds to wait before each retry: ``first_s``, times ``factor`` each time, at most ``cap_s``.

    Example:
        >>> import itertools
        >>> list(itertools.islice(backoff_delays(), 8))
        [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    """
    delay = float(first_s)
    while True:
        yield min(delay, float(cap_s))
        delay = min(delay * factor, float(cap_s))


class WaitingSource:
    """A source opened when it becomes available: ``read`` retries ``opener`` with capped
    exponential backoff (`backoff_delays`) while it raises `SourceUnavailable`, logging one line per
    attempt and reporting ``source_waiting`` / ``source_opened`` through ``on_event``; then reads
    from it. Any other error of ``opener`` ends the source (the reader reports it).

    Args:
        spec: the ``--source`` text (for messages).
        opener: opens the source (e.g. ``lambda: open_source(spec)``).
        realtime: whether the source, once open, drops frames (`is_realtime`); fixed up front
            because `FrameGrabber` reads it at construction.
        first_error: the message of an attempt already made (counted as attempt 1).
        first_s, cap_s: the backoff.
        reopen: a live source (camera, stream) whose frames stop (unplugged, stream down) is closed
            and waited for again (`is_live`); False: its end is the end.
        opened: the source, when the first attempt opened it (``reopen`` still applies).

    Example:
        >>> attempts = []
        >>> def opener():
        ...     attempts.append(1)
        ...     if len(attempts) < 3:
        ...         raise SourceUnavailable("not yet")
        ...     return IterableSource([(np.zeros((2, 2, 3), np.uint8), 0.0)])
        >>> source = WaitingSource("demo", opener, realtime=False, first_s=0.01)
        >>> source.read().timestamp, source.attempts, source.state
        (0.0, 3, 'open')
    """

    def __init__(self, spec: str, opener: Callable[[], Source], *, realtime: bool, first_error: str | None = None,
                 first_s: float = WAIT_FIRST_S, cap_s: float = WAIT_CAP_S, reopen: bool = False,
                 opened: Source | None = None) -> None:
        self.spec = spec
        self.realtime = bool(realtime)
        self.reopen = bool(reopen)
        self._backoff = (first_s, cap_s)
        self._opener = opener
        self._delays = backoff_delays(first_s, cap_s)
        self._inner: Source | None = opened
        self._closed = threading.Event()
        self._decode_size: tuple[int, int] | None = None
        self._delivered = 0  # frames read since the source was last opened
        self.attempts = 0 if first_error is None and opened is None else 1
        self.last_error = first_error
        self.state = "waiting" if opened is None else "open"
        self._on_event: EventSink | None = None

    @property
    def on_event(self) -> EventSink | None:
        """Where ``source_waiting`` / ``source_opened`` (and the open source's own events) go."""
        return self._on_event

    @on_event.setter
    def on_event(self, sink: EventSink | None) -> None:
        self._on_event = sink
        if self._inner is not None and hasattr(self._inner, "on_event"):
            setattr(self._inner, "on_event", sink)

    @property
    def decode_size(self) -> tuple[int, int] | None:
        return self._decode_size

    @decode_size.setter
    def decode_size(self, value: tuple[int, int] | None) -> None:
        self._decode_size = value
        if self._inner is not None and hasattr(self._inner, "decode_size"):
            setattr(self._inner, "decode_size", value)

    def _emit(self, kind: str, **fields: Any) -> None:
        if self._on_event is not None:
            self._on_event(kind, source=self.spec, **fields)

    def _open(self) -> bool:
        while not self._closed.is_set():
            if self.attempts:
                delay = next(self._delays)
                logger.warning("%s (attempt %d); retrying in %g s", self.last_error, self.attempts, delay)
                self._emit("source_waiting", attempt=self.attempts, retry_in_s=delay, message=self.last_error)
                if self._closed.wait(delay):
                    return False
            self.attempts += 1
            try:
                inner = self._opener()
            except SourceUnavailable as exc:
                self.last_error = " ".join(str(exc).split())
                continue
            if self._closed.is_set():
                inner.close()
                return False
            if self._decode_size is not None and hasattr(inner, "decode_size"):
                setattr(inner, "decode_size", self._decode_size)
            if hasattr(inner, "on_event"):
                setattr(inner, "on_event", self._on_event)
            self._inner, self.state = inner, "open"
            logger.warning("source %s: opened (attempt %d)", self.spec, self.attempts)
            self._emit("source_opened", attempt=self.attempts)
            return True
        return False

    def read(self) -> Frame | None:
        while True:
            if self._inner is None and not self._open():
                return None
            assert self._inner is not None
            frame = self._inner.read()
            if frame is not None or not self.reopen or self._closed.is_set():
                self._delivered += frame is not None
                return frame
            logger.warning("source %s: no more frames; waiting for it again", self.spec)
            self._inner.close()
            self._inner, self.state = None, "waiting"
            self.last_error = f"source {self.spec}: expected frames, got none (unplugged or stream down)"
            if self._delivered:  # it worked for a while: start the backoff again
                self._delays = backoff_delays(*self._backoff)
            self._delivered = 0

    def note_event(self, record: dict[str, Any]) -> None:
        """Handed on to the open source (a folder's memory of learned files)."""
        note = getattr(self._inner, "note_event", None)
        if callable(note):
            note(record)

    def interrupt(self) -> None:
        """Wake a backoff wait or a folder scan (any thread); the reader thread then closes."""
        self._closed.set()
        interrupt = getattr(self._inner, "interrupt", None)
        if callable(interrupt):
            interrupt()

    def close(self) -> None:
        self._closed.set()
        if self._inner is not None:
            self._inner.close()


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
        interrupt = getattr(self.source, "interrupt", None)
        if callable(interrupt):
            interrupt()  # wakes a folder scan or a source wait; cameras are closed by the reader thread
        with self._cond:
            self._cond.notify_all()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)
