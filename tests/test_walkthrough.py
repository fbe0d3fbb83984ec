"""The README's device walk-throughs, run as written (issue 26).

Every line of the ``bash`` blocks under "Raspberry Pi OS 64-bit", "Jetson" and "As a service" is run by
bash in a fresh virtual environment on this x86 machine, a stand-in for the board: the same commands,
the wheels PyPI has for x86 instead of aarch64 (tests/test_platform_resolution.py resolves the aarch64
ones). Only these rewrites are made, each named by ``_rewrite``:

* ``sudo`` is dropped; ``/opt/edge-agent/venv``, ``/tmp``, ``/etc/...`` point into a temporary folder;
* ``cd edge-continual`` ("your copy of this repository") enters a copy of this working tree
  (``git ls-files``: tracked and untracked-not-ignored files);
* ``python3`` is the stand-in interpreter: Debian bookworm's ``/usr/bin/python3`` (3.11, apt's
  ``python3-numpy`` 1.24.2, exactly Pi OS bookworm's) when present, for JetPack pyenv's 3.10;
* lines that cannot run here are skipped and listed in the test's output: ``apt install`` (would change
  this machine; ``python3-picamera2`` is not in Debian, only in Raspberry Pi OS), ``useradd``,
  ``systemctl``/``journalctl`` (no systemd as PID 1 here); NVIDIA's ``onnxruntime-gpu`` index
  (aarch64-only wheels, not reachable) is replaced by PyPI's ``onnxruntime``; JetPack's OpenCV (GStreamer,
  CSI camera) by ``opencv-python-headless<4.12``. A CSI or Pi camera cannot be tried here at all.

After each block the test checks what the block promises: the packages import, NumPy stays 1.x where
apt's libraries need it, ``edge-agent`` learns and predicts with the packaged default model from
another folder, and the service's own ExecStart runs with its HTTP API, answers ``/status`` and stops
cleanly on SIGTERM. Each install takes one to three minutes (marked slow).
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
HEADINGS = {"pi": "### Raspberry Pi OS 64-bit (Pi 4 / 5)", "jetson": "### Jetson (JetPack 6, Python 3.10)",
            "service": "### As a service (both boards)"}
DEBIAN_PYTHON = Path("/usr/bin/python3")


def _block_lines(key: str) -> list[str]:
    """The command lines of the ``bash`` blocks of one README section (until the next heading)."""
    text = README.read_text()
    start = text.index(HEADINGS[key]) + len(HEADINGS[key])
    end = re.compile(r"^#{1,3} ", re.M).search(text, start)
    section = text[start:end.start() if end else len(text)]
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", section, re.S):
        lines += [line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert lines, f"README {HEADINGS[key]}: expected a bash block, got none"
    return lines


class Walk:
    """Rewrites README lines for this machine (see the module docstring) and runs them in one bash."""

    def __init__(self, tmp: Path, python: str) -> None:
        self.tmp, self.python = tmp, python
        self.venv = tmp / "opt" / "edge-agent" / "venv"
        self.etc = tmp / "etc"
        self.scratch = tmp / "scratch"
        self.checkout = tmp / "edge-continual"
        self.skipped: list[str] = []
        for folder in (self.scratch, self.etc / "systemd" / "system", self.venv.parent):
            folder.mkdir(parents=True, exist_ok=True)
        _copy_working_tree(self.checkout)

    def _rewrite(self, line: str) -> str | None:
        cmd = line.split("  #", 1)[0].strip()
        if re.match(r"(sudo )?(apt|apt-get) ", cmd):
            self.skipped.append(f"{cmd}  (apt: would change this machine; python3-picamera2 is in Raspberry Pi OS only)")
            return None
        if re.match(r"(sudo )?useradd ", cmd):
            self.skipped.append(f"{cmd}  (would add a system user to this machine)")
            return None
        if re.match(r"(sudo )?(systemctl|journalctl) ", cmd):
            self.skipped.append(f"{cmd}  (no systemd as PID 1 here)")
            return None
        if "--index-url https://pypi.jetson-ai-lab" in cmd:
            self.skipped.append(f"{cmd}  (NVIDIA's aarch64 index: replaced by PyPI's onnxruntime)")
            cmd = '/opt/edge-agent/venv/bin/pip install "onnxruntime>=1.20,<2"'
        cmd = re.sub(r"(^|&& |\| )sudo ", r"\1", cmd)
        # /tmp and /etc first: the temporary folder that replaces them lies under /tmp itself.
        cmd = re.sub(r"(?<![\w/])/tmp(?=[/ ]|$)", str(self.scratch), cmd)
        cmd = re.sub(r"(?<![\w/])/etc/(?=[\w])", f"{self.etc}/", cmd)
        cmd = cmd.replace("/opt/edge-agent/venv", str(self.venv))
        cmd = re.sub(r"^cd edge-continual\b", f"cd {shlex.quote(str(self.checkout))}", cmd)
        cmd = re.sub(r"^python3 ", f"{shlex.quote(self.python)} ", cmd)
        return cmd

    def run(self, lines: list[str], timeout: float = 900) -> str:
        script = ["set -euo pipefail", f"cd {shlex.quote(str(self.tmp))}"]
        script += [cmd for cmd in map(self._rewrite, lines) if cmd is not None]
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        env["PATH"] = "/usr/local/bin:/usr/bin:/bin"
        proc = subprocess.run(["bash", "-c", "\n".join(script)], capture_output=True, text=True,
                              timeout=timeout, env=env)
        print("skipped here:\n  " + "\n  ".join(self.skipped))
        assert proc.returncode == 0, (f"walk-through: expected exit 0, got {proc.returncode}\nscript:\n"
                                      + "\n".join(script) + f"\nstderr:\n{proc.stderr[-3000:]}")
        return proc.stdout

    def py(self, code: str) -> str:
        proc = subprocess.run([str(self.venv / "bin" / "python"), "-c", code], capture_output=True, text=True,
                              timeout=120, cwd=self.scratch)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc.stdout


def _find_python(version: str) -> str | None:
    """A working CPython ``version`` interpreter (``/usr/bin``, pyenv's versions, PATH), or None."""
    import glob

    candidates = [f"/usr/bin/python{version}", *sorted(glob.glob(os.path.expanduser(
        f"~/.pyenv/versions/{version}.*/bin/python{version}"))), shutil.which(f"python{version}")]
    for candidate in filter(None, candidates):
        if not os.path.exists(candidate):
            continue
        proc = subprocess.run([candidate, "-c", "import sys, venv; print('%d.%d' % sys.version_info[:2])"],
                              capture_output=True, text=True)
        if proc.returncode == 0 and proc.stdout.strip() == version:
            return candidate
    return None


def _copy_working_tree(dest: Path) -> None:
    """Tracked and untracked-not-ignored files of this checkout (symbolic links kept as links)."""
    proc = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"not a git checkout: {proc.stderr.strip()}")
    for name in filter(None, proc.stdout.split("\0")):
        src, dst = ROOT / name, dest / name
        if not src.exists() and not src.is_symlink():
            continue  # deleted in the working tree
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            os.symlink(os.readlink(src), dst)
        else:
            shutil.copy2(src, dst)


