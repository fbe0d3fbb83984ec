"""`edge-host` is quiet: TensorFlow's log noise filtered, a clear message without the host extra."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from host.quiet import is_noise

REPO = Path(__file__).resolve().parents[1]
HINT = 'pip install ".[host]" in the project folder'

# A device-only install: the edge extra (LiteRT, ONNX Runtime) is there, the host extra is not.
DEVICE_ONLY = """
import importlib.abc, sys
class _DeviceOnly(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {"tensorflow", "keras", "tf2onnx", "onnx"}:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, _DeviceOnly())
"""
RUN_CLI = "import runpy; runpy.run_module('host.cli', run_name='__main__', alter_sys=True)"

# Lines copied from a real `edge-host build` on TensorFlow 2.21 / LiteRT 2.3.
NOISE_LINES = [
    b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    b"I0000 00:00:1796116512.695748    4657 port.cc:153] oneDNN custom operations are on. You may see "
    b"slightly different numerical results due to floating-point round-off errors.",
    b"E0000 00:00:1796116518.381721    4657 node_def_util.cc:682] NodeDef mentions attribute "
    b"use_unbounded_threadpool which is not in the op definition: Op<name=MapDataset; signature=...>",
    b"fully_quantize: 0, inference_type: 6, input_inference_type: INT8, output_inference_type: INT8",
    b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.",
]
REAL_LINES = [
    b"E0000 00:00:1796116518.381721    4657 cuda_dnn.cc:535] Could not create cudnn handle",
    b"W0000 00:00:1796116518.381721    4657 node_def_util.cc:682] NodeDef mentions attribute foo",
    b"edge-host export: error: expected backbone.keras, not found",
    b"Traceback (most recent call last):",
    b"INFO: Created TensorFlow Lite GPU delegate.",
]


def _run(args: list[str], *, prelude: str = "", timeout: float = 120) -> subprocess.CompletedProcess[str]:
    code = prelude + RUN_CLI
    return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("line", NOISE_LINES)
def test_known_noise_is_recognised(line: bytes) -> None:
    assert is_noise(line) and is_noise(line + b"\n")


@pytest.mark.parametrize("line", REAL_LINES)
def test_real_messages_are_not_noise(line: bytes) -> None:
    assert not is_noise(line)


def test_filtered_stderr_drops_noise_from_the_descriptor_and_keeps_the_rest(tmp_path: Path) -> None:
    # Writes go straight to file descriptor 2, as TensorFlow's C++ code does, and through sys.stderr.
    code = (
        "import os, sys\n"
        "from host.quiet import filtered_stderr\n"
        f"noise = {NOISE_LINES!r}\n"
        "with filtered_stderr():\n"
        "    for line in noise:\n"
        "        os.write(2, line + b'\\n')\n"
        "    os.write(2, b'real C++ error\\n')\n"
        "    print('python warning', file=sys.stderr)\n"
        "    os.write(2, b'progress 50%\\r')\n"
        "print('after the block', file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stderr == b"real C++ error\npython warning\nprogress 50%\rafter the block\n"


def test_filtered_stderr_forwards_a_crash_message() -> None:
    # The process dies without cleaning up; the filter still drains and forwards what was written.
    code = (
        "import os\n"
        "from host.quiet import filtered_stderr\n"
        "with filtered_stderr():\n"
        "    os.write(2, b'F0000 fatal: check failed\\n')\n"
        "    os._exit(3)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, timeout=60)
    assert done.returncode == 3
    assert b"F0000 fatal: check failed" in done.stderr


@pytest.mark.parametrize("args", [
    ["pretrain", "--out", "runs/x"],
    ["export", "--run", "runs/x", "--name", "x"],
    ["export", "--run", "runs/x", "--no-onnx"],
    ["build", "--name", "x", "--epochs", "1"],
    ["export-head", "--model", "models/tiny"],
    ["-v", "pretrain", "--out", "runs/x"],
])
def test_device_only_install_names_the_extra_and_exits_2(args: list[str]) -> None:
    done = _run(args, prelude=DEVICE_ONLY)
    assert done.returncode == 2, (done.returncode, done.stderr)
    lines = done.stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{done.stderr}"
    assert HINT in lines[0] and "cannot be imported" in lines[0]
    assert "Traceback" not in done.stderr and done.stdout == ""


def test_device_only_install_still_shows_help() -> None:
    done = _run(["--help"], prelude=DEVICE_ONLY)
    assert done.returncode == 0, done.stderr
    assert "usage: edge-host" in done.stdout and "export-head" in done.stdout
    done = _run(["pretrain", "--help"], prelude=DEVICE_ONLY)
    assert done.returncode == 0 and "--epochs" in done.stdout


needs_tf = pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None,
                              reason="host extra (TensorFlow) not installed")


@needs_tf
@pytest.mark.tf
@pytest.mark.slow
def test_failed_command_prints_only_its_error_line(tmp_path: Path) -> None:
    # TensorFlow is imported (the host-extra check) before the error: its load-time lines are filtered.
    done = _run(["export", "--run", str(tmp_path / "missing"), "--out", str(tmp_path)])
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("edge-host export: error:"), done.stderr
    verbose = _run(["-v", "export", "--run", str(tmp_path / "missing"), "--out", str(tmp_path)])
    assert verbose.returncode == 2 and "edge-host export: error:" in verbose.stderr


@needs_tf
@pytest.mark.tf
@pytest.mark.slow
def test_build_prints_no_tensorflow_noise(tmp_path: Path) -> None:
    done = _run(["-q", "build", "--name", "q", "--out", str(tmp_path / "models"), "--run-dir", str(tmp_path / "run"),
                 "--epochs", "1", "--max-train-frames", "128"], timeout=600)
    assert done.returncode == 0, done.stderr
    err_lines = done.stderr.splitlines()
    assert not [line for line in err_lines if is_noise(line.encode())], done.stderr
    for text in ("retracing", "Statistics for quantized inputs", "InitializeLog", "oneDNN"):
        assert text not in done.stderr, done.stderr
    assert "TensorSpec" not in done.stdout and "Saved artifact" not in done.stdout, done.stdout
    assert "backbone_int8.tflite" in done.stdout and "done in" in done.stdout
