"""The teach ledger on flash: immutable segment files, so a checkpoint writes only what is new.

A checkpoint (`edge.checkpoint.CheckpointStore`) of a state with a teach ledger does not hold the
ledger's bulky parts: each sample's embedding row, JPEG thumbnail, id and event live in *segment*
files beside it, ``<state>/ledger/seg-<sha256>.bin``, written once (atomically, fsynced) and never
changed. The checkpoint keeps what changes: the ledger's meta and events, the *runs* (which slots of
which segments are the ledger's samples, in ledger order; removed samples are simply not in a run)
and one bit per sample saying whether its thumbnail is still kept; its header names every segment
it uses with its sha256 and length. A checkpoint after a teach therefore writes one new segment
(the new samples) and a small checkpoint, instead of the whole ledger.

`split` turns the ledger's flat arrays (`edge.knowledge.ledger.Ledger.state_dict`) into that form,
reusing the slots of the previous checkpoint's segments (`LedgerIndex`) whose content is unchanged
(same id, event, row and thumbnail: checked by CRC-32, so reuse never trusts an id alone);
`join` is its inverse on load. Compaction: a segment whose dead bytes (removed samples, dropped
thumbnails) outweigh its live ones has its live samples rewritten into the new segment, and once
more than `MAX_SMALL_SEGMENTS` segments under `SMALL_SEGMENT_BYTES` exist they are merged, so the
folder holds a bounded number of files and at most about twice the live ledger's bytes.

Segment file (little-endian): ``EDGELSG1`` magic, a uint32 header length, a JSON header
(``format``, ``version``, ``samples`` m, ``embedding_size`` d, ``thumbnail_bytes`` t), zero padding
to 8 bytes, then ``sample_id`` int64[m], ``sample_event`` int64[m], ``thumb_length`` int64[m],
``rows`` float32[m, d], thumbnail bytes uint8[t]. Decoding checks every size against the file's
length before touching the data (the bytes are untrusted), never pickles.

Example:
    >>> import numpy as np
    >>> from edge.knowledge.ledger import Ledger
    >>> ledger = Ledger(embedding_size=2)
    >>> _ = ledger.record(np.ones((3, 2), np.float32), np.array([0, 0, 1]), thumbnails=[b"a", b"", b"cd"], when=0.0)
    >>> flat = {k[len("knowledge."):]: v for k, v in ledger.state_dict().items()}
    >>> first = split(flat, None, lambda ref: False)
    >>> len(first.blobs), sorted(first.inline)
    (1, ['events', 'meta', 'segment_runs', 'thumb_kept'])
    >>> back, _ = join(first.inline, list(first.blobs.values()), first.refs, first.summary)
    >>> all(np.array_equal(back[k], flat[k]) for k in flat)
    True
    >>> _ = ledger.record(np.zeros((1, 2), np.float32), np.array([1]), when=1.0)
    >>> flat = {k[len("knowledge."):]: v for k, v in ledger.state_dict().items()}
    >>> second = split(flat, first.index, lambda ref: True)   # the first segment is on disk
    >>> [ref["samples"] for ref in second.refs], len(second.blobs)   # only the new sample is written
    ([3, 1], 1)
"""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Collection, Mapping, Sequence

import numpy as np

from edge.errors import InputError

__all__ = ["FLAT_KEYS", "INLINE_KEYS", "LedgerIndex", "Split", "check_segment", "decode_segment", "encode_segment",
           "join", "samples_per_segment", "segment_name", "split", "SEGMENT_DIR"]

