"""README "Moving a model from the host to a device", followed line by line (issue 22).

The bash block of that README section is read from README.md and each line is run as written, with
this environment's console scripts, in a "host" folder and a "device" folder, ``EDGE_MODELS`` pointing
at the device's models folder. Three lines cannot run here as written, and are stood in for:

- ``edge-host build ...`` (TensorFlow, minutes): the committed tiny model's folder (``models/tiny``)
  stands in for the host-built model. It is copied to ``--out/--name`` with its manifest's ``name``
  set to ``--name`` (the name is not part of the fingerprint, and every file keeps its sha256), which
  is what the build would have written there. So the bundle, the install and the device commands
  below run on real model files, without TensorFlow.
- ``scp FILE device:``: a local copy of FILE into the device folder.
- ``edge-agent run ... --source camera:0``: no camera here, so ``--source folder:frames --exit-at-end
  --no-http`` (the same loop on a folder of frames).

The images the block names (``cup1.jpg``, ``frame.jpg``) are made in the device folder first.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge.manifest import load_manifest, write_manifest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SECTION = "### Moving a model from the host to a device"
BIN = Path(sys.executable).parent


def _walkthrough_lines() -> list[list[str]]:
    """The commands of the section's bash block, comments dropped, one argv per line."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert SECTION in text, f"README.md: expected a section {SECTION!r}, got none"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    return [argv for argv in (shlex.split(line, comments=True) for line in block.splitlines()) if argv]


def _option(argv: list[str], name: str) -> str:
    assert name in argv, f"{shlex.join(argv)}: expected {name}, got none"
    return argv[argv.index(name) + 1]


def _write_image(path: Path, colour: tuple[int, int, int], seed: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = np.clip(np.asarray(colour) + rng.normal(0, 20, (64, 64, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def test_readme_host_to_device_walkthrough(tmp_path: Path) -> None:
    for script in ("edge-host", "edge-agent"):
        if not (BIN / script).is_file():
            pytest.skip(f"the {script} console script is not installed next to {sys.executable}")
    host, device = tmp_path / "host", tmp_path / "device"
    host.mkdir()
    device.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("STATE_DIRECTORY", "XDG_DATA_HOME")}
    env["EDGE_MODELS"] = str(device / "models")
    lines = _walkthrough_lines()
    commands = [argv[:2] for argv in lines]
    assert commands == [["edge-host", "build"], ["edge-host", "bundle"], ["scp", lines[2][1]],
                        ["edge-agent", "models"], ["edge-agent", "models"], ["edge-agent", "learn"],
                        ["edge-agent", "predict"], ["edge-agent", "run"]], commands

    name = ""
    outputs: dict[str, str] = {}
    for argv in lines:
        if argv[:2] == ["edge-host", "build"]:
            name = _option(argv, "--name")
            built = host / _option(argv, "--out") / name
            shutil.copytree(ROOT / "models" / "tiny", built)
            manifest = load_manifest(built)
            write_manifest(dataclasses.replace(manifest, name=name), built)
            assert load_manifest(built).fingerprint == manifest.fingerprint
            continue
        if argv[0] == "scp":
            shutil.copy2(host / argv[1], device / Path(argv[1]).name)
            continue
        cwd = host if argv[0] == "edge-host" else device
        if argv[:2] == ["edge-agent", "run"]:
            assert _option(argv, "--source") == "camera:0"
            at = argv.index("--source")
            argv = [*argv[:at], "--source", "folder:frames", "--exit-at-end", "--no-http", *argv[at + 2:]]
            for i in range(3):
                _write_image(device / "frames" / f"f{i}.png", (200, 30, 30), 10 + i)
        for arg in argv:
            if arg.endswith(".jpg") and not (device / arg).exists():
                _write_image(device / arg, (200, 30, 30), len(arg))
        done = subprocess.run([str(BIN / argv[0]), *argv[1:]], cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, f"{shlex.join(argv)}: expected exit 0, got {done.returncode}: {done.stderr}"
        outputs[" ".join(argv[:3])] = done.stdout

    # The installed model is the host's, byte for byte, in the models folder EDGE_MODELS names.
    installed = device / "models" / name
    built = host / "models" / name
    for f in ["manifest.json"] + [e.path for e in load_manifest(built).files]:
        assert (installed / f).read_bytes() == (built / f).read_bytes(), f
    assert f"{name}\t" in outputs["edge-agent models list"] or name in outputs["edge-agent models list"]
    answer = outputs["edge-agent predict --model"].split("\t")
    assert answer[1] == "cup", answer
    status = subprocess.run([str(BIN / "edge-agent"), "status", "--model", name, "--state", "state/", "--json"],
                            cwd=device, env=env, capture_output=True, text=True, timeout=120)
    assert status.returncode == 0, status.stderr
    info = json.loads(status.stdout)
    assert (info["model"], info["classes"][0]["name"]) == (name, "cup"), info
    # run answered the frames with the installed model (one prediction event per frame at least).
    events = [json.loads(line) for line in outputs["edge-agent run --model"].splitlines() if line.startswith("{")]
    assert any(e.get("model") == name for e in events), events[:3]
