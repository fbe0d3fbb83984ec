"""`edge-sim run --head-backend tflite`: a generated stream through the TFLite head backend."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from _sim_common import MODEL, generate_small
from firmware_sim.commands.cli import main as sim_main


pytest.importorskip("ai_edge_litert")


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_small(tmp_path_factory.mktemp("core50"))


def _run(generated: Path, out: Path, *extra: str) -> dict:
    code = sim_main(["run", "--model", MODEL, "--data", f"synthetic:{generated}", "--scenario", "ni",
                     "--strategy", "replay", "--out", str(out), "--cache", str(out.parent / "cache"),
                     "--latency-frames", "5", "--no-plots", "--no-progress", *extra])
    assert code == 0
    return json.loads((out / "report.json").read_text())


@pytest.mark.slow
def test_edge_sim_run_with_the_tflite_head_matches_numpy(generated: Path, tmp_path: Path) -> None:
    tfl = _run(generated, tmp_path / "tflite", "--head-backend", "tflite")
    ref = _run(generated, tmp_path / "numpy")
    run_t, run_n = tfl["configs"]["replay"]["runs"][0], ref["configs"]["replay"]["runs"][0]
    assert run_t["config"]["head_backend"] == "tflite"
    assert Path(run_t["config"]["head_file"]).name == "head_softmax_sgd_b32_c50.tflite"
    assert run_t["n_batches"] == run_n["n_batches"] == 8
    assert run_t["final_accuracy"] > 0.2
    assert run_t["final_accuracy"] == pytest.approx(run_n["final_accuracy"], abs=0.01)


def test_edge_sim_refuses_tflite_for_weight_surgery_and_missing_heads(generated: Path, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    base = ["run", "--model", MODEL, "--data", f"synthetic:{generated}", "--scenario", "ni",
            "--out", str(tmp_path / "x"), "--cache", str(tmp_path / "cache"), "--no-plots", "--no-progress",
            "--head-backend", "tflite"]
    assert sim_main([*base, "--strategy", "ewc"]) == 2
    assert "tflite head backend supports" in capsys.readouterr().err
    assert sim_main([*base, "--strategy", "replay", "--lr", "0.3"]) == 2
    assert "export-head" in capsys.readouterr().err
