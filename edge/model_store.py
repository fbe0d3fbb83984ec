"""Models on a device: ``--model NAME`` resolution, verified bundle install, and the models folder.

A model is a folder holding ``manifest.json`` and the files it lists (`edge.manifest`). ``--model``
takes a folder or a NAME; a name is looked up in the models folder, then among the models shipped in
the package (`edge.models`). The models folder is ``$EDGE_MODELS``, else ``$STATE_DIRECTORY/models``
(systemd sets it for the service: ``/var/lib/edge-agent/models``), else ``/var/lib/edge-agent/models``
when that folder exists, else ``~/.local/share/edge-agent/models`` (``$XDG_DATA_HOME``).

A bundle (``edge-host bundle``) is one uncompressed tar file: ``<name>/bundle.json`` first, then
``<name>/manifest.json`` and every file the manifest lists. ``bundle.json`` records each member's
bytes and sha256 (the manifest's own sha256 included, so a swapped manifest is caught too).
`install_bundle` checks every member's name, type and size before reading it, streams each into a
hidden staging folder inside the models folder while hashing it, compares expected against got,
loads the staged manifest with every checksum verified, and only then renames the staging folder
into place: a tampered, truncated or incomplete bundle leaves the models folder as it was.

Example:
    >>> import tempfile
    >>> from edge.model_store import list_models, resolve_model
    >>> resolve_model("tiny").name                          # a packaged model, by name
    'tiny'
    >>> sorted(m.name for m in list_models(tempfile.mkdtemp()) if m.source == "package")
    ['efficientnet_lite0_224', 'tiny']
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from edge.errors import ChecksumError, ConfigError, ManifestError
from edge.manifest import MANIFEST_NAME, load_manifest, parse_json_bounded
from edge.models import packaged_model_dir, packaged_model_names

log = logging.getLogger(__name__)

__all__ = ["BUNDLE_FORMAT", "BUNDLE_INDEX", "BundleError", "InstalledModel", "add_models_subparser",
           "default_models_dir", "default_precision", "install_bundle", "list_models", "read_bundle_index", "resolve_model"]

BUNDLE_FORMAT = "edge-model-bundle"
BUNDLE_VERSION = 1
BUNDLE_INDEX = "bundle.json"
SERVICE_MODELS_DIR = Path("/var/lib/edge-agent/models")
#: A model name: also a folder name and the bundle's top folder (no separators, no leading dot).
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
FILE_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MAX_MEMBERS = 64
MAX_INDEX_BYTES = 1 << 20
#: Largest bundle accepted by default (the shipped EfficientNet-Lite0 files are ~30 MB).
MAX_BUNDLE_BYTES = 2 << 30


class BundleError(ManifestError):
    """A bundle is malformed, incomplete, tampered with, or does not fit the models folder."""


def default_models_dir() -> Path:
    """The models folder (see the module docstring for the order)."""
    env = os.environ.get("EDGE_MODELS")
    if env:
        return Path(env)
    state = os.environ.get("STATE_DIRECTORY")
    if state:
        return Path(state.split(":")[0]) / "models"
    if SERVICE_MODELS_DIR.is_dir():
        return SERVICE_MODELS_DIR
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "edge-agent" / "models"


def _check_name(name: str, what: str = "model name") -> str:
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise ConfigError(f"{what}: expected 1-64 characters of letters, digits, '.', '_' or '-' (not starting "
                          f"with '.', '_' or '-'), got {name!r:.80}")
    return name


def _looks_like_path(text: str) -> bool:
    return os.sep in text or (os.altsep is not None and os.altsep in text) or text.startswith(".") or text == "~"


def resolve_model(name_or_path: str | os.PathLike[str], models_dir: str | os.PathLike[str] | None = None) -> Path:
    """``--model``'s value -> the model folder.

    A folder holding ``manifest.json``, or any value with a path separator, is taken as a path.
    Otherwise it is a name: ``models_dir/NAME`` (default `default_models_dir`) first, then the
    package's models, then a folder of that name in the current directory. Raises `ConfigError`
    naming where it looked and the names available.
    """
    text = os.fspath(name_or_path)
    path = Path(text).expanduser()
    if (path / MANIFEST_NAME).is_file() or _looks_like_path(text) or not NAME_PATTERN.match(text):
        return path
    root = Path(models_dir) if models_dir is not None else default_models_dir()
    installed = root / text
    if (installed / MANIFEST_NAME).is_file():
        return installed
    packaged = packaged_model_dir(text)
    if (packaged / MANIFEST_NAME).is_file():
        return packaged
    if path.is_dir():   # a folder without a manifest: loading it names what is missing
        return path
    names = sorted({m.name for m in list_models(root)})
    raise ConfigError(f"--model {text!r}: expected a model folder or the name of an installed or packaged model "
                      f"(looked in {root} and the package), got neither; available: {', '.join(names) or 'none'}")


def default_precision(model_dir: str | os.PathLike[str], runtime: str = "auto") -> str:
    """The precision to open ``model_dir`` with when none is asked for.

    ``fp32`` where the runtime has an fp32 file; on LiteRT a model without an fp32 TFLite file (the
    shipped EfficientNet-Lite0: int8 TFLite + fp32 ONNX) opens as ``int8``. ``runtime="auto"``
    decides as `edge.runtimes.open_backbone` does (LiteRT when installed).

    Example:
        >>> from edge.models import imagenet_model_dir, tiny_model_dir
        >>> default_precision(tiny_model_dir(), "litert"), default_precision(imagenet_model_dir(), "litert")
        ('fp32', 'int8')
        >>> default_precision(imagenet_model_dir(), "onnx")
        'fp32'
    """
    from edge.runtimes import runtime_available

    if runtime == "auto":
        runtime = "litert" if runtime_available("litert") else "onnx"
    if runtime != "litert":
        return "fp32"
    have = {(f.format, f.precision) for f in load_manifest(model_dir, verify=False).files}
    return "fp32" if ("tflite", "fp32") in have or ("tflite", "int8") not in have else "int8"


@dataclass(frozen=True)
class InstalledModel:
    """One model a device can use by name."""

    name: str
    source: str            # "installed" or "package"
    path: Path
    architecture: str | None
    input_size: int | None
    embedding_size: int | None
    fingerprint: str | None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "source": self.source, "path": str(self.path),
                "architecture": self.architecture, "input_size": self.input_size,
                "embedding_size": self.embedding_size, "fingerprint": self.fingerprint, "error": self.error}


def _describe(name: str, source: str, path: Path) -> InstalledModel:
    try:
        m = load_manifest(path, verify=False)
    except (ManifestError, OSError, ValueError) as exc:
        return InstalledModel(name, source, path, None, None, None, None, " ".join(str(exc).split())[:200])
    return InstalledModel(name, source, path, m.architecture, int(m.input_shape[0]), int(m.embedding_size),
                          m.fingerprint)


def list_models(models_dir: str | os.PathLike[str] | None = None) -> list[InstalledModel]:
    """Installed models (folders of ``models_dir`` holding a manifest), then the packaged ones."""
    root = Path(models_dir) if models_dir is not None else default_models_dir()
    found: list[InstalledModel] = []
    if root.is_dir():
        for child in sorted(root.iterdir()):
            if NAME_PATTERN.match(child.name) and (child / MANIFEST_NAME).is_file():
                found.append(_describe(child.name, "installed", child))
    for name in packaged_model_names():
        found.append(_describe(name, "package", packaged_model_dir(name)))
    return found


def _expect_member(member: tarfile.TarInfo, what: str) -> None:
    if not member.isfile():
        kind = "a link" if member.issym() or member.islnk() else "a folder" if member.isdir() else "not a file"
        raise BundleError(f"bundle member {member.name!r:.120}: expected a regular file, got {kind}")


def read_bundle_index(tar: tarfile.TarFile, bundle: str | os.PathLike[str] = "bundle") -> tuple[str, dict[str, Any]]:
    """The bundle's name and ``bundle.json`` (its first member), validated."""
    first = tar.next()
    if first is None:
        raise BundleError(f"bundle {bundle}: expected {BUNDLE_INDEX} as the first member, got an empty archive")
    parts = first.name.split("/")
    if len(parts) != 2 or parts[1] != BUNDLE_INDEX:
        raise BundleError(f"bundle {bundle}: expected NAME/{BUNDLE_INDEX} as the first member, got {first.name!r:.120}")
    _expect_member(first, "index")
    name = _check_name(parts[0], f"bundle {bundle}: model name")
    if first.size > MAX_INDEX_BYTES:
        raise BundleError(f"bundle {bundle}: expected {BUNDLE_INDEX} of at most {MAX_INDEX_BYTES} bytes, "
                          f"got {first.size}")
    handle = tar.extractfile(first)
    assert handle is not None
    index = parse_json_bounded(handle.read(MAX_INDEX_BYTES + 1), f"bundle {bundle}: {BUNDLE_INDEX}")
    if not isinstance(index, dict) or index.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"bundle {bundle}: expected {BUNDLE_INDEX} with format {BUNDLE_FORMAT!r}, got "
                          f"{(index.get('format') if isinstance(index, dict) else type(index).__name__)!r:.80}")
    if index.get("version") != BUNDLE_VERSION:
        raise BundleError(f"bundle {bundle}: expected {BUNDLE_INDEX} version {BUNDLE_VERSION}, got "
                          f"{index.get('version')!r:.40}")
    if index.get("name") != name:
        raise BundleError(f"bundle {bundle}: expected the index name to be the folder name {name!r}, got "
                          f"{index.get('name')!r:.80}")
    files = index.get("files")
    if not isinstance(files, dict) or not files or len(files) > MAX_MEMBERS:
        raise BundleError(f"bundle {bundle}: expected 1-{MAX_MEMBERS} files in {BUNDLE_INDEX}, got "
                          f"{len(files) if isinstance(files, dict) else type(files).__name__}")
    total = 0
    for path, entry in files.items():
        if not FILE_PATTERN.match(path) or path == BUNDLE_INDEX:
            raise BundleError(f"bundle {bundle}: expected plain file names in {BUNDLE_INDEX}, got {path!r:.120}")
        ok = (isinstance(entry, dict) and isinstance(entry.get("bytes"), int) and entry["bytes"] >= 0
              and isinstance(entry.get("sha256"), str) and re.fullmatch(r"[0-9a-f]{64}", entry["sha256"]))
        if not ok:
            raise BundleError(f"bundle {bundle}: {path}: expected {{'bytes': int >= 0, 'sha256': 64 hex}}, "
                              f"got {entry!r:.120}")
        total += entry["bytes"]
    if MANIFEST_NAME not in files:
        raise BundleError(f"bundle {bundle}: expected {MANIFEST_NAME} among the files, got {sorted(files)}")
    if total > MAX_BUNDLE_BYTES:
        raise BundleError(f"bundle {bundle}: expected at most {MAX_BUNDLE_BYTES} bytes of files, got {total}")
    return name, index


