"""Progress that shows on a terminal and in a log: a tqdm bar on a tty, plain lines elsewhere.

``edge-sim compare | tee log`` or a CI job has no terminal on stderr; a tqdm bar there would either be
hidden or fill the log with carriage returns. On a stream that is not a terminal, :class:`Progress`
writes one plain line when it starts, one every ``interval_s`` seconds (done / total, rate, time
left) and one when it ends.

Example:
    >>> import io
    >>> out = io.StringIO()
    >>> with Progress(3, "replay", stream=out, interval_s=0) as bar:
    ...     for _ in range(3): bar.update()
    >>> out.getvalue().splitlines()[0]
    'replay: 0/3 batch'
    >>> out.getvalue().splitlines()[-1].startswith("replay: 3/3 batch (100%) done in")
    True
"""

from __future__ import annotations

import sys
import time
from typing import Any, Iterable, Iterator, TextIO, TypeVar

__all__ = ["PLAIN_INTERVAL_S", "Progress", "progress_iter"]

T = TypeVar("T")

#: Seconds between two plain progress lines when stderr is not a terminal.
PLAIN_INTERVAL_S = 10.0


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a closed or file-like stream without isatty
        return False


def _seconds(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"


class Progress:
    """Count ``total`` units of work; a tqdm bar on a terminal, plain lines every ``interval_s`` otherwise.

    ``enabled=False`` shows nothing. ``stream`` defaults to ``sys.stderr`` (read when constructed).
    """

    def __init__(self, total: int, desc: str, unit: str = "batch", enabled: bool = True,
                 stream: TextIO | None = None, interval_s: float | None = None) -> None:
        self.total = int(total)
        self.desc = desc
        self.unit = unit
        self.enabled = bool(enabled)
        self.stream = stream if stream is not None else sys.stderr
        self.interval_s = PLAIN_INTERVAL_S if interval_s is None else float(interval_s)
        self.n = 0
        self._bar: Any = None
        self._started = time.perf_counter()
        self._last = self._started
        self._closed = False
        if not self.enabled:
            return
        if _isatty(self.stream):
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, desc=desc, unit=unit, leave=False, dynamic_ncols=True,
                             file=self.stream)
        else:
            self._line(f"{self.desc}: 0/{self.total} {self.unit}")

    def _line(self, text: str) -> None:
        try:
            self.stream.write(text + "\n")
            self.stream.flush()
        except (OSError, ValueError):  # a closed pipe must not stop the run
            self.enabled = False

    def _status(self) -> str:
        elapsed = time.perf_counter() - self._started
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total > 0 else ""
        text = f"{self.desc}: {self.n}/{self.total} {self.unit}{pct}"
        if self.n >= self.total:
            return f"{text} done in {_seconds(elapsed)}"
        rate = self.n / elapsed if elapsed > 0 else 0.0
        left = f", ~{_seconds((self.total - self.n) / rate)} left" if rate > 0 else ""
        return f"{text}, {_seconds(elapsed)} elapsed{left}"

    def update(self, n: int = 1) -> None:
        """``n`` more units done."""
        self.update_to(self.n + n)

    def update_to(self, n: int) -> None:
        """Set the units done to ``n`` (never backwards)."""
        n = max(self.n, int(n))
        step, self.n = n - self.n, n
        if not self.enabled or step <= 0:
            return
        if self._bar is not None:
            self._bar.update(step)
            return
        now = time.perf_counter()
        if now - self._last >= self.interval_s and self.n < self.total:
            self._last = now
            self._line(self._status())

    def close(self) -> None:
        """End the bar (tty) or write the final line (with what was done if stopped early)."""
        if self._closed:
            return
        self._closed = True
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
        else:
            self._line(self._status())

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()


def progress_iter(iterable: Iterable[T], total: int, desc: str, enabled: bool = True, unit: str = "batch",
                  stream: TextIO | None = None, interval_s: float | None = None) -> Iterator[T]:
    """Yield from ``iterable``, counting each item on a :class:`Progress`.

    Example:
        >>> import io
        >>> out = io.StringIO()
        >>> list(progress_iter([1, 2], 2, "embed", stream=out, interval_s=3600))
        [1, 2]
        >>> len(out.getvalue().splitlines())  # the start and the end: nothing in between within an hour
        2
    """
    with Progress(total, desc, unit=unit, enabled=enabled, stream=stream, interval_s=interval_s) as bar:
        for item in iterable:
            yield item
            bar.update()
