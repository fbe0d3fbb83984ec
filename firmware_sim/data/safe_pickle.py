"""Load the official CORe50 pickles (``paths.pkl``, ``labels.pkl``, ``LUP.pkl``) without running code.

A pickle can call any importable function while it loads (``os.system`` through ``__reduce__``).
The CORe50 pickles only hold lists, dicts, tuples, ints, floats, strings, bools and None, and
those are built by pickle opcodes that never look a global up. So :class:`_NoGlobalsUnpickler`
refuses every global: a tampered file fails with :class:`UnsafePickleError` before anything runs.

Memory stays bounded too: the pure-Python unpickler is used (the C one allocates a memo array as
large as any index a crafted ``LONG_BINPUT`` names), only regular files of at most ``max_bytes`` are read, and the loaded object
is walked before it is returned, counting every element each time it is reachable (a list shared a
thousand times counts a thousand times, a cycle counts until the budget runs out), so a small file of
shared references that would expand to gigabytes once turned into arrays fails with a ``ValueError``
after ``max_elements`` elements. Types other than the plain ones listed above are refused.

Example:
    >>> import pickle, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "paths.pkl")
    >>> with open(path, "wb") as f:
    ...     pickle.dump(["s1/o1/C_01_01_000.png"], f, protocol=2)
    >>> safe_load_pickle(path)
    ['s1/o1/C_01_01_000.png']
"""

from __future__ import annotations

import io
import os
import pickle
import stat
from typing import Any

__all__ = ["MAX_ELEMENTS", "MAX_PICKLE_BYTES", "UnsafePickleError", "safe_load_pickle", "safe_loads_pickle"]

#: Default budget of elements (containers, keys, values) a loaded pickle may reach, shared references
#: counted each time. The official CORe50 ``LUP.pkl`` reaches about 10 million.
MAX_ELEMENTS = 50_000_000
#: Default cap on the size of a pickle file.
MAX_PICKLE_BYTES = 1 << 30
_SCALARS = (int, float, str, bool, type(None))


class UnsafePickleError(ValueError):
    """A pickle asked for a global (a class or a function); only plain containers are allowed."""


class _NoGlobalsUnpickler(pickle._Unpickler):
    """Unpickler that refuses every global lookup, so only builtin containers and scalars load.

    It is the pure-Python unpickler: its memo is a dict, whereas the C unpickler grows an array to any
    index a ``LONG_BINPUT`` names (one flipped bit asks for 8 GB and writes every byte of it). It is
    about 7x slower (about 5 s for the 10 million elements of the real ``LUP.pkl``).
    """

    def __init__(self, file: io.BufferedIOBase, source: str) -> None:
        super().__init__(file)
        self._source = source

    def find_class(self, module: str, name: str) -> Any:  # noqa: D401 - pickle API
        raise UnsafePickleError(
            f"{self._source}: refused to load global '{module}.{name}'; "
            "only lists, dicts, tuples, ints, floats, strings, bools and None are allowed"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self._source}: refused persistent id {pid!r}")


def _check_plain(obj: Any, source: str, max_elements: int) -> None:
    """Walk ``obj`` iteratively; ValueError past ``max_elements`` reachable elements or on another type."""
    count = 0
    stack = [obj]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind in (list, tuple, dict):
            count += (2 * len(item) if kind is dict else len(item)) + 1
        elif kind in _SCALARS:
            count += 1
        else:
            raise ValueError(f"{source}: expected only lists, dicts, tuples, ints, floats, strings, bools "
                             f"and None, got a {kind.__name__}")
        if count > max_elements:  # checked before pushing, so the stack stays below the budget too
            raise ValueError(f"{source}: expected at most {max_elements} elements (shared references counted "
                             f"each time they are reachable), got more; the pickle expands too far")
        if kind is dict:
            stack.extend(c for pair in item.items() for c in pair if type(c) not in _SCALARS)
        elif kind in (list, tuple):
            stack.extend(c for c in item if type(c) not in _SCALARS)


def safe_loads_pickle(data: bytes, source: str = "<bytes>", *, max_elements: int = MAX_ELEMENTS) -> Any:
    """Load a pickle from bytes with the same restrictions as :func:`safe_load_pickle`."""
    try:
        obj = _NoGlobalsUnpickler(io.BytesIO(data), source).load()
    except UnsafePickleError:
        raise
    except Exception as exc:  # noqa: BLE001 - the pure-Python unpickler raises struct.error, KeyError, ...
        raise ValueError(f"{source}: truncated or corrupt pickle ({type(exc).__name__}: {exc})") from exc
    _check_plain(obj, source, max_elements)
    return obj


def _read_regular(path: str, max_bytes: int) -> bytes:
    """The bytes of a regular file of at most ``max_bytes``; never blocks on a FIFO."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise FileNotFoundError(f"pickle file not found: {path}") from None
    except OSError as exc:
        raise ValueError(f"{path}: expected a readable pickle file, got {type(exc).__name__}: "
                         f"{exc.strerror or exc}") from exc
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"{path}: expected a regular pickle file, got "
                             f"{'a directory' if stat.S_ISDIR(info.st_mode) else 'a FIFO, device or socket'}")
        if info.st_size > max_bytes:
            raise ValueError(f"{path}: expected a pickle of at most {max_bytes} bytes, got {info.st_size}")
        try:
            return handle.read(min(info.st_size, max_bytes) + 1)  # read(n) allocates n bytes up front
        except OSError as exc:
            raise ValueError(f"{path}: expected a readable pickle file, got {type(exc).__name__}: {exc}") from exc


def safe_load_pickle(path: str | os.PathLike[str], *, max_elements: int = MAX_ELEMENTS,
                     max_bytes: int = MAX_PICKLE_BYTES) -> Any:
    """Load a pickle file that may only contain plain Python containers and scalars.

    Raises:
        FileNotFoundError: ``path`` does not exist (the message names it).
        UnsafePickleError: the file asks for a global such as ``os.system``.
        ValueError: the file is truncated, corrupt, not a regular file, larger than ``max_bytes``, of
            another type, or reaches more than ``max_elements`` elements.
    """
    path = os.fspath(path)
    data = _read_regular(path, int(max_bytes))
    if len(data) > max_bytes:
        raise ValueError(f"{path}: expected a pickle of at most {max_bytes} bytes, got more")
    return safe_loads_pickle(data, source=path, max_elements=int(max_elements))