def _copy_hashed(src: IO[bytes], dst: IO[bytes], limit: int) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    while True:
        chunk = src.read(min(1 << 20, limit + 1 - size))
        if not chunk:
            break
        size += len(chunk)
        if size > limit:
            break
        digest.update(chunk)
        dst.write(chunk)
    return size, digest.hexdigest()


def install_bundle(bundle: str | os.PathLike[str], models_dir: str | os.PathLike[str] | None = None, *,
                   name: str | None = None, overwrite: bool = False) -> Path:
    """Verify ``bundle`` and install it as ``models_dir/NAME``; returns that folder.

    Raises `BundleError` / `ChecksumError` (expected vs got) and leaves ``models_dir`` untouched on
    any failure. ``name`` installs under another name; an existing model is replaced only with
    ``overwrite``; a packaged model's name is refused (it would shadow the package's).
    """
    root = Path(models_dir) if models_dir is not None else default_models_dir()
    bundle = Path(bundle)
    if not bundle.is_file():
        raise BundleError(f"bundle: expected a bundle file (edge-host bundle), got {bundle} (not a file)")
    try:
        tar = tarfile.open(bundle, mode="r:*")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BundleError(f"bundle {bundle}: expected a tar archive made by edge-host bundle, got {exc}") from None
    with tar:
        try:
            bundled_name, index = read_bundle_index(tar, bundle)
            target_name = _check_name(name if name is not None else bundled_name)
            if target_name in packaged_model_names():
                raise BundleError(f"bundle {bundle}: expected a name other than the packaged models' "
                                  f"({', '.join(packaged_model_names())}), got {target_name!r} (use --name)")
            target = root / target_name
            if target.exists() and not overwrite:
                raise BundleError(f"models folder {root}: {target_name} is already installed (expected a new "
                                  "name, or --overwrite)")
            created = not root.exists()
            root.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".install-{target_name}-", dir=root))
            try:
                _extract_verified(tar, bundle, bundled_name, index, staging)
                load_manifest(staging, verify=True)   # the manifest's own sha256s and schema
                _swap_into_place(staging, target)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                if created:
                    with contextlib.suppress(OSError):
                        root.rmdir()
                raise
        except (tarfile.TarError, EOFError) as exc:
            raise BundleError(f"bundle {bundle}: expected a complete tar archive, got {exc}") from None
    log.info("installed %s from %s into %s", target_name, bundle, target)
    return target


