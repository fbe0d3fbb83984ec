"""One writer per state folder: an OS lock (``fcntl.flock``) on ``<state>/.lock``.

The lock belongs to an open file, so the kernel releases it when the holder exits or is killed
(power cut, SIGKILL, OOM): a crashed writer never leaves a stale lock behind. A second writer waits
up to ``timeout_s`` seconds and then fails with `StateLockedError` naming the folder and the holder's
pid (when it wrote one). ``edge-agent learn`` holds it for the whole load-learn-save cycle; a
long-running agent holds it for its lifetime.

Example:
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> with StateLock(folder, timeout_s=1.0) as lock:
    ...     lock.held
    True
"""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path
from types import TracebackType

from edge.atomic import make_dirs
from edge.errors import EdgeError

LOCK_NAME = ".lock"
#: Default seconds a second writer waits for the lock.
DEFAULT_TIMEOUT_S = 10.0
_POLL_S = 0.05


class StateLockedError(EdgeError, TimeoutError):
    """Another process holds the state folder's lock for longer than the timeout."""


class StateLock:
    """Exclusive lock on a state folder (created durably if missing); a context manager.

    Args:
        directory: the state folder.
        timeout_s: seconds to wait for another holder (0 = fail at once).
    """

    def __init__(self, directory: str | os.PathLike[str], timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        timeout = float(timeout_s)
        if not (timeout >= 0.0 and timeout < float("inf")):
            raise ValueError(f"lock timeout: expected a finite number of seconds >= 0, got {timeout_s!r}")
        self.directory = Path(directory)
        self.timeout_s = timeout
        self._fd: int | None = None

    @property
    def path(self) -> Path:
        """The lock file."""
        return self.directory / LOCK_NAME

    @property
    def held(self) -> bool:
        """Whether this object holds the lock now."""
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock, waiting up to ``timeout_s``; `StateLockedError` otherwise."""
        import fcntl  # POSIX only; imported here so `import edge` works elsewhere

        if self._fd is not None:
            raise RuntimeError(f"state lock {self.path}: expected it not held yet, got a second acquire")
        if self.directory.exists() and not self.directory.is_dir():
            raise NotADirectoryError(f"state {self.directory}: expected a directory, got another kind of file")
        make_dirs(self.directory)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        deadline = time.monotonic() + self.timeout_s
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                        raise
                if time.monotonic() >= deadline:
                    raise StateLockedError(
                        f"state {self.directory} is locked by another writer{self._holder(fd)}: "
                        f"expected it free within {self.timeout_s:g} s, got it still held "
                        "(another edge-agent is learning; retry later or raise --lock-timeout)")
                time.sleep(_POLL_S)
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    @staticmethod
    def _holder(fd: int) -> str:
        try:
            text = os.pread(fd, 32, 0).decode("ascii").strip()
        except (OSError, UnicodeDecodeError):
            return ""
        return f" (pid {text})" if text.isdigit() else ""

    def release(self) -> None:
        """Release the lock (closing the file releases it); a no-op when not held."""
        if self._fd is None:
            return
        import fcntl

        fd, self._fd = self._fd, None
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> StateLock:
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"StateLock({str(self.directory)!r}, held={self.held})"
