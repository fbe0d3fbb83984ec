"""Resolve ``--data SPEC --scenario NAME`` into a :class:`~firmware_sim.data.stream.Stream` for the simulator.

Data specs:

- ``core50:PATH`` - a real CORe50 (array form or PNG tree + batch filelists) or the generator's
  output; ``--scenario`` is one of ``ni, nc, nic, nicv2_79, nicv2_196, nicv2_391``.
- ``synthetic`` or ``synthetic:PATH`` - the generated CORe50-format set (array form), written on
  first use to PATH (default: the cache directory) and reused afterwards; same scenarios.
- ``idx:DIR``, ``npz:PATH``, ``folder:DIR`` - generic labelled images; ``--scenario`` names a
  protocol of `firmware_sim.data.protocols` (``class_incremental``, ``few_shot``, ``domain_incremental``,
  ``nic_like``, ``split_transfer``). The test set is the source's own test split when it has one,
  else a seeded stratified hold-out (:func:`holdout_split`, ``--test-split``, default 20 %): a stream
  is never evaluated on its training frames.

Example:
    >>> from firmware_sim.data.streams import open_stream
    >>> stream = open_stream("synthetic", "nicv2_391", run=0)   # doctest: +SKIP
    >>> len(stream.train_batches)                               # doctest: +SKIP
    391
"""

from __future__ import annotations

import hashlib
import logging
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from firmware_sim.cache_dir import default_cache_dir
from firmware_sim.data.core50 import SCENARIOS, open_core50
from firmware_sim.data.generator import GeneratorConfig, generate_core50
from firmware_sim.data.sources import LabelledImages
from firmware_sim.data.stream import Stream

log = logging.getLogger(__name__)

DATA_PREFIXES = ("core50", "synthetic", "idx", "npz", "folder")
GENERATOR_MARKER = "generator.json"


@dataclass(frozen=True)
class SyntheticDefaults:
    """The generated set `edge-sim` uses when no path is given."""

    image_size: int = 32
    frames: int = 30
    runs: int = 10
    seed: int = 0

    def directory(self) -> Path:
        return default_cache_dir() / f"synthetic-{self.image_size}px-{self.frames}f-{self.runs}r-seed{self.seed}"


def ensure_synthetic(path: str | Path | None = None, defaults: SyntheticDefaults = SyntheticDefaults(),
                     progress: bool = True) -> Path:
    """Return a generated CORe50-format set, generating it (array form) on first use."""
    root = Path(path) if path else defaults.directory()
    if (root / GENERATOR_MARKER).is_file() and (root / "core50_imgs.npz").is_file():
        return root
    log.info("generating the synthetic CORe50-format set in %s", root)
    config = GeneratorConfig(image_size=defaults.image_size, frames=defaults.frames, runs=defaults.runs,
                             seed=defaults.seed, forms=("arrays",))
    generate_core50(root, config, progress=progress)
    return root


def _data_identity(root: Path) -> str:
    """Identify a data set on disk cheaply: path, size and mtime of its main file."""
    main = root / "core50_imgs.npz"
    if not main.is_file():
        main = root
    stat = main.stat()
    return f"{root.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"


def _indices_digest(indices: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(indices, dtype=np.int64).tobytes()).hexdigest()[:16]


def core50_stream(root: str | Path, scenario: str, run: int = 0, *, test: str = "full",
                  labels: str = "object", image_size: int | None = None) -> Stream:
    """A CORe50 scenario (official files or generator output) as a `Stream`."""
    root = Path(root)
    data = open_core50(root)
    scen = data.scenario(scenario, run, test=test, labels=labels, image_size=image_size)  # type: ignore[arg-type]
    identity = (f"core50|{_data_identity(root)}|{scen.identity}|test={_indices_digest(scen.test.indices)}"
                f"|size={image_size}")
    return replace(
        scen,
        identity=identity,
        test_split=f"{OWN_TEST_SPLIT} (CORe50 test sessions s3, s7, s10, {test})",
        description=(f"CORe50 {scenario} run {run} from {root}: {len(scen.train_batches)} batches, "
                     f"{scen.n_train_frames} training frames, "
                     f"{len(scen.test.labels)} test frames ({test}), {labels} labels"),
    )


DEFAULT_TEST_FRACTION = 0.2
OWN_TEST_SPLIT = "source's own test split"


