"""Where the simulator keeps what it computes once: test-set embeddings and generated data sets.

A leaf module (it imports nothing of the package), so the data loaders and the embedding cache can
both ask for the directory without depending on each other.

Example:
    >>> embeddings = default_cache_dir() / "embeddings"
    >>> embeddings.name
    'embeddings'
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["default_cache_dir"]


def default_cache_dir() -> Path:
    """``$EDGE_SIM_CACHE``, else ``$XDG_CACHE_HOME/edge-continual``, else ``~/.cache/edge-continual``."""
    if os.environ.get("EDGE_SIM_CACHE"):
        return Path(os.environ["EDGE_SIM_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "edge-continual"
