"""Resolve ``--data SPEC --scenario NAME`` into a :class:`~firmware_sim.data.stream.Stream` for the simulator.

Data specs:

- ``core50:PATH`` - a real CORe50 (array form or PNG tree + batch filelists) or the generator's
  output; ``--scenario`` is one of ``ni, nc, nic, nicv2_79, nicv2_196, nicv2_391``.
- ``synthetic`` or ``synthetic:PATH`` - the generated CORe50-format set (array form), written on
  first use to PATH (default: the cache directory) and reused afterwards; same scenarios.
- ``idx:DIR``, ``npz:PATH``, ``folder:DIR`` - generic labelled images; ``--scenario`` names a
  protocol of `firmware_sim.data.protocols` (``class_incremental``, ``few_shot``, ``domain_incremental``,
  ``nic_like``, ``split_transfer``).

Example:
    >>> from firmware_sim.data.streams import open_stream
    >>> stream = open_stream("synthetic", "nicv2_391", run=0)   # doctest: +SKIP
    >>> len(stream.train_batches)                               # doctest: +SKIP
    391
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from firmware_sim.data.core50 import SCENARIOS, open_core50
from firmware_sim.data.generator import GeneratorConfig, generate_core50
from firmware_sim.cache import default_cache_dir
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
    identity = f"core50|{_data_identity(root)}|test={_indices_digest(scen.test.indices)}|size={image_size}"
    return replace(
        scen,
        identity=identity,
        description=(f"CORe50 {scenario} run {run} from {root}: {len(scen.train_batches)} batches, "
                     f"{scen.n_train_frames} training frames, "
                     f"{len(scen.test.labels)} test frames ({test}), {labels} labels"),
    )


def protocol_stream(spec: str, protocol: str, *, seed: int = 0, params: dict[str, Any] | None = None) -> Stream:
    """A protocol of `firmware_sim.data.protocols` over generic labelled images (idx/npz/folder)."""
    from firmware_sim.data.protocols import make_protocol
    from firmware_sim.data.sources import load_source

    train = load_source(spec, split="train")
    try:
        test = load_source(spec, split="test")
    except (ValueError, FileNotFoundError) as exc:
        raise ValueError(f"{spec}: a stream needs a test split (expected x_test/y_test, t10k-* files or "
                         f"a held-out set), got none ({exc})") from exc
    stream = make_protocol(protocol, train=train, test=test, seed=seed, **(params or {}))
    test_x = stream.test.images()
    digest = hashlib.sha256(np.ascontiguousarray(test_x).tobytes()).hexdigest()[:16]
    return replace(
        stream,
        name=f"{protocol} ({spec.split(':', 1)[0]})",
        identity=f"protocol|{spec}|test={digest}|{test_x.shape}",
        description=stream.description or f"{protocol} over {spec}",
        class_names=list(stream.class_names) if stream.class_names else None,
    )


def open_stream(data: str, scenario: str, run: int = 0, *, test: str = "full", labels: str = "object",
                image_size: int | None = None, seed: int = 0, params: dict[str, Any] | None = None,
                progress: bool = True) -> Stream:
    """Parse a data spec and build the stream (see the module docstring for the forms)."""
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
        root = Path(path) if prefix == "core50" else ensure_synthetic(path or None, progress=progress)
        return core50_stream(root, scenario, run, test=test, labels=labels, image_size=image_size)
    if not path:
        raise ValueError(f"--data {prefix} needs a path: expected {prefix}:PATH, got {data!r}")
    return protocol_stream(data, scenario, seed=seed + run, params=params)
