"""Packaging: the wheel carries the default model, and an installed (not editable) ``edge`` runs
``edge-agent`` from any folder without ``--model`` (issue 13, deployment).

One wheel is built per test module (``pip wheel . --no-deps``, ~15 s) and installed with ``--no-deps``
into a fresh virtual environment under ``tmp_path``. The runtime dependencies (NumPy, Pillow, the
LiteRT runtime) come from this test interpreter's site-packages through a ``.pth`` line, which is
appended *after* the new environment's own site-packages: the ``edge`` package and its metadata
are the wheel's, and a test checks ``edge.__file__`` to prove it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = ROOT / "models" / "tiny"
PACKAGED = "edge/models/tiny"


def _project_version() -> str:
    """The source tree's version (edge/version.py, the one place it is written; the wheel's metadata
    is built from it), read as text so this test interpreter's installed ``edge`` plays no part."""
    text = (ROOT / "edge" / "version.py").read_text()
    found = re.search(r'^__version__ = "([^"]+)"$', text, re.MULTILINE)
    assert found, "edge/version.py: expected a line __version__ = \"...\", got none"
    return found.group(1)


def _run(cmd: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _manifest_files(manifest: dict) -> list[tuple[str, str]]:
    """(path, sha256) of every file the manifest names: backbones and heads."""
    entries = list(manifest["files"]) + list(manifest.get("heads", []))
    return [(e["path"], e["sha256"]) for e in entries]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    if not (MODEL_DIR / "manifest.json").is_file():
        pytest.skip(f"the default model is missing: {MODEL_DIR}/manifest.json")
    out = tmp_path_factory.mktemp("wheel")
    proc = _run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q", "-w", str(out)],
                cwd=out, timeout=300)
    assert proc.returncode == 0, f"pip wheel: expected exit 0, got {proc.returncode}: {proc.stderr[-2000:]}"
    wheels = sorted(out.glob("edge_continual-*.whl"))
    assert len(wheels) == 1, f"expected one edge_continual wheel, got {[w.name for w in out.iterdir()]}"
    return wheels[0]


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("venv") / "venv"
    proc = _run([sys.executable, "-m", "venv", "--without-pip", str(root)], cwd=root.parent)
    assert proc.returncode == 0, proc.stderr
    py = root / "bin" / "python"
    site = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     cwd=root).stdout.strip())
    # Dependencies from this interpreter, after the venv's own site-packages (see the module docstring).
    (site / "zz_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    proc = _run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q", str(wheel)],
                cwd=root.parent, timeout=300)
    assert proc.returncode == 0, f"pip install: expected exit 0, got {proc.returncode}: {proc.stderr[-2000:]}"
    return root


