"""The test-set embeddings kept in the simulator's on-disk cache (`firmware_sim.cache_dir` says where it lives).

Because the backbone is frozen, a test set's embeddings depend only on the backbone (fingerprint,
runtime, precision) and the data (the stream's ``identity``); they are computed once and reused by
every later run. For CORe50 data the identity covers what is read for the test set (the size, mtime and
ctime of every test PNG, or of ``core50_imgs.npz``, see :mod:`firmware_sim.data.core50`), so replacing
a test image is a cache miss. The generated CORe50-format set (:mod:`firmware_sim.data.streams`) lives in the same
directory.

Example:
    >>> import tempfile
    >>> cache = EmbeddingCache(tempfile.mkdtemp())
    >>> cache.put("k", np.ones((2, 3), np.float32))
    >>> cache.get("k", expected_rows=2, embedding_size=3).shape, cache.get("k", 2, 4) is None
    ((2, 3), True)
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edge.atomic import atomic_write

if TYPE_CHECKING:  # types only: the cache never opens a backbone itself
    from edge.runtimes import Backbone
    from firmware_sim.data.stream import Stream

log = logging.getLogger(__name__)

__all__ = ["EMBED_CHUNK", "EmbeddingCache", "embed_test_set"]

EMBED_CHUNK = 256  # frames per backbone call when embedding a test set


class EmbeddingCache:
    """Test-set embeddings on disk, keyed by backbone fingerprint, runtime, precision and data identity.

    Files are ``.npy`` written atomically (temp file + rename); a corrupt entry is recomputed.
    ``directory=None`` caches nothing.
    """

    def __init__(self, directory: str | os.PathLike[str] | None) -> None:
        self.directory = Path(directory) if directory is not None else None

    @staticmethod
    def key(backbone: Backbone, identity: str) -> str:
        info = backbone.info
        text = f"{backbone.manifest.fingerprint}|{info.runtime}|{info.precision}|{identity}"
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]

    def get(self, key: str, expected_rows: int, embedding_size: int) -> np.ndarray | None:
        """The cached float32 (expected_rows, embedding_size) array, or None (absent, unreadable, other shape)."""
        if self.directory is None:
            return None
        path = self.directory / f"{key}.npy"
        if not path.is_file():
            return None
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable embedding cache entry %s (%s)", path, exc)
            return None
        if arr.shape != (expected_rows, embedding_size) or arr.dtype != np.float32 or not np.isfinite(arr).all():
            log.warning("ignoring embedding cache entry %s: expected float32 %s, got %s %s",
                        path, (expected_rows, embedding_size), arr.dtype, arr.shape)
            return None
        return arr

    def put(self, key: str, embeddings: np.ndarray) -> None:
        if self.directory is None:
            return
        atomic_write(self.directory / f"{key}.npy",
                     lambda handle: np.save(handle, embeddings.astype(np.float32), allow_pickle=False))


def embed_test_set(stream: Stream, backbone: Backbone, cache: EmbeddingCache) -> tuple[np.ndarray, bool]:
    """The stream's test-set embeddings and whether they came from ``cache``.

    On a miss the test frames are read and embedded ``EMBED_CHUNK`` at a time, then stored.
    """
    size = backbone.embedding_size
    n_test = len(stream.test)
    key = EmbeddingCache.key(backbone, stream.identity)
    cached = cache.get(key, n_test, size)
    if cached is not None:
        return cached, True
    chunks = []
    for start in range(0, n_test, EMBED_CHUNK):
        positions = np.arange(start, min(start + EMBED_CHUNK, n_test))
        frames = stream.test.images_at(positions)
        if len(frames) != len(positions):
            raise ValueError(f"test frames {start}..{positions[-1]}: expected {len(positions)} frames "
                             f"(one per label), got {len(frames)}")
        chunks.append(backbone.embed(frames))
    test = np.concatenate(chunks) if chunks else np.zeros((0, size), np.float32)
    cache.put(key, test)
    return test, False
