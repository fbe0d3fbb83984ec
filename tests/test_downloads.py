"""`host.downloads.pip_download`: a wheel fetched once, whole, even by processes asking at once.

pip downloads a local wheel file exactly as it downloads one from an index (no network here): the
tests build a small real wheel and ask for its path.
"""

from __future__ import annotations

import threading
import zipfile
from pathlib import Path

import pytest

from host.downloads import pip_download


def _wheel(folder: Path) -> Path:
    path = folder / "demo_pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("demo_pkg/__init__.py", "VALUE = 1\n" * 2000)
        zf.writestr("demo_pkg-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: demo-pkg\nVersion: 1.0\n")
        zf.writestr("demo_pkg-1.0.dist-info/WHEEL",
                    "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr("demo_pkg-1.0.dist-info/RECORD", "")
    return path


def test_concurrent_callers_get_the_same_whole_wheel_and_no_staging_is_left(tmp_path: Path) -> None:
    source = _wheel(tmp_path)
    cache = tmp_path / "cache"
    got: list[Path] = []
    errors: list[BaseException] = []

    def fetch() -> None:
        try:
            got.append(pip_download(str(source), cache, "demo_pkg-*.whl"))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=fetch) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and len(got) == 3
    assert {p.name for p in got} == {source.name}
    assert all(p.read_bytes() == source.read_bytes() for p in got)
    assert sorted(p.name for p in cache.iterdir()) == [source.name]   # no .download-* folder left
    assert pip_download("never-fetched==0", cache, "demo_pkg-*.whl") == got[0]   # cached: pip is not asked


def test_a_wheel_that_cannot_be_had_names_the_requirement_and_leaves_nothing(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(FileNotFoundError, match=r"could not download .*missing\.whl.*expected a file demo_pkg-\*\.whl"):
        pip_download(str(tmp_path / "missing.whl"), cache, "demo_pkg-*.whl")
    assert list(cache.iterdir()) == []