def holdout_split(data: LabelledImages, fraction: float = DEFAULT_TEST_FRACTION,
                  seed: int = 0) -> tuple[LabelledImages, LabelledImages]:
    """A deterministic stratified hold-out: ``(train, test)`` with ``fraction`` of every class in test.

    Each class with 2 or more images puts ``n * fraction`` (rounded half up) of them (at least 1, at most n - 1),
    drawn with ``seed``, in the test set; a class with one image stays in training (logged). Both
    sides keep source order, sessions and class names; no image is in both.

    Example:
        >>> data = LabelledImages(np.zeros((10, 2, 2, 1), np.uint8), np.repeat([0, 1], 5))
        >>> train, test = holdout_split(data, 0.2, seed=0)
        >>> len(train), len(test), np.bincount(test.y).tolist()
        (8, 2, [1, 1])
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 < fraction < 1.0:
        raise ValueError(f"test split: expected a fraction strictly between 0 and 1, got {fraction!r}")
    rng = np.random.default_rng(seed)
    test_parts, alone = [], []
    for label in np.unique(data.y):
        members = np.flatnonzero(data.y == label)
        if members.size < 2:
            alone.append(int(label))
            continue
        n_test = min(max(1, int(np.floor(members.size * fraction + 0.5))), members.size - 1)  # half up
        test_parts.append(rng.choice(members, size=n_test, replace=False))
    if alone:
        log.warning("test split: classes %s have a single image; it stays in training and is never tested", alone)
    in_test = np.zeros(len(data), bool)
    if test_parts:
        in_test[np.concatenate(test_parts)] = True

    def part(mask: np.ndarray) -> LabelledImages:
        session = None if data.session is None else data.session[mask]
        return LabelledImages(data.x[mask], data.y[mask], session, list(data.class_names or []))

    return part(~in_test), part(in_test)


def _own_test_source(spec: str) -> LabelledImages | None:
    """The source's own test split (npz ``x_test``/``y_test``, IDX ``t10k-*``), None when it has none.

    An npz with ``x``/``y`` and a folder of class folders have no test split: `load_source` would
    return the training images again.
    """
    from firmware_sim.data.sources import load_source

    kind, _, path = spec.partition(":")
    if kind == "npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                keys = set(z.files)
        except (OSError, ValueError, zipfile.BadZipFile):
            return None  # load_source(spec, "train") has already reported an unreadable file
        if {"x", "y"} <= keys or not {"x_test", "y_test"} <= keys:
            return None
        return load_source(spec, split="test")
    if kind == "idx":
        try:
            return load_source(spec, split="test")
        except FileNotFoundError:
            return None
    return None


def protocol_stream(spec: str, protocol: str, *, seed: int = 0, params: dict[str, Any] | None = None,
                    test_split: float | None = None, split_seed: int = 0) -> Stream:
    """A protocol of `firmware_sim.data.protocols` over generic labelled images (idx/npz/folder).

    The test set is never made of training frames: the source's own test split when it has one
    (npz ``x_test``/``y_test``, IDX ``t10k-*``), the held-out sessions of a ``domain_incremental``
    stream with ``test_sessions``, else a stratified hold-out of ``test_split`` (default 20 %) of the
    source drawn with ``split_seed`` (the same for every run). ``stream.test_split`` says which.
    """
    from firmware_sim.data.protocols import make_protocol
    from firmware_sim.data.sources import load_source

    params = dict(params or {})
    source = load_source(spec, split="train")
    own = _own_test_source(spec)
    by_session = protocol == "domain_incremental" and params.get("test_sessions") is not None
    if own is not None:
        if test_split is not None:
            raise ValueError(f"--test-split: {spec} has its own test split; expected no --test-split, "
                             f"got {test_split}")
        train, test, note = source, own, OWN_TEST_SPLIT
    elif by_session:
        if test_split is not None:
            raise ValueError(f"--test-split: domain_incremental with test_sessions holds sessions out; "
                             f"expected no --test-split, got {test_split}")
        train, test = source, source  # the protocol keeps the two sides session-disjoint
        note = f"held-out sessions {params['test_sessions']} of the source (test_sessions)"
    else:
        fraction = DEFAULT_TEST_FRACTION if test_split is None else test_split
        try:
            train, test = holdout_split(source, fraction, split_seed)
        except ValueError as exc:
            raise ValueError(f"--test-split: {exc}") from None
        note = f"held-out {fraction * 100:g} % stratified, seed {split_seed}"
    stream = make_protocol(protocol, train=train, test=test, seed=seed, **params)
    if by_session:
        note = f"held-out sessions {stream.params.get('test_sessions')} of the source (test_sessions)"
    test_x = stream.test.images()
    digest = hashlib.sha256(np.ascontiguousarray(test_x).tobytes()).hexdigest()[:16]
    description = stream.description or f"{protocol} over {spec}"
    return replace(
        stream,
        name=f"{protocol} ({spec.split(':', 1)[0]})",
        identity=f"protocol|{spec}|split={note}|test={digest}|{test_x.shape}",
        description=f"{description}; test split: {note}",
        class_names=list(stream.class_names) if stream.class_names else None,
        test_split=note,
    )


def open_stream(data: str, scenario: str, run: int = 0, *, test: str = "full", labels: str = "object",
                image_size: int | None = None, seed: int = 0, params: dict[str, Any] | None = None,
                progress: bool = True, test_split: float | None = None) -> Stream:
    """Parse a data spec and build the stream (see the module docstring for the forms).

    ``test_split`` (idx/npz/folder only) is the stratified hold-out fraction for a source without
    its own test split (default 20 %, drawn with ``seed``, the same for every run).
    """
    prefix, _, path = data.partition(":")
    if prefix not in DATA_PREFIXES:
        raise ValueError(f"--data: expected one of core50:PATH, synthetic[:PATH], idx:PATH, npz:PATH, "
                         f"folder:PATH; got {data!r}")
    if prefix in ("core50", "synthetic"):
        if scenario not in SCENARIOS:
            raise ValueError(f"--scenario for {prefix} data: expected one of {', '.join(SCENARIOS)}, "
                             f"got {scenario!r}")
        if prefix == "core50" and not path:
            raise ValueError("--data core50 needs a path: expected core50:PATH, got 'core50'")
        if test_split is not None:
            raise ValueError(f"--test-split: {prefix} data has its own test sessions; expected no --test-split, "
                             f"got {test_split}")
        root = Path(path) if prefix == "core50" else ensure_synthetic(path or None, progress=progress)
        return core50_stream(root, scenario, run, test=test, labels=labels, image_size=image_size)
    if not path:
        raise ValueError(f"--data {prefix} needs a path: expected {prefix}:PATH, got {data!r}")
    return protocol_stream(data, scenario, seed=seed + run, params=params, test_split=test_split, split_seed=seed)
