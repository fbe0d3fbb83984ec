"""Seeded fuzz of the simulator's parsers: bit flips and truncations of small valid files (issue 11).

Every mutant must either load or fail with a ``ValueError`` (the documented error class of the
restricted unpickler, the npz / IDX readers and the CORe50 loaders), with bounded traced memory.
The default run takes well under a minute; ``FUZZ_SCALE=10`` runs ten times as many mutants of the CORe50 files.
"""

from __future__ import annotations

import gzip
import os
import pickle
import shutil
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from firmware_sim.data.core50 import SCENARIOS, Core50Arrays
from firmware_sim.data.generator import GeneratorConfig, generate_core50
from firmware_sim.data.safe_pickle import safe_loads_pickle
from firmware_sim.data.sources import load_idx, load_npz, npz_member

MB = 1 << 20
SCALE = int(os.environ.get("FUZZ_SCALE", "1"))


def mutants(data: bytes, seed: int, sample: int | None = None) -> list[tuple[str, bytes]]:
    """One seeded single-bit flip per byte position (or ``sample`` of them) plus truncations."""
    rng = np.random.default_rng(seed)
    positions = np.arange(len(data)) if sample is None else rng.choice(len(data), min(sample, len(data)), False)
    out = []
    for pos in positions:
        bit = int(rng.integers(8))
        flipped = bytearray(data)
        flipped[int(pos)] ^= 1 << bit
        out.append((f"flip byte {int(pos)} bit {bit}", bytes(flipped)))
    step = max(1, len(data) // (len(positions) // 2 or 1))
    out += [(f"truncate to {n}", data[:n]) for n in range(0, len(data), step)]
    return out


def run_campaign(cases: list[tuple[str, bytes]], load: Callable[[bytes], object],
                 max_peak: int = 64 * MB) -> Counter[str]:
    """Apply ``load`` to every mutant; tally outcomes; fail on any exception but ValueError or on memory."""
    tally: Counter[str] = Counter()
    tracemalloc.start()
    try:
        for name, data in cases:
            try:
                load(data)
                tally["loaded"] += 1
            except ValueError:
                tally["ValueError"] += 1
            except Exception as exc:  # noqa: BLE001 - the point of the test
                pytest.fail(f"{name}: expected ValueError or success, got {type(exc).__name__}: {exc}")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < max_peak, f"peak traced memory {peak} bytes"
    print(f"fuzz tally: {len(cases)} mutants, {dict(tally)}, peak {peak / MB:.1f} MB")  # shown with -s
    return tally


def test_fuzz_restricted_unpickler() -> None:
    obj = {"ni": [[[0, 1, 2, 300, 70000], [5, 6]], [[7], []]], "paths": ["s1/o1/C_01_01_000.png"] * 3,
           "meta": (1.5, True, None, -7, 2**40)}
    total: Counter[str] = Counter()
    for seed, protocol in enumerate((2, 4, pickle.HIGHEST_PROTOCOL)):
        data = pickle.dumps(obj, protocol=protocol)
        total += run_campaign(mutants(data, seed), lambda d: safe_loads_pickle(d, max_elements=100_000))
    assert total["ValueError"] > 0 and total["loaded"] > 0


@pytest.mark.parametrize("compressed", [False, True])
def test_fuzz_npz_reader(compressed: bool, tmp_path: Path) -> None:
    path = tmp_path / "a.npz"
    save = np.savez_compressed if compressed else np.savez
    save(path, x=np.arange(3 * 4 * 4 * 3, dtype=np.uint8).reshape(3, 4, 4, 3), y=np.array([0, 2, 1]))
    data = path.read_bytes()

    def load(mutant: bytes) -> None:
        path.write_bytes(mutant)
        load_npz(path)
        npz_member(path, "x", memmap=True)

    tally = run_campaign(mutants(data, 7 + compressed), load)
    assert tally["ValueError"] > 0


@pytest.mark.parametrize("gz", [False, True])
def test_fuzz_idx_reader(gz: bool, tmp_path: Path) -> None:
    images = bytes([0, 0, 8, 3]) + (3).to_bytes(4, "big") + (4).to_bytes(4, "big") * 2 + bytes(range(48))
    labels = bytes([0, 0, 8, 1]) + (3).to_bytes(4, "big") + bytes([0, 1, 2])
    suffix = ".gz" if gz else ""
    pack = gzip.compress if gz else (lambda b: b)
    img_path = tmp_path / f"train-images-idx3-ubyte{suffix}"
    lab_path = tmp_path / f"train-labels-idx1-ubyte{suffix}"
    img_path.write_bytes(pack(images))
    lab_path.write_bytes(pack(labels))
    total: Counter[str] = Counter()
    for target, data in ((img_path, pack(images)), (lab_path, pack(labels))):
        def load(mutant: bytes, target: Path = target) -> None:
            target.write_bytes(mutant)
            load_idx(tmp_path)

        total += run_campaign(mutants(data, 11 + gz), load)
        target.write_bytes(data)
    assert total["ValueError"] > 0


@pytest.fixture(scope="module")
def small_core50(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fuzz-core50")
    generate_core50(root, GeneratorConfig(frames=1, runs=1, seed=5, forms=("arrays",)), progress=False)
    return root


@pytest.mark.parametrize("name", ["LUP.pkl", "labels.pkl", "paths.pkl", "core50_imgs.npz"])
@pytest.mark.slow
def test_fuzz_core50_array_form(name: str, small_core50: Path, tmp_path: Path) -> None:
    root = tmp_path / "c"
    shutil.copytree(small_core50, root)
    data = (root / name).read_bytes()

    def load(mutant: bytes) -> None:
        (root / name).write_bytes(mutant)
        arrays = Core50Arrays(root)
        for scen in SCENARIOS:
            if scen in arrays.lup:
                stream = arrays.scenario(scen)
                if name == "core50_imgs.npz":
                    stream.test.images_at(np.array([0, len(stream.test) - 1]))

    tally = run_campaign(mutants(data, 13, sample=40 * SCALE), load)
    assert tally["ValueError"] > 0
