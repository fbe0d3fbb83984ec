"""Exact running class statistics of the agent's standardised embeddings, kept once.

The agent owns one `ClassStatistics`; every consumer reads it: the open-set score
(`edge.openset.OpenSet`: class means and spreads), nearest class mean (`edge.strategies.NCMStrategy`)
and streaming LDA (`edge.strategies.SLDAStrategy`: class means and counts; its shared covariance,
which is not per class, stays in the strategy). Everything is a plain sum over rows (float64), so
statistics are exact, independent of batch order up to float rounding, and composable:

* ``update(z, y)`` is ``add(ClassStatistics.of_rows(z, y, K))``;
* ``add(other)`` merges the statistics of other rows (another device, an imported pack);
* ``subtract(other)`` removes rows that were added before (undo a teach), exactly up to rounding.

With ``directions=True`` it also keeps the *direction statistics* the open-set score reads
(`edge.openset`, MDS++): per class the sum of the L2-normalised raw embeddings (``unit_sum_``) and,
over all rows, the sum of their outer products (``unit_outer_``, ``(d, d)``), from which the shared
within-class covariance of the unit rows follows exactly. The raw rows are passed as ``units=`` (the
agent's embeddings before standardisation); add/subtract carry these sums too.

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

from typing import Any, Mapping

import numpy as np

from edge.errors import InputError



def check_state_arrays(state: Mapping[str, Any], ref: Mapping[str, np.ndarray], what: str) -> None:
    """`InputError` unless ``state`` has exactly the keys of ``ref``, each with its shape and dtype."""
    if set(state) != set(ref):
        raise InputError(f"{what}: expected keys {sorted(ref)}, got {sorted(state)}")
    for key, want in ref.items():
        got = np.asarray(state[key])
        if got.shape != want.shape or got.dtype != want.dtype:
            raise InputError(f"{what} {key!r}: expected {want.dtype}{want.shape}, got {got.dtype}{got.shape}")

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
    #: State keys of the direction statistics (present only with ``directions=True``).
    UNIT_KEYS = ("unit_sum", "unit_outer")

    def __init__(self, max_classes: int, embedding_size: int, directions: bool = False) -> None:
        self.max_classes = int(max_classes)
        self.embedding_size = int(embedding_size)
        self.count_ = np.zeros(self.max_classes, np.int64)
        self.sum_ = np.zeros((self.max_classes, self.embedding_size), np.float64)
        self.sq_ = np.zeros(self.max_classes, np.float64)
        #: ``(K, d)`` sums of unit rows per class and ``(d, d)`` sum of their outer products, or
        #: None when this object keeps no direction statistics.
        self.unit_sum_: np.ndarray | None = None
        self.unit_outer_: np.ndarray | None = None
        if directions:
            self.unit_sum_ = np.zeros((self.max_classes, self.embedding_size), np.float64)
            self.unit_outer_ = np.zeros((self.embedding_size, self.embedding_size), np.float64)
        self.version = 0

    @property
    def directions(self) -> bool:
        """Whether the direction statistics (``unit_sum_``, ``unit_outer_``) are kept."""
        return self.unit_sum_ is not None

    @staticmethod
    def unit_rows(rows: np.ndarray) -> np.ndarray:
        """Rows scaled to unit L2 norm (float64; an all-zero row stays zero)."""
        x = np.asarray(rows).astype(np.float32, copy=False).astype(np.float64)
        norm = np.sqrt((x * x).sum(1, keepdims=True))
        out: np.ndarray = np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)
        return out

    @classmethod
    def of_rows(cls, z: np.ndarray, labels: np.ndarray, max_classes: int,
                units: np.ndarray | None = None) -> ClassStatistics:
        """The statistics of the rows ``z`` ``(N, d)`` with integer ``labels`` in ``[0, max_classes)``
        (rows are taken as float32, as the agent gives them, then summed in float64). With ``units``
        (``(N, d)``: the same rows before standardisation) the direction statistics are kept too."""
        x = np.asarray(z).astype(np.float32, copy=False).astype(np.float64)
        y = np.asarray(labels).astype(np.int64, copy=False)
        if x.ndim != 2 or y.shape != (x.shape[0],):
            raise InputError(f"class statistics: expected rows (N, d) and N labels, got {x.shape} and {y.shape}")
        if y.size and (y.min() < 0 or y.max() >= max_classes):
            raise InputError(f"class statistics: expected labels in [0, {max_classes - 1}], "
                             f"got {int(y.min())}..{int(y.max())}")
        out = cls(max_classes, x.shape[1], directions=units is not None)
        out.count_ = np.bincount(y, minlength=out.max_classes).astype(np.int64)
        np.add.at(out.sum_, y, x)
        np.add.at(out.sq_, y, (x * x).sum(1))
        if units is not None:
            u = cls.unit_rows(units)
            if u.shape != x.shape:
                raise InputError(f"class statistics: expected units of shape {x.shape}, got {u.shape}")
            assert out.unit_sum_ is not None
            np.add.at(out.unit_sum_, y, u)
            out.unit_outer_ = u.T @ u
        return out

    # ---------------------------------------------------------------- changes
    def update(self, z: np.ndarray, labels: np.ndarray, units: np.ndarray | None = None) -> None:
        """Add a batch of rows (``add(of_rows(z, labels, units=units))``; ``units`` is ignored
        when this object keeps no direction statistics)."""
        self.add(self.of_rows(z, labels, self.max_classes, units if self.directions else None))

    def add(self, other: ClassStatistics) -> None:
        """Merge the statistics of other rows (same shape; direction statistics both or neither)."""
        self._check_like(other)
        self.count_ = self.count_ + other.count_
        self.sum_ = self.sum_ + other.sum_
        self.sq_ = self.sq_ + other.sq_
        if (self.unit_sum_ is not None and other.unit_sum_ is not None and self.unit_outer_ is not None
                and other.unit_outer_ is not None):
            self.unit_sum_ = self.unit_sum_ + other.unit_sum_
            self.unit_outer_ = self.unit_outer_ + other.unit_outer_
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
        if self.unit_sum_ is not None and other.unit_sum_ is not None and self.unit_outer_ is not None:
            self.unit_sum_ = np.where(empty[:, None], 0.0, self.unit_sum_ - other.unit_sum_)
            self.unit_outer_ = (np.zeros_like(self.unit_outer_) if not count.any()
                                else self.unit_outer_ - other.unit_outer_)
        self.count_ = count
        self.version += 1

    def _check_like(self, other: ClassStatistics) -> None:
        if (other.max_classes, other.embedding_size) != (self.max_classes, self.embedding_size):
            raise InputError(f"class statistics: expected (max_classes, embedding_size) = "
                             f"{(self.max_classes, self.embedding_size)}, got "
                             f"{(other.max_classes, other.embedding_size)}")
        if self.directions and not other.directions:
            raise InputError("class statistics: expected direction statistics (rows given with units=) "
                             "to merge into statistics that keep them, got none")

    # ---------------------------------------------------------------- reads
    @property
    def classes_(self) -> np.ndarray:
        """Classes with at least one row, sorted."""
        return np.flatnonzero(self.count_)

    def means(self) -> np.ndarray:
        """Class means ``(K, d)`` (0 for classes with no rows)."""
        return self.sum_ / np.maximum(self.count_, 1)[:, None]

    def means_without(self, labels: np.ndarray, burst_sum: np.ndarray, burst_n: np.ndarray,
                      units: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Leave-one-burst-out class means: for each row ``i``, the mean of class ``labels[i]``
        without the ``burst_n[i]`` rows whose sum is ``burst_sum[i]`` (exact from the sums; of the
        direction statistics with ``units``). Returns ``(means (M, d) float64, rows left (M,))``;
        a row whose class has no row outside its burst gets a zero mean and 0 left.

        Example:
            >>> s = ClassStatistics(max_classes=2, embedding_size=1)
            >>> s.update(np.array([[1.0], [3.0], [8.0]]), np.array([0, 0, 0]))
            >>> m, left = s.means_without(np.array([0]), np.array([[8.0]]), np.array([1]))
            >>> m.tolist(), left.tolist()
            ([[2.0]], [2])
        """
        labels = np.asarray(labels, np.int64)
        sums = self.unit_sum_ if units else self.sum_
        if sums is None:
            raise InputError("class statistics: expected direction statistics, got none")
        left = self.count_[labels] - np.asarray(burst_n, np.int64)
        diff = sums[labels] - np.asarray(burst_sum, np.float64)
        means: np.ndarray = np.divide(diff, np.maximum(left, 1)[:, None].astype(np.float64))
        means[left <= 0] = 0.0
        return means, np.maximum(left, 0)

    def copy(self) -> ClassStatistics:
        """An independent copy."""
        out = ClassStatistics(self.max_classes, self.embedding_size)
        out.count_, out.sum_, out.sq_ = self.count_.copy(), self.sum_.copy(), self.sq_.copy()
        if self.unit_sum_ is not None and self.unit_outer_ is not None:
            out.unit_sum_, out.unit_outer_ = self.unit_sum_.copy(), self.unit_outer_.copy()
        return out

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict[str, np.ndarray]:
        """``count``, ``sum``, ``sq`` (+ ``unit_sum``, ``unit_outer`` with direction statistics;
        stored by the agent under ``stats.*``)."""
        state = {"count": self.count_.copy(), "sum": self.sum_.copy(), "sq": self.sq_.copy()}
        if self.unit_sum_ is not None and self.unit_outer_ is not None:
            state.update(unit_sum=self.unit_sum_.copy(), unit_outer=self.unit_outer_.copy())
        return state

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore `state_dict` output; keys, dtypes, shapes and signs checked (`InputError`,
        nothing changed). A state without direction statistics (written before they existed)
        loads into an object that keeps them by switching them off (`directions` becomes False)."""
        keep_units = self.directions and bool(set(self.UNIT_KEYS) & set(state))
        ref = {k: v for k, v in self.state_dict().items() if keep_units or k not in self.UNIT_KEYS}
        check_state_arrays(state, ref, "class statistics state")
        if (np.asarray(state["count"]) < 0).any():
            raise InputError("class statistics state: expected counts >= 0, got a negative count")
        if not all(np.isfinite(state[k]).all() for k in ref if k != "count"):
            raise InputError("class statistics state: expected finite sums, got NaN or inf")
        self.count_, self.sum_, self.sq_ = (np.asarray(state[k]).copy() for k in self.KEYS)
        if keep_units:
            self.unit_sum_, self.unit_outer_ = (np.asarray(state[k]).copy() for k in self.UNIT_KEYS)
        else:
            self.unit_sum_ = self.unit_outer_ = None
        self.version += 1

    @property
    def nbytes(self) -> int:
        """Bytes of state."""
        units = (0 if self.unit_sum_ is None or self.unit_outer_ is None
                 else self.unit_sum_.nbytes + self.unit_outer_.nbytes)
        return int(self.count_.nbytes + self.sum_.nbytes + self.sq_.nbytes + units)

    def __repr__(self) -> str:
        return (f"ClassStatistics(max_classes={self.max_classes}, embedding_size={self.embedding_size}, "
                f"classes={self.classes_.tolist()}, rows={int(self.count_.sum())})")