#: Folder of the segment files inside the state folder.
SEGMENT_DIR = "ledger"
MAGIC = b"EDGELSG1"
SEGMENT_FORMAT = "edge-ledger-segment"
SEGMENT_VERSION = 1
MAX_SEGMENT_HEADER = 4096
MAX_EMBEDDING = 1 << 16
#: A segment under this many bytes is "small"; more than `MAX_SMALL_SEGMENTS` of them are merged.
SMALL_SEGMENT_BYTES = 1 << 20
MAX_SMALL_SEGMENTS = 32
#: Keys (without ``knowledge.``) of the ledger's flat layout, and of its checkpoint layout.
FLAT_KEYS = ("meta", "events", "sample_id", "sample_event", "sample_label", "rows", "thumb_offsets", "thumb_data")
INLINE_KEYS = ("meta", "events", "segment_runs", "thumb_kept")
_PER_SLOT = 24  # id, event, thumbnail length: int64 each
_I8 = np.dtype("<i8")
_F4 = np.dtype("<f4")


def segment_name(sha256: str) -> str:
    return f"seg-{sha256}.bin"


@dataclass(frozen=True)
class Segment:
    """A decoded segment: views into its bytes (``offsets``: m + 1 thumbnail offsets)."""

    sample_id: np.ndarray
    sample_event: np.ndarray
    thumb_length: np.ndarray
    rows: np.ndarray
    offsets: np.ndarray
    thumb_data: memoryview

    @property
    def samples(self) -> int:
        return int(self.sample_id.shape[0])


def _header_bytes(samples: int, embedding_size: int, thumbnail_bytes: int) -> bytes:
    return json.dumps({"format": SEGMENT_FORMAT, "version": SEGMENT_VERSION, "samples": samples,
                       "embedding_size": embedding_size, "thumbnail_bytes": thumbnail_bytes},
                      sort_keys=True, separators=(",", ":")).encode("utf-8")


def _pad8(n: int) -> int:
    return (n + 7) // 8 * 8


def encode_segment(sample_id: np.ndarray, sample_event: np.ndarray, rows: np.ndarray,
                   thumbs: Sequence[bytes | memoryview]) -> bytes:
    """The bytes of one segment file (see the module docstring)."""
    m, d = rows.shape
    lengths = np.array([len(t) for t in thumbs], _I8)
    header = _header_bytes(m, d, int(lengths.sum()))
    lead = MAGIC + struct.pack("<I", len(header)) + header
    parts: list[bytes | memoryview] = [lead, b"\0" * (_pad8(len(lead)) - len(lead)),
                                       np.ascontiguousarray(sample_id, _I8).tobytes(),
                                       np.ascontiguousarray(sample_event, _I8).tobytes(), lengths.tobytes(),
                                       np.ascontiguousarray(rows, _F4).tobytes(), *thumbs]
    return b"".join(parts)


