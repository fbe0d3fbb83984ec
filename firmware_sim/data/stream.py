"""The simulator's stream vocabulary: a :class:`Batch` of labelled frames and a :class:`Stream` of them.

Every data source speaks it: the CORe50 loaders (:mod:`firmware_sim.data.core50`), the protocols over
generic labelled images (:mod:`firmware_sim.data.protocols`), the ``--data`` resolver
(:mod:`firmware_sim.data.streams`) and the device loop (:mod:`firmware_sim.loop`). Labels are known up
front; frames are read on demand through the batch's ``loader``, so a large test set can be read a
chunk at a time.

Example:
    >>> frames = np.arange(6 * 2 * 2 * 3, dtype=np.uint8).reshape(6, 2, 2, 3)
    >>> train = Batch(np.array([0, 1, 2]), np.array([0, 0, 1]), (), frames.__getitem__)
    >>> test = Batch(np.array([4, 5]), np.array([0, 1]), (), frames.__getitem__)
    >>> s = Stream("demo", [train], test, n_classes=2)
    >>> len(s), s.n_train_frames, s.classes_per_batch, s.test.images_at(np.array([1])).shape
    (1, 3, [[0, 1]], (1, 2, 2, 3))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from edge.preprocess import fit_frame
from firmware_sim.data.sources import LabelledImages

__all__ = ["Batch", "Stream", "resize_frames"]


def resize_frames(x: np.ndarray, size: int | None) -> np.ndarray:
    """uint8 (n, H, W, C) frames fitted to ``size`` x ``size`` by `edge.preprocess.fit_frame` (squash,
    bilinear); unchanged when None or equal."""
    if size is None or (x.shape[1] == size and x.shape[2] == size):
        return np.ascontiguousarray(x)
    out = np.empty((x.shape[0], size, size, x.shape[3]), np.uint8)
    for i in range(x.shape[0]):
        out[i] = fit_frame(x[i], (size, size))
    return out


@dataclass(frozen=True)
class Batch:
    """Labelled frames: ``indices`` into a source, ``labels`` (int64) and a ``loader`` that reads frames.

    ``loader(indices)`` returns uint8 (n, H, W, C) frames; ``image_size`` resizes them on read.
    ``paths`` holds CORe50 relative paths (empty for other sources); ``replayed`` (optional) masks the
    samples a protocol replays from earlier batches.

    Example:
        >>> b = Batch(np.array([0, 1]), np.array([3, 3]), ("s1/o4/C_01_04_000.png", "s1/o4/C_01_04_001.png"),
        ...           loader=lambda idx: np.zeros((len(idx), 8, 8, 3), np.uint8))
        >>> len(b), b.images().shape, b.classes, b.n_replayed
        (2, (2, 8, 8, 3), [3], 0)
    """

    indices: np.ndarray
    labels: np.ndarray
    paths: tuple[str, ...]
    loader: Callable[[np.ndarray], np.ndarray] = field(repr=False, compare=False)
    image_size: int | None = None
    name: str = ""
    replayed: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def images(self) -> np.ndarray:
        """Read the batch's frames now: uint8 (n, H, W, C), a new array each call."""
        return resize_frames(self.loader(self.indices), self.image_size)

    def images_at(self, positions: np.ndarray) -> np.ndarray:
        """Read only the frames at ``positions`` (0..len-1) of the batch, e.g. a chunk of a large test set."""
        return resize_frames(self.loader(self.indices[np.asarray(positions, np.int64)]), self.image_size)

    @property
    def classes(self) -> list[int]:
        """Classes present in the batch, replayed samples included."""
        return np.unique(self.labels).tolist()

    @property
    def new_classes(self) -> list[int]:
        """Classes of the batch's new (not replayed) samples."""
        new = self.labels if self.replayed is None else self.labels[~self.replayed]
        return np.unique(new).tolist()

    @property
    def n_replayed(self) -> int:
        return 0 if self.replayed is None else int(self.replayed.sum())


@dataclass(frozen=True)
class Stream:
    """Training batches in order, a fixed test set (a :class:`Batch`), and what the stream is.

    Labels live in ``0..n_classes-1``. ``identity`` names the data exactly (source, scenario, run, test
    subset, image size); with the backbone's fingerprint it keys the embedding cache. ``params`` records
    a protocol's resolved arguments and ``label_map`` (source label -> stream label) is set when labels
    were remapped; ``pretrain``/``pretrain_test`` are the held-out pretraining data of a split stream.
    """

    name: str
    train_batches: Sequence[Batch]
    test: Batch
    n_classes: int
    description: str = ""
    class_names: list[str] | None = None
    identity: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    label_map: dict[int, int] | None = None
    pretrain: LabelledImages | None = field(default=None, repr=False)
    pretrain_test: LabelledImages | None = field(default=None, repr=False)
    test_split: str = ""  # where the test set comes from, e.g. "held-out 20 % stratified, seed 0"

    def __len__(self) -> int:
        return len(self.train_batches)

    def __iter__(self) -> Iterator[Batch]:
        return iter(self.train_batches)

    @property
    def n_train_frames(self) -> int:
        return int(sum(len(b) for b in self.train_batches))

    @property
    def classes_per_batch(self) -> list[list[int]]:
        """The classes of each batch's new (not replayed) samples."""
        return [b.new_classes for b in self.train_batches]

    def summary(self) -> dict[str, Any]:
        """Plain-data description of the stream for ``report.json`` (no images)."""
        return {
            "protocol": self.name,
            "description": self.description,
            "params": dict(self.params),
            "n_batches": len(self.train_batches),
            "batch_sizes": [len(b) for b in self.train_batches],
            "replayed_per_batch": [b.n_replayed for b in self.train_batches],
            "classes_per_batch": self.classes_per_batch,
            "n_train_samples": self.n_train_frames,
            "n_test_samples": len(self.test),
            "n_classes": self.n_classes,
            "label_map": None if self.label_map is None else {str(k): v for k, v in self.label_map.items()},
            "test_split": self.test_split,
        }
