"""Load the official CORe50 pickles (``paths.pkl``, ``labels.pkl``, ``LUP.pkl``) without running code.

A pickle can call any importable function while it loads (``os.system`` through ``__reduce__``).
The CORe50 pickles only hold lists, dicts, tuples, ints, floats, strings, bools and None, and
those are built by pickle opcodes that never look a global up. So :class:`_NoGlobalsUnpickler`
refuses every global: a tampered file fails with :class:`UnsafePickleError` before anything runs.

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
from typing import Any

__all__ = ["UnsafePickleError", "safe_load_pickle", "safe_loads_pickle"]


class UnsafePickleError(ValueError):
    """A pickle asked for a global (a class or a function); only plain containers are allowed."""


class _NoGlobalsUnpickler(pickle.Unpickler):
    """Unpickler that refuses every global lookup, so only builtin containers and scalars load."""

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


def safe_loads_pickle(data: bytes, source: str = "<bytes>") -> Any:
    """Load a pickle from bytes with the same restrictions as :func:`safe_load_pickle`."""
    try:
        return _NoGlobalsUnpickler(io.BytesIO(data), source).load()
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError,
            KeyError, AttributeError, MemoryError, OverflowError) as exc:
        raise ValueError(f"{source}: truncated or corrupt pickle ({type(exc).__name__}: {exc})") from exc


def safe_load_pickle(path: str | os.PathLike[str]) -> Any:
    """Load a pickle file that may only contain plain Python containers and scalars.

    Raises:
        FileNotFoundError: ``path`` does not exist (the message names it).
        UnsafePickleError: the file asks for a global such as ``os.system``.
        ValueError: the file is truncated or corrupt.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pickle file not found: {path}")
    with open(path, "rb") as f:
        data = f.read()
    return safe_loads_pickle(data, source=path)
