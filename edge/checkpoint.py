"""Atomic, verified checkpoints of the agent's state: ``.npz`` arrays, never pickle.

One checkpoint is one file ``state-<step>.npz`` holding the state arrays and a ``__header__``
entry (UTF-8 JSON as uint8): schema version, backbone fingerprint, config, step, the sha256 of the
array payload and (schema 2) the sha256 of the header itself, so the config and step are covered
too. Writing is atomic: a temp file in the same directory, flush + fsync, ``os.replace``, fsync of
the directory. The ``keep`` newest checkpoints are kept, so a torn or corrupt newest file falls back
to the previous one.

The teach ledger (``knowledge.*`` arrays, `edge.knowledge.ledger`) is stored apart (schema 3): its
rows, thumbnails and sample ids live in immutable segment files ``ledger/seg-<sha256>.bin``
(`edge.knowledge.segments`) written before the checkpoint that names them (name, sha256, length in
its header), so a checkpoint after a teach writes one new segment, not the whole ledger. A checkpoint
is valid only if every segment it names is there and verifies; a segment is removed only once no
checkpoint in the folder names it, so the fallback to the previous checkpoint keeps working. When no
kept checkpoint is intact because a segment is missing or damaged, the newest is loaded without that
segment's samples (the learned state is all in the verified checkpoint file; the samples leave the
ledger as sealed) and says so (a warning, `Checkpoint.notes`); the next save names only intact
segments. Loading joins the segments back: `Checkpoint.state` holds the ledger's usual arrays.

Reading is bounded: members are read with sizes checked against the zip directory and the ``.npy``
header's shape *before* anything is allocated (``max_bytes`` in all), so a crafted file cannot make
the device allocate gigabytes; every decoding failure is a `CheckpointError`, never another
exception. Checkpoints are ordered by the step recorded inside them (verified), never by the file
name alone.

Before writing, space is reclaimed: temp files of dead writers and checkpoints beyond ``keep``; on
a full disk every checkpoint but the newest good one is removed and the write is retried once, so
there is always at least one good checkpoint.

Example:
    >>> import tempfile, numpy as np
    >>> store = CheckpointStore(tempfile.mkdtemp(), fingerprint="ab" * 32)
    >>> store.latest() is None                  # first boot
    True
    >>> _ = store.save({"w": np.arange(3.0)}, config={"lr": 0.1}, step=1)
    >>> ckpt = store.latest()
    >>> ckpt.step, ckpt.state["w"].tolist(), ckpt.config
    (1, [0.0, 1.0, 2.0], {'lr': 0.1})
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import stat
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import numpy as np

from edge.atomic import TMP_SUFFIX, atomic_write, make_dirs
from edge.errors import CheckpointError, IncompatibleCheckpointError
from edge.knowledge import segments as ledger_segments
from edge.manifest import parse_json_bounded

logger = logging.getLogger(__name__)
T = TypeVar("T")

CHECKPOINT_SCHEMA_VERSION = 2
#: Written when the ledger lives in segment files (older code refuses it clearly, never half-reads it).
SEGMENTED_SCHEMA_VERSION = 3
#: Versions this code reads: 1 (no header hash; read for migration, rewritten as 2 at the next save).
READABLE_SCHEMA_VERSIONS = (1, 2, 3)
LEDGER_PREFIX = "knowledge."
#: At most this many segment files per checkpoint (a crafted header cannot make the loader open more).
MAX_SEGMENTS = 4096
_SEGMENT_NAME = re.compile(r"^seg-([0-9a-f]{64})\.bin$")
_SEGMENT_TMP_PREFIX = ".seg-"
_REF_INTS = ("bytes", "samples", "embedding_size", "thumbnail_bytes")
HEADER_KEY = "__header__"
KEEP = 2
_NAME = re.compile(r"^state-(\d{12})\.npz$")
_TMP_PREFIX = ".state-"
#: Without the folder's lock, a temp file older (or dated later) than this is a dead writer's.
STALE_TMP_S = 60.0
#: Default cap on the decoded bytes of one checkpoint (all arrays together).
MAX_CHECKPOINT_BYTES = 1 << 30
MAX_HEADER_BYTES = 1 << 20
MAX_MEMBERS = 512
_MAX_STEP = 2**62
_NUMERIC_KINDS = "biufc"
_NO_SPACE = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}

@dataclass(frozen=True)
class Checkpoint:
    """A loaded, verified checkpoint."""

    path: Path
    step: int
    config: dict[str, Any]
    state: dict[str, np.ndarray]
    header: dict[str, Any]
    #: Warnings about what was loaded (a missing or damaged ledger segment: its samples left the ledger).
    notes: tuple[str, ...] = ()


class _SegmentDamaged(CheckpointError):
    """A ledger segment named by a verified checkpoint is missing or fails its sha256 or decoding."""


def payload_sha256(state: dict[str, np.ndarray]) -> str:
    """sha256 over the arrays in key order: name, dtype, shape and bytes of each."""
    digest = hashlib.sha256()
    for key in sorted(state):
        arr = np.ascontiguousarray(state[key])
        digest.update(f"{key}|{arr.dtype.str}|{arr.shape}|".encode())
        digest.update(arr.tobytes())
    return digest.hexdigest()


def parse_header_array(raw: np.ndarray, where: str, max_bytes: int = MAX_HEADER_BYTES) -> dict[str, Any]:
    """A uint8 array of JSON (an npz member: checkpoints, knowledge packs) -> the header object, at most
    ``max_bytes``; `CheckpointError` naming expected vs got otherwise."""
    if raw.dtype != np.uint8 or raw.ndim != 1 or raw.size > max_bytes:
        raise CheckpointError(f"{where}: expected a uint8 JSON header of at most {max_bytes} "
                              f"bytes, got dtype {raw.dtype} shape {raw.shape}")
    try:
        header = parse_json_bounded(raw.tobytes(), what=f"{where} header", max_bytes=max_bytes)
    except ValueError as exc:
        raise CheckpointError(str(exc)) from exc
    if not isinstance(header, dict):
        raise CheckpointError(f"{where}: expected a JSON object header, got {type(header).__name__}")
    return header


def verify_header_sha256(header: dict[str, Any], where: str) -> None:
    """`CheckpointError` unless the header's ``header_sha256`` is the sha256 of the rest of it."""
    try:
        got = header_sha256(header)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{where}: header: expected plain JSON, got {exc}") from exc
    if got != header.get("header_sha256"):
        raise CheckpointError(f"{where}: header sha256 expected {str(header.get('header_sha256'))[:80]}, "
                              f"got {got} (the file was changed or corrupted)")


