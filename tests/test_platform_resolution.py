"""The device install resolves to wheels for each supported board's OS and Python (issue 26).

A Pi or a Jetson is aarch64; this machine is not. pip resolves *for* another platform when given
``--platform``, ``--python-version``, ``--implementation cp`` and ``--only-binary=:all:``: a dependency
with no aarch64 wheel for that Python (or none for that glibc) fails the resolution here, before a user
meets it on the board. ``pip install --dry-run --report`` resolves exactly as ``pip download`` does but
reads the wheels' metadata only (no 100 MB of downloads per pair); the report names the wheel picked.

The project itself is not on PyPI: the test resolves its dependency list, read from pyproject.toml (and
``deploy/requirements-jetson.txt`` for JetPack, which the README installs instead of the extra).
Skipped, with the reason, only when the package index cannot be reached.

Supported pairs (README, "Deploying on a Raspberry Pi or a Jetson"); glibc sets the manylinux level
(every ``manylinux_2_X`` from 2_17 up to it, and ``manylinux2014``, are passed: pip does not widen them):

* Raspberry Pi OS bookworm (Debian 12): CPython 3.11, glibc 2.36, with deploy/constraints-numpy1.txt
* Raspberry Pi OS trixie (Debian 13): CPython 3.13, glibc 2.41
* JetPack 6 (Ubuntu 22.04): CPython 3.10, glibc 2.35 (onnxruntime-gpu comes from NVIDIA's index)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS_NUMPY1 = ROOT / "deploy" / "constraints-numpy1.txt"
JETSON_REQUIREMENTS = ROOT / "deploy" / "requirements-jetson.txt"


def _project() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as fh:
        return tomllib.load(fh)["project"]


def _pip(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.fixture(scope="module")
def index_reachable(tmp_path_factory) -> None:
    """Skip (with pip's message) when the package index cannot be reached at all."""
    out = tmp_path_factory.mktemp("probe")
    proc = _pip(["download", "--no-deps", "--only-binary=:all:", "-q", "--dest", str(out), "tqdm>=4.66,<5"],
                timeout=120)
    if proc.returncode != 0:
        pytest.skip(f"package index unreachable (pip download tqdm failed): {proc.stderr.strip()[-300:]}")


def _resolve(tmp_path: Path, python: str, glibc: str, requirements: list[str],
             constraints: Path | None = None) -> dict[str, str]:
    """{package name: wheel file name} pip picks for aarch64 CPython ``python`` on glibc ``glibc``."""
    report = tmp_path / f"report-{python}.json"
    args = ["install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(report),
            "--target", str(tmp_path / "target"), "--only-binary=:all:", "--implementation", "cp",
            "--python-version", python]
    # pip does not widen a manylinux_2_X platform to the lower glibc levels: name each one.
    major, minor = (int(p) for p in glibc.split("."))
    for level in range(minor, 16, -1):
        args += ["--platform", f"manylinux_{major}_{level}_aarch64"]
    args += ["--platform", "manylinux2014_aarch64"]
    if constraints is not None:
        args += ["-c", str(constraints)]
    proc = _pip(args + requirements)
    assert proc.returncode == 0, (
        f"aarch64 CPython {python} (glibc {glibc}): expected every requirement to resolve to a wheel, "
        f"got exit {proc.returncode}: {proc.stderr.strip()[-1500:]}")
    picked = {item["metadata"]["name"].lower().replace("_", "-"): item["download_info"]["url"].rsplit("/", 1)[-1]
              for item in json.loads(report.read_text())["install"]}
    for name, wheel in picked.items():
        tag = wheel.removesuffix(".whl").rsplit("-", 1)[-1]
        assert tag == "any" or tag.endswith("aarch64"), f"{name}: expected an aarch64 or pure wheel, got {wheel}"
    return picked


def _version(wheel: str) -> tuple[int, ...]:
    return tuple(int(p) for p in wheel.split("-")[1].split(".")[:2])


def _edge_requirements(*extras: str) -> list[str]:
    project = _project()
    reqs = list(project["dependencies"])
    for extra in extras:
        reqs += project["optional-dependencies"][extra]
    return reqs


def test_pi_os_bookworm_python311_with_numpy1_constraints(index_reachable, tmp_path):
    picked = _resolve(tmp_path, "3.11", "2.36", _edge_requirements("edge", "onnx"), CONSTRAINTS_NUMPY1)
    assert {"numpy", "ai-edge-litert", "opencv-python-headless", "onnxruntime", "starlette", "uvicorn",
            "prometheus-client"} <= set(picked), sorted(picked)
    # apt's python3-picamera2 is built against NumPy 1.24: the venv must keep NumPy 1.x.
    assert _version(picked["numpy"]) < (2, 0), f"numpy: expected 1.x on bookworm, got {picked['numpy']}"


def test_pi_os_trixie_python313(index_reachable, tmp_path):
    picked = _resolve(tmp_path, "3.13", "2.41", _edge_requirements("edge", "onnx"))
    assert {"numpy", "ai-edge-litert", "opencv-python-headless", "onnxruntime"} <= set(picked), sorted(picked)
    assert _version(picked["numpy"]) >= (2, 0), picked["numpy"]


def test_jetpack6_python310_what_pypi_serves(index_reachable, tmp_path):
    """JetPack 6: the README's PyPI part (requirements-jetson.txt); onnxruntime-gpu is NVIDIA's, not PyPI's."""
    requirements = [line.strip() for line in JETSON_REQUIREMENTS.read_text().splitlines()
                    if line.strip() and not line.lstrip().startswith("#")]
    picked = _resolve(tmp_path, "3.10", "2.35", requirements, CONSTRAINTS_NUMPY1)
    assert {"numpy", "ai-edge-litert", "starlette", "uvicorn", "prometheus-client"} <= set(picked), sorted(picked)
    assert "opencv-python-headless" not in picked, "it would shadow JetPack's OpenCV (GStreamer, CSI camera)"
    assert _version(picked["numpy"]) < (2, 0), picked["numpy"]
