"""The teach ledger: every teach as an event, every taught sample with its row and a thumbnail.

Design: the agent owns one optional `Ledger` (``Agent.knowledge``; `Agent.enable_ledger` turns it
on: ``edge-agent learn`` and ``edge-agent run`` do, the simulator does not). It is part of the
agent's state under ``knowledge.*`` keys (`state_dict`: plain arrays, never pickled). A checkpoint
(`edge.checkpoint.CheckpointStore`) keeps its small parts (meta, events) inside the checkpoint file
and its rows, thumbnails and sample ids in immutable segment files beside it, each named by its
sha256 in the checkpoint's verified header (`edge.knowledge.segments`): a checkpoint after a teach
writes only the new samples. A state written before the ledger has no ``knowledge.*`` keys and
loads with a note: its earlier teaches cannot be undone one by one (a whole class can still be
forgotten).

What is kept per sample: an id, its event id, its label index, its embedding row as the backbone
produced it (float32, ``4 * d`` bytes: what exact removal subtracts) and a JPEG thumbnail
(`edge.knowledge.thumbnails`, optional). Budgets:

* thumbnails: ``thumbnail_budget`` bytes in all (default 16 MiB: about 4,000 128-px thumbnails of
  real photos, 4.0 MB per 1,000);
  over it, the oldest thumbnail of the class holding the most thumbnails is dropped first, repeat
  (``dropped_thumbnails`` counts them; the rows stay, so removal stays exact);
* rows: ``row_budget`` bytes (default 32 MiB); over it, the oldest samples are *sealed*: they leave
  the ledger (they stay learned, but can no longer be removed one by one; ``sealed_samples``).
  Samples whose segment file is missing or damaged when no intact checkpoint is left are sealed
  the same way on load (`seal_lost`); an event left without samples is dropped.

Budgets count the live ledger. On flash, the bytes of removed samples and dropped thumbnails stay in
their segment files until a segment is mostly dead (then its live samples are rewritten): at most
about twice the live bytes.

Example:
    >>> import numpy as np
    >>> ledger = Ledger(embedding_size=2)
    >>> ledger.record(np.ones((3, 2), np.float32), np.array([0, 0, 1]), source="cli", when=0.0)
    [1, 2]
    >>> [(e.id, e.label, e.samples) for e in ledger.events()]
    [(1, 0, 2), (2, 1, 1)]
    >>> rows, labels = ledger.take(ledger.samples_of_event(2))
    >>> labels.tolist(), len(ledger)
    ([1], 2)
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from edge.errors import InputError

logger = logging.getLogger(__name__)

PREFIX = "knowledge."
LEDGER_VERSION = 1
THUMBNAIL_BUDGET = 16 << 20
ROW_BUDGET = 32 << 20
MAX_SOURCE_CHARS = 64
_MAX_JSON = 16 << 20
_KEYS = ("meta", "events", "sample_id", "sample_event", "sample_label", "rows", "thumb_offsets", "thumb_data")


@dataclass(frozen=True)
class TeachEvent:
    """One teach: ``id``, ``time`` (unix seconds), ``label`` (index), ``source`` and the number of
    its ``samples`` still in the ledger."""

    id: int
    time: float
    label: int
    source: str
    samples: int

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "time": self.time, "label": self.label, "source": self.source,
                "samples": self.samples}


def _json_array(value: Any) -> np.ndarray:
    return np.frombuffer(json.dumps(value, sort_keys=True, allow_nan=False).encode("utf-8"), np.uint8).copy()


def _parse_json(raw: np.ndarray, what: str) -> Any:
    from edge.manifest import parse_json_bounded

    arr = np.asarray(raw)
    if arr.dtype != np.uint8 or arr.ndim != 1:
        raise InputError(f"{what}: expected uint8 JSON bytes, got {arr.dtype}{arr.shape}")
    try:
        return parse_json_bounded(arr.tobytes(), what=what, max_bytes=_MAX_JSON)
    except ValueError as exc:
        raise InputError(str(exc)) from exc


class Ledger:
    """Teach events and their samples (rows + thumbnails); see the module docstring.

    Args:
        embedding_size: row length (the backbone's embedding size).
        thumbnail_size: longer side of a thumbnail in pixels (0: no thumbnails).
        thumbnail_budget, row_budget: bytes (see the module docstring).
    """

    def __init__(self, embedding_size: int, thumbnail_size: int = 128, *,
                 thumbnail_budget: int = THUMBNAIL_BUDGET, row_budget: int = ROW_BUDGET) -> None:
        self.embedding_size = int(embedding_size)
        self.thumbnail_size = int(thumbnail_size)
        self.thumbnail_budget = int(thumbnail_budget)
        self.row_budget = int(row_budget)
        self._events: dict[int, dict[str, Any]] = {}   # id -> {"time", "label", "source"}, in order
        self.sample_id = np.zeros(0, np.int64)
        self.sample_event = np.zeros(0, np.int64)
        self.sample_label = np.zeros(0, np.int64)
        self.rows = np.zeros((0, self.embedding_size), np.float32)
        self.thumbs: list[bytes] = []
        self.next_id = 1
        self.dropped_thumbnails = 0
        self.sealed_samples = 0

    def __len__(self) -> int:
        return int(self.sample_id.shape[0])

    # ------------------------------------------------------------------ recording
    def record(self, rows: np.ndarray, labels: np.ndarray, *, source: str = "api",
               thumbnails: Sequence[bytes] | None = None, when: float | None = None,
               event_ids: Sequence[int] | None = None) -> list[int]:
        """Record one teach call: one event per distinct label (in first-seen order). Returns the
        new event ids. ``thumbnails`` (one per row, ``b""`` for none) are optional."""
        x = np.asarray(rows, np.float32).reshape(-1, self.embedding_size)
        y = np.asarray(labels, np.int64).reshape(-1)
        if y.shape[0] != x.shape[0]:
            raise InputError(f"ledger: expected one label per row, got {y.shape[0]} for {x.shape[0]} rows")
        thumbs = list(thumbnails) if thumbnails is not None else [b""] * x.shape[0]
        if len(thumbs) != x.shape[0]:
            raise InputError(f"ledger: expected one thumbnail per row, got {len(thumbs)} for {x.shape[0]} rows")
        source = str(source)[:MAX_SOURCE_CHARS]
        stamp = time.time() if when is None else float(when)
        order = list(dict.fromkeys(y.tolist()))
        ids: list[int] = []
        new_ids = np.zeros(y.shape[0], np.int64)
        for k, label in enumerate(order):
            eid = int(event_ids[k]) if event_ids is not None else self.next_id
            if eid in self._events:
                raise InputError(f"ledger: expected a new event id, got {eid} (already recorded)")
            self.next_id = max(self.next_id, eid + 1)
            self._events[eid] = {"time": stamp, "label": int(label), "source": source}
            new_ids[y == label] = eid
            ids.append(eid)
        first = self.next_sample_id()
        self.sample_id = np.concatenate([self.sample_id, first + np.arange(y.shape[0], dtype=np.int64)])
        self.sample_event = np.concatenate([self.sample_event, new_ids])
        self.sample_label = np.concatenate([self.sample_label, y])
        self.rows = np.concatenate([self.rows, x])
        self.thumbs.extend(bytes(t) for t in thumbs)
        self._next_sample = first + y.shape[0]
        self._enforce_budgets()
        return ids

    def next_sample_id(self) -> int:
        start = getattr(self, "_next_sample", 1)
        return int(max(start, int(self.sample_id.max()) + 1 if len(self) else 1))

    def _enforce_budgets(self) -> None:
        row_bytes = 4 * self.embedding_size
        excess = len(self) - self.row_budget // max(row_bytes, 1)
        if excess > 0:
            self.sealed_samples += excess
            logger.info("teach ledger: row budget of %d bytes reached: the %d oldest samples are sealed "
                        "(still learned, no longer removable one by one)", self.row_budget, excess)
            self._keep(np.arange(excess, len(self)))
        total = self.thumbnail_bytes
        if total <= self.thumbnail_budget:
            return
        sizes = np.array([len(t) for t in self.thumbs], np.int64)
        dropped = 0
        while total > self.thumbnail_budget:
            has = sizes > 0
            counts = np.bincount(self.sample_label[has], minlength=1)
            fullest = int(counts.argmax())
            i = int(np.flatnonzero(has & (self.sample_label == fullest))[0])  # its oldest thumbnail
            total -= int(sizes[i])
            sizes[i] = 0
            self.thumbs[i] = b""
            dropped += 1
        self.dropped_thumbnails += dropped
        logger.info("teach ledger: thumbnail budget of %d bytes reached: dropped the %d oldest thumbnails "
                    "of the fullest classes (%d dropped so far)", self.thumbnail_budget, dropped,
                    self.dropped_thumbnails)

    def _keep(self, index: np.ndarray) -> None:
        self._next_sample = self.next_sample_id()
        self.sample_id = self.sample_id[index]
        self.sample_event = self.sample_event[index]
        self.sample_label = self.sample_label[index]
        self.rows = self.rows[index]
        self.thumbs = [self.thumbs[int(i)] for i in index]
        alive = set(self.sample_event.tolist())
        self._events = {k: v for k, v in self._events.items() if k in alive}

    # ------------------------------------------------------------------ reading
    @property
    def thumbnail_bytes(self) -> int:
        return int(sum(len(t) for t in self.thumbs))

    def events(self) -> list[TeachEvent]:
        """Events still holding samples, oldest first."""
        counts = dict(zip(*np.unique(self.sample_event, return_counts=True)))
        return [TeachEvent(eid, float(e["time"]), int(e["label"]), str(e["source"]), int(counts.get(eid, 0)))
                for eid, e in self._events.items()]

    def last_event(self) -> TeachEvent | None:
        events = self.events()
        return events[-1] if events else None

    def samples_of_event(self, event_id: int) -> np.ndarray:
        """Positions (into this ledger) of the samples of one event; `InputError` if unknown."""
        if int(event_id) not in self._events:
            raise InputError(f"teach event {event_id}: expected one of the ledger's events "
                             f"{sorted(self._events)[-10:]}, got an unknown id")
        return np.flatnonzero(self.sample_event == int(event_id))

    def samples_of_label(self, label: int) -> np.ndarray:
        return np.flatnonzero(self.sample_label == int(label))

    def position_of_sample(self, sample_id: int) -> np.ndarray:
        where = np.flatnonzero(self.sample_id == int(sample_id))
        if where.size == 0:
            raise InputError(f"sample {sample_id}: expected the id of a sample in the ledger, got an unknown id")
        return where

    def event(self, event_id: int) -> dict[str, Any]:
        return dict(self._events[int(event_id)])

    # ------------------------------------------------------------------ changes
    def take(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Remove the samples at ``positions``; returns their ``(rows, labels)``."""
        pos = np.unique(np.asarray(positions, np.int64))
        if pos.size and (pos.min() < 0 or pos.max() >= len(self)):
            raise InputError(f"ledger: expected sample positions in [0, {len(self)}), got {pos.tolist()[:5]}")
        rows, labels = self.rows[pos].copy(), self.sample_label[pos].copy()
        self._keep(np.setdiff1d(np.arange(len(self)), pos))
        return rows, labels

    def relabel(self, old: int, new: int) -> None:
        """Samples and events of label ``old`` become ``new`` (a merge of indices)."""
        self.sample_label[self.sample_label == old] = new
        for e in self._events.values():
            if e["label"] == old:
                e["label"] = int(new)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, np.ndarray]:
        """Plain arrays under `PREFIX` (what the agent's state carries)."""
        offsets = np.zeros(len(self) + 1, np.int64)
        offsets[1:] = np.cumsum([len(t) for t in self.thumbs]) if self.thumbs else []
        meta = {"version": LEDGER_VERSION, "next_id": self.next_id, "next_sample": self.next_sample_id(),
                "thumbnail_size": self.thumbnail_size, "thumbnail_budget": self.thumbnail_budget,
                "row_budget": self.row_budget, "dropped_thumbnails": self.dropped_thumbnails,
                "sealed_samples": self.sealed_samples}
        events = [[eid, e["time"], e["label"], e["source"]] for eid, e in self._events.items()]
        return {
            PREFIX + "meta": _json_array(meta),
            PREFIX + "events": _json_array(events),
            PREFIX + "sample_id": self.sample_id.copy(),
            PREFIX + "sample_event": self.sample_event.copy(),
            PREFIX + "sample_label": self.sample_label.copy(),
            PREFIX + "rows": self.rows.copy(),
            PREFIX + "thumb_offsets": offsets,
            PREFIX + "thumb_data": np.frombuffer(b"".join(self.thumbs), np.uint8).copy(),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, np.ndarray], embedding_size: int, max_classes: int) -> Ledger:
        """Inverse of `state_dict` (keys with or without `PREFIX`); every field checked
        (`InputError`, expected vs got)."""
        s = {k[len(PREFIX):] if k.startswith(PREFIX) else k: v for k, v in state.items()}
        if set(s) != set(_KEYS):
            raise InputError(f"teach ledger state: expected keys {sorted(_KEYS)}, got {sorted(s)}")
        meta = _parse_json(s["meta"], "teach ledger meta")
        raw_events = _parse_json(s["events"], "teach ledger events")
        ints = ("version", "next_id", "next_sample", "thumbnail_size", "thumbnail_budget", "row_budget",
                "dropped_thumbnails", "sealed_samples")
        if (not isinstance(meta, dict) or any(not isinstance(meta.get(k), int) or isinstance(meta.get(k), bool)
                                              or meta[k] < 0 for k in ints)):
            raise InputError(f"teach ledger meta: expected non-negative ints {list(ints)}, got {str(meta)[:200]}")
        if meta["version"] != LEDGER_VERSION:
            raise InputError(f"teach ledger: expected version {LEDGER_VERSION}, got {meta['version']}")
        out = cls(embedding_size, meta["thumbnail_size"], thumbnail_budget=meta["thumbnail_budget"],
                  row_budget=meta["row_budget"])
        out.next_id, out.dropped_thumbnails = meta["next_id"], meta["dropped_thumbnails"]
        out.sealed_samples = meta["sealed_samples"]
        if not isinstance(raw_events, list):
            raise InputError(f"teach ledger events: expected a list, got {type(raw_events).__name__}")
        for item in raw_events:
            ok = (isinstance(item, list) and len(item) == 4 and isinstance(item[0], int)
                  and isinstance(item[1], (int, float)) and isinstance(item[2], int)
                  and isinstance(item[3], str) and 0 <= item[2] < max_classes and 0 < item[0] < out.next_id
                  and len(item[3]) <= MAX_SOURCE_CHARS and item[0] not in out._events)
            if not ok:
                raise InputError(f"teach ledger event: expected [id, time, label < {max_classes}, source] with "
                                 f"a unique id < {out.next_id}, got {str(item)[:120]}")
            out._events[item[0]] = {"time": float(item[1]), "label": item[2], "source": item[3]}
        sid, sev, slab = (np.asarray(s[k]) for k in ("sample_id", "sample_event", "sample_label"))
        rows, offsets, data = np.asarray(s["rows"]), np.asarray(s["thumb_offsets"]), np.asarray(s["thumb_data"])
        n = sid.shape[0] if sid.ndim == 1 else -1
        shapes_ok = (n >= 0 and all(a.dtype == np.int64 and a.shape == (n,) for a in (sid, sev, slab))
                     and rows.dtype == np.float32 and rows.shape == (n, embedding_size)
                     and offsets.dtype == np.int64 and offsets.shape == (n + 1,)
                     and data.dtype == np.uint8 and data.ndim == 1)
        if not shapes_ok:
            raise InputError(f"teach ledger: expected {n} int64 ids/events/labels, float32 rows (n, {embedding_size}), "
                             f"int64 offsets (n+1,) and uint8 thumbnail bytes, got {sid.shape}, {sev.shape}, "
                             f"{slab.shape}, {rows.dtype}{rows.shape}, {offsets.dtype}{offsets.shape}, {data.dtype}")
        if n and (len(np.unique(sid)) != n or sid.min() <= 0 or sid.max() >= meta["next_sample"]):
            raise InputError(f"teach ledger: expected unique sample ids in [1, {meta['next_sample']}), got others")
        if n and (slab.min() < 0 or slab.max() >= max_classes):
            raise InputError(f"teach ledger: expected sample labels in [0, {max_classes}), got others")
        if not set(sev.tolist()) <= set(out._events):
            raise InputError("teach ledger: expected every sample's event among the events, got an unknown event")
        if n and any(out._events[int(e)]["label"] != int(lab) for e, lab in zip(sev, slab)):
            raise InputError("teach ledger: expected each sample's label to be its event's, got another")
        if not np.isfinite(rows).all():
            raise InputError("teach ledger: expected finite rows, got NaN or inf")
        if offsets[0] != 0 or (np.diff(offsets) < 0).any() or offsets[-1] != data.shape[0]:
            raise InputError(f"teach ledger: expected thumbnail offsets rising from 0 to {data.shape[0]}, got others")
        out.sample_id, out.sample_event, out.sample_label = sid.copy(), sev.copy(), slab.copy()
        out.rows = rows.copy()
        blob = data.tobytes()
        out.thumbs = [blob[int(a):int(b)] for a, b in zip(offsets[:-1], offsets[1:])]
        out._next_sample = meta["next_sample"]
        return out

    def __repr__(self) -> str:
        return (f"Ledger(events={len(self._events)}, samples={len(self)}, "
                f"thumbnail_bytes={self.thumbnail_bytes}, dropped_thumbnails={self.dropped_thumbnails})")


