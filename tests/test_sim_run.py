"""`edge-sim run` / `compare` / the main job on generated CORe50-format data with the shipped model."""

from __future__ import annotations

import contextlib
import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest

from _sim_common import MODEL, generate_small
from firmware_sim.commands.cli import main as sim_main



@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_small(tmp_path_factory.mktemp("core50"))


@pytest.fixture(scope="module")
def compare_run(generated: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path, str]:
    """One compare with progress on, its stderr captured in a StringIO: a stream that is not a terminal."""
    out = tmp_path_factory.mktemp("compare")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = sim_main(["compare", "--model", MODEL, "--data", f"synthetic:{generated}", "--scenario", "nicv2_391",
                         "--strategies", "naive,replay", "--out", str(out), "--cache", str(out / "cache"),
                         "--latency-frames", "20"])
    assert code == 0, err.getvalue()
    return json.loads((out / "report.json").read_text()), out, err.getvalue()


@pytest.fixture(scope="module")
def compare_report(compare_run: tuple[dict, Path, str]) -> tuple[dict, Path]:
    return compare_run[0], compare_run[1]


def _assert_png(path: Path) -> None:
    from PIL import Image

    assert path.is_file() and path.stat().st_size > 5000, path
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.format == "PNG" and img.width >= 300 and img.height >= 200
        assert np.asarray(img.convert("L")).std() > 5  # not blank


@pytest.mark.slow
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


@pytest.mark.slow
def test_compare_summary_says_what_was_run_and_has_tail_latency_and_rss(compare_report) -> None:
    report, out = compare_report
    machine = report["machine"]
    assert machine["cpu"] and machine["cores"] >= 1 and machine["python"]
    assert "numpy" in machine["versions"] and "ai-edge-litert" in machine["versions"]
    text = (out / "summary.md").read_text()
    head, _, table = text.partition("| strategy")
    assert head.startswith("# edge-sim: nicv2_391 on synthetic:")
    for needle in (f"- data: synthetic:{report['data'].split(':', 1)[1]}, scenario nicv2_391 run 0: 391 batches",
                   "3200 training frames", f"- model: {report['model']}: tiny (",
                   "- strategy naive: naive, softmax head", "- strategy replay: replay, softmax head",
                   "buffer 1000", f"- machine: {machine['cpu']}", f"numpy {machine['versions']['numpy']}",
                   "- wall time:"):
        assert needle in head, needle
    header = ("| strategy" + table).splitlines()[0]
    for column in ("predict p50 ms", "p95 ms", "p99 ms", "RSS peak MiB", "RSS avg MiB"):
        assert f" {column} " in header, column
    s = report["configs"]["replay"]["summary"]
    inf = report["configs"]["replay"]["runs"][0]["inference"]
    assert s["inference_p95_ms"]["mean"] == pytest.approx(inf["p95_ms"])
    assert s["inference_p99_ms"]["mean"] == pytest.approx(inf["p99_ms"])
    assert s["rss_avg_bytes"] > 0 and s["rss_peak_bytes"] >= s["rss_avg_bytes"]
    row = next(line for line in ("| strategy" + table).splitlines() if line.startswith("| replay "))
    assert f"{s['rss_peak_bytes'] / 2**20:.0f}" in row and f"{inf['p99_ms']:.2f}" in row


@pytest.mark.slow
def test_compare_plots_latency_rss_and_tradeoffs(compare_report) -> None:
    report, out = compare_report
    for name in ("accuracy_curve.png", "latency_hist.png", "rss.png", "accuracy_vs_memory.png",
                 "accuracy_vs_train_time.png"):
        _assert_png(out / name)
    run = report["configs"]["replay"]["runs"][0]
    assert len(run["inference"]["per_frame_ms"]) == 20  # what the histogram draws
    rss = run["rss_curve"]
    assert len(rss) == 392 and rss[0]["frames_seen"] == 0 and rss[-1]["frames_seen"] == run["n_train_frames"]
    assert all(p["rss_bytes"] > 0 for p in rss)


@pytest.mark.slow
def test_progress_shows_in_a_log_without_a_terminal(compare_run) -> None:
    err = compare_run[2]
    lines = err.splitlines()
    for desc in ("embed", "naive", "replay"):
        assert f"{desc}: 0/391 batch" in lines, desc
        assert any(ln.startswith(f"{desc}: 391/391 batch (100%) done in") for ln in lines), desc
    assert "\r" not in err  # plain lines, no bar redrawing


@pytest.mark.slow
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


@pytest.mark.slow
def test_run_with_several_runs_reports_mean_and_std_and_reuses_cached_test_embeddings(
        generated: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cache = tmp_path / "cache"
    args = ["run", "--model", MODEL, "--data", f"synthetic:{generated}", "--scenario", "ni", "--runs", "2",
            "--strategy", "replay", "--cache", str(cache), "--eval-every", "4",
            "--latency-frames", "0", "--test", "reduced", "--no-progress"]
    assert sim_main([*args, "--out", str(tmp_path / "a")]) == 0
    _assert_png(tmp_path / "a" / "accuracy_curve.png")  # both runs and their mean ± std band
    assert "runs 0-1 (2 runs, mean ± std)" in (tmp_path / "a" / "summary.md").read_text()
    assert not (tmp_path / "a" / "accuracy_vs_memory.png").exists()  # one strategy: no trade-off plot
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
    assert sim_main([*args, "--no-plots", "--out", str(tmp_path / "b")]) == 0
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


@pytest.mark.slow
def test_main_job_without_arguments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("EDGE_SIM_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    assert sim_main([]) == 0
    out = capsys.readouterr().out
    assert "| naive" in out and "| replay" in out and "| refit_slda" in out
    report = json.loads((tmp_path / "runs" / "edge-sim-default" / "report.json").read_text())
    assert report["scenario"] == "nicv2_391" and report["streams"][0]["n_batches"] == 391
    finals = {k: v["summary"]["final_accuracy"]["mean"] for k, v in report["configs"].items()}
    assert finals["refit_slda"] > finals["replay"] > finals["naive"], finals


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
