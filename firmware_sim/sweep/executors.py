"""Where sweep jobs run: a local process pool (default) or a Ray cluster.

An executor takes named jobs (``{job_id: (function, kwargs)}``) and yields ``(job_id, result)`` as
each finishes, ``result`` being the function's return value or the exception it raised. Both
retry a job whose worker process died (a crash, the OOM killer, a lost node) up to ``max_retries``
times; an exception raised by the job itself is not retried (it would fail again).

Ray is imported only by :class:`RayExecutor` (``pip install '.[sweep-ray]' in the project folder``).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Callable, Iterator, TextIO

log = logging.getLogger(__name__)

__all__ = ["Executor", "JobProgress", "LocalExecutor", "RayExecutor", "default_workers", "make_executor"]

Job = tuple[Callable[..., Any], dict[str, Any]]


class WorkerDied(RuntimeError):
    """A job's worker process died more often than ``max_retries`` allows."""


def default_workers() -> int:
    """The CPUs this process may use (affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return max(1, os.cpu_count() or 1)


Label = Callable[[str], str]


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a closed or file-like stream without isatty
        return False


class JobProgress:
    """Finished jobs of one stage: a tqdm bar on a terminal, one plain line per job in a log.

    On a stream that is not a terminal (``edge-sim sweep ... 2> log``, CI) each finished job writes
    ``<desc>: i/N <job label>, <elapsed> elapsed`` (the label from ``label(job_id)``), as
    ``edge-sim run`` and ``device`` write plain lines there. ``enabled=False`` shows nothing.

    Example:
        >>> import io
        >>> out = io.StringIO()
        >>> with JobProgress(2, "sweep cells", True, label=str.upper, stream=out) as bar:
        ...     bar.done("a1"); bar.done("b2")
        >>> out.getvalue().splitlines()[1].startswith("sweep cells: 1/2 A1, 0 s elapsed")
        True
    """

    def __init__(self, total: int, desc: str, enabled: bool, label: Label | None = None,
                 stream: TextIO | None = None) -> None:
        self.total, self.desc, self.n = total, desc, 0
        self.stream = stream if stream is not None else sys.stderr
        self.label = label or str
        self.enabled = enabled and total > 0
        self._bar: Any = None
        self._started = time.perf_counter()
        if not self.enabled:
            return
        if _isatty(self.stream):
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit="job", leave=False, dynamic_ncols=True, file=self.stream)
        else:
            self._line(f"{desc}: 0/{total} started")

    def _line(self, text: str) -> None:
        try:
            self.stream.write(text + "\n")
            self.stream.flush()
        except (OSError, ValueError):  # a closed pipe must not stop the sweep
            self.enabled = False

    def done(self, job_id: str, failed: bool = False) -> None:
        """One more job finished (``failed``: it raised or its worker kept dying)."""
        self.n += 1
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(1)
            return
        elapsed = time.perf_counter() - self._started
        shown = f"{elapsed:.0f} s" if elapsed < 120 else f"{elapsed / 60:.1f} min"
        self._line(f"{self.desc}: {self.n}/{self.total} {self.label(job_id)}{' FAILED' if failed else ''}, "
                   f"{shown} elapsed")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> JobProgress:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()


class Executor:
    """Interface: ``run(jobs, desc)`` yields finished jobs; ``share(value)`` makes a value shippable."""

    name = "base"
    retries = 0  # worker deaths retried so far

    def run(self, jobs: dict[str, Job], desc: str = "",
            label: Label | None = None) -> Iterator[tuple[str, Any]]:  # pragma: no cover
        """Yield ``(job_id, result or exception)`` as jobs finish; progress names a job ``label(job_id)``."""
        raise NotImplementedError

    def share(self, value: Any) -> Any:
        """A handle to ``value`` for jobs' kwargs (the object store on Ray); None: jobs read the disk cache."""
        return None

    def close(self) -> None:
        """Release the executor's resources."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


#: Thread pools of NumPy's BLAS, pinned to one thread per worker (as Ray does for a 1-CPU task): a
#: worker is one core, and two BLAS threads per worker on a busy machine triple a cell's time.
THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _one_thread() -> None:
    """Pool initializer: runs in a new worker before NumPy is imported (unless the user set them)."""
    for name in THREAD_ENV:
        os.environ.setdefault(name, "1")


def _tracked(marker: str, fn: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
    """Run ``fn(**kwargs)`` in a worker with ``marker`` present while it executes."""
    Path(marker).touch()
    try:
        return fn(**kwargs)
    finally:
        os.unlink(marker)


class LocalExecutor(Executor):
    """``concurrent.futures.ProcessPoolExecutor`` (spawned workers) of ``workers`` processes.

    When a worker dies the pool breaks; the unfinished jobs are resubmitted to a new pool. The
    break costs one attempt to every job that was executing at that moment (a pool cannot tell
    which worker died; jobs still queued are not charged); a job fails after ``max_retries`` retries.
    """

    name = "local"

    def __init__(self, workers: int | None = None, max_retries: int = 3, progress: bool = False) -> None:
        if workers is not None and workers < 1:
            raise ValueError(f"--workers: expected >= 1, got {workers}")
        if max_retries < 0:
            raise ValueError(f"--max-retries: expected >= 0, got {max_retries}")
        self.workers = workers or default_workers()
        self.max_retries = max_retries
        self.progress = progress
        self.retries = 0
        self._pool: ProcessPoolExecutor | None = None

    def _pool_for(self, context: Any) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=context, initializer=_one_thread)
        return self._pool

    def _close_pool(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def close(self) -> None:
        self._close_pool()

    def run(self, jobs: dict[str, Job], desc: str = "", label: Label | None = None) -> Iterator[tuple[str, Any]]:
        pending = dict(jobs)
        attempts = {job_id: 0 for job_id in jobs}  # worker deaths while the job was executing
        context = multiprocessing.get_context("spawn")  # never fork a process holding runtime threads
        markers = Path(tempfile.mkdtemp(prefix="edge-sim-sweep-"))
        marker = {job_id: str(markers / f"{i}.running") for i, job_id in enumerate(jobs)}
        try:
            yield from self._rounds(pending, attempts, marker, context, desc, label)
        finally:
            shutil.rmtree(markers, ignore_errors=True)

    def _rounds(self, pending: dict[str, Job], attempts: dict[str, int], marker: dict[str, str], context: Any,
                desc: str, label: Label | None) -> Iterator[tuple[str, Any]]:
        with JobProgress(len(pending), desc, self.progress, label) as bar:
            while pending:
                broken: list[str] = []
                pool = self._pool_for(context)
                # the pool outlives this call: its workers keep their opened streams for the next stage
                futures: dict[Future[Any], str] = {}
                for job_id, (fn, kwargs) in pending.items():
                    futures[pool.submit(_tracked, marker[job_id], fn, kwargs)] = job_id
                remaining = set(futures)
                while remaining:
                    done, remaining = wait(remaining, return_when=FIRST_COMPLETED)
                    for future in done:
                        job_id = futures[future]
                        exc = future.exception()
                        if isinstance(exc, BrokenProcessPool):
                            broken.append(job_id)
                            continue
                        del pending[job_id]
                        bar.done(job_id, failed=exc is not None)
                        yield job_id, exc if exc is not None else future.result()
                running = [j for j in broken if os.path.exists(marker[j])]  # executing when the worker died
                for job_id in running or broken:  # none executing (a worker died starting): charge them all
                    attempts[job_id] += 1
                    if os.path.exists(marker[job_id]):
                        os.unlink(marker[job_id])
                for job_id in broken:
                    if attempts[job_id] > self.max_retries:
                        del pending[job_id]
                        bar.done(job_id, failed=True)
                        yield job_id, WorkerDied(f"job {job_id}: a worker died while it ran, {attempts[job_id]} "
                                                 f"time(s); expected at most {self.max_retries} retries")
                if broken:
                    self._close_pool()
                if pending:
                    self.retries += 1
                    log.warning("a worker died; resubmitting %d unfinished job(s) to a new pool", len(pending))


class RayExecutor(Executor):
    """One Ray task per job (``num_cpus`` each, ``max_retries`` on worker death), on ``address``.

    ``address=None`` starts a local Ray instance with ``workers`` CPUs (or all of them); an address
    (``HOST:PORT``, or ``"auto"``) connects to a running cluster, as ``ray.init`` does.
    """

    name = "ray"

    def __init__(self, address: str | None = None, workers: int | None = None, num_cpus: float = 1.0,
                 max_retries: int = 3, progress: bool = False) -> None:
        try:
            import ray
        except ImportError:
            raise ValueError("--executor ray: expected Ray to be installed "
                             "(pip install '.[sweep-ray]' in the project folder), got no module 'ray'") from None
        if max_retries < 0:
            raise ValueError(f"--max-retries: expected >= 0, got {max_retries}")
        self._ray = ray
        self.num_cpus = num_cpus
        self.max_retries = max_retries
        self.progress = progress
        self.retries = 0
        self._started = not ray.is_initialized()
        if self._started:
            if address:
                ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
            else:
                ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False,
                         logging_level=logging.WARNING)
        self._remote: dict[Callable[..., Any], Any] = {}

    def _task(self, fn: Callable[..., Any]) -> Any:
        if fn not in self._remote:
            self._remote[fn] = self._ray.remote(num_cpus=self.num_cpus, max_retries=self.max_retries,
                                                retry_exceptions=False)(fn)
        return self._remote[fn]

    def share(self, value: Any) -> Any:
        return self._ray.put(value)

    def run(self, jobs: dict[str, Job], desc: str = "", label: Label | None = None) -> Iterator[tuple[str, Any]]:
        ray = self._ray
        refs = {self._task(fn).remote(**kwargs): job_id for job_id, (fn, kwargs) in jobs.items()}
        remaining = list(refs)
        with JobProgress(len(refs), desc, self.progress, label) as bar:
            while remaining:
                done, remaining = ray.wait(remaining, num_returns=1)
                for ref in done:
                    try:
                        value: Any = ray.get(ref)
                    except ray.exceptions.RayTaskError as exc:  # the job raised: report its own exception
                        cause = exc.as_instanceof_cause()
                        value = cause if isinstance(cause, Exception) else exc
                    except ray.exceptions.WorkerCrashedError as exc:
                        value = WorkerDied(f"job {refs[ref]}: its worker died more than {self.max_retries} "
                                           f"times ({exc})")
                    bar.done(refs[ref], failed=isinstance(value, BaseException))
                    yield refs[ref], value

    def close(self) -> None:
        if self._started and self._ray.is_initialized():
            self._ray.shutdown()


def make_executor(kind: str, *, workers: int | None = None, address: str | None = None, max_retries: int = 3,
                  progress: bool = False) -> Executor:
    """``local`` (process pool) or ``ray``; an address is only meaningful with ``ray``."""
    if kind == "local":
        if address:
            raise ValueError(f"--ray-address: expected only with --executor ray, got {address!r} with local")
        return LocalExecutor(workers, max_retries=max_retries, progress=progress)
    if kind == "ray":
        return RayExecutor(address, workers, max_retries=max_retries, progress=progress)
    raise ValueError(f"--executor: expected local or ray, got {kind!r}")