def seal_lost(meta: np.ndarray, events: np.ndarray, alive: set[int], lost: int) -> tuple[np.ndarray, np.ndarray]:
    """The ledger's ``meta`` and ``events`` arrays once ``lost`` samples left it because their segment
    file was missing or damaged (`edge.knowledge.segments.join`): they stay learned and are counted
    as sealed, like samples over the row budget; events left with no sample (not in ``alive``) are
    dropped, as `Ledger` drops them when their samples go. `InputError` for a malformed meta/events."""
    parsed_meta = _parse_json(meta, "teach ledger meta")
    parsed_events = _parse_json(events, "teach ledger events")
    sealed = parsed_meta.get("sealed_samples") if isinstance(parsed_meta, dict) else None
    if not isinstance(sealed, int) or isinstance(sealed, bool) or not isinstance(parsed_events, list):
        raise InputError(f"teach ledger: expected a meta with sealed_samples and a list of events, got "
                         f"{str(parsed_meta)[:120]} and {type(parsed_events).__name__}")
    parsed_meta["sealed_samples"] = sealed + int(lost)
    kept = [e for e in parsed_events if isinstance(e, list) and e and isinstance(e[0], int) and e[0] in alive]
    return _json_array(parsed_meta), _json_array(kept)


def split_state(state: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``(rest, knowledge.* keys)`` of a state dict."""
    rest = {k: v for k, v in state.items() if not k.startswith(PREFIX)}
    mine = {k: v for k, v in state.items() if k.startswith(PREFIX)}
    return rest, mine
