"""Peak RSS of each configuration in a fresh subprocess (import, load, learn 10 x 300 frames,
predict), edge vs Keras, plus the bytes of head, buffer and state (see `bench._rss_worker`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import _common as C
from bench.conftest import model_dir_for, need_case


def _edge_configs(quick: bool) -> list[tuple[str, str]]:
    if quick:
        return [("default", "litert-fp32"), ("keras", "litert-fp32")]
    models = ("default", "keras", "mobilenet")
    return [(m, c) for m in models for c in C.RUNTIME_CASES]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "edge_config" in metafunc.fixturenames:
        configs = _edge_configs(C.quick_mode(metafunc.config))
        metafunc.parametrize("edge_config", configs, ids=[f"{m}-{c}" for m, c in configs])
    if "keras_epochs" in metafunc.fixturenames:
        epochs = [1] if C.quick_mode(metafunc.config) else [1, C.KERAS_EPOCHS]
        metafunc.parametrize("keras_epochs", epochs, ids=[f"e{e}" for e in epochs])


def _keras_model_dir(quick: bool):
    if not C.has_tensorflow():
        pytest.skip("the Keras-backbone export needs TensorFlow (the host extra)")
    return C.keras_backbone_model_dir(C.keras_run_dir(quick))


def test_rss_edge(edge_config, figures, quick):
    model, case = edge_config
    need_case(case)
    mdir = _keras_model_dir(quick) if model == "keras" else model_dir_for(model)
    out = C.run_worker(["edge", "--model", str(mdir), "--case", case])
    figures.setdefault("rss_edge", {})[f"{model}|{case}"] = out
    assert out["peak_rss_bytes"] > 0 and out["predictions"] == 32
    assert not out["tensorflow_loaded"], "the edge process imported TensorFlow"
    assert out["memory_bytes"]["total"] > 0 and out["checkpoint_bytes"] > 0


def test_rss_keras(keras_epochs, figures, quick):
    if not C.has_tensorflow():
        pytest.skip("the Keras baseline needs TensorFlow (the host extra)")
    run_dir = C.keras_run_dir(quick)
    out = C.run_worker(["keras", "--run-dir", str(run_dir), "--epochs", str(keras_epochs)])
    figures.setdefault("rss_keras", {})[f"e{keras_epochs}"] = out
    assert out["peak_rss_bytes"] > out["rss_bytes"]["start"] > 0 and out["predictions"] == 32


def _peak_rss(cmd: list[str], cwd) -> dict:
    """Peak RSS of ``cmd`` as the only child of a small stdlib launcher (`bench._peak_rss`)."""
    import json
    import os
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=str(C.ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "-m", "bench._peak_rss", "--", *cmd], capture_output=True,
                          text=True, timeout=300, cwd=cwd, env=env)
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith('{"peak_rss_bytes"')]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{cmd}: expected a peak-RSS JSON line, got exit {proc.returncode}:\n{proc.stderr[-3000:]}")
    out = json.loads(lines[-1])
    if out["exit_status"] != 0:
        raise RuntimeError(f"{cmd}: expected exit status 0, got {out['exit_status']}:\n{proc.stderr[-3000:]}")
    out["stdout"] = proc.stdout
    return out


def test_rss_cli_processes(figures, tmp_path):
    """Peak RSS of fresh device-like processes on the default model (LiteRT fp32): ``edge-agent run``
    on a folder (learn 2 labels x 16 files, then predict 8 new ones, one process), ``edge-agent learn``
    and ``edge-agent predict`` alone, next to the simulator (``edge-sim run``, 400 generated frames)."""
    import json
    import shutil
    import sys

    import numpy as np
    from PIL import Image

    pytest.importorskip("ai_edge_litert", reason="the default backbone runs on LiteRT")
    from bench.conftest import frames_for_model

    bindir = Path(sys.executable).parent
    agent_cli = str(bindir / "edge-agent") if (bindir / "edge-agent").exists() else shutil.which("edge-agent")
    sim_cli = str(bindir / "edge-sim") if (bindir / "edge-sim").exists() else shutil.which("edge-sim")
    if agent_cli is None or sim_cli is None:
        pytest.skip("the edge-agent / edge-sim console scripts are not installed (pip install -e .)")
    frames = frames_for_model(C.TINY_MODEL, 40, seed=11)
    inbox = tmp_path / "inbox"
    for k, label in enumerate(("cup", "ball")):
        (inbox / label).mkdir(parents=True)
        for i in range(16):
            Image.fromarray(frames[16 * k + i]).save(inbox / label / f"{i:02d}.png")
    for i in range(8):
        Image.fromarray(frames[32 + i]).save(inbox / f"new{i}.png")
    model = ["--model", str(C.TINY_MODEL)]
    run = _peak_rss([agent_cli, "run", *model, "--state", str(tmp_path / "s_run"), "--source", f"folder:{inbox}",
                     "--no-http", "--exit-at-end", "--teach-batch", "16"], tmp_path)
    events = [json.loads(ln) for ln in run.pop("stdout").splitlines() if ln.startswith("{")]
    assert sum(e["event"] == "learned" for e in events) == 2
    assert sum(e["event"] == "prediction" for e in events) == 8
    state = str(tmp_path / "s_cli")
    learn = _peak_rss([agent_cli, "learn", *model, "--state", state, "--label", "cup",
                       *[str(p) for p in sorted((inbox / "cup").iterdir())]], tmp_path)
    learn.pop("stdout")
    predict = _peak_rss([agent_cli, "predict", *model, "--state", state, "--json",
                         *[str(inbox / f"new{i}.png") for i in range(8)]], tmp_path)
    assert len([ln for ln in predict.pop("stdout").splitlines() if ln.startswith("{")]) == 8
    rng = np.random.default_rng(0)
    h, w, ch = frames.shape[1:]
    np.savez(tmp_path / "stream.npz", x=rng.integers(0, 256, (400, h, w, ch), dtype=np.uint8),
             y=np.arange(400) % 4)
    sim = _peak_rss([sim_cli, "run", *model, "--data", f"npz:{tmp_path / 'stream.npz'}", "--scenario",
                     "class_incremental", "--out", str(tmp_path / "sim"), "--no-plots", "--no-progress"], tmp_path)
    sim.pop("stdout")
    assert (tmp_path / "sim" / "report.json").is_file()
    rows = {"edge-agent run (folder: learn 32, predict 8)": run, "edge-agent learn (16 images)": learn,
            "edge-agent predict (8 images)": predict, "edge-sim run (npz, 400 frames, class_incremental)": sim}
    figures["rss_cli"] = rows
    for r in rows.values():
        assert r["peak_rss_bytes"] > r["launcher_rss_bytes"] > 0, r
