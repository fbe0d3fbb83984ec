"""`edge-sim run` / `compare` / the main job on generated CORe50-format data with the shipped model."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from firmware_sim.commands.cli import main as sim_main
from firmware_sim.data.generator import GeneratorConfig, generate_core50

REPO = Path(__file__).resolve().parents[1]
MODEL = str(REPO / "models" / "default")


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("core50")
    generate_core50(root, GeneratorConfig(frames=8, runs=2, seed=4, forms=("arrays",)), progress=False)
    return root


@pytest.fixture(scope="module")
def compare_report(generated: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("compare")
    code = sim_main(["compare", "--model", MODEL, "--data", f"synthetic:{generated}", "--scenario", "nicv2_391",
                     "--strategies", "naive,replay", "--out", str(out), "--cache", str(out / "cache"),
                     "--latency-frames", "20", "--no-progress"])
    assert code == 0
    return json.loads((out / "report.json").read_text()), out


def test_compare_on_nicv2_391_writes_every_output_and_replay_beats_naive(compare_report) -> None:
    report, out = compare_report
    for name in ("report.json", "curve.csv", "summary.md", "accuracy_curve.png",
                 "per_class_naive.png", "confusion_replay.png"):
        assert (out / name).is_file(), name
    naive = report["configs"]["naive"]["runs"][0]
    replay = report["configs"]["replay"]["runs"][0]
    assert naive["n_batches"] == replay["n_batches"] == 391
    assert replay["final_accuracy"] > naive["final_accuracy"] + 0.05
    assert report["backbone"]["fingerprint"] and len(report["backbone"]["file_sha256"]) == 64


def test_report_metrics_are_computed_from_what_happened(compare_report) -> None:
    report, out = compare_report
    result = report["configs"]["replay"]["runs"][0]
    cm = np.asarray(result["confusion_matrix"])
    assert cm.sum() == result["n_test_frames"] == 3 * 50 * 8
    assert result["final_accuracy"] == pytest.approx(np.trace(cm) / cm.sum())
    per_class = np.asarray(result["per_class_accuracy"], float)
    np.testing.assert_allclose(per_class, np.diag(cm) / cm.sum(axis=1))
    curve = result["curve"]
    assert len(curve) == 391 and curve[-1]["accuracy"] == pytest.approx(result["final_accuracy"])
    assert result["average_accuracy"] == pytest.approx(np.mean([p["accuracy"] for p in curve]))
    assert curve[-1]["frames_seen"] == result["n_train_frames"] == 8 * 400
    forgetting = np.asarray([np.nan if v is None else v for v in result["forgetting_per_class"]], float)
    assert np.nanmean(forgetting) == pytest.approx(result["forgetting_mean"])
    assert result["train_ms_per_batch"]["mean"] > 0 and result["inference"]["frames"] == 20
    inf = result["inference"]
    assert inf["p50_ms"] <= inf["p95_ms"] <= inf["p99_ms"]
    mem = result["memory"]
    assert mem["replay_bytes"] > 0 and report["configs"]["naive"]["runs"][0]["memory"]["replay_bytes"] == 0
    assert mem["state_bytes_on_disk"] > mem["replay_bytes"]
    assert mem["rss_peak_sampled_bytes"] >= mem["rss_avg_bytes"] > 0
    with open(out / "curve.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 * 391 and {r["strategy"] for r in rows} == {"naive", "replay"}


def test_run_with_several_runs_reports_mean_and_std_and_reuses_cached_test_embeddings(
        generated: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cache = tmp_path / "cache"
    args = ["run", "--model", MODEL, "--data", f"synthetic:{generated}", "--scenario", "ni", "--runs", "2",
            "--strategy", "replay", "--cache", str(cache), "--eval-every", "4", "--no-plots",
            "--latency-frames", "0", "--test", "reduced", "--no-progress"]
    assert sim_main([*args, "--out", str(tmp_path / "a")]) == 0
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    summary = report["configs"]["replay"]["summary"]
    finals = [r["final_accuracy"] for r in report["configs"]["replay"]["runs"]]
    assert summary["final_accuracy"]["n"] == 2
    assert summary["final_accuracy"]["mean"] == pytest.approx(np.mean(finals))
    assert summary["final_accuracy"]["std"] == pytest.approx(np.std(finals, ddof=1))  # sample std (issue 12)
    streams = report["streams"]
    assert [s["n_batches"] for s in streams] == [8, 8]
    assert streams[0]["n_test_frames"] == len(range(0, 3 * 50 * 8, 20))
    assert [len(r["curve"]) for r in report["configs"]["replay"]["runs"]] == [2, 2]  # batches 4 and 8
    assert streams[1]["embedding"]["test_from_cache"] is True
    assert sim_main([*args, "--out", str(tmp_path / "b")]) == 0
    again = json.loads((tmp_path / "b" / "report.json").read_text())
    assert again["streams"][0]["embedding"]["test_from_cache"] is True
    assert [r["final_accuracy"] for r in again["configs"]["replay"]["runs"]] == finals  # deterministic
    assert "final acc %" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "csv:/x"], "--data: expected one of core50:PATH"),
        (["--scenario", "nicv3"], "--scenario for synthetic data: expected one of ni, nc"),
        (["--data", "core50"], "expected core50:PATH"),
        (["--data", "core50:/nonexistent/core50"], "/nonexistent/core50"),
        (["--model", "/nonexistent/model"], "manifest.json"),
        (["--runs", "0"], "--runs: expected >= 1"),
    ],
)
def test_bad_arguments_exit_2_with_a_clear_message(args: list[str], message: str, generated: Path,
                                                   tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["run", "--model", MODEL, "--data", f"synthetic:{generated}", "--out", str(tmp_path / "o"),
            "--cache", str(tmp_path / "c"), "--no-progress"]
    code = sim_main([*base, *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


def test_main_job_without_arguments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("EDGE_SIM_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    assert sim_main([]) == 0
    out = capsys.readouterr().out
    assert "| naive" in out and "| replay" in out
    report = json.loads((tmp_path / "runs" / "edge-sim-default" / "report.json").read_text())
    assert report["scenario"] == "nicv2_391" and report["streams"][0]["n_batches"] == 391
    finals = {k: v["summary"]["final_accuracy"]["mean"] for k, v in report["configs"].items()}
    assert finals["replay"] > finals["naive"]


def test_class_incremental_protocol_over_an_npz_stream(tmp_path: Path) -> None:
    from firmware_sim.data.generator import make_pretraining_set

    x, y = make_pretraining_set(n_objects=6, frames=6, sessions=3, image_size=32, seed=9)
    xt, yt = make_pretraining_set(n_objects=6, frames=2, sessions=3, image_size=32, seed=9, variant=1)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y, x_test=xt, y_test=yt)
    out = tmp_path / "out"
    code = sim_main(["compare", "--model", MODEL, "--data", f"npz:{tmp_path / 'd.npz'}",
                     "--scenario", "class_incremental", "--protocol-param", "classes_per_experience=2",
                     "--strategies", "naive,replay", "--max-classes", "6", "--out", str(out),
                     "--cache", str(tmp_path / "cache"), "--latency-frames", "5", "--no-plots", "--no-progress"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    stream = report["streams"][0]
    assert stream["n_batches"] == 3 and stream["n_classes"] == 6
    assert stream["n_train_frames"] == len(y) and stream["n_test_frames"] == len(yt)
    replay = report["configs"]["replay"]["runs"][0]
    assert replay["classes_seen"] == list(range(6))
    naive = report["configs"]["naive"]["runs"][0]
    assert replay["final_accuracy"] >= naive["final_accuracy"]
