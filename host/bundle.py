"""``edge-host bundle``: one verified archive of a model folder, to carry from the host to a device.

The bundle is an uncompressed tar (model files barely compress): ``<name>/bundle.json`` first (format,
version, name, and each file's bytes and sha256, ``manifest.json`` included), then
``<name>/manifest.json`` and every backbone and head file the manifest lists. Members are written in
a fixed order with zeroed owner and time fields, so one model folder always gives the same bytes.
The device side (`edge.model_store.install_bundle`, ``edge-agent models install``) verifies it all.

Example:
    >>> from host.bundle import bundle_model                                  # doctest: +SKIP
    >>> bundle_model("models/efficientnet_lite0_224", "lite0.tar")            # doctest: +SKIP
    PosixPath('lite0.tar')
"""

from __future__ import annotations

import io
import json
import logging
import os
import tarfile
from pathlib import Path

from edge.manifest import MANIFEST_NAME, load_manifest, sha256_file
from edge.model_store import BUNDLE_FORMAT, BUNDLE_INDEX, BUNDLE_VERSION, _check_name

log = logging.getLogger(__name__)


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def bundle_model(model_dir: str | os.PathLike[str], out: str | os.PathLike[str], *, name: str | None = None,
                 overwrite: bool = False) -> Path:
    """Verify ``model_dir`` (every sha256 of its manifest) and write its bundle to ``out``.

    ``name``: the name it installs under on the device (default: the manifest's name). The file is
    written next to ``out`` and renamed into place, so a failed run leaves no half bundle.
    """
    model_dir = Path(model_dir)
    out = Path(out)
    manifest = load_manifest(model_dir, verify=True)
    name = _check_name(name or manifest.name, "bundle name")
    if out.exists() and not overwrite:
        raise FileExistsError(f"bundle: {out} exists (expected a new file, or --overwrite)")
    paths = [MANIFEST_NAME] + [f.path for f in manifest.files] + [h.path for h in manifest.heads]
    sizes = {p: (model_dir / p).stat().st_size for p in paths}
    files = {p: {"bytes": sizes[p], "sha256": sha256_file(model_dir / p)} for p in paths}
    index = json.dumps({"format": BUNDLE_FORMAT, "version": BUNDLE_VERSION, "name": name,
                        "fingerprint": manifest.fingerprint, "files": files}, indent=2, sort_keys=True).encode()
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        with tarfile.open(tmp, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            tar.addfile(_tarinfo(f"{name}/{BUNDLE_INDEX}", len(index)), io.BytesIO(index))
            for p in paths:
                with open(model_dir / p, "rb") as handle:
                    tar.addfile(_tarinfo(f"{name}/{p}", sizes[p]), handle)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    log.info("bundled %s (%d files, %d bytes) into %s", model_dir, len(paths), out.stat().st_size, out)
    return out
