"""Knowledge packs: what one device learned, in one verified file, merged into another state.

A pack is an ``.npz`` file (a zip of ``.npy`` arrays, never pickle) with a ``__pack__`` member:
UTF-8 JSON holding ``format`` (``"edge-knowledge-pack"``), ``version`` (`PACK_VERSION`), the
backbone ``fingerprint`` and ``embedding_size``, the ``classes`` (name, samples, and how many rows of
the class were learned before the ledger and so are NOT in the pack), ``members`` (the sha256 of
every array: name, dtype, shape, bytes) and ``header_sha256`` over the rest of the header. The
arrays are the teach ledger of the exported classes (`edge.knowledge.ledger` layout, labels
renumbered 0..k-1 in ``classes`` order): events, sample ids, labels, embedding rows, thumbnails.

Import merges the rows as new teaches (source ``import:<original source>``), so:

* statistics strategies (``slda``, ``ncm``): the merged state equals one device taught every row:
  identical class statistics and shared scatter up to float rounding, identical answers;
* gradient strategies: the rows are learned and offered to the replay buffer, whose own policy
  keeps at most its capacity.

A pack from another backbone is refused (`PackError`, expected vs got) unless every sample has a
thumbnail and ``re_embed`` is asked: then the thumbnails are embedded by this state's backbone.

Untrusted input: the file is read by the checkpoint's bounded reader (`edge.checkpoint.read_npz_bounded`:
at most `MAX_PACK_BYTES` of decoded arrays and 512 members, sizes checked against the zip directory and
the ``.npy`` headers before anything is allocated, so a zip bomb is refused; member names are only
dictionary keys and must be exactly the expected ones: no path is ever opened from a name), every
field is validated, and every failure is a `PackError` (an `edge.errors.InputError`). Import works
on a copy of the agent and of the names: a refused pack leaves the state untouched.

Example:
    >>> import numpy as np, tempfile, os
    >>> from edge.agent import Agent, AgentConfig
    >>> from edge.device.labels import LabelMap
    >>> a = Agent(None, AgentConfig(strategy="ncm", max_classes=4), embedding_size=3)
    >>> _ = a.enable_ledger()
    >>> names = LabelMap(4); i = names.index_for("cup", create=True)
    >>> _ = a.teach_embeddings(np.eye(3, dtype=np.float32), [i, i, i])
    >>> path = os.path.join(tempfile.mkdtemp(), "cup.pack")
    >>> _ = write_pack(path, a, names, fingerprint="f" * 64)
    >>> read_pack(path).class_names
    ['cup']
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from edge.atomic import atomic_write
from edge.checkpoint import header_sha256
from edge.errors import InputError

logger = logging.getLogger(__name__)

PACK_FORMAT = "edge-knowledge-pack"
PACK_VERSION = 1
HEADER = "__pack__"
MAX_PACK_BYTES = 512 << 20
MAX_HEADER_BYTES = 4 << 20
MAX_CLASSES_IN_PACK = 4096
ARRAYS = ("events", "sample_id", "sample_event", "sample_label", "rows", "thumb_offsets", "thumb_data", "meta")
CONFLICTS = ("merge", "rename", "refuse")


class PackError(InputError):
    """A pack that cannot be read or merged: every failure of `read_pack` / `import_packs`."""


@dataclass(frozen=True)
class Pack:
    """A verified pack: header fields and the ledger of its classes (`edge.knowledge.ledger.Ledger`)."""

    path: str
    fingerprint: str
    embedding_size: int
    class_names: list[str]
    ledger: Any   # edge.knowledge.ledger.Ledger, labels = positions in class_names
    header: dict[str, Any]


def _member_sha256(arr: np.ndarray) -> str:
    a = np.ascontiguousarray(arr)
    digest = hashlib.sha256(f"{a.dtype.str}|{a.shape}|".encode())
    digest.update(a.tobytes())
    return digest.hexdigest()


# ---------------------------------------------------------------------- export
def write_pack(path: str | os.PathLike[str], agent: Any, labels: Any, *, fingerprint: str,
               classes: Sequence[str] | None = None) -> dict[str, Any]:
    """Write the ledger of ``classes`` (names; default every named class with ledger samples) to
    ``path`` atomically; returns the header. `PackError` for an unknown class or no ledger."""
    from edge.knowledge.ledger import PREFIX, Ledger

    ledger: Ledger | None = agent.knowledge
    if ledger is None:
        raise PackError("export: expected a state with a teach ledger, got none (taught before the ledger)")
    if classes is None:
        present = sorted(set(ledger.sample_label.tolist()))
        names = [labels.name_of(i) for i in present if not labels.retired[i]]
    else:
        names = list(dict.fromkeys(classes))
    indices = []
    for name in names:
        index = labels.find(name)
        if index is None:
            raise PackError(f"export: class {name!r}: expected one of {labels.known()}, got an unknown name")
        indices.append(int(index))
    keep = np.flatnonzero(np.isin(ledger.sample_label, indices))
    sub = Ledger(ledger.embedding_size, ledger.thumbnail_size, thumbnail_budget=1 << 62, row_budget=1 << 62)
    remap = {old: new for new, old in enumerate(indices)}
    state = ledger.state_dict()
    sub_state = {k[len(PREFIX):]: v for k, v in state.items()}
    pos = keep
    offsets = sub_state["thumb_offsets"]
    thumbs = [bytes(sub_state["thumb_data"][offsets[i]:offsets[i + 1]]) for i in pos]
    events = [e for e in ledger.events() if e.label in remap]
    for e in events:
        sub._events[e.id] = {"time": e.time, "label": remap[e.label], "source": e.source}
    sub.next_id = ledger.next_id
    sub.sample_id = ledger.sample_id[pos].copy()
    sub.sample_event = ledger.sample_event[pos].copy()
    sub.sample_label = np.array([remap[int(v)] for v in ledger.sample_label[pos]], np.int64)
    sub.rows = ledger.rows[pos].copy()
    sub.thumbs = thumbs
    sub._next_sample = ledger.next_sample_id()
    arrays = {k[len(PREFIX):]: v for k, v in sub.state_dict().items()}
    class_info = []
    for name, index in zip(names, indices):
        in_pack = int((ledger.sample_label[pos] == index).sum())
        learned = int(agent.stats.count_[index])
        class_info.append({"name": name, "samples": in_pack, "not_in_ledger": max(0, learned - in_pack)})
        if learned > in_pack:
            logger.warning("export: class %r: %d of its %d learned rows predate the ledger and are not in the pack",
                           name, learned - in_pack, learned)
    header: dict[str, Any] = {
        "format": PACK_FORMAT, "version": PACK_VERSION, "fingerprint": str(fingerprint),
        "embedding_size": int(ledger.embedding_size), "created": time.time(), "classes": class_info,
        "members": {k: _member_sha256(v) for k, v in sorted(arrays.items())},
    }
    header["header_sha256"] = header_sha256(header)
    blob = np.frombuffer(json.dumps(header, sort_keys=True).encode("utf-8"), np.uint8)
    savez: Any = np.savez_compressed

    def write(handle: Any) -> None:
        savez(handle, **{HEADER: blob}, **arrays)

    atomic_write(path, write)
    return header


# ---------------------------------------------------------------------- reading
def read_pack(path: str | os.PathLike[str], max_bytes: int = MAX_PACK_BYTES) -> Pack:
    """Read and verify a pack; any problem is a `PackError` naming expected vs got."""
    from edge.checkpoint import parse_header_array, read_npz_bounded, verify_header_sha256
    from edge.errors import CheckpointError
    from edge.knowledge.ledger import Ledger

    where = str(path)
    try:
        arrays = read_npz_bounded(path, max_bytes)
    except CheckpointError as exc:
        raise PackError(f"{where}: expected a knowledge pack, got an unreadable file ({exc})") from exc
    if set(arrays) != {HEADER, *ARRAYS}:
        raise PackError(f"{where}: expected members {sorted([HEADER, *ARRAYS])}, got {sorted(arrays)[:12]}")
    try:
        header = parse_header_array(arrays.pop(HEADER), where, MAX_HEADER_BYTES)
        verify_header_sha256(header, where)
    except CheckpointError as exc:
        raise PackError(str(exc)) from exc
    if header.get("format") != PACK_FORMAT or header.get("version") != PACK_VERSION:
        raise PackError(f"{where}: expected format {PACK_FORMAT!r} version {PACK_VERSION}, got "
                        f"{str(header.get('format'))[:40]!r} version {str(header.get('version'))[:20]}")
    members = header.get("members")
    if not isinstance(members, dict) or set(members) != set(ARRAYS):
        raise PackError(f"{where}: expected member hashes for {sorted(ARRAYS)}, got {str(members)[:200]}")
    for key, arr in arrays.items():
        if members[key] != _member_sha256(arr):
            raise PackError(f"{where}: member {key!r} sha256 expected {str(members[key])[:80]}, got "
                            f"{_member_sha256(arr)} (the file was changed or corrupted)")
    fingerprint, size, classes = header.get("fingerprint"), header.get("embedding_size"), header.get("classes")
    if (not isinstance(fingerprint, str) or len(fingerprint) > 128 or not isinstance(size, int)
            or isinstance(size, bool) or not 0 < size <= 1 << 16 or not isinstance(classes, list)
            or not 0 < len(classes) <= MAX_CLASSES_IN_PACK):
        raise PackError(f"{where}: expected a fingerprint string, an embedding_size in [1, 65536] and 1-"
                        f"{MAX_CLASSES_IN_PACK} classes, got {str(fingerprint)[:80]!r}, {str(size)[:20]}, "
                        f"{type(classes).__name__}")
    from edge.device.labels import check_name

    names = []
    for item in classes:
        if not isinstance(item, dict) or "name" not in item:
            raise PackError(f"{where}: expected classes as {{name, samples}} objects, got {str(item)[:80]}")
        try:
            names.append(check_name(item["name"]))
        except InputError as exc:
            raise PackError(f"{where}: {exc}") from exc
    if len(set(names)) != len(names):
        raise PackError(f"{where}: expected unique class names, got a duplicate")
    try:
        ledger = Ledger.from_state(arrays, size, len(names))
    except InputError as exc:
        raise PackError(f"{where}: {exc}") from exc
    return Pack(where, fingerprint, size, names, ledger, header)


# ---------------------------------------------------------------------- import
def import_packs(agent: Any, labels: Any, packs: Iterable[Pack], *, fingerprint: str,
                 on_conflict: str = "merge", re_embed: bool = False) -> tuple[Any, Any, list[dict[str, Any]]]:
    """Merge packs into COPIES of ``agent`` and ``labels``; returns ``(agent, labels, report)``
    (the caller saves them). Nothing is changed on a `PackError`.

    ``on_conflict`` for a class name the state already has: ``merge`` (same class), ``rename``
    (``name-2``, ``name-3``, ...), ``refuse``.
    """
    from edge.device.labels import LabelMap

    if on_conflict not in CONFLICTS:
        raise PackError(f"--on-conflict: expected one of {CONFLICTS}, got {on_conflict!r}")
    clone = agent.copy()
    clone.enable_ledger()
    names = LabelMap.from_state(labels.state_dict(), labels.max_classes)
    report = []
    for pack in packs:
        if pack.fingerprint != fingerprint or pack.embedding_size != clone.embedding_size:
            if not re_embed:
                raise PackError(f"{pack.path}: backbone fingerprint expected {fingerprint}, got {pack.fingerprint} "
                                "(the pack was taught on another model; pass --re-embed to embed its thumbnails "
                                "with this one)")
            if any(len(t) == 0 for t in pack.ledger.thumbs):
                missing = sum(len(t) == 0 for t in pack.ledger.thumbs)
                raise PackError(f"{pack.path}: --re-embed: expected a thumbnail for every sample, got {missing} "
                                f"of {len(pack.ledger)} without one")
            if clone.backbone is None:
                raise PackError(f"{pack.path}: --re-embed: expected a state with a backbone, got embeddings only")
        mapping = {}
        for k, name in enumerate(pack.class_names):
            index = names.find(name)
            if index is not None and on_conflict == "refuse":
                raise PackError(f"{pack.path}: class {name!r}: expected a name this state does not have "
                                "(--on-conflict refuse), got an existing class")
            if index is not None and on_conflict == "rename":
                n = 2
                while names.find(f"{name}-{n}") is not None:
                    n += 1
                name = f"{name}-{n}"
                index = None
            if index is None:
                index = names.index_for(name, create=True, used=clone.classes_seen().tolist())
            mapping[k] = index
        added = 0
        for event in pack.ledger.events():
            pos = pack.ledger.samples_of_event(event.id)
            y = np.full(pos.size, mapping[event.label], np.int64)
            thumbs = [pack.ledger.thumbs[int(i)] for i in pos]
            if pack.fingerprint != fingerprint:
                from edge.knowledge.upgrade import embed_thumbnails

                rows = embed_thumbnails(clone, thumbs)
            else:
                rows = pack.ledger.rows[pos]
            clone.teach_embeddings(rows, y, source=f"import:{event.source}"[:64], thumbnails=thumbs)
            names.add_counts(int(y[0]), int(pos.size))
            added += int(pos.size)
        report.append({"pack": pack.path, "classes": {n: names.name_of(i) for n, i in
                                                       zip(pack.class_names, mapping.values())},
                       "samples": added})
    return clone, names, report


def pack_path_ok(path: str | os.PathLike[str]) -> Path:
    """The pack file as a Path (a regular file), else `PackError`."""
    p = Path(path)
    if not p.is_file():
        raise PackError(f"pack {str(p)[:200]!r}: expected a file, got none")
    return p
