"""``edge-agent`` smoke tests on PNG files written by the test."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

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


# ---------------------------------------------------------------------------------- issue 11
@pytest.mark.parametrize(("extra", "pattern"), [
    (["--label", str(2**70)], r"--label: expected an int in \[0, 99999\], got 1180591620717411303424"),
    (["--label", "0", "--max-classes", "100000000"], r"--max-classes: expected an int in \[2, 100000\]"),
    (["--label", "0", "--buffer-capacity", "10000000000"], r"--buffer-capacity: expected an int in"),
    (["--label", "a/b"], "--label: class name: expected 1-64 printable characters without '/'"),  # names are labels now
    (["--label", "0", "--lock-timeout", "nan"], r"--lock-timeout: expected seconds in \[0, 86400\]"),
])
def test_out_of_range_options_are_one_line_usage_errors(tmp_path, pngs, capsys, extra, pattern):
    import re

    common = ["--model", str(need_model()), "--state", str(tmp_path / "s")]
    with pytest.raises(SystemExit) as exit_info:
        main(["learn", *common, *extra, pngs[0][0]])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(pattern, err), err


def test_label_beyond_max_classes_and_bad_strategy_param(tmp_path, pngs, capsys):
    common = ["--model", str(need_model()), "--state", str(tmp_path / "s")]
    assert main(["learn", *common, "--label", "50", pngs[0][0]]) == 2
    err = capsys.readouterr().err
    assert "--label: expected an int in [0, 49] (max_classes=50), got 50" in err and err.count("\n") == 1
    assert main(["learn", *common, "--label", "0", "--strategy", "slda", "--strategy-param",
                 "shrinkage=1e999", pngs[0][0]]) == 2
    err = capsys.readouterr().err
    assert "strategy_params: expected an object of finite" in err and err.count("\n") == 1
    assert not (tmp_path / "s").exists() or not list((tmp_path / "s").glob("state-*.npz"))


def test_ctrl_c_is_one_line_and_exit_130(tmp_path, pngs, capsys, monkeypatch):
    import edge.cli as cli

    def interrupted(*_args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_frames_for", interrupted)
    common = ["--model", str(need_model()), "--state", str(tmp_path / "s")]
    assert main(["learn", *common, "--label", "0", pngs[0][0]]) == 130
    assert capsys.readouterr().err == "edge-agent: interrupted\n"


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to see the lock being waited on")
def test_sigint_while_waiting_for_the_lock(tmp_path, pngs):
    import os
    import signal
    import time

    from edge.lock import StateLock

    state = tmp_path / "s"
    with StateLock(state):
        proc = subprocess.Popen([sys.executable, "-m", "edge.cli", "learn", "--model", str(need_model()),
                                 "--state", str(state), "--label", "0", "--lock-timeout", "120", pngs[0][0]],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # wait until the child has opened the lock file
            try:
                if any(os.readlink(f"/proc/{proc.pid}/fd/{fd}").endswith("/.lock")
                       for fd in os.listdir(f"/proc/{proc.pid}/fd")):
                    break
            except OSError:
                pass
            time.sleep(0.05)
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err == "edge-agent: interrupted\n", err


def test_predict_escapes_file_names_and_offers_json(tmp_path, pngs, capsys):
    from PIL import Image

    paths, labels = pngs
    common = ["--model", str(need_model()), "--state", str(tmp_path / "s")]
    assert main(["learn", *common, "--label", "0", *paths[:3]]) == 0
    assert main(["learn", *common, "--label", "1", *paths[3:]]) == 0
    capsys.readouterr()
    forged = tmp_path / "a\tb\nfake\t1\t1.0000\\x.png"
    Image.open(paths[0]).save(forged, format="PNG")
    assert main(["predict", *common, str(forged), paths[3]]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].count("\t") == 2
    assert lines[0].split("\t")[0] == str(forged).replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
    assert main(["predict", *common, "--json", str(forged), paths[3]]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["path"] for r in rows] == [str(forged), paths[3]]
    # the keys of GET /prediction: label (the name; digits for an unnamed index), index, score
    assert all(r["index"] in (0, 1) and r["label"] == str(r["index"]) and 0 < r["score"] <= 1 for r in rows)


def test_corrupt_newest_checkpoint_warns_without_verbose_and_status_counts_every_byte(tmp_path, pngs):
    paths, _ = pngs
    state = tmp_path / "s"
    base = [sys.executable, "-m", "edge.cli"]
    common = ["--model", str(need_model()), "--state", str(state)]
    for label, chosen in ((0, paths[:3]), (1, paths[3:])):
        done = subprocess.run([*base, "learn", *common, "--label", str(label), *chosen], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
    newest = sorted(state.glob("state-*.npz"))[-1]
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0x10
    newest.write_bytes(bytes(data))
    (state / "extra.bin").write_bytes(b"\0" * 123)
    done = subprocess.run([*base, "status", *common, "--json"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "WARNING" in done.stderr and "falling back" in done.stderr and "Traceback" not in done.stderr
    status = json.loads(done.stdout)
    assert status["step"] == 1
    assert status["state_bytes_on_disk"] == sum(p.stat().st_size for p in state.rglob("*") if p.is_file())