@pytest.mark.slow
def test_wheel_carries_the_default_model_with_matching_hashes(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        manifest_bytes = zf.read(f"{PACKAGED}/manifest.json")
        manifest = json.loads(manifest_bytes)
        assert manifest_bytes == (MODEL_DIR / "manifest.json").read_bytes()
        files = _manifest_files(manifest)
        assert {p for p, _ in files} >= {"backbone_fp32.tflite", "backbone_int8.tflite", "backbone.onnx"}
        for path, sha in files:
            member = f"{PACKAGED}/{path}"
            assert member in names, f"wheel: expected {member}, got none"
            got = hashlib.sha256(zf.read(member)).hexdigest()
            assert got == sha, f"{member}: sha256 expected {sha}, got {got}"
        # Nothing left of the tiny model's old folder name (a stale build/ could carry it).
        assert not [n for n in names if n.startswith("edge/models/default/")]
        # A link in git, files in the wheel: no symlink entries (external_attr file type 0o12).
        info = zf.getinfo(f"{PACKAGED}/manifest.json")
        assert (info.external_attr >> 16) & 0o170000 != 0o120000
        # The teach page of edge-agent run (GET /) travels too, byte for byte.
        for name in ("index.html", "page.css", "page.js"):
            member = f"edge/device/static/{name}"
            assert member in names, f"wheel: expected {member}, got none"
            assert zf.read(member) == (ROOT / member).read_bytes(), f"{member}: differs from the source"


def test_default_model_is_one_copy_in_git():
    """edge/models/tiny and edge/models/efficientnet_lite0_224 are symbolic links (mode 120000) to
    models/<name>, not second copies; no edge/models/default is left from before the rename."""
    for packaged in (PACKAGED, "edge/models/efficientnet_lite0_224"):
        proc = _run(["git", "ls-files", "-s", packaged], cwd=ROOT)
        if proc.returncode != 0 or not proc.stdout:
            pytest.skip(f"not a git checkout with {packaged} tracked: {proc.stderr.strip()}")
        assert proc.stdout.split()[0] == "120000", f"{packaged}: expected a symlink (120000), got {proc.stdout}"
    assert not (ROOT / "edge" / "models" / "default").exists()
    import edge
    from edge.models import imagenet_model_dir, tiny_model_dir
    from firmware_sim.commands.run import default_model_dir as sim_default

    assert tiny_model_dir().resolve() == MODEL_DIR.resolve()
    # edge-agent's default is the ImageNet backbone; edge-sim keeps the tiny one.
    assert edge.default_model_dir().resolve() == (ROOT / "models" / "efficientnet_lite0_224").resolve()
    assert edge.default_model_dir() == imagenet_model_dir()
    assert sim_default() == tiny_model_dir()


@pytest.mark.slow
def test_installed_wheel_runs_edge_agent_from_any_folder(venv, tmp_path):
    py, agent = venv / "bin" / "python", venv / "bin" / "edge-agent"
    work = tmp_path / "elsewhere"
    work.mkdir()
    proc = _run([str(py), "-c", "import edge, json; print(json.dumps([edge.__file__, "
                 "str(edge.default_model_dir())]))"], cwd=work)
    assert proc.returncode == 0, proc.stderr
    edge_file, model_dir = json.loads(proc.stdout)
    assert Path(edge_file).is_relative_to(venv), f"edge: expected inside {venv}, got {edge_file}"
    assert Path(model_dir).is_relative_to(venv), f"default model: expected inside {venv}, got {model_dir}"

    proc = _run([str(agent), "--version"], cwd=work)
    assert (proc.returncode, proc.stdout.strip()) == (0, f"edge-agent {_project_version()}"), proc.stderr

    from PIL import Image

    rng = np.random.default_rng(0)
    images = []
    for i in range(2):
        path = work / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(path)
        images.append(path.name)
    state = tmp_path / "state"
    proc = _run([str(agent), "learn", "--state", str(state), "--label", "1", *images], cwd=work)
    assert proc.returncode == 0, f"learn: expected exit 0, got {proc.returncode}: {proc.stderr}"
    proc = _run([str(agent), "status", "--state", str(state), "--json"], cwd=work)
    assert proc.returncode == 0, f"status: expected exit 0, got {proc.returncode}: {proc.stderr}"
    status = json.loads(proc.stdout)
    # No --model: the packaged ImageNet backbone, int8 on LiteRT.
    assert (status["model"], status["step"], status["classes_seen"]) == ("efficientnet_lite0_224", 1, [1])
    assert status["precision"] == "int8", status


@pytest.mark.slow
def test_fresh_install_knows_real_objects_out_of_the_box(venv, tmp_path):
    """Issue 22's done-when, on the installed wheel (not editable), from a folder outside the copy: with
    no ``--model`` and no ``--precision``, ``edge-agent status --json`` names the packaged ImageNet
    backbone (int8 on LiteRT), and classes taught from real photographs through ``edge-agent learn``
    (10 augmented crops of ONE photo per class) are recognised on OTHER photographs through
    ``edge-agent predict`` (tests/_real_photos.py: foolbox 3.3.4's 8 CIFAR-10 classes and 4 ImageNet
    groups; pass marks 3x and 2x chance). The 32-px synthetic-trained tiny backbone fails the same
    check (tests/test_real_photos.py). Dependencies as in the module docstring; the pip install of
    the ``edge`` extra from the index itself is tests/test_walkthrough.py's."""
    from _real_photos import PASS_MARKS, cli_accuracy, passes, photo_sets_or_skip

    photo_sets = photo_sets_or_skip()
    agent_exe = venv / "bin" / "edge-agent"
    work = tmp_path / "elsewhere"
    work.mkdir()

    def agent(argv: list[str]) -> tuple[int, str, str]:
        done = _run([str(agent_exe), *argv], cwd=work, timeout=300)
        return done.returncode, done.stdout, done.stderr

    code, out, err = agent(["status", "--state", str(tmp_path / "fresh"), "--json"])
    assert code == 0, f"status: expected exit 0, got {code}: {err}"
    status = json.loads(out)
    assert (status["model"], status["precision"], status["step"]) == ("efficientnet_lite0_224", "int8", 0), status
    accuracy = {name: cli_accuracy(agent, ["--state", str(tmp_path / f"state-{name}")], photo_set, work)
                for name, photo_set in photo_sets.items()}
    print(f"fresh install, real-photo check without --model: {accuracy} (pass marks {PASS_MARKS})")
    assert passes(accuracy), (accuracy, PASS_MARKS)


# The systemd unit (deploy/edge-agent.service) is checked in tests/test_deploy_unit.py.


def test_extras_install_one_runtime_each():
    """edge = LiteRT + capture + HTTP API; ONNX Runtime only in `onnx` (CPU) or `edge-gpu`, never both
    onnxruntime and onnxruntime-gpu in one extra (they share one import folder; issue 22)."""
    tomllib = pytest.importorskip("tomllib")
    with open(ROOT / "pyproject.toml", "rb") as fh:
        extras = tomllib.load(fh)["project"]["optional-dependencies"]

    def names(extra: str) -> set[str]:
        return {req.split(";")[0].split("[")[0].split("<")[0].split(">")[0].split("=")[0].split("~")[0].strip()
                for req in extras[extra]}

    assert names("edge") == {"ai-edge-litert", "opencv-python-headless", "starlette", "uvicorn", "prometheus-client"}
    assert names("onnx") == {"onnxruntime"}
    assert names("edge-gpu") == names("edge") | {"onnxruntime-gpu"}
    for extra in extras:
        assert not {"onnxruntime", "onnxruntime-gpu"} <= names(extra), f"{extra}: both ONNX Runtimes"
    table = (ROOT / "README.md").read_text().split("## Installing", 1)[1].split("\n## ", 1)[0]
    for extra in ("edge", "edge,onnx", "edge-gpu", "sim", "host", "host-gpu", "dev", "sweep-ray"):
        assert f"| `{extra}` |" in table, f"README install table: expected a row for {extra}"
