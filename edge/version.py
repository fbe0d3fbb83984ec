"""The installed package's version (``edge-agent --version``).

Example:
    >>> from edge.version import package_version
    >>> package_version().count(".") >= 1
    True
"""

from __future__ import annotations

from importlib import metadata

__all__ = ["DISTRIBUTION", "package_version"]

DISTRIBUTION = "edge-continual"


def package_version() -> str:
    """The version recorded by the installer (importlib.metadata), else ``edge.__version__``
    (a source tree on ``sys.path`` without an install)."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        from edge import __version__

        return __version__