def decode_segment(data: bytes | memoryview, where: str = "segment") -> Segment:
    """Views into a segment's bytes; every size is checked first. `InputError` (expected vs got)."""
    view = memoryview(data).cast("B")
    size = len(view)
    if size < len(MAGIC) + 4 or bytes(view[:len(MAGIC)]) != MAGIC:
        raise InputError(f"{where}: expected a ledger segment starting with {MAGIC!r}, got {bytes(view[:8])!r}")
    (hlen,) = struct.unpack("<I", view[len(MAGIC):len(MAGIC) + 4])
    start = len(MAGIC) + 4
    if hlen > MAX_SEGMENT_HEADER or start + hlen > size:
        raise InputError(f"{where}: expected a segment header of at most {MAX_SEGMENT_HEADER} bytes inside the "
                         f"{size}-byte file, got {hlen}")
    try:
        header = json.loads(bytes(view[start:start + hlen]).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InputError(f"{where}: expected a JSON segment header, got {type(exc).__name__}: {exc}") from exc
    ints = ("samples", "embedding_size", "thumbnail_bytes")
    if (not isinstance(header, dict) or header.get("format") != SEGMENT_FORMAT
            or header.get("version") != SEGMENT_VERSION
            or set(header) != {"format", "version", *ints}
            or any(not isinstance(header[k], int) or isinstance(header[k], bool) or header[k] < 0 for k in ints)
            or not 1 <= header["embedding_size"] <= MAX_EMBEDDING):
        raise InputError(f"{where}: expected a {SEGMENT_FORMAT} v{SEGMENT_VERSION} header with non-negative "
                         f"{list(ints)} (embedding_size in [1, {MAX_EMBEDDING}]), got {str(header)[:200]}")
    m, d, t = header["samples"], header["embedding_size"], header["thumbnail_bytes"]
    body = _pad8(start + hlen)
    expected = body + 3 * 8 * m + 4 * m * d + t
    if expected != size:
        raise InputError(f"{where}: expected {expected} bytes for {m} samples of {d} floats and {t} thumbnail "
                         f"bytes, got {size}")
    if bytes(view[start + hlen:body]).strip(b"\0"):
        raise InputError(f"{where}: expected zero padding after the header, got other bytes")
    at = body
    arrays = []
    for count, dtype in ((m, _I8), (m, _I8), (m, _I8), (m * d, _F4)):
        arrays.append(np.frombuffer(view, dtype, count, at))
        at += count * dtype.itemsize
    ids, events, lengths, flat_rows = arrays
    offsets = np.zeros(m + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if m and (lengths.min() < 0 or offsets[-1] != t):
        raise InputError(f"{where}: expected non-negative thumbnail lengths summing to {t}, got others")
    if m and (ids.min() <= 0 or events.min() <= 0):
        raise InputError(f"{where}: expected positive sample and event ids, got others")
    return Segment(ids, events, lengths, flat_rows.reshape(m, d), offsets, view[at:at + t])


def _row_crc(rows: np.ndarray) -> np.ndarray:
    """CRC-32 of each row's bytes."""
    n = rows.shape[0]
    raw = memoryview(np.ascontiguousarray(rows, _F4).tobytes())
    step = raw.nbytes // n if n else 0
    return np.fromiter((zlib.crc32(raw[i * step:(i + 1) * step]) for i in range(n)), np.uint32, n)


def _thumb_crc(thumbs: Sequence[bytes | memoryview]) -> np.ndarray:
    return np.fromiter((zlib.crc32(t) for t in thumbs), np.uint32, len(thumbs))


@dataclass
class LedgerIndex:
    """Where the live samples of the last checkpoint are (per sample: ``seg`` into ``refs``, ``slot``)
    and the CRC-32 of their content, for `split` to reuse segments. ``slot_thumb`` is the thumbnail
    length in the segment (also when the ledger has dropped it)."""

    refs: list[dict[str, Any]]
    sample_id: np.ndarray
    sample_event: np.ndarray
    seg: np.ndarray
    slot: np.ndarray
    row_crc: np.ndarray
    thumb_crc: np.ndarray
    slot_thumb: np.ndarray

    def __post_init__(self) -> None:
        self._order = np.argsort(self.sample_id, kind="stable")


@dataclass(frozen=True)
class Split:
    """What a checkpoint holds of a ledger: ``inline`` arrays (keys without ``knowledge.``), new segment
    ``blobs`` (file name -> bytes), ``refs`` (every segment it uses, in the order ``segment_runs``
    numbers them), a ``summary`` for its header and the `LedgerIndex` once it is written."""

    inline: dict[str, np.ndarray]
    blobs: dict[str, bytes]
    refs: list[dict[str, Any]]
    summary: dict[str, int]
    index: LedgerIndex


def _event_labels(events: np.ndarray) -> dict[int, int] | None:
    from edge.knowledge.ledger import _parse_json

    try:
        items = _parse_json(events, "teach ledger events")
    except InputError:
        return None
    if not isinstance(items, list) or not all(isinstance(i, list) and len(i) == 4 for i in items):
        return None
    labels = {}
    for item in items:
        if not isinstance(item[0], int) or not isinstance(item[2], int):
            return None
        labels[item[0]] = item[2]
    return labels


def _labels_of(sample_event: np.ndarray, labels: Mapping[int, int]) -> np.ndarray | None:
    try:
        return np.array([labels[int(e)] for e in sample_event], np.int64).reshape(-1)
    except KeyError:
        return None


def split(flat: Mapping[str, np.ndarray], index: LedgerIndex | None,
          present: Callable[[dict[str, Any]], bool]) -> Split | None:
    """The checkpoint form of a ledger's flat arrays (`FLAT_KEYS`), reusing ``index``'s segments
    for which ``present(ref)`` (the file is there, of its length); None when the arrays are not a
    consistent ledger (the caller then stores them as they are)."""
    if set(flat) != set(FLAT_KEYS):
        return None
    ids, events, label = (np.asarray(flat[k]) for k in ("sample_id", "sample_event", "sample_label"))
    rows, offsets, data = np.asarray(flat["rows"]), np.asarray(flat["thumb_offsets"]), np.asarray(flat["thumb_data"])
    n = ids.shape[0] if ids.ndim == 1 else -1
    if (n < 0 or any(a.dtype != np.int64 or a.shape != (n,) for a in (ids, events, label))
            or rows.dtype != np.float32 or rows.ndim != 2 or rows.shape[0] != n or not 1 <= rows.shape[1] <= MAX_EMBEDDING
            or offsets.dtype != np.int64 or offsets.shape != (n + 1,) or data.dtype != np.uint8 or data.ndim != 1
            or offsets[0] != 0 or offsets[-1] != data.shape[0] or (np.diff(offsets) < 0).any()
            or (n and (ids.min() <= 0 or events.min() <= 0 or len(np.unique(ids)) != n))):
        return None
    labels = _event_labels(flat["events"])
    derived = None if labels is None else _labels_of(events, labels)
    if derived is None or not np.array_equal(derived, label):
        return None   # labels that do not follow the events: kept inline, as they are
    d = int(rows.shape[1])
    blob = memoryview(data.tobytes())
    thumbs = [blob[int(a):int(b)] for a, b in zip(offsets[:-1], offsets[1:])]
    lengths = np.diff(offsets)
    row_crc, thumb_crc = _row_crc(rows), _thumb_crc(thumbs)

    seg = np.full(n, -1, np.int64)
    slot = np.full(n, -1, np.int64)
    slot_thumb = lengths.copy()
    kept_thumb_crc = thumb_crc.copy()
    old_refs = index.refs if index is not None else []
    if index is not None and n and index.sample_id.size:
        usable = np.array([ref.get("embedding_size") == d and present(ref) for ref in old_refs], bool)
        sorted_ids = index.sample_id[index._order]
        at = np.clip(np.searchsorted(sorted_ids, ids), 0, sorted_ids.size - 1)
        j = index._order[at]
        match = (sorted_ids[at] == ids) & usable[index.seg[j]] & (index.sample_event[j] == events)
        match &= index.row_crc[j] == row_crc
        match &= (lengths == 0) | ((index.slot_thumb[j] == lengths) & (index.thumb_crc[j] == thumb_crc))
        seg[match], slot[match] = index.seg[j[match]], index.slot[j[match]]
        slot_thumb[match] = index.slot_thumb[j[match]]
        kept_thumb_crc[match] = index.thumb_crc[j[match]]
        # Compaction: a segment mostly dead, or too many small ones, is rewritten into the new segment.
        reused = seg >= 0
        live = np.bincount(seg[reused], weights=(_PER_SLOT + 4 * d + lengths[reused]), minlength=len(old_refs))
        content = np.array([(_PER_SLOT + 4 * d) * int(ref["samples"]) + int(ref["thumbnail_bytes"])
                            for ref in old_refs], np.float64)   # its slots' bytes, header left out
        size = np.array([int(ref["bytes"]) for ref in old_refs], np.float64)
        rewrite = (content - live) > live
        small = (size < SMALL_SEGMENT_BYTES) & (live > 0) & ~rewrite
        if int(small.sum()) + int(bool((~reused).any() or rewrite[seg[reused]].any())) > MAX_SMALL_SEGMENTS:
            rewrite |= small
        back = reused & rewrite[np.maximum(seg, 0)]
        seg[back], slot[back] = -1, -1
        slot_thumb[back], kept_thumb_crc[back] = lengths[back], thumb_crc[back]

    new = seg < 0
    blobs: dict[str, bytes] = {}
    refs: list[dict[str, Any]] = []
    remap: dict[int, int] = {}
    new_seg: dict[str, Any] = {}
    if new.any():
        where = np.flatnonzero(new)
        payload = encode_segment(ids[where], events[where], rows[where], [thumbs[int(i)] for i in where])
        sha = hashlib.sha256(payload).hexdigest()
        name = segment_name(sha)
        blobs[name] = payload
        new_seg = {"name": name, "sha256": sha, "bytes": len(payload), "samples": int(where.size),
                   "embedding_size": d, "thumbnail_bytes": int(lengths[where].sum())}
        slot[where] = np.arange(where.size)
    for i in range(n):   # number the segments in order of first use (runs stay short)
        key = int(seg[i])
        if key not in remap:
            remap[key] = len(refs)
            refs.append(new_seg if key < 0 else dict(old_refs[key]))
    if n:
        final = np.array([remap[int(s)] for s in seg], np.int64) if len(remap) > 1 else np.zeros(n, np.int64)
    else:
        final = np.zeros(0, np.int64)
    breaks = np.flatnonzero((np.diff(final) != 0) | (np.diff(slot) != 1)) + 1 if n else np.zeros(0, np.int64)
    starts = np.concatenate([[0], breaks]).astype(np.int64) if n else np.zeros(0, np.int64)
    counts = np.diff(np.concatenate([starts, [n]])).astype(np.int64)
    runs = np.stack([final[starts], slot[starts], counts], axis=1) if n else np.zeros((0, 3), np.int64)
    kept = lengths > 0
    inline = {"meta": np.asarray(flat["meta"]), "events": np.asarray(flat["events"]),
              "segment_runs": runs.astype(np.int64), "thumb_kept": np.packbits(kept)}
    summary = {"samples": n, "embedding_size": d, "thumbnails": int(kept.sum()), "thumbnail_bytes": int(lengths.sum())}
    out_index = LedgerIndex([dict(r) for r in refs], ids.copy(), events.copy(), final, slot.copy(), row_crc,
                            kept_thumb_crc, slot_thumb)
    return Split(inline, blobs, refs, summary, out_index)


def check_segment(blob: bytes | memoryview, ref: Mapping[str, Any], embedding_size: int) -> Segment:
    """A segment's bytes decoded and checked against its reference (samples, embedding size,
    thumbnail bytes); `InputError` naming expected vs got."""
    s = decode_segment(blob, str(ref.get("name", "segment")))
    if (s.rows.shape[1] != embedding_size or s.samples != ref.get("samples")
            or ref.get("embedding_size") != embedding_size or int(s.offsets[-1]) != ref.get("thumbnail_bytes")):
        raise InputError(f"{ref.get('name')}: expected {ref.get('samples')} samples of {embedding_size} floats and "
                         f"{ref.get('thumbnail_bytes')} thumbnail bytes, got {s.samples} of {s.rows.shape[1]} "
                         f"and {int(s.offsets[-1])}")
    return s


def _empty_segment(ref: Mapping[str, Any], embedding_size: int) -> Segment:
    """A stand-in for a lost segment: its slots (``ref["samples"]``, from the verified header), no data."""
    got: list[Any] = [ref.get(k) for k in ("samples", "thumbnail_bytes", "bytes")]
    if (any(not isinstance(v, int) or isinstance(v, bool) or v < 0 for v in got)
            or (_PER_SLOT + 4 * embedding_size) * int(got[0]) + int(got[1]) > int(got[2])
            or ref.get("embedding_size") != embedding_size):
        raise InputError(f"{ref.get('name')}: expected a reference whose samples ({got[0]!r}) of {embedding_size} "
                         f"floats and thumbnail bytes ({got[1]!r}) fit its {got[2]!r} bytes, got others")
    m = int(got[0])
    zeros = np.broadcast_to(np.zeros(1, np.int64), (m,))   # views: nothing allocated per slot
    return Segment(zeros, zeros, zeros, np.broadcast_to(np.zeros((1, embedding_size), np.float32), (m, embedding_size)),
                   np.broadcast_to(np.zeros(1, np.int64), (m + 1,)), memoryview(b""))


def samples_per_segment(inline: Mapping[str, np.ndarray], count: int) -> np.ndarray:
    """How many of the ledger's samples each of ``count`` segments holds (from ``segment_runs``)."""
    runs = np.asarray(inline["segment_runs"]).reshape(-1, 3)
    return np.bincount(runs[:, 0], weights=runs[:, 2], minlength=count).astype(np.int64)[:count]


def join(inline: Mapping[str, np.ndarray], blobs: Sequence[bytes | memoryview], refs: Sequence[Mapping[str, Any]],
         summary: Mapping[str, Any], lost: Collection[int] = ()) -> tuple[dict[str, np.ndarray], LedgerIndex]:
    """The ledger's flat arrays (`FLAT_KEYS`) from a checkpoint's inline arrays and its segments'
    verified bytes (in ``refs`` order); `InputError` naming expected vs got for anything inconsistent.

    ``lost``: positions in ``refs`` of segments that are missing or damaged (their ``blobs`` entries
    are ignored). Their samples leave the ledger: they stay learned but are counted as sealed
    (`edge.knowledge.ledger.seal_lost`), and events left without samples are dropped. The returned
    index never points into a lost segment, so the next checkpoint does not name it.
    """
    if set(inline) != set(INLINE_KEYS):
        raise InputError(f"teach ledger: expected checkpoint arrays {sorted(INLINE_KEYS)}, got {sorted(inline)}")
    n, d = summary.get("samples"), summary.get("embedding_size")
    if (not isinstance(n, int) or isinstance(n, bool) or n < 0 or not isinstance(d, int) or isinstance(d, bool)
            or not 1 <= d <= MAX_EMBEDDING):
        raise InputError(f"teach ledger: expected a sample count and an embedding size in [1, {MAX_EMBEDDING}] "
                         f"in the header, got {str(dict(summary))[:200]}")
    gone = {int(i) for i in lost}
    segments = [_empty_segment(r, d) if i in gone else check_segment(b, r, d)
                for i, (b, r) in enumerate(zip(blobs, refs, strict=True))]
    runs, kept_bits = np.asarray(inline["segment_runs"]), np.asarray(inline["thumb_kept"])
    if runs.dtype != np.int64 or runs.ndim != 2 or runs.shape[1] != 3:
        raise InputError(f"teach ledger: expected int64 segment runs (k, 3), got {runs.dtype}{runs.shape}")
    if runs.size and (runs[:, 0].min() < 0 or runs[:, 0].max() >= len(segments) or runs[:, 1].min() < 0
                      or runs[:, 2].min() < 1):
        raise InputError("teach ledger: expected runs of known segments with slots >= 0 and counts >= 1, got others")
    sizes = np.array([s.samples for s in segments], np.int64)
    if runs.size and ((runs[:, 1:] > sizes.max()).any() or ((runs[:, 1] + runs[:, 2]) > sizes[runs[:, 0]]).any()):
        raise InputError("teach ledger: expected every run inside its segment, got one past its end")
    used = np.bincount(runs[:, 0], weights=runs[:, 2], minlength=len(segments)) if runs.size else np.zeros(0)
    if (runs.size and (used > sizes).any()) or int(runs[:, 2].sum()) != n:
        raise InputError(f"teach ledger: expected {n} samples in runs within their segments, got others")
    if kept_bits.dtype != np.uint8 or kept_bits.shape != ((n + 7) // 8,):
        raise InputError(f"teach ledger: expected {(n + 7) // 8} bytes of thumbnail bits, got "
                         f"{kept_bits.dtype}{kept_bits.shape}")
    bits = np.unpackbits(kept_bits)
    if bits[n:].any():
        raise InputError("teach ledger: expected zero padding bits after the thumbnail bits, got others")
    kept = bits[:n].astype(bool)
    seg = np.repeat(runs[:, 0], runs[:, 2]) if n else np.zeros(0, np.int64)
    slot = (np.concatenate([np.arange(a, a + c) for _, a, c in runs]) if n else np.zeros(0, np.int64)).astype(np.int64)
    if n and np.unique(seg * (int(sizes.max()) + 1) + slot).size != n:
        raise InputError("teach ledger: expected each segment slot used once, got one used twice")
    part = [(segments[int(s)], int(a), int(c)) for s, a, c in runs]
    ids = np.concatenate([g.sample_id[a:a + c] for g, a, c in part]).astype(np.int64) if n else np.zeros(0, np.int64)
    events = (np.concatenate([g.sample_event[a:a + c] for g, a, c in part]).astype(np.int64) if n
              else np.zeros(0, np.int64))
    rows = (np.concatenate([g.rows[a:a + c] for g, a, c in part]).astype(np.float32, copy=False) if n
            else np.zeros((0, d), np.float32))
    slot_thumbs = [g.thumb_data[int(g.offsets[i]):int(g.offsets[i + 1])] for g, a, c in part for i in range(a, a + c)]
    thumbs = [t if k else b"" for t, k in zip(slot_thumbs, kept)]
    lengths = np.array([len(t) for t in thumbs], np.int64)
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    alive = ~np.isin(seg, np.array(sorted(gone), np.int64)) if gone else np.ones(n, bool)
    if summary.get("thumbnails") != int(kept.sum()) or (not gone and summary.get("thumbnail_bytes") != int(offsets[-1])):
        raise InputError(f"teach ledger: expected {summary.get('thumbnails')} thumbnails of "
                         f"{summary.get('thumbnail_bytes')} bytes, got {int(kept.sum())} of {int(offsets[-1])}")
    if (kept & alive & (np.array([len(t) for t in slot_thumbs], np.int64) == 0)).any():
        raise InputError("teach ledger: expected a kept thumbnail to have bytes, got an empty one")
    meta, event_json = np.asarray(inline["meta"]), np.asarray(inline["events"])
    if gone:   # the lost segments' samples leave the ledger (still learned: sealed)
        from edge.knowledge.ledger import seal_lost

        keep = np.flatnonzero(alive)
        ids, events, rows, seg, slot = ids[keep], events[keep], rows[keep], seg[keep], slot[keep]
        slot_thumbs = [slot_thumbs[int(i)] for i in keep]
        thumbs = [thumbs[int(i)] for i in keep]
        offsets = np.zeros(keep.size + 1, np.int64)
        np.cumsum(np.array([len(t) for t in thumbs], np.int64), out=offsets[1:])
        meta, event_json = seal_lost(meta, event_json, set(events.tolist()), n - int(keep.size))
    labels = _event_labels(event_json)
    label = None if labels is None else _labels_of(events, labels)
    if label is None:
        raise InputError("teach ledger: expected every sample's event among the events, got an unknown event")
    flat = {"meta": meta, "events": event_json, "sample_id": ids,
            "sample_event": events, "sample_label": label, "rows": rows, "thumb_offsets": offsets,
            "thumb_data": np.frombuffer(b"".join(thumbs), np.uint8).copy()}
    row_crc, slot_crc = _row_crc(rows), _thumb_crc(slot_thumbs)
    slot_len = np.array([len(t) for t in slot_thumbs], np.int64)
    index = LedgerIndex([dict(r) for r in refs], ids.copy(), events.copy(), seg.astype(np.int64), slot, row_crc,
                        slot_crc, slot_len)
    return flat, index
