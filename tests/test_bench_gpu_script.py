"""bench/gpu.sh on a machine without a GPU: says so clearly and exits 0 (no venv is built)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu.sh"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=60, cwd=ROOT)


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None,
                    reason="nvidia-smi is installed here: the CPU-only path is not the one this machine takes")
def test_without_a_gpu_it_says_so_and_exits_0_before_building_anything(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    done = _run("--venv", str(venv))  # no --no-venv: the GPU check must come before the venv
    assert done.returncode == 0, done.stderr
    assert "no GPU found" in done.stdout and "exiting 0" in done.stdout
    assert not venv.exists()
    again = _run("--no-venv")
    assert again.returncode == 0 and "no GPU found" in again.stdout


def test_unknown_option_is_a_usage_error_and_help_lists_the_steps() -> None:
    bad = _run("--bogus")
    assert bad.returncode == 2 and "unknown option '--bogus'" in bad.stderr
    helped = _run("--help")
    assert helped.returncode == 0 and "--no-venv" in helped.stdout and "-gpu.{json,md}" in helped.stdout