def header_sha256(header: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of a header without its own ``header_sha256`` field."""
    body = {k: v for k, v in header.items() if k != "header_sha256"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def read_npy_header(member: Any) -> tuple[tuple[int, ...], bool, np.dtype] | None:
    """``(shape, fortran_order, dtype)`` from the header of an ``.npy`` stream, read without
    allocating the array; None for a format version NumPy does not define (1.0, 2.0, 3.0).

    NumPy's own parsers raise ValueError (bad magic) or SyntaxError/tokenize errors (a corrupt
    header dict): callers turn those into their own error.
    """
    version = np.lib.format.read_magic(member)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(member)
    if version in ((2, 0), (3, 0)):
        return np.lib.format.read_array_header_2_0(member)
    return None


def _refuse(path: Path, what: str) -> CheckpointError:
    return CheckpointError(f"{path}: expected a complete checkpoint (.npz), got {what}; truncated or corrupt")


def _writer(data: bytes) -> Callable[[Any], None]:
    def write(handle: Any) -> None:
        handle.write(data)
    return write


def _open_regular(path: Path) -> Any:
    """Open a regular file for reading without blocking on a FIFO or device."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _refuse(path, "not a regular file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, budget: int, path: Path) -> np.ndarray:
    """One ``.npy`` member, with every size checked before the array is allocated."""
    if info.flag_bits & 0x1:
        raise _refuse(path, f"an encrypted member {info.filename!r}")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise _refuse(path, f"member {info.filename!r} with compression method {info.compress_type} "
                            "(expected stored or deflated)")
    if info.file_size > budget:
        raise _refuse(path, f"member {info.filename!r} of {info.file_size} bytes (over the "
                            f"{budget}-byte budget left)")
    with zf.open(info) as opened:
        member: Any = opened
        header = read_npy_header(member)
        if header is None:
            raise _refuse(path, f"member {info.filename!r} of an unknown npy format version")
        shape, fortran, dtype = header
        if dtype.hasobject or dtype.kind not in _NUMERIC_KINDS or dtype.fields is not None:
            raise _refuse(path, f"member {info.filename!r} of dtype {dtype} (expected a plain numeric dtype)")
        count = 1
        for dim in shape:
            if not _is_int(dim) or dim < 0:
                raise _refuse(path, f"member {info.filename!r} with shape {shape}")
            count *= dim
        nbytes = count * dtype.itemsize
        offset = member.tell()
        if offset + nbytes != info.file_size:
            raise _refuse(path, f"member {info.filename!r} whose header claims {nbytes} data bytes "
                                f"in a {info.file_size}-byte member")
        data = bytearray(nbytes)
        got = member.readinto(data) if nbytes else 0
        if got != nbytes or member.read(1):  # reading to the end also checks the CRC-32
            raise _refuse(path, f"member {info.filename!r} with {got} of {nbytes} bytes")
    return np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")