def _learn_and_predict(walk: Walk) -> dict:
    """edge-agent learn / predict / status with the packaged default model, from a folder outside the copy."""
    from PIL import Image

    rng = np.random.default_rng(0)
    work = walk.scratch / "photos"
    work.mkdir()
    for label, colour in (("red", (200, 30, 30)), ("blue", (30, 30, 200))):
        for i in range(3):
            img = np.clip(np.asarray(colour) + rng.normal(0, 20, (48, 48, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(work / f"{label}{i}.png")
    agent = str(walk.venv / "bin" / "edge-agent")
    state = str(walk.scratch / "state")
    for label in ("red", "blue"):
        proc = subprocess.run([agent, "learn", "--state", state, "--label", label, f"{label}0.png", f"{label}1.png"],
                              cwd=work, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, f"learn: expected exit 0, got {proc.returncode}: {proc.stderr}"
    proc = subprocess.run([agent, "predict", "--state", state, "--json", "red2.png", "blue2.png"],
                          cwd=work, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"predict: expected exit 0, got {proc.returncode}: {proc.stderr}"
    answers = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(answers) == 2, proc.stdout
    proc = subprocess.run([agent, "status", "--state", state, "--json"], cwd=work, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def index_reachable(tmp_path_factory) -> None:
    """Skip (with pip's message) when the package index cannot be reached: nothing here can install."""
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
                           "--dest", str(tmp_path_factory.mktemp("probe")), "tqdm>=4.66,<5"],
                          capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        pytest.skip(f"package index unreachable (pip download tqdm failed): {proc.stderr.strip()[-300:]}")


IMPORTS = "import cv2, ai_edge_litert, starlette, uvicorn, prometheus_client, numpy; print(numpy.__version__, numpy.__file__)"


@pytest.fixture(scope="module")
def pi_walk(index_reachable, tmp_path_factory) -> Walk:
    """The Raspberry Pi block, bookworm: Debian 12's Python 3.11 with apt's NumPy 1.24 when this machine
    has them (apt-get install python3-numpy), else this interpreter with NumPy 1.24 seeded into the venv."""
    tmp = tmp_path_factory.mktemp("pi")
    apt_numpy = subprocess.run([str(DEBIAN_PYTHON), "-c", "import sys, numpy; print(sys.version_info[:2] == (3, 11) "
                                "and numpy.__version__.startswith('1.24'))"], capture_output=True, text=True)
    debian = DEBIAN_PYTHON.exists() and apt_numpy.stdout.strip() == "True"
    walk = Walk(tmp, str(DEBIAN_PYTHON) if debian else sys.executable)
    lines = _block_lines("pi")
    if not debian:  # the apt NumPy of a Pi: seed 1.24 into the venv right after it is created
        at = next(i for i, line in enumerate(lines) if " -m venv " in line) + 1
        lines.insert(at, '/opt/edge-agent/venv/bin/pip install -q "numpy==1.24.*"')
    walk.apt_numpy = debian  # type: ignore[attr-defined]
    walk.run(lines)
    return walk


def test_pi_bookworm_walkthrough_keeps_apt_numpy_and_runs(pi_walk):
    version, where = pi_walk.py(IMPORTS).split()
    assert version.startswith("1.24."), f"numpy: expected apt's 1.24 kept (picamera2 is built on it), got {version}"
    if pi_walk.apt_numpy:
        assert where.startswith("/usr/lib/python3/dist-packages/"), f"numpy: expected apt's, got {where}"
    got = pi_walk.py("import cv2, ml_dtypes; print(cv2.__version__, ml_dtypes.__version__)").split()
    assert tuple(int(p) for p in got[0].split(".")[:2]) < (4, 12) and got[1].startswith("0.5."), got
    assert len(_learn_and_predict(pi_walk)["classes_seen"]) == 2


def test_pi_trixie_variant_numpy2_throughout(index_reachable, tmp_path):
    """Pi OS trixie (Python 3.13): the same block without the bookworm constraints line."""
    python = _find_python("3.13")
    if python is None:
        pytest.skip("no Python 3.13 here to stand in for Pi OS trixie")
    walk = Walk(tmp_path, python)
    lines = [line.replace(" -c deploy/constraints-numpy1.txt", "") for line in _block_lines("pi")]
    walk.run(lines)
    version = walk.py(IMPORTS).split()[0]
    assert int(version.split(".")[0]) >= 2, version
    assert len(_learn_and_predict(walk)["classes_seen"]) == 2


def test_jetson_walkthrough_has_every_runtime_dependency(index_reachable, tmp_path):
    """JetPack 6 block on Python 3.10: --no-deps project + requirements-jetson.txt; edge-agent run --http works."""
    python = _find_python("3.10")
    if python is None:
        pytest.skip("no Python 3.10 here to stand in for JetPack 6")
    walk = Walk(tmp_path, python)
    lines = _block_lines("jetson")
    at = next(i for i, line in enumerate(lines) if " -m venv " in line) + 1
    # JetPack's OpenCV (apt, GStreamer) stand-in: the last NumPy-1 build of the PyPI wheel.
    lines.insert(at, '/opt/edge-agent/venv/bin/pip install -q "opencv-python-headless<4.12" "numpy<2"')
    walk.run(lines)
    version = walk.py(IMPORTS + "; import onnxruntime").split()[0]
    assert version.startswith("1."), f"numpy: expected 1.x (JetPack's OpenCV is built on it), got {version}"
    _serve_once(walk, [str(walk.venv / "bin" / "edge-agent"), "run", "--state", str(walk.scratch / "jstate"),
                       "--http", "127.0.0.1:PORT", "--runtime", "onnx"], token=None)


def test_jetson_requirements_are_the_edge_gpu_extra_less_two():
    with open(ROOT / "pyproject.toml", "rb") as fh:
        project = tomllib.load(fh)["project"]
    listed = [line.strip() for line in (ROOT / "deploy" / "requirements-jetson.txt").read_text().splitlines()
              if line.strip() and not line.lstrip().startswith("#")]
    expected = [r for r in project["dependencies"] + project["optional-dependencies"]["edge-gpu"]
                if not r.startswith(("onnxruntime-gpu", "opencv-python-headless"))]
    assert listed == expected


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve_once(walk: Walk, argv: list[str], token: str | None) -> None:
    """Run ``argv`` on a folder source, GET /status, then SIGTERM: expect exit 0 and no error event."""
    from PIL import Image

    inbox = walk.scratch / f"inbox-{len(argv)}-{time.monotonic_ns()}"
    (inbox / "cup").mkdir(parents=True)
    for i in range(4):
        Image.fromarray(np.full((40, 40, 3), 40 * i, np.uint8)).save(inbox / "cup" / f"{i}.png")
    port = _free_port()
    argv = [a.replace("PORT", str(port)) for a in argv]
    if "--source" in argv:
        argv[argv.index("--source") + 1] = f"folder:{inbox}"
    else:
        argv += ["--source", f"folder:{inbox}"]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    if token:
        env["EDGE_AGENT_TOKEN"] = token
    proc = subprocess.Popen(argv, cwd=walk.scratch, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        request = urllib.request.Request(f"http://127.0.0.1:{port}/status")
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        deadline, status = time.monotonic() + 90, None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(request, timeout=5) as response:
                    status = json.loads(response.read())
                break
            except OSError:
                time.sleep(0.5)
        if status is None:
            _, err = proc.communicate(timeout=30) if proc.poll() is not None else ("", "")
            pytest.fail(f"GET /status: expected an answer, got none; exit {proc.poll()}: {err[-1500:]}")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, f"SIGTERM: expected exit 0, got {proc.returncode}: {err[-1500:]}"
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    errors = [e for e in events if e.get("event") == "error"]
    assert not errors, f"events: expected no error, got {errors}"


def test_service_walkthrough_and_its_execstart(pi_walk):
    """The service block (install lines into a temporary /etc), then the unit's ExecStart as systemd runs it."""
    walk = pi_walk
    walk.skipped.clear()
    walk.run(_block_lines("service"))
    installed = walk.etc / "systemd" / "system" / "edge-agent.service"
    assert installed.read_bytes() == (ROOT / "deploy" / "edge-agent.service").read_bytes()
    tool = shutil.which("systemd-analyze")
    if tool:
        proc = subprocess.run([tool, "verify", "--man=no", str(installed)], capture_output=True, text=True, timeout=60)
        complaints = [line for line in (proc.stdout + proc.stderr).splitlines()
                      if line.strip() and "/opt/edge-agent/venv/bin/edge-agent is not executable" not in line]
        assert not complaints, complaints
    unit = configparser.RawConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    unit.read_string(installed.read_text())
    env_file = walk.etc / "edge-agent" / "env"
    token = None
    if env_file.exists():  # the README's optional token lines ran
        assert oct(env_file.stat().st_mode & 0o777) == "0o600"
        token = dict(line.split("=", 1) for line in env_file.read_text().split())["EDGE_AGENT_TOKEN"]
        assert re.fullmatch(r"[0-9a-f]{64}", token), token
    argv = shlex.split(unit["Service"]["ExecStart"])
    argv[0] = argv[0].replace("/opt/edge-agent/venv", str(walk.venv))
    argv = [a.replace("/var/lib/edge-agent", str(walk.scratch / "var-lib")) for a in argv]
    argv[argv.index("--http") + 1] = "127.0.0.1:PORT"
    _serve_once(walk, argv, token)
