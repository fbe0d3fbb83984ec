"""The package's version, written once: here.

``pyproject.toml`` reads ``__version__`` from this file at build time (``[tool.setuptools.dynamic]``),
and ``edge.__version__``, ``host.__version__`` and ``edge-agent --version`` are this value.

Example:
    >>> from edge.version import __version__, package_version
    >>> package_version() == __version__
    True
"""

from __future__ import annotations

from importlib import metadata

__all__ = ["DISTRIBUTION", "__version__", "package_version"]

__version__ = "0.1.0"

DISTRIBUTION = "edge-continual"


def package_version() -> str:
    """The version recorded by the installer (importlib.metadata; built from ``__version__``), else
    ``__version__`` (a source tree on ``sys.path`` without an install)."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return __version__
