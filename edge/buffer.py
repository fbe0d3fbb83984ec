"""A fixed-size replay buffer of embeddings, optionally quantized, for latent replay.

All storage is preallocated at construction time from ``capacity``, ``embedding_size`` and
``storage``; `nbytes` is exact (data + labels + per-row scales). Two policies:

* ``"reservoir"``: every embedding seen so far has the same chance ``capacity / n_seen`` of being
  in the buffer (Vitter's algorithm R);
* ``"class_balanced"``: class-balanced reservoir sampling (Chrysakis & Moens, ICML 2020). While
  the buffer is not full everything is kept. Once full, an item of a class that is not among the
  largest classes evicts a random item of a largest class; an item of a largest class replaces a
  random item of its own class with probability ``stored_c / seen_c`` (a reservoir within the
  class). Every class is thus either stored entirely or holds at least ``max_count - 1`` items.
  A whole batch is decided in one pass over small integers (class counts, the set of largest
  classes, per-class slot lists; uniforms drawn in one call) and the rows are then encoded and
  written once, vectorised: the same distribution as inserting them one by one (tested), about
  10x faster (15,000 rows into a full 1,500-row int8 buffer: ~25 ms instead of ~250 ms).

``storage="int8"`` keeps each row as int8 with one float32 scale per row (symmetric:
``scale = max|x| / 127``), a 4x saving over float32 with error at most ``scale / 2`` per value.

Rows are stored as the backbone produced them. With a ``standardizer`` (the agent's
`edge.base.Standardizer`), `sample` and `contents` return them standardised, ready for the head;
`add` always takes them unstandardised.

Example:
    >>> import numpy as np
    >>> buf = ReplayBuffer(capacity=4, embedding_size=3, storage="int8", max_classes=10, seed=0)
    >>> buf.add(np.ones((6, 3), np.float32), np.array([0, 0, 1, 1, 2, 2]))
    >>> len(buf), buf.nbytes           # 4*3 int8 + 4 int16 labels + 4 float32 scales
    (4, 36)
    >>> emb, labels = buf.sample(2, np.random.default_rng(0))
    >>> emb.dtype, emb.shape
    (dtype('float32'), (2, 3))
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from edge.errors import ConfigError, InputError

POLICIES = ("reservoir", "class_balanced")
STORAGES = ("float32", "float16", "int8")
_F16_MAX = float(np.finfo(np.float16).max)


def _rng_state_array(rng: np.random.Generator) -> np.ndarray:
    """A PCG64 generator's full state as 6 uint64 words (plain array, no pickle)."""
    st = rng.bit_generator.state
    if st["bit_generator"] != "PCG64":
        raise ConfigError(f"expected a PCG64 generator, got {st['bit_generator']}")
    mask = (1 << 64) - 1
    s, inc = st["state"]["state"], st["state"]["inc"]
    return np.array([s >> 64, s & mask, inc >> 64, inc & mask, st["has_uint32"], st["uinteger"]],
                    dtype=np.uint64)


def _rng_from_array(words: np.ndarray) -> np.random.Generator:
    """Inverse of `_rng_state_array`."""
    w = [int(v) for v in np.asarray(words, dtype=np.uint64)]
    if len(w) != 6:
        raise InputError(f"rng state: expected 6 uint64 words, got {len(w)}")
    bg = np.random.PCG64()
    bg.state = {"bit_generator": "PCG64", "state": {"state": (w[0] << 64) | w[1], "inc": (w[2] << 64) | w[3]},
                "has_uint32": w[4], "uinteger": w[5]}
    return np.random.Generator(bg)


