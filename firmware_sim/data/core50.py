"""Loaders for the official CORe50 forms: the array form and the PNG tree with batch filelists.

Both work on the real CORe50 files and on :mod:`firmware_sim.data.generator` output, and give the same
scenario as a :class:`~firmware_sim.data.stream.Stream` (train batches in order, the test batch) with
lazily read images.

- Array form: ``core50_imgs.npz`` (key ``x``, uint8 (N, 128, 128, 3), about 8 GB for the real set),
  ``paths.pkl``, ``labels.pkl``, ``LUP.pkl``. The ``x.npy`` member is memory-mapped when it is
  stored uncompressed in the zip, so only the requested frames are read.
- Folder form: ``core50_128x128/`` (or ``core50_32x32/``) with ``s{1..11}/o{1..50}/C_ss_oo_fff.png``
  plus ``batches_filelists/{NI,NC,NIC}_inc/runN/`` and ``NIC_v2_{79,196,391}/runN/`` holding
  ``train_batch_XX_filelist.txt`` and ``test_filelist.txt`` (lines ``sX/oY/C_XX_YY_ZZZ.png label``).

Both treat the files as untrusted: the pickles go through :func:`safe_load_pickle` (no code, an
element budget) and their structure is checked (scenario keys, run and batch counts, lists of ints
in range); ``x`` must be uint8 (N, H, W, 3) and is never cast; PNGs are decoded with
:func:`edge.images.load_image` (the device's rules). Every failure is a ``ValueError`` (or
``FileNotFoundError``) naming the file, expected vs got. A scenario's :attr:`Stream.identity` names the
content of its test frames (the stat of every test file, or of the npz), so a replaced test image
changes the embedding cache key.

Example:
    >>> import tempfile
    >>> from firmware_sim.data.generator import GeneratorConfig, generate_core50
    >>> root = tempfile.mkdtemp()
    >>> _ = generate_core50(root, GeneratorConfig(frames=2, runs=1, forms=("arrays",)), progress=False)
    >>> scen = Core50Arrays(root).scenario("ni", run=0)
    >>> len(scen.train_batches), len(scen.test), scen.test.images().shape
    (8, 300, (300, 32, 32, 3))
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import numpy as np

from edge.images import load_image
from edge.preprocess import load_frame
from firmware_sim.data.core50_layout import (
    ARRAY_FILES,
    N_BATCHES,
    N_CATEGORIES,
    N_OBJECTS,
    OBJECTS_PER_CATEGORY,
    REDUCED_TEST_STEP,
    SCENARIO_DIRS,
    SCENARIOS,
    TEST_SESSIONS,
    TRAIN_SESSIONS,
    parse_core50_path,
)
from firmware_sim.data.safe_pickle import safe_load_pickle
from firmware_sim.data.sources import npz_member
from firmware_sim.data.stream import Batch, Stream

logger = logging.getLogger(__name__)

__all__ = [
    "Batch",
    "Core50Arrays",
    "Core50Folder",
    "N_BATCHES",
    "SCENARIOS",
    "SCENARIO_DIRS",
    "TEST_SESSIONS",
    "TRAIN_SESSIONS",
    "open_core50",
    "parse_core50_path",
]

TestSet = Literal["full", "reduced"]
LabelKind = Literal["object", "category"]


def _check_choice(what: str, value: object, valid: Sequence[object]) -> None:
    if value not in valid:
        raise ValueError(f"unknown {what} {value!r}; valid: {', '.join(map(str, valid))}")


def _category_labels(paths: Sequence[str]) -> np.ndarray:
    return np.array([(parse_core50_path(p)[1] - 1) // OBJECTS_PER_CATEGORY for p in paths], np.int64)


def _make_batch(indices: np.ndarray, labels: np.ndarray, paths: Sequence[str], labels_kind: LabelKind,
                loader: Callable[[np.ndarray], np.ndarray], image_size: int | None) -> Batch:
    bpaths = tuple(paths)
    if labels_kind == "category":
        labels = _category_labels(bpaths)
    return Batch(np.asarray(indices, np.int64), np.asarray(labels, np.int64), bpaths, loader, image_size)


def _check_scenario_args(name: str, test: str, labels: str, image_size: int | None) -> None:
    _check_choice("scenario", name, SCENARIOS)
    _check_choice("test set", test, ("full", "reduced"))
    _check_choice("label kind", labels, ("object", "category"))
    if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
        raise ValueError(f"image_size must be a positive int or None, got {image_size!r}")


# --------------------------------------------------------------------------- validation


def _int_array(value: Any, what: str, high: int) -> np.ndarray:
    """A pickled list of ints as int64, each in ``[0, high)``; ValueError naming expected vs got."""
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{what}: expected a list of ints, got {type(value).__name__}")
    if not value:
        return np.zeros(0, np.int64)
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError, OverflowError) as exc:
        raise ValueError(f"{what}: expected a flat list of ints, got a nested or mixed list ({exc})") from None
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        kinds = sorted({type(v).__name__ for v in value[:1000]})
        raise ValueError(f"{what}: expected a flat list of ints, got {arr.dtype} {arr.shape} "
                         f"(element types {', '.join(kinds)})")
    arr = arr.astype(np.int64)
    if arr.min() < 0 or arr.max() >= high:
        raise ValueError(f"{what}: expected values in [0, {high - 1}], got [{int(arr.min())}, {int(arr.max())}]")
    return arr


def _stat_digest(paths: Sequence[Path]) -> str:
    """Digest of (path, size, mtime, ctime) of each file: changes when any of them is replaced."""
    digest = hashlib.sha256()
    for path in paths:
        try:
            st = os.stat(path)
        except OSError as exc:
            raise ValueError(f"{path}: expected a readable file, got {type(exc).__name__}: "
                             f"{exc.strerror or exc}") from exc
        digest.update(f"{path}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()[:32]


# --------------------------------------------------------------------------- array form


class Core50Arrays:
    """The array form: ``core50_imgs.npz`` + ``paths.pkl`` + ``labels.pkl`` + ``LUP.pkl`` in ``root``.

    Pickles are read with :func:`safe_load_pickle`; the image array is memory-mapped.

    Example:
        >>> import tempfile
        >>> from firmware_sim.data.generator import GeneratorConfig, generate_core50
        >>> root = tempfile.mkdtemp()
        >>> _ = generate_core50(root, GeneratorConfig(frames=2, runs=2, forms=("arrays",)), progress=False)
        >>> data = Core50Arrays(root)
        >>> scen = data.scenario("nicv2_391", run=1, test="reduced", labels="category")
        >>> len(scen.train_batches), len(scen.test), sorted(set(scen.train_batches[0].labels.tolist()))
        (391, 15, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        for name in ARRAY_FILES:
            if not (self.root / name).is_file():
                raise FileNotFoundError(f"CORe50 array form: {name} not found (looked for {self.root / name})")
        paths = safe_load_pickle(self.root / "paths.pkl")
        if not isinstance(paths, list):
            raise ValueError(f"{self.root / 'paths.pkl'}: expected a list of str, got {type(paths).__name__}")
        bad = next((p for p in paths if not isinstance(p, str)), None)
        if bad is not None:
            raise ValueError(f"{self.root / 'paths.pkl'}: expected a list of str, got an element of type "
                             f"{type(bad).__name__}")
        self.paths: list[str] = [p.replace("\\", "/") for p in paths]
        self.lup: dict[str, list[list[Any]]] = self._load_nested("LUP.pkl")
        self.labels: dict[str, list[list[Any]]] = self._load_nested("labels.pkl")
        for name in self.lup:
            if name in self.labels and len(self.lup[name]) != len(self.labels[name]):
                raise ValueError(f"{self.root}: scenario {name!r}: expected as many runs in labels.pkl as in LUP.pkl "
                                 f"({len(self.lup[name])}), got {len(self.labels[name])}")
        self._x: np.ndarray | None = None

    def _load_nested(self, name: str) -> dict[str, list[list[Any]]]:
        """``{scenario: [run][batch] -> list[int]}`` with known scenarios, >= 1 run, the official batch counts."""
        path = self.root / name
        obj = safe_load_pickle(path)
        if not isinstance(obj, dict):
            raise ValueError(f"{path}: expected a dict {{scenario: [run][batch] -> list[int]}}, got {type(obj).__name__}")
        out: dict[str, list[list[Any]]] = {}
        for key, runs in obj.items():
            if not isinstance(key, str):
                raise ValueError(f"{path}: expected scenario names (str) as keys, got {type(key).__name__} {key!r:.40}")
            if key not in SCENARIOS:
                logger.warning("%s: ignoring unknown scenario %r (known: %s)", path, key[:40], ", ".join(SCENARIOS))
                continue
            if not isinstance(runs, list) or not runs:
                got = f"{len(runs)} runs" if isinstance(runs, list) else type(runs).__name__
                raise ValueError(f"{path}: scenario {key!r}: expected a non-empty list of runs, got {got}")
            want = N_BATCHES[key] + 1
            for r, run in enumerate(runs):
                if not isinstance(run, list) or len(run) != want:
                    got = f"{len(run)} batches" if isinstance(run, list) else type(run).__name__
                    raise ValueError(f"{path}: scenario {key!r} run {r}: expected a list of {want} batches "
                                     f"({want - 1} train + test), got {got}")
            out[key] = runs
        return out

    @property
    def x(self) -> np.ndarray:
        """The whole image array, memory-mapped (not read) when the npz member is uncompressed."""
        if self._x is None:
            path = self.root / "core50_imgs.npz"
            x = npz_member(path, "x", memmap=True)
            if x.dtype != np.uint8:
                raise ValueError(f"{path}: expected x of dtype uint8, got {x.dtype} (values are never cast; "
                                 f"convert to uint8 0..255 explicitly)")
            if x.ndim != 4 or x.shape[0] != len(self.paths) or x.shape[3] != 3:
                raise ValueError(f"{path}: expected x of shape ({len(self.paths)}, H, W, 3), got {x.shape}")
            self._x = x
        return self._x

    def runs(self, name: str) -> int:
        """Number of runs available for scenario ``name``."""
        _check_choice("scenario", name, tuple(k for k in SCENARIOS if k in self.lup))
        return len(self.lup[name])

    def _read(self, indices: np.ndarray) -> np.ndarray:
        return np.asarray(self.x[indices], dtype=np.uint8)

    def scenario(self, name: str, run: int = 0, test: TestSet = "full", labels: LabelKind = "object",
                 image_size: int | None = None) -> Stream:
        """Batches of run ``run`` of scenario ``name``; ``test="reduced"`` keeps every 20th test frame."""
        _check_scenario_args(name, test, labels, image_size)
        if name not in self.lup or name not in self.labels:
            raise ValueError(f"scenario {name!r} not in {self.root / 'LUP.pkl'}; valid: {', '.join(k for k in self.lup)}")
        _check_choice("run", run, tuple(range(len(self.lup[name]))))
        lup_run, lab_run = self.lup[name][run], self.labels[name][run]
        if len(lup_run) != len(lab_run):
            raise ValueError(f"{name} run {run}: LUP has {len(lup_run)} batches, labels has {len(lab_run)}")
        batches = []
        for b, (idx_list, lab_list) in enumerate(zip(lup_run, lab_run)):
            where = f"{name} run {run} batch {b}"
            idx = _int_array(idx_list, f"{self.root / 'LUP.pkl'}: {where}", len(self.paths))
            lab = _int_array(lab_list, f"{self.root / 'labels.pkl'}: {where}", N_OBJECTS)
            if idx.shape != lab.shape:
                raise ValueError(f"{where}: {len(idx)} indices but {len(lab)} labels")
            if b == len(lup_run) - 1 and test == "reduced":
                idx, lab = idx[::REDUCED_TEST_STEP], lab[::REDUCED_TEST_STEP]
            batches.append(_make_batch(idx, lab, [self.paths[i] for i in idx], labels, self._read, image_size))
        n_classes = N_CATEGORIES if labels == "category" else N_OBJECTS
        npz = self.root / "core50_imgs.npz"
        identity = f"arrays|{_stat_digest([npz])}|{hashlib.sha256(batches[-1].indices.tobytes()).hexdigest()[:16]}"
        return Stream(f"{name} run {run}", batches[:-1], batches[-1], n_classes, identity=identity)


# --------------------------------------------------------------------------- folder form


def _find_image_root(root: Path) -> Path:
    """``root`` itself if it holds ``s1/``..., else its ``core50_128x128`` / ``core50_32x32`` / other child."""
    if (root / "s1").is_dir():
        return root
    for name in ("core50_128x128", "core50_32x32", "core50_64x64", "core50_350x350"):
        if (root / name / "s1").is_dir():
            return root / name
    others = sorted(p for p in root.glob("core50_*x*") if (p / "s1").is_dir())
    if others:
        return others[0]
    raise FileNotFoundError(f"CORe50 PNG tree not found: looked for {root}/s1 and {root}/core50_<S>x<S>/s1")


def _filelist_dir(filelists_root: Path, name: str, run: int) -> Path:
    rel = SCENARIO_DIRS[name]
    short = rel.split("/")[-1]
    candidates = [filelists_root / rel, filelists_root / short, filelists_root / "batches_filelists" / short]
    for c in candidates:
        if c.is_dir():
            return c / f"run{run}"
    raise FileNotFoundError(f"filelists of scenario {name!r} not found: looked for "
                            + ", ".join(str(c) for c in candidates))


def read_filelist(path: Path) -> tuple[list[str], np.ndarray]:
    """Parse ``sX/oY/C_XX_YY_ZZZ.png label`` lines; a malformed line raises ValueError with file:line."""
    if not path.is_file():
        raise FileNotFoundError(f"filelist not found: {path}")
    paths: list[str] = []
    labels: list[int] = []
    try:
        lines = path.read_bytes().decode("utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: expected a UTF-8 filelist, got undecodable bytes at byte {exc.start}") from None
    for lineno, line in enumerate(lines, 1):
        text = line.strip()
        if not text:
            continue
        parts = text.split()
        try:
            if len(parts) != 2:
                raise ValueError(f"expected 2 fields, got {len(parts)}")
            parse_core50_path(parts[0])
            if not (parts[1].isascii() and parts[1].isdigit()) or len(parts[1]) > 6:
                raise ValueError(f"expected a label of ASCII digits in [0, {N_OBJECTS - 1}], got {parts[1][:30]!r}")
            label = int(parts[1])
            if label >= N_OBJECTS:
                raise ValueError(f"expected a label in [0, {N_OBJECTS - 1}], got {label}")
        except ValueError as exc:
            raise ValueError(f"{path}:{lineno}: malformed filelist line {text[:120]!r} "
                             f"(expected 'sX/oY/C_XX_YY_ZZZ.png label'): {exc}") from None
        paths.append(parts[0].replace("\\", "/"))
        labels.append(label)
    return paths, np.asarray(labels, np.int64)


class Core50Folder:
    """The PNG tree plus the official batch filelists; images are read with Pillow when asked for.

    ``root`` is the image tree (``core50_128x128`` / ``core50_32x32``) or a folder holding one;
    ``filelists_root`` holds ``batches_filelists/`` and ``NIC_v2_*`` (defaults to ``root``'s parent
    folder that has them).

    Example:
        >>> import tempfile
        >>> from firmware_sim.data.generator import GeneratorConfig, generate_core50
        >>> root = tempfile.mkdtemp()
        >>> _ = generate_core50(root, GeneratorConfig(frames=2, runs=1, forms=("png", "filelists")), progress=False)
        >>> scen = Core50Folder(root).scenario("nc", run=0)
        >>> len(scen.train_batches), scen.train_batches[0].images().shape
        (9, (160, 32, 32, 3))
    """

    def __init__(self, root: str | os.PathLike[str], filelists_root: str | os.PathLike[str] | None = None) -> None:
        self.image_root = _find_image_root(Path(root))
        if filelists_root is None:
            filelists_root = Path(root) if (Path(root) / "batches_filelists").is_dir() else self.image_root.parent
        self.filelists_root = Path(filelists_root)
        if not any((self.filelists_root / d).is_dir() for d in ("batches_filelists", "NIC_v2_79", "NI_inc")):
            raise FileNotFoundError(f"CORe50 filelists not found: looked for {self.filelists_root}/batches_filelists "
                                    f"and {self.filelists_root}/NIC_v2_*")
        self._catalog: dict[str, int] | None = None
        self._by_index: list[str] = []

    @property
    def catalog(self) -> dict[str, int]:
        """Every frame path in the tree -> its index in (session, object, frame) order."""
        if self._catalog is None:
            found = []
            for sdir in os.scandir(self.image_root):
                if not (sdir.is_dir() and re.fullmatch(r"s\d+", sdir.name)):
                    continue
                for odir in os.scandir(sdir.path):
                    if not (odir.is_dir() and re.fullmatch(r"o\d+", odir.name)):
                        continue
                    for f in os.scandir(odir.path):
                        if f.name.endswith(".png"):
                            rel = f"{sdir.name}/{odir.name}/{f.name}"
                            try:
                                found.append((parse_core50_path(rel), rel))
                            except ValueError:
                                logger.warning("skipping unexpected file %s", f.path)
            found.sort()
            self._by_index = [rel for _, rel in found]
            self._catalog = {rel: i for i, rel in enumerate(self._by_index)}
        return self._catalog

    def _read(self, paths: Sequence[str], image_size: int | None = None) -> np.ndarray:
        """Decode ``paths`` (relative to the tree) safely; resized to ``image_size`` when given."""
        images = []
        for p in paths:  # the file's way in of edge-agent learn/predict/run (one file, one model input)
            path = self.image_root / p
            images.append(load_image(path) if image_size is None else load_frame(path, (image_size, image_size)))
        if not images:
            return np.zeros((0, image_size or 0, image_size or 0, 3), np.uint8)
        shapes = {a.shape for a in images}
        if len(shapes) != 1:
            first = next(p for p, a in zip(paths, images) if a.shape != images[0].shape)
            raise ValueError(f"{self.image_root}: expected frames of one size {images[0].shape[1]}x{images[0].shape[0]}, "
                             f"got {sorted(shapes)} (first other: {first}); pass image_size")
        return np.stack(images)

    def scenario(self, name: str, run: int = 0, test: TestSet = "full", labels: LabelKind = "object",
                 image_size: int | None = None) -> Stream:
        """Same API as :meth:`Core50Arrays.scenario`; indices refer to :attr:`catalog`."""
        _check_scenario_args(name, test, labels, image_size)
        folder = _filelist_dir(self.filelists_root, name, run)
        if not folder.is_dir():
            runs = sorted(int(p.name[3:]) for p in folder.parent.glob("run*") if p.name[3:].isdigit())
            raise ValueError(f"unknown run {run!r} for scenario {name!r}; valid: {', '.join(map(str, runs))}")
        files = [folder / f"train_batch_{b:02d}_filelist.txt" for b in range(N_BATCHES[name])]
        files.append(folder / "test_filelist.txt")
        catalog = self.catalog
        batches = []
        for b, path in enumerate(files):
            paths, labs = read_filelist(path)
            if b == len(files) - 1 and test == "reduced":
                paths, labs = paths[::REDUCED_TEST_STEP], labs[::REDUCED_TEST_STEP]
            missing = [p for p in paths if p not in catalog]
            if missing:
                raise FileNotFoundError(f"{path}: {len(missing)} listed images not under {self.image_root}, "
                                        f"first: {missing[0]}")
            if labs.size and labs.max() >= N_OBJECTS:
                raise ValueError(f"{path}: expected labels in [0, {N_OBJECTS - 1}], got max {int(labs.max())}")
            idx = np.array([catalog[p] for p in paths], np.int64)
            batches.append(_make_batch(idx, labs, paths, labels, self._loader_for(image_size), image_size))
        n_classes = N_CATEGORIES if labels == "category" else N_OBJECTS
        test_files = [self.image_root / p for p in batches[-1].paths]
        identity = f"png|{self.image_root.resolve()}|{_stat_digest(test_files)}"
        return Stream(f"{name} run {run}", batches[:-1], batches[-1], n_classes, identity=identity)

    def _loader_for(self, image_size: int | None) -> Callable[[np.ndarray], np.ndarray]:
        """A loader reading exactly the frames at the requested catalog ``indices``."""
        by_index = self._by_index

        def load(indices: np.ndarray) -> np.ndarray:
            idx = np.asarray(indices, np.int64).reshape(-1)
            if idx.size and (idx.min() < 0 or idx.max() >= len(by_index)):
                raise ValueError(f"{self.image_root}: expected frame indices in [0, {len(by_index) - 1}], "
                                 f"got [{int(idx.min())}, {int(idx.max())}]")
            return self._read([by_index[i] for i in idx], image_size)

        return load


def open_core50(path: str | os.PathLike[str]) -> Core50Arrays | Core50Folder:
    """Open whichever form is present in ``path``: the array form first, else the PNG tree + filelists."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"CORe50 root not found: {root}")
    if all((root / n).is_file() for n in ARRAY_FILES):
        return Core50Arrays(root)
    try:
        return Core50Folder(root)
    except FileNotFoundError as exc:
        raise FileNotFoundError(
            f"no CORe50 form found in {root}: the array form needs {', '.join(ARRAY_FILES)}; "
            f"the folder form needs core50_<S>x<S>/s1... and batches_filelists/ ({exc})"
        ) from None
