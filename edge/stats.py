"""Exact running class statistics of the agent's standardised embeddings, kept once.

The agent owns one `ClassStatistics`; every consumer reads it: the open-set score
(`edge.openset.OpenSet`: class means and spreads), nearest class mean (`edge.strategies.NCMStrategy`)
and streaming LDA (`edge.strategies.SLDAStrategy`: class means and counts; its shared covariance,
which is not per class, stays in the strategy). Everything is a plain sum over rows (float64), so
statistics are exact, independent of batch order up to float rounding, and composable:

* ``update(z, y)`` is ``add(ClassStatistics.of_rows(z, y, K))``;
* ``add(other)`` merges the statistics of other rows (another device, an imported pack);
* ``subtract(other)`` removes rows that were added before (undo a teach), exactly up to rounding.

``version`` counts changes, so consumers cache what they derive (means, spreads, a precision) and
recompute it only when it moved.

Example:
    >>> import numpy as np
    >>> s = ClassStatistics(max_classes=3, embedding_size=2)
    >>> s.update(np.array([[1.0, 0.0], [3.0, 0.0], [0.0, 4.0]]), np.array([0, 0, 2]))
    >>> s.count_.tolist(), s.means()[0].tolist(), s.classes_.tolist()
    ([2, 0, 1], [2.0, 0.0], [0, 2])
    >>> s.subtract(ClassStatistics.of_rows(np.array([[0.0, 4.0]]), np.array([2]), 3))
    >>> s.classes_.tolist()
    [0]
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from edge.errors import InputError


class ClassStatistics:
    """Per-class row count, sum of rows and sum of squared row norms (float64).

    Args:
        max_classes, embedding_size: fixed at construction, preallocated.

    Attributes:
        count_: ``(K,)`` int64 rows per class.
        sum_: ``(K, d)`` float64 sum of the rows of each class.
        sq_: ``(K,)`` float64 sum of the squared norms of the rows of each class.
        version: incremented on every change.
    """

    KEYS = ("count", "sum", "sq")

    def __init__(self, max_classes: int, embedding_size: int) -> None:
        self.max_classes = int(max_classes)
        self.embedding_size = int(embedding_size)
        self.count_ = np.zeros(self.max_classes, np.int64)
        self.sum_ = np.zeros((self.max_classes, self.embedding_size), np.float64)
        self.sq_ = np.zeros(self.max_classes, np.float64)
        self.version = 0

    @classmethod
    def of_rows(cls, z: np.ndarray, labels: np.ndarray, max_classes: int) -> ClassStatistics:
        """The statistics of the rows ``z`` ``(N, d)`` with integer ``labels`` in ``[0, max_classes)``
        (rows are taken as float32, as the agent gives them, then summed in float64)."""
        x = np.asarray(z).astype(np.float32, copy=False).astype(np.float64)
        y = np.asarray(labels).astype(np.int64, copy=False)
        if x.ndim != 2 or y.shape != (x.shape[0],):
            raise InputError(f"class statistics: expected rows (N, d) and N labels, got {x.shape} and {y.shape}")
        if y.size and (y.min() < 0 or y.max() >= max_classes):
            raise InputError(f"class statistics: expected labels in [0, {max_classes - 1}], "
                             f"got {int(y.min())}..{int(y.max())}")
        out = cls(max_classes, x.shape[1])
        out.count_ = np.bincount(y, minlength=out.max_classes).astype(np.int64)
        np.add.at(out.sum_, y, x)
        np.add.at(out.sq_, y, (x * x).sum(1))
        return out

    # ---------------------------------------------------------------- changes
    def update(self, z: np.ndarray, labels: np.ndarray) -> None:
        """Add a batch of rows (``add(of_rows(z, labels))``)."""
        self.add(self.of_rows(z, labels, self.max_classes))

    def add(self, other: ClassStatistics) -> None:
        """Merge the statistics of other rows (same shape)."""
        self._check_like(other)
        self.count_ = self.count_ + other.count_
        self.sum_ = self.sum_ + other.sum_
        self.sq_ = self.sq_ + other.sq_
        self.version += 1

    def subtract(self, other: ClassStatistics) -> None:
        """Remove rows added before; a class left with no rows is reset to exact zeros.
        Removing more rows than a class holds raises `InputError` and changes nothing."""
        self._check_like(other)
        count = self.count_ - other.count_
        if (count < 0).any():
            c = int(np.flatnonzero(count < 0)[0])
            raise InputError(f"class statistics: expected at most {int(self.count_[c])} rows of class {c} "
                             f"to remove, got {int(other.count_[c])}")
        empty = count == 0
        self.sum_ = np.where(empty[:, None], 0.0, self.sum_ - other.sum_)
        self.sq_ = np.where(empty, 0.0, self.sq_ - other.sq_)
        self.count_ = count
        self.version += 1

    def _check_like(self, other: ClassStatistics) -> None:
        if (other.max_classes, other.embedding_size) != (self.max_classes, self.embedding_size):
            raise InputError(f"class statistics: expected (max_classes, embedding_size) = "
                             f"{(self.max_classes, self.embedding_size)}, got "
                             f"{(other.max_classes, other.embedding_size)}")

    # ---------------------------------------------------------------- reads
    @property
    def classes_(self) -> np.ndarray:
        """Classes with at least one row, sorted."""
        return np.flatnonzero(self.count_)

    def means(self) -> np.ndarray:
        """Class means ``(K, d)`` (0 for classes with no rows)."""
        return self.sum_ / np.maximum(self.count_, 1)[:, None]

    def copy(self) -> ClassStatistics:
        """An independent copy."""
        out = ClassStatistics(self.max_classes, self.embedding_size)
        out.count_, out.sum_, out.sq_ = self.count_.copy(), self.sum_.copy(), self.sq_.copy()
        return out

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict[str, np.ndarray]:
        """``count``, ``sum``, ``sq`` (stored by the agent under ``stats.*``)."""
        return {"count": self.count_.copy(), "sum": self.sum_.copy(), "sq": self.sq_.copy()}

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore `state_dict` output; keys, dtypes, shapes and signs checked (`InputError`,
        nothing changed)."""
        ref = self.state_dict()
        if set(state) != set(ref):
            raise InputError(f"class statistics state: expected keys {sorted(ref)}, got {sorted(state)}")
        for key, want in ref.items():
            got = np.asarray(state[key])
            if got.shape != want.shape or got.dtype != want.dtype:
                raise InputError(f"class statistics state {key!r}: expected {want.dtype}{want.shape}, "
                                 f"got {got.dtype}{got.shape}")
        if (np.asarray(state["count"]) < 0).any():
            raise InputError("class statistics state: expected counts >= 0, got a negative count")
        if not (np.isfinite(state["sum"]).all() and np.isfinite(state["sq"]).all()):
            raise InputError("class statistics state: expected finite sums, got NaN or inf")
        self.count_, self.sum_, self.sq_ = (np.asarray(state[k]).copy() for k in self.KEYS)
        self.version += 1

    @property
    def nbytes(self) -> int:
        """Bytes of state."""
        return int(self.count_.nbytes + self.sum_.nbytes + self.sq_.nbytes)

    def __repr__(self) -> str:
        return (f"ClassStatistics(max_classes={self.max_classes}, embedding_size={self.embedding_size}, "
                f"classes={self.classes_.tolist()}, rows={int(self.count_.sum())})")