class ReplayBuffer:
    """Preallocated replay memory of (embedding, label) pairs.

    Args:
        capacity: rows kept at most (0 disables the buffer).
        embedding_size: embedding length.
        policy: ``"reservoir"`` or ``"class_balanced"``.
        storage: ``"float32"``, ``"float16"`` (values clipped to the float16 range) or ``"int8"``.
        max_classes: labels must lie in ``[0, max_classes)``.
        seed: seeds the buffer's own generator (used by `add`, and by `sample` without ``rng``).
        standardizer: applied to the rows `sample` and `contents` return (None: as stored).
    """

    def __init__(self, capacity: int, embedding_size: int, policy: str = "reservoir",
                 storage: str = "float32", max_classes: int = 50, seed: int = 0,
                 standardizer: Callable[[np.ndarray], np.ndarray] | None = None) -> None:
        if policy not in POLICIES:
            raise ConfigError(f"policy: expected one of {POLICIES}, got {policy!r}")
        if storage not in STORAGES:
            raise ConfigError(f"storage: expected one of {STORAGES}, got {storage!r}")
        if capacity < 0 or embedding_size <= 0 or max_classes <= 0:
            raise ConfigError(f"expected capacity >= 0, embedding_size > 0, max_classes > 0, got "
                              f"{capacity}, {embedding_size}, {max_classes}")
        self.capacity = int(capacity)
        self.embedding_size = int(embedding_size)
        self.standardizer = standardizer
        self.policy = policy
        self.storage = storage
        self.max_classes = int(max_classes)
        self.seed = seed
        label_dtype = np.int16 if max_classes <= np.iinfo(np.int16).max else np.int32
        self.data_ = np.zeros((self.capacity, self.embedding_size),
                              dtype=np.int8 if storage == "int8" else np.dtype(storage))
        self.labels_ = np.zeros(self.capacity, dtype=label_dtype)
        self.scales_ = np.zeros(self.capacity if storage == "int8" else 0, dtype=np.float32)
        self.size_ = 0
        self.n_seen_ = 0
        self.seen_per_class_ = np.zeros(self.max_classes, dtype=np.int64)
        self.count_per_class_ = np.zeros(self.max_classes, dtype=np.int64)
        self.rng_ = np.random.default_rng(seed)

    # ------------------------------------------------------------------ queries
    def __len__(self) -> int:
        return self.size_

    @property
    def nbytes(self) -> int:
        """Exact bytes of the stored rows, labels and int8 scales."""
        return int(self.data_.nbytes + self.labels_.nbytes + self.scales_.nbytes)

    def class_counts(self) -> np.ndarray:
        """Rows stored per class, shape ``(max_classes,)`` (a copy)."""
        return self.count_per_class_.copy()

    # -------------------------------------------------------------- encoding
    def _write(self, slots: np.ndarray, emb: np.ndarray) -> None:
        if self.storage == "int8":
            peak = np.max(np.abs(emb), axis=1)
            scale = np.where(peak > 0, peak / np.float32(127.0), np.float32(1.0)).astype(np.float32)
            q = np.divide(emb, scale[:, None], dtype=np.float32)
            np.rint(q, out=q)
            np.clip(q, -127, 127, out=q)
            self.data_[slots] = q.astype(np.int8)
            self.scales_[slots] = scale
        elif self.storage == "float16":
            self.data_[slots] = np.clip(emb, -_F16_MAX, _F16_MAX).astype(np.float16)
        else:
            self.data_[slots] = emb

    def _read(self, slots: np.ndarray) -> np.ndarray:
        rows = self.data_[slots].astype(np.float32)
        if self.storage == "int8":
            rows *= self.scales_[slots, None]
        return rows if self.standardizer is None else self.standardizer(rows)

    # ------------------------------------------------------------------ verbs
    def _validate(self, emb: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        emb = np.asarray(emb)
        labels = np.asarray(labels)
        if emb.ndim != 2 or emb.shape[1] != self.embedding_size:
            raise InputError(f"buffer embeddings: expected shape (N, {self.embedding_size}), got {emb.shape}")
        if labels.shape != (emb.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
            raise InputError(f"buffer labels: expected integer shape ({emb.shape[0]},), "
                             f"got {labels.dtype}{labels.shape}")
        if labels.size and (labels.min() < 0 or labels.max() >= self.max_classes):
            raise InputError(f"buffer labels: expected values in [0, {self.max_classes - 1}], "
                             f"got range [{labels.min()}, {labels.max()}]")
        if not np.isfinite(emb).all():
            raise InputError("buffer embeddings: expected finite values, got NaN or inf")
        return emb.astype(np.float32, copy=False), labels.astype(np.int64, copy=False)

    def add(self, emb: np.ndarray, labels: np.ndarray) -> None:
        """Offer a batch of embeddings to the buffer (the policy decides what stays). Returns None."""
        emb, labels = self._validate(emb, labels)
        if emb.shape[0] == 0 or self.capacity == 0:
            self.n_seen_ += emb.shape[0]
            np.add.at(self.seen_per_class_, labels, 1)
            return
        if self.policy == "reservoir":
            self._add_reservoir(emb, labels)
        else:
            self._add_class_balanced(emb, labels)

    def _add_reservoir(self, emb: np.ndarray, labels: np.ndarray) -> None:
        n = emb.shape[0]
        free = min(self.capacity - self.size_, n)
        if free:
            slots = np.arange(self.size_, self.size_ + free)
            self._place(slots, emb[:free], labels[:free])
            self.size_ += free
        rest = n - free
        if rest:
            # Item i (0-based over all items seen) is kept at slot j ~ U[0, i] if j < capacity.
            index = self.n_seen_ + free + np.arange(rest)
            j = self.rng_.integers(0, index + 1)
            keep = np.flatnonzero(j < self.capacity)
            if keep.size:
                # The last writer to a slot wins, as in the sequential algorithm.
                slots_rev = j[keep][::-1]
                uniq, first = np.unique(slots_rev, return_index=True)
                src = free + keep[::-1][first]
                self._place(uniq, emb[src], labels[src])
        self.n_seen_ += n
        np.add.at(self.seen_per_class_, labels, 1)

    def _place(self, slots: np.ndarray, emb: np.ndarray, labels: np.ndarray) -> None:
        filled = slots[slots < self.size_]
        if filled.size:
            np.subtract.at(self.count_per_class_, self.labels_[filled], 1)
        self._write(slots, emb)
        self.labels_[slots] = labels
        np.add.at(self.count_per_class_, labels, 1)

    def _add_class_balanced(self, emb: np.ndarray, labels: np.ndarray) -> None:
        free = min(self.capacity - self.size_, emb.shape[0])
        if free:  # not full yet: everything is kept, in one vectorised write
            self._place(np.arange(self.size_, self.size_ + free), emb[:free], labels[:free])
            self.size_ += free
            self.n_seen_ += free
            np.add.at(self.seen_per_class_, labels[:free], 1)
        rest = emb.shape[0] - free
        if rest == 0:
            return
        slots, sources = self._class_balanced_slots(labels[free:])
        if slots.size:
            # The last item written to a slot wins, as in the one-by-one algorithm; the rows are
            # encoded once, in one vectorised write.
            rev_slots = slots[::-1]
            uniq, first = np.unique(rev_slots, return_index=True)
            src = free + sources[::-1][first]
            self._write(uniq, emb[src])
            self.labels_[uniq] = labels[src]
        self.n_seen_ += rest

    def _class_balanced_slots(self, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Decide, item by item, which slot each label of a full buffer goes to (or none).

        Only small integers move here: class counts, the set of largest classes and each class's
        slot list (O(1) per item: swap-remove, random index), with the item's three uniforms drawn
        in one NumPy call. The embeddings themselves are written afterwards, once. Returns the
        chosen slots and the item index (into ``labels``) of each, in arrival order. Updates
        ``count_per_class_`` and ``seen_per_class_``.
        """
        n = labels.shape[0]
        counts = self.count_per_class_.tolist()
        seen = self.seen_per_class_.tolist()
        stored = self.labels_[: self.size_]
        order = np.argsort(stored, kind="stable")
        bounds = np.searchsorted(stored[order], np.arange(self.max_classes + 1))
        order_list = order.tolist()
        members: dict[int, list[int]] = {}
        for c in np.flatnonzero(np.diff(bounds)).tolist():
            members[c] = order_list[bounds[c]:bounds[c + 1]]
        top = max(counts)
        largest = [c for c, k in enumerate(counts) if k == top]
        where = {c: i for i, c in enumerate(largest)}
        uniforms = self.rng_.random((n, 3)).tolist()
        out_slots: list[int] = []
        out_items: list[int] = []
        for i, c in enumerate(labels.tolist()):
            seen[c] += 1
            u_class, u_keep, u_slot = uniforms[i]
            if counts[c] < top:
                victim = largest[int(u_class * len(largest))]
                # the victim leaves the set of largest classes; c may join it
                j = where.pop(victim)
                last = largest.pop()
                if last != victim:
                    largest[j] = last
                    where[last] = j
                counts[victim] -= 1
                counts[c] += 1
                if counts[c] == top:
                    where[c] = len(largest)
                    largest.append(c)
                if not largest:  # every class of size `top` lost one: the new largest are top - 1
                    top -= 1
                    largest = [k for k, v in enumerate(counts) if v == top]
                    where = {k: q for q, k in enumerate(largest)}
                pool = members[victim]
                q = int(u_slot * len(pool))
                slot = pool[q]
                pool[q] = pool[-1]
                pool.pop()
                members.setdefault(c, []).append(slot)
            else:
                if u_keep * seen[c] >= counts[c]:
                    continue  # reservoir within a largest class: not kept
                pool = members[c]
                slot = pool[int(u_slot * len(pool))]
            out_slots.append(slot)
            out_items.append(i)
        self.count_per_class_[...] = counts
        self.seen_per_class_[...] = seen
        return np.asarray(out_slots, dtype=np.int64), np.asarray(out_items, dtype=np.int64)

    def sample(self, n: int, rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Up to ``n`` distinct stored rows, uniformly at random: (float32 ``(m, embedding_size)``,
        int64 labels), standardised if the buffer has a standardizer."""
        rng = rng if rng is not None else self.rng_
        m = min(int(n), self.size_)
        if m <= 0:
            return np.zeros((0, self.embedding_size), np.float32), np.zeros(0, np.int64)
        slots = rng.choice(self.size_, size=m, replace=False) if m < self.size_ else rng.permutation(m)
        return self._read(slots), self.labels_[slots].astype(np.int64)

    def contents(self) -> tuple[np.ndarray, np.ndarray]:
        """All stored rows, in slot order (float32, int64 labels), standardised as `sample`'s."""
        slots = np.arange(self.size_)
        return self._read(slots), self.labels_[: self.size_].astype(np.int64)

    def remove(self, emb: np.ndarray, labels: np.ndarray) -> int:
        """Take rows out (undo of a teach): each given row (as `add` took it, unstandardised) removes
        at most one stored row with the same label and the same stored encoding; the rows that the
        policy never kept are simply not found. They also leave the seen counts. Returns the number
        of stored rows removed (the last filled slot moves into each freed one)."""
        emb, labels = self._validate(emb, labels)
        n = emb.shape[0]
        self.n_seen_ = max(0, self.n_seen_ - n)
        np.subtract.at(self.seen_per_class_, labels, 1)
        np.maximum(self.seen_per_class_, 0, out=self.seen_per_class_)
        if n == 0 or self.size_ == 0:
            return 0
        scratch = ReplayBuffer(n, self.embedding_size, self.policy, self.storage, self.max_classes)
        scratch._write(np.arange(n), emb)   # the same encoding as the stored rows
        removed = 0
        for i in range(n):
            size = self.size_
            match = np.flatnonzero((self.labels_[:size] == labels[i])
                                   & (self.data_[:size] == scratch.data_[i]).all(axis=1)
                                   & ((self.scales_[:size] == scratch.scales_[i]) if self.storage == "int8"
                                      else True))
            if match.size == 0:
                continue
            slot, last = int(match[0]), size - 1
            self.count_per_class_[self.labels_[slot]] -= 1
            self.data_[slot] = self.data_[last]
            self.labels_[slot] = self.labels_[last]
            if self.storage == "int8":
                self.scales_[slot] = self.scales_[last]
            self.size_ = last
            removed += 1
        return removed

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, np.ndarray]:
        """Plain arrays (copies); only the filled rows are stored."""
        return {
            "data": self.data_[: self.size_].copy(),
            "labels": self.labels_[: self.size_].copy(),
            "scales": self.scales_[: self.size_].copy(),
            "n_seen": np.array(self.n_seen_, dtype=np.int64),
            "seen_per_class": self.seen_per_class_.copy(),
            "rng": _rng_state_array(self.rng_),
        }

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Restore from `state_dict` output; shapes, dtypes and capacity are checked (InputError)."""
        data = np.asarray(state["data"])
        labels = np.asarray(state["labels"])
        scales = np.asarray(state["scales"])
        size = data.shape[0] if data.ndim == 2 else -1
        ok = (data.ndim == 2 and data.shape[1] == self.embedding_size and data.dtype == self.data_.dtype
              and 0 <= size <= self.capacity and labels.shape == (size,)
              and labels.dtype == self.labels_.dtype
              and scales.shape == ((size,) if self.storage == "int8" else (0,))
              and np.asarray(state["seen_per_class"]).shape == (self.max_classes,))
        if not ok:
            raise InputError(
                f"buffer state: expected data {self.data_.dtype}(<= {self.capacity}, {self.embedding_size}) with "
                f"matching labels/scales and {self.max_classes} class counts, got data "
                f"{data.dtype}{data.shape}, labels {labels.dtype}{labels.shape}, scales {scales.shape}"
            )
        if size and (labels.min() < 0 or labels.max() >= self.max_classes):
            raise InputError(f"buffer state labels: expected [0, {self.max_classes}), got "
                             f"[{labels.min()}, {labels.max()}]")
        rng = _rng_from_array(state["rng"])
        self.data_[:size] = data
        self.labels_[:size] = labels
        if self.storage == "int8":
            self.scales_[:size] = scales
        self.size_ = size
        self.n_seen_ = int(state["n_seen"])
        self.seen_per_class_[...] = state["seen_per_class"]
        self.count_per_class_[...] = np.bincount(labels.astype(np.int64), minlength=self.max_classes)
        self.rng_ = rng

    def __repr__(self) -> str:
        return (f"ReplayBuffer(capacity={self.capacity}, embedding_size={self.embedding_size}, policy={self.policy!r}, "
                f"storage={self.storage!r}, size={self.size_})")
