"""``edge-agent`` smoke tests on PNG files written by the test."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from _edge_common import ROOT, frames_for, need_model
from edge.cli import main


@pytest.fixture
def pngs(tmp_path):
    from PIL import Image

    labels = np.array([0, 0, 0, 1, 1, 1])
    frames = frames_for(labels, (48, 40, 3), seed=5)  # not the model size: the CLI resizes
    paths = []
    for i, frame in enumerate(frames):
        path = tmp_path / f"img{i}_{labels[i]}.png"
        Image.fromarray(frame).save(path)
        paths.append(str(path))
    return paths, labels


def test_learn_predict_status(tmp_path, pngs, capsys):
    paths, labels = pngs
    model, state = str(need_model()), str(tmp_path / "state")
    common = ["--model", model, "--state", state]
    for label in (0, 1):
        chosen = [p for p, y in zip(paths, labels) if y == label]
        assert main(["learn", *common, "--label", str(label), *chosen]) == 0
    out = capsys.readouterr().out
    assert "step 2" in out and "label 1" in out
    assert main(["predict", *common, *paths]) == 0
    rows = [line.split("\t") for line in capsys.readouterr().out.strip().splitlines()]
    assert [r[0] for r in rows] == paths
    assert all(int(r[1]) in (0, 1) and 0.0 < float(r[2]) <= 1.0 for r in rows)
    assert main(["status", *common, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["step"] == 2 and status["classes_seen"] == [0, 1]
    assert status["buffer_fill"] == 6 and status["buffer_capacity"] == 1000
    assert status["buffer_bytes"] > 0 and status["state_bytes_on_disk"] > 0


def test_expected_errors_exit_2_with_one_line(tmp_path, pngs, capsys):
    paths, _ = pngs
    common = ["--model", str(need_model()), "--state", str(tmp_path / "s")]
    assert main(["predict", *common, paths[0]]) == 2  # nothing learned yet
    err = capsys.readouterr().err
    assert err.startswith("edge-agent: error:") and err.count("\n") == 1
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    assert main(["learn", *common, "--label", "0", str(bad)]) == 2
    assert "expected a readable image file" in capsys.readouterr().err
    assert main(["learn", *common, "--label", "99", paths[0]]) == 2
    assert "got 99" in capsys.readouterr().err
    broken = tmp_path / "model"
    shutil.copytree(need_model(), broken)
    tfl = next(broken.glob("*fp32.tflite"))
    tfl.write_bytes(tfl.read_bytes()[:-1] + b"\x00")
    assert main(["status", "--model", str(broken), "--state", str(tmp_path / "s")]) == 2
    assert "sha256 expected" in capsys.readouterr().err


def test_console_script_help():
    exe = shutil.which("edge-agent", path=str(ROOT / ".venv" / "bin"))
    cmd = [exe] if exe else [sys.executable, "-m", "edge.cli"]
    out = subprocess.run([*cmd, "learn", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--label" in out.stdout and "--buffer-storage" in out.stdout