def _extract_verified(tar: tarfile.TarFile, bundle: Path, name: str, index: dict[str, Any], staging: Path) -> None:
    expected: dict[str, dict[str, Any]] = index["files"]
    seen: set[str] = set()
    for member in tar:
        if member.name == f"{name}/{BUNDLE_INDEX}" and not seen and member.offset == 0:
            continue   # the index, read already (TarFile iteration starts again from the first member)
        if len(seen) >= MAX_MEMBERS:
            raise BundleError(f"bundle {bundle}: expected at most {len(expected)} members, got more")
        parts = member.name.split("/")
        if len(parts) != 2 or parts[0] != name or parts[1] not in expected:
            raise BundleError(f"bundle {bundle}: expected members {name}/<a file of {BUNDLE_INDEX}>, got "
                              f"{member.name!r:.120}")
        _expect_member(member, "file")
        path = parts[1]
        if path in seen:
            raise BundleError(f"bundle {bundle}: {path}: expected once, got a second copy")
        entry = expected[path]
        if member.size != entry["bytes"]:
            raise BundleError(f"bundle {bundle}: {path}: expected {entry['bytes']} bytes, got {member.size}")
        src = tar.extractfile(member)
        assert src is not None
        with open(staging / path, "xb") as dst:
            size, digest = _copy_hashed(src, dst, entry["bytes"])
        if size != entry["bytes"]:
            raise BundleError(f"bundle {bundle}: {path}: expected {entry['bytes']} bytes, got {size} (truncated)")
        if digest != entry["sha256"]:
            raise ChecksumError(f"bundle {bundle}: {path}: expected sha256 {entry['sha256']}, got {digest}")
        seen.add(path)
    missing = sorted(set(expected) - seen)
    if missing:
        raise BundleError(f"bundle {bundle}: expected {len(expected)} files, got {len(seen)} (missing: "
                          f"{', '.join(missing)})")