def read_npz_bounded(path: str | os.PathLike[str], max_bytes: int = MAX_CHECKPOINT_BYTES) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file, reading at most ``max_bytes`` of array data in all.

    Refuses encrypted members, unknown compression, object/structured dtypes, non-``.npy`` members,
    and sizes that disagree between the zip directory and the ``.npy`` header, before allocating.
    Any decoding failure is a `CheckpointError` naming the file and the cause.
    """
    path = Path(path)
    try:
        with _open_regular(path) as handle, zipfile.ZipFile(handle) as zf:
            infos = zf.infolist()
            if len(infos) > MAX_MEMBERS:
                raise _refuse(path, f"{len(infos)} members (expected at most {MAX_MEMBERS})")
            arrays: dict[str, np.ndarray] = {}
            budget = int(max_bytes)
            for info in infos:
                if not info.filename.endswith(".npy") or info.is_dir():
                    raise _refuse(path, f"a member {info.filename!r} that is not an .npy array")
                key = info.filename[:-4]
                if key in arrays:
                    raise _refuse(path, f"two members named {info.filename!r}")
                arrays[key] = _read_member(zf, info, budget, path)
                budget -= info.file_size
            return arrays
    except CheckpointError:
        raise
    except FileNotFoundError as exc:
        raise CheckpointError(f"{path}: expected a checkpoint file, got none ({exc})") from exc
    except Exception as exc:  # noqa: BLE001 - untrusted bytes: zipfile/zlib/npy raise many classes
        # (BadZipFile, RuntimeError "encrypted", NotImplementedError, zlib.error, tokenize.TokenError,
        # SyntaxError, ValueError, struct.error, EOFError, MemoryError, OSError, ...).
        raise _refuse(path, f"an unreadable file ({type(exc).__name__}: {exc})") from exc


def _file_age(entry: os.DirEntry[str], now: float) -> float | None:
    """Seconds since ``entry`` (a regular file, not followed through links) was modified; None when it
    is not a regular file or is gone."""
    try:
        if not entry.is_file(follow_symlinks=False):
            return None
        return now - entry.stat(follow_symlinks=False).st_mtime
    except FileNotFoundError:
        return None


class CheckpointStore:
    """Checkpoints of one backbone in one directory.

    Args:
        directory: created (durably) on the first `save` if missing.
        fingerprint: `Manifest.fingerprint` of the backbone the state belongs to; a checkpoint
            written for another backbone is refused with `IncompatibleCheckpointError`.
        keep: number of newest checkpoints kept (>= 2 so a corrupt newest one has a fallback).
        validate_config: called with a checkpoint's config on load (e.g. `edge.config.validate_agent_config`);
            a config it refuses makes the checkpoint invalid (skipped like a corrupt one).
        exclusive: the caller holds the folder's `edge.lock.StateLock`, so every temp file in it
            is a dead writer's and is removed before writing.
        max_bytes: cap on the decoded array bytes of one checkpoint.
    """

    def __init__(self, directory: str | os.PathLike[str], fingerprint: str, keep: int = KEEP, *,
                 validate_config: Callable[[dict[str, Any]], None] | None = None,
                 exclusive: bool = False, max_bytes: int = MAX_CHECKPOINT_BYTES) -> None:
        self.directory = Path(directory)
        self.fingerprint = fingerprint
        self.keep = max(2, int(keep))
        self.validate_config = validate_config
        self.exclusive = bool(exclusive)
        self.max_bytes = int(max_bytes)
        self._good: Path | None = None
        #: Where the ledger of the last checkpoint saved or loaded lives (segments to reuse).
        self._index: ledger_segments.LedgerIndex | None = None
        self._protect: set[str] = set()       # segments the save in progress writes or uses
        self._orphans: set[str] = set()       # segments of checkpoints removed by this store

    @property
    def segment_dir(self) -> Path:
        """Folder of the teach ledger's segment files."""
        return self.directory / ledger_segments.SEGMENT_DIR

    # ------------------------------------------------------------------ listing
    def paths(self) -> list[Path]:
        """Checkpoint files (regular files named ``state-<step>.npz``), highest name first.

        Candidates only: `latest` orders them by the step verified inside each file.
        """
        if not self.directory.is_dir():
            return []
        found = []
        for entry in os.scandir(self.directory):
            m = _NAME.match(entry.name)
            if m and entry.is_file(follow_symlinks=False):
                found.append((int(m.group(1)), Path(entry.path)))
        return [p for _, p in sorted(found, reverse=True)]

    def disk_bytes(self) -> int:
        """Every byte the state folder holds: checkpoints, temp files, the lock, anything else."""
        total = 0
        pending = [self.directory]
        while pending:
            folder = pending.pop()
            try:
                entries = list(os.scandir(folder))
            except (FileNotFoundError, NotADirectoryError):
                continue
            for entry in entries:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        pending.append(Path(entry.path))
                    else:
                        total += entry.stat(follow_symlinks=False).st_size
                except FileNotFoundError:  # removed while counting
                    continue
        return total

    # ------------------------------------------------------------------ writing
    def save(self, state: dict[str, np.ndarray], config: dict[str, Any], step: int) -> Path:
        """Write a checkpoint atomically and prune old ones; returns its path.

        Space is reclaimed first (dead writers' temp files, checkpoints beyond ``keep``); on a full
        disk every checkpoint but the newest good one is removed and the write retried once.
        Raises `CheckpointError` when the directory cannot be created or written; the newest good
        checkpoint is left untouched in that case.
        """
        if HEADER_KEY in state:
            raise CheckpointError(f"state key {HEADER_KEY!r} is reserved")
        if not _is_int(step) and not isinstance(step, np.integer):
            raise CheckpointError(f"step: expected an int, got {type(step).__name__}")
        if not 0 <= int(step) < _MAX_STEP:
            raise CheckpointError(f"step: expected in [0, {_MAX_STEP}), got {step}")
        arrays = {k: np.asarray(v) for k, v in state.items()}
        for key, arr in arrays.items():
            if arr.dtype.hasobject or arr.dtype.kind not in _NUMERIC_KINDS:
                raise CheckpointError(f"state {key!r}: expected a numeric array, got dtype {arr.dtype}")
            if arr.dtype.kind in "fc" and not np.isfinite(arr).all():
                raise CheckpointError(f"state {key!r}: expected finite values, got NaN or inf "
                                      "(the previous checkpoint is kept)")
        arrays, plan = self._split_ledger(arrays)
        header: dict[str, Any] = {
            "schema_version": CHECKPOINT_SCHEMA_VERSION if plan is None else SEGMENTED_SCHEMA_VERSION,
            "fingerprint": self.fingerprint,
            "config": config,
            "step": int(step),
            "payload_sha256": payload_sha256(arrays),
            "keys": sorted(arrays),
        }
        if plan is not None:
            header["segments"] = plan.refs
            header["ledger"] = plan.summary
        target = self.directory / f"state-{int(step):012d}.npz"
        written: list[str] = []
        savez: Any = np.savez  # NumPy's stubs type **kwds as the allow_pickle flag

        def attempt() -> None:
            if plan is not None:   # segments first: a checkpoint never names a file not yet durable
                written.extend(self._write_segments(plan.blobs, skip=set(written)))
                header["segments_written"] = sorted(set(written))   # what this save wrote (flash accounting)
            try:
                header["header_sha256"] = header_sha256(header)
            except (TypeError, ValueError) as exc:
                raise CheckpointError(f"config: expected plain finite JSON values, got {exc}") from exc
            blob = np.frombuffer(json.dumps(header, sort_keys=True).encode("utf-8"), dtype=np.uint8)
            members = {HEADER_KEY: blob, **arrays}
            atomic_write(target, lambda handle: savez(handle, **members), tmp_prefix=_TMP_PREFIX)

        self._protect = {ref["name"] for ref in plan.refs} if plan is not None else set()
        try:
            make_dirs(self.directory)
            self.reclaim()
            try:
                attempt()
            except OSError as exc:
                if exc.errno not in _NO_SPACE or not self.reclaim(full_disk=True):
                    raise
                logger.warning("disk full writing %s: removed older checkpoints, retrying once", target)
                attempt()
        except OSError as exc:
            raise CheckpointError(f"cannot write checkpoint {target}: expected a writable directory with "
                                  f"free space, got {type(exc).__name__}: {exc}") from exc
        finally:
            self._protect = set()
        self._good = target
        if plan is not None:
            self._index = plan.index
        self._prune(target)
        self._collect_segments()
        return target

    # ------------------------------------------------------------------ ledger segments
    def _split_ledger(self, arrays: dict[str, np.ndarray]
                      ) -> tuple[dict[str, np.ndarray], ledger_segments.Split | None]:
        """``(arrays to store in the checkpoint, the ledger's segment plan or None)``: a state whose
        ``knowledge.*`` arrays are a ledger's flat layout keeps only its small parts inline."""
        flat = {k[len(LEDGER_PREFIX):]: v for k, v in arrays.items() if k.startswith(LEDGER_PREFIX)}
        if set(flat) != set(ledger_segments.FLAT_KEYS):
            return arrays, None
        plan = ledger_segments.split(flat, self._index, self._segment_present)
        if plan is None:
            return arrays, None
        rest = {k: v for k, v in arrays.items() if not k.startswith(LEDGER_PREFIX)}
        rest.update({LEDGER_PREFIX + k: v for k, v in plan.inline.items()})
        return rest, plan

    def _segment_present(self, ref: dict[str, Any]) -> bool:
        try:
            info = os.stat(self.segment_dir / str(ref["name"]), follow_symlinks=False)
        except OSError:
            return False
        return stat.S_ISREG(info.st_mode) and info.st_size == ref["bytes"]

    def _write_segments(self, blobs: dict[str, bytes], skip: set[str]) -> list[str]:
        """Write the segment files (atomically, fsynced) but those in ``skip`` that are there (written by
        this save's first try); returns the names written."""
        written = []
        for name, data in blobs.items():
            if name in skip and self._segment_present({"name": name, "bytes": len(data)}):
                continue
            atomic_write(self.segment_dir / name, _writer(data), tmp_prefix=_SEGMENT_TMP_PREFIX)
            written.append(name)
        return written

    def _refs_of(self, path: Path) -> list[str]:
        """Names of the segments a checkpoint's header names (any backbone); [] when unreadable."""
        try:
            with _open_regular(path) as handle, zipfile.ZipFile(handle) as zf:
                raw = _read_member(zf, zf.getinfo(f"{HEADER_KEY}.npy"), MAX_HEADER_BYTES + 256, path)
            header = parse_header_array(raw, str(path))
            verify_header_sha256(header, str(path))
        except Exception:  # noqa: BLE001 - untrusted bytes; an unreadable checkpoint protects nothing
            return []
        refs = header.get("segments")
        if not isinstance(refs, list):
            return []
        return [r["name"] for r in refs if isinstance(r, dict) and isinstance(r.get("name"), str)]

    def _collect_segments(self) -> int:
        """Remove segment files no checkpoint in the folder names: those of checkpoints this store
        removed, and (when ``exclusive``, else once older than `STALE_TMP_S`) any other."""
        folder = self.segment_dir
        if not folder.is_dir():
            return 0
        named = set(self._protect)
        for path in self.paths():
            named.update(self._refs_of(path))
        removed = 0
        now = time.time()
        for entry in os.scandir(folder):
            if not _SEGMENT_NAME.match(entry.name) or entry.name in named:
                continue
            age = _file_age(entry, now)
            if age is None:
                continue
            if self.exclusive or entry.name in self._orphans or abs(age) > STALE_TMP_S:
                removed += self._unlink(Path(entry.path))
        self._orphans -= {e for e in self._orphans if not (folder / e).exists()}
        return removed

    def _read_segment(self, path: Path, ref: dict[str, Any], budget: int) -> bytes:
        """One segment's bytes, size-checked before reading and verified against its sha256."""
        seg = self.segment_dir / ref["name"]
        if ref["bytes"] > budget:
            raise CheckpointError(f"{path}: segment {ref['name']} of {ref['bytes']} bytes: expected at most the "
                                  f"{budget} bytes left of the {self.max_bytes}-byte budget")
        try:
            with _open_regular(seg) as handle:
                size = os.fstat(handle.fileno()).st_size
                if size != ref["bytes"]:
                    raise _SegmentDamaged(f"{path}: segment {seg}: expected {ref['bytes']} bytes, got {size} "
                                          "(truncated or changed)")
                data: bytes = handle.read(size + 1)
        except FileNotFoundError as exc:
            raise _SegmentDamaged(f"{path}: expected its ledger segment {seg}, got none (missing)") from exc
        except CheckpointError:
            raise
        except OSError as exc:
            raise _SegmentDamaged(f"{path}: segment {seg}: expected a readable file, got {exc}") from exc
        got = hashlib.sha256(data).hexdigest()
        if len(data) != ref["bytes"] or got != ref["sha256"]:
            raise _SegmentDamaged(f"{path}: segment {seg}: sha256 expected {ref['sha256']}, got {got} "
                                  f"({len(data)} bytes; the file was changed or corrupted)")
        return data

    def _join_ledger(self, path: Path, header: dict[str, Any], arrays: dict[str, np.ndarray], salvage: bool
                     ) -> tuple[dict[str, np.ndarray], ledger_segments.LedgerIndex, tuple[str, ...]]:
        """The state with the ledger's segments read, verified and joined back into its usual arrays,
        and warnings. A missing or damaged segment raises `_SegmentDamaged`; with ``salvage`` its
        samples leave the ledger instead (`ledger_segments.join`), with a warning naming it."""
        refs, summary = header.get("segments"), header.get("ledger")
        if not isinstance(refs, list) or len(refs) > MAX_SEGMENTS or not isinstance(summary, dict):
            raise CheckpointError(f"{path}: expected a list of at most {MAX_SEGMENTS} segments and a ledger "
                                  f"summary in the header, got {type(refs).__name__} and {type(summary).__name__}")
        for ref in refs:
            m = _SEGMENT_NAME.match(ref.get("name", "")) if isinstance(ref, dict) and isinstance(ref.get("name"), str) else None
            if (m is None or ref.get("sha256") != m.group(1)
                    or any(not _is_int(ref.get(k)) or ref[k] < 0 for k in _REF_INTS)):
                raise CheckpointError(f"{path}: expected segment references {{name: seg-<sha256>.bin, sha256, "
                                      f"{', '.join(_REF_INTS)}}}, got {str(ref)[:200]}")
        budget = self.max_bytes - sum(int(a.nbytes) for a in arrays.values())
        blobs: list[bytes] = []
        lost: dict[int, str] = {}   # position in refs -> why
        size: Any = summary.get("embedding_size")
        for i, ref in enumerate(refs):
            blob = b""
            try:
                blob = self._read_segment(path, ref, budget)
                if _is_int(size):
                    ledger_segments.check_segment(blob, ref, int(size))
            except _SegmentDamaged as exc:
                if not salvage:
                    raise
                lost[i] = str(exc)
            except CheckpointError:
                raise
            except ValueError as exc:   # InputError: the file matches its sha256 but does not decode
                damage = _SegmentDamaged(f"{path}: segment {exc}")   # the message names the segment
                if not salvage:
                    raise damage from exc
                lost[i], blob = str(damage), b""
            blobs.append(blob)
            budget -= int(ref["bytes"])   # a lost segment counts as read: the bound stays the same
        inline = {k[len(LEDGER_PREFIX):]: v for k, v in arrays.items() if k.startswith(LEDGER_PREFIX)}
        try:
            flat, index = ledger_segments.join(inline, blobs, refs, summary, lost=set(lost))
        except ValueError as exc:   # InputError included
            raise CheckpointError(f"{path}: {exc}") from exc
        state = {k: v for k, v in arrays.items() if not k.startswith(LEDGER_PREFIX)}
        state.update({LEDGER_PREFIX + k: v for k, v in flat.items()})
        counts = ledger_segments.samples_per_segment(inline, len(refs)) if lost else None
        notes = []
        for i, why in lost.items():
            assert counts is not None
            why = why.removeprefix(f"{path}: ")
            note = (f"{path}: no intact checkpoint: loaded without ledger segment {refs[i]['name']} "
                    f"({why}): its {int(counts[i])} samples left the teach ledger (still learned, counted as "
                    "sealed: they can no longer be undone one by one or shown as thumbnails)")
            logger.warning("%s", note)
            notes.append(note)
        return state, index, tuple(notes)

    def _ranked(self) -> list[tuple[int, Path]]:
        """(verified header step, path) of the candidates, highest step first; unreadable ones -1.

        Checkpoints of another backbone or schema are left out: they are never removed.
        """
        ranked = []
        for path in self.paths():
            try:
                step = self._header_step_or_raise(path)
            except IncompatibleCheckpointError:
                continue
            except CheckpointError:
                step = -1
            ranked.append((step, path))
        return sorted(ranked, key=lambda item: (item[0], self._name_matches(*item)), reverse=True)

    @staticmethod
    def _name_matches(step: int, path: Path) -> bool:
        return path.name == f"state-{step:012d}.npz"

    def _unlink(self, path: Path) -> bool:
        if _NAME.match(path.name):   # its segments go too, once no other checkpoint names them
            self._orphans.update(self._refs_of(path))
        try:
            path.unlink()
            return True
        except FileNotFoundError:
            return False
        except OSError as exc:
            logger.warning("could not remove %s: %s", path, exc)
            return False

    def reclaim(self, full_disk: bool = False) -> int:
        """Free space before a write; returns the number of files removed.

        Removes temp files of dead writers (all of them when ``exclusive``, else those older than
        `STALE_TMP_S` or dated more than that in the future), checkpoints beyond ``keep``
        (by verified step) and ledger segments no remaining checkpoint names. With ``full_disk``
        every checkpoint but the newest good one goes. The newest good checkpoint is never removed.
        """
        if not self.directory.is_dir():
            return 0
        removed = 0
        now = time.time()
        temps = [(entry, _TMP_PREFIX) for entry in os.scandir(self.directory)]
        if self.segment_dir.is_dir():
            temps += [(entry, _SEGMENT_TMP_PREFIX) for entry in os.scandir(self.segment_dir)]
        for entry, prefix in temps:
            if not (entry.name.startswith(prefix) and entry.name.endswith(TMP_SUFFIX)):
                continue
            age = _file_age(entry, now)
            if age is None:
                continue
            if self.exclusive or abs(age) > STALE_TMP_S:
                removed += self._unlink(Path(entry.path))
        ranked = self._ranked()
        good = self._good if self._good is not None and self._good.exists() else None
        if good is None:
            for step, path in ranked:
                if step >= 0 and self._loads(path):
                    good = path
                    break
        if good is None:  # nothing verifiably good: never delete, the user may want to recover it
            return removed
        keep = 1 if full_disk else self.keep
        kept = 1
        for _, path in ranked:
            if path == good:
                continue
            if kept < keep:
                kept += 1
                continue
            removed += self._unlink(path)
        return removed + self._collect_segments()

    def _loads(self, path: Path) -> bool:
        try:
            self.load(path)
            return True
        except CheckpointError:
            return False

    def _prune(self, newest: Path) -> None:
        """Keep the ``keep`` checkpoints with the highest verified steps, ``newest`` among them."""
        kept = 1
        for _, path in self._ranked():
            if path == newest:
                continue
            if kept < self.keep:
                kept += 1
                continue
            self._unlink(path)

    # ------------------------------------------------------------------ reading
    def _header(self, path: Path, raw: np.ndarray) -> dict[str, Any]:
        """Parse and verify a header array (integrity first, then compatibility)."""
        header = parse_header_array(raw, str(path))
        version = header.get("schema_version")
        if (isinstance(version, int) and not isinstance(version, bool) and version >= 2) or "header_sha256" in header:
            verify_header_sha256(header, str(path))
        if not _is_int(version) or version not in READABLE_SCHEMA_VERSIONS:
            raise IncompatibleCheckpointError(f"{path}: checkpoint schema_version expected one of "
                                              f"{list(READABLE_SCHEMA_VERSIONS)}, got {version!r:.40}")
        if header.get("fingerprint") != self.fingerprint:
            raise IncompatibleCheckpointError(
                f"{path}: backbone fingerprint expected {self.fingerprint}, got "
                f"{header.get('fingerprint')!r:.80} (this state was trained on another model)")
        step = header.get("step")
        if (not isinstance(step, int) or isinstance(step, bool) or not 0 <= step < _MAX_STEP
                or not isinstance(header.get("config"), dict)):
            raise CheckpointError(f"{path}: expected an int step >= 0 and a config object in the header, "
                                  f"got {step!r:.40} and {type(header.get('config')).__name__}")
        return header

    def load(self, path: str | os.PathLike[str], *, salvage: bool = False) -> Checkpoint:
        """Read and verify one checkpoint file; `CheckpointError` (expected vs got) otherwise.

        ``salvage``: a ledger segment it names that is missing or damaged does not make it invalid;
        its samples leave the ledger and `Checkpoint.notes` says so (the rest of the state is in the
        checkpoint file, verified). `candidates` does this only when no checkpoint is intact.
        """
        path = Path(path)
        arrays = read_npz_bounded(path, self.max_bytes)
        if HEADER_KEY not in arrays:
            raise CheckpointError(f"{path}: expected a {HEADER_KEY} entry, got keys {sorted(arrays)[:8]}")
        header = self._header(path, arrays.pop(HEADER_KEY))
        got = payload_sha256(arrays)
        if got != header.get("payload_sha256"):
            raise CheckpointError(f"{path}: payload sha256 expected {str(header.get('payload_sha256'))[:80]}, "
                                  f"got {got} (the file was changed or corrupted)")
        if "keys" in header and header["keys"] != sorted(arrays):
            raise CheckpointError(f"{path}: expected arrays {header['keys']!r:.200}, got {sorted(arrays)}")
        for key, arr in arrays.items():
            if arr.dtype.kind in "fc" and not np.isfinite(arr).all():
                raise CheckpointError(f"{path}: state {key!r}: expected finite values, got NaN or inf")
        if self.validate_config is not None:
            try:
                self.validate_config(header["config"])
            except (CheckpointError, ValueError, TypeError) as exc:
                raise CheckpointError(f"{path}: {exc}") from exc
        if header["schema_version"] == SEGMENTED_SCHEMA_VERSION:
            arrays, index, notes = self._join_ledger(path, header, arrays, salvage)
            for key in ledger_segments.FLAT_KEYS:
                arr = arrays[LEDGER_PREFIX + key]
                if arr.dtype.kind in "fc" and not np.isfinite(arr).all():
                    raise CheckpointError(f"{path}: state {LEDGER_PREFIX + key!r}: expected finite values, got NaN or inf")
            self._index = index
        elif "segments" in header:
            raise CheckpointError(f"{path}: expected no segments in a schema {header['schema_version']} checkpoint, got some")
        else:
            notes = ()
        return Checkpoint(path=path, step=header["step"], config=header["config"], state=arrays,
                          header=header, notes=notes)

    def candidates(self) -> Iterator[Checkpoint]:
        """Valid checkpoints, highest verified step first; invalid ones are skipped with a warning.

        Then, when no intact one was taken, those whose only fault is a missing or damaged ledger
        segment (newest first), loaded without that segment's samples (`load` with ``salvage``):
        the learned state survives, the ledger loses those samples, `Checkpoint.notes` says so.

        A checkpoint of another backbone or schema is never skipped silently:
        `IncompatibleCheckpointError`. If files exist but none is valid, `CheckpointError` lists why.
        """
        errors = []
        ordered = []
        for path in self.paths():
            try:
                ordered.append((self._header_step_or_raise(path), path))
            except IncompatibleCheckpointError:
                raise
            except CheckpointError as exc:
                logger.warning("skipping unreadable checkpoint (falling back to an older one): %s", exc)
                errors.append(str(exc))
        ordered.sort(key=lambda item: (item[0], self._name_matches(*item)), reverse=True)
        damaged = []
        for step, path in ordered:
            try:
                ckpt = self.load(path)
            except IncompatibleCheckpointError:
                raise
            except CheckpointError as exc:
                logger.warning("skipping invalid checkpoint (falling back to an older one): %s", exc)
                errors.append(str(exc))
                if isinstance(exc, _SegmentDamaged):
                    damaged.append(path)
                continue
            if not self._name_matches(ckpt.step, path):
                logger.warning("checkpoint %s records step %d: ordered by that step, not by its name",
                               path, ckpt.step)
            self._good = path
            yield ckpt
        for path in damaged:   # no intact checkpoint was taken: keep the learned state, lose ledger samples
            try:
                ckpt = self.load(path, salvage=True)
            except CheckpointError as exc:
                errors.append(f"{path} without its damaged segments: {exc}")
                continue
            self._good = path
            yield ckpt
        if errors:
            raise CheckpointError("no valid checkpoint: " + " | ".join(errors))

    def _header_step_or_raise(self, path: Path) -> int:
        """The verified step in a file's header (reads only the header member)."""
        try:
            with _open_regular(path) as handle, zipfile.ZipFile(handle) as zf:
                raw = _read_member(zf, zf.getinfo(f"{HEADER_KEY}.npy"), MAX_HEADER_BYTES + 256, path)
        except CheckpointError:
            raise
        except Exception as exc:  # noqa: BLE001 - untrusted bytes, see read_npz_bounded
            raise _refuse(path, f"an unreadable header ({type(exc).__name__}: {exc})") from exc
        return int(self._header(path, raw)["step"])

    def latest(self) -> Checkpoint | None:
        """The valid checkpoint with the highest verified step, or None on first boot.

        A corrupt, torn or unreadable file is skipped with a warning in favour of the previous one;
        when none is intact only because of a missing or damaged ledger segment, the newest is
        loaded without that segment's samples, with a warning (`candidates`).
        A checkpoint of another backbone or schema is never skipped silently: `CheckpointError`.
        If every file is corrupt, `CheckpointError` lists why.
        """
        for ckpt in self.candidates():
            return ckpt
        return None


def resume(store: CheckpointStore, restore: Callable[[Checkpoint], T]) -> tuple[T, Checkpoint] | None:
    """Restore from the newest usable checkpoint, falling back to older ones; None on first boot.

    ``restore(ckpt)`` builds the caller's object (e.g. an `edge.agent.Agent` with the config and
    state); when it raises `ValueError` (InputError included), `TypeError` or `KeyError` the
    checkpoint is skipped with a warning. Raises `CheckpointError` when checkpoints exist but none
    is usable, and `IncompatibleCheckpointError` for another backbone or schema.
    """
    rejected = []
    for ckpt in store.candidates():
        try:
            return restore(ckpt), ckpt
        except (ValueError, TypeError, KeyError) as exc:
            logger.warning("skipping checkpoint %s (falling back to an older one): its state does not "
                           "fit its config: %s", ckpt.path, exc)
            rejected.append(f"{ckpt.path}: {exc}")
    if rejected:
        raise CheckpointError("no usable checkpoint: " + " | ".join(rejected))
    return None