def _swap_into_place(staging: Path, target: Path) -> None:
    """Rename ``staging`` to ``target``; an existing ``target`` is moved aside first and removed after."""
    old = None
    if target.exists():
        old = target.with_name(f".old-{target.name}-{os.getpid()}")
        os.replace(target, old)
    try:
        os.replace(staging, target)
    except OSError:
        if old is not None:
            os.replace(old, target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    try:
        fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # pragma: no cover - platforms without directory fsync
        pass


# ---------------------------------------------------------------- edge-agent models ...

def add_models_subparser(subparsers: Any) -> None:
    """``edge-agent models list|install``: called once from `edge.cli.build_parser`."""
    models = subparsers.add_parser("models", help="list the models a device can use by name; install a bundle",
                                   description="Models by name: the models folder ($EDGE_MODELS, else "
                                   "$STATE_DIRECTORY/models, else /var/lib/edge-agent/models when it exists, "
                                   "else ~/.local/share/edge-agent/models), then the package's.")
    verbs = models.add_subparsers(dest="models_command", required=True)
    listing = verbs.add_parser("list", help="installed and packaged models")
    listing.add_argument("--models-dir", default=None, help="models folder (default: see edge-agent models -h)")
    listing.add_argument("--json", action="store_true", help="one JSON object per model")
    listing.set_defaults(func=_cmd_list)
    install = verbs.add_parser("install", help="verify a bundle (edge-host bundle) and install it by name")
    install.add_argument("bundle", help="the bundle file (.tar) made by edge-host bundle")
    install.add_argument("--models-dir", default=None, help="models folder (default: see edge-agent models -h)")
    install.add_argument("--name", default=None, help="install under this name (default: the bundle's)")
    install.add_argument("--overwrite", action="store_true", help="replace an installed model of that name")
    install.set_defaults(func=_cmd_install)


def _cmd_list(args: argparse.Namespace) -> int:
    for model in list_models(args.models_dir):
        if args.json:
            print(json.dumps(model.to_dict()))
        else:
            what = model.error or f"{model.architecture} {model.input_size}px, {model.embedding_size}-d"
            print(f"{model.name}\t{model.source}\t{what}\t{model.path}")
    return 0


def _cmd_install(args: argparse.Namespace) -> int:
    target = install_bundle(args.bundle, args.models_dir, name=args.name, overwrite=args.overwrite)
    manifest = load_manifest(target, verify=False)
    print(f"installed {target.name} ({manifest.architecture}, {len(manifest.files)} files verified) in {target}; "
          f"use it with --model {target.name}")
    return 0
