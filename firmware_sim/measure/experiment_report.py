"""The outputs of one ``edge-sim run`` / ``compare`` experiment: ``report.json``, ``curve.csv``,
``summary.md`` (what was run, then one table row per configuration) and the PNG plots.

They read the report dict `firmware_sim.loop.experiment.run_experiment` builds, nothing else.

Example:
    >>> report = run_experiment(spec, out_dir=None)                     # doctest: +SKIP
    >>> write_outputs(report, Path("runs/demo"), plots=False)           # doctest: +SKIP
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from edge.atomic import atomic_write
from firmware_sim.measure.machine import machine_line
from firmware_sim.measure.plots import plot_latency_histogram, plot_rss_over_time, plot_runs_band, plot_tradeoff
from firmware_sim.measure.report import (
    format_mean_std,
    markdown_table,
    plot_confusion,
    plot_per_class,
    write_curve_csv,
    write_report,
)

log = logging.getLogger(__name__)

__all__ = ["TABLE_COLUMNS", "summary_header", "summary_rows", "write_outputs", "write_plots"]


def summary_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One table row per configuration (accuracies in %, times in ms, sizes in KiB)."""
    rows = []
    for label, entry in report["configs"].items():
        s = entry["summary"]

        def pct(key: str) -> str:
            std = s[key]["std"] if s[key]["n"] > 1 else None  # a single run has no spread to show
            return format_mean_std(s[key]["mean"], std, 1, 100)

        rows.append({
            "strategy": label,
            "final acc %": pct("final_accuracy"),
            "avg acc %": pct("average_accuracy"),
            "forgetting %": pct("forgetting_mean"),
            "train ms/batch": format_mean_std(s["train_ms_per_batch"]["mean"], None, 2),
            "predict p50 ms": format_mean_std(s["inference_p50_ms"]["mean"], None, 2),
            "p95 ms": format_mean_std(s.get("inference_p95_ms", {}).get("mean"), None, 2),
            "p99 ms": format_mean_std(s.get("inference_p99_ms", {}).get("mean"), None, 2),
            "RSS peak MiB": format_mean_std(s["rss_peak_bytes"], None, 0, 2**-20),
            "RSS avg MiB": format_mean_std(s.get("rss_avg_bytes"), None, 0, 2**-20),
            "replay KiB": f"{s['replay_bytes'] / 1024:.0f}",
            "state KiB": f"{s['state_bytes_on_disk'] / 1024:.0f}",
        })
    return rows


TABLE_COLUMNS = ["strategy", "final acc %", "avg acc %", "forgetting %", "train ms/batch",
                 "predict p50 ms", "p95 ms", "p99 ms", "RSS peak MiB", "RSS avg MiB", "replay KiB", "state KiB"]


def _config_line(config: dict[str, Any]) -> str:
    """The settings a reader compares across strategies, e.g. ``replay, softmax head, lr 0.01, buffer 1000``."""
    parts = [str(config.get("strategy")), f"{config.get('head')} head"]
    if config.get("head") == "mlp":
        parts[-1] += f" ({config.get('hidden')} hidden)"
    parts += [f"{config.get('optimizer')} lr {config.get('lr'):g}", f"{config.get('epochs')} epochs",
              f"batch {config.get('batch_size')}"]
    if config.get("strategy") in ("replay", "ar1_head") or config.get("strategy_params", {}).get("buffer"):
        parts.append(f"buffer {config.get('buffer_capacity')} ({config.get('buffer_policy')}, "
                     f"{config.get('buffer_storage')}, replay ratio {config.get('replay_ratio'):g})")
    if config.get("strategy_params"):
        parts.append(", ".join(f"{k}={v}" for k, v in sorted(config["strategy_params"].items())))
    return ", ".join(parts)


def summary_header(report: dict[str, Any]) -> list[str]:
    """The lines ``summary.md`` starts with: data, scenario, model, strategies, machine."""
    b = report["backbone"]
    stream = report["streams"][0] if report["streams"] else {}
    runs = report["runs"]
    run_text = f"run {runs[0]}" if len(runs) == 1 else f"runs {runs[0]}-{runs[-1]} ({len(runs)} runs, mean ± std)"
    sha = b.get("file_sha256") or ""
    lines = [
        f"# edge-sim: {report['scenario']} on {report['data']}",
        "",
        f"- data: {report['data']}, scenario {report['scenario']} {run_text}: {stream.get('n_batches')} batches, "
        f"{stream.get('n_train_frames')} training frames, {stream.get('n_test_frames')} test frames "
        f"(test set: {report['test']}), {stream.get('n_classes')} classes "
        f"({report['labels']} labels)",
        f"- model: {report['model']}: {b.get('name')} ({b.get('file')}, {b.get('runtime')} {b.get('precision')}, "
        f"threads {b.get('threads') or 'runtime default'}" + (f", sha256 {sha[:12]}" if sha else "") + ")",
    ]
    for label, entry in report["configs"].items():
        lines.append(f"- strategy {label}: {_config_line(entry['config'])}")
    lines.append(f"- machine: {machine_line(report['machine'])}")
    lines.append(f"- wall time: {report['wall_seconds']:.1f} s")
    if report.get("test_split"):
        lines += ["", f"Test split: {report['test_split']}."]
    return lines


def write_outputs(report: dict[str, Any], out_dir: Path, plots: bool = True) -> None:
    """``report.json``, ``curve.csv``, ``summary.md`` and (with matplotlib) PNG plots."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for label, entry in report["configs"].items():
        for result in entry["runs"]:
            for point in result["curve"]:
                rows.append({"strategy": label, "run": result["run"], **point})
    write_curve_csv(out_dir, rows)
    text = "\n".join([*summary_header(report), "", markdown_table(summary_rows(report), TABLE_COLUMNS), ""])
    atomic_write(out_dir / "summary.md", lambda handle: handle.write(text), text=True)
    write_report(out_dir, report)
    if not plots:
        return
    write_plots(report, out_dir)


def write_plots(report: dict[str, Any], out_dir: Path) -> None:
    """The PNGs: accuracy curves (every run, mean ± std), latency histogram, RSS over the stream,
    accuracy vs memory and vs train time (with several strategies), per-class and confusion of run 0."""
    configs = report["configs"]
    runs = report["runs"]
    curves = {label: [([p["frames_seen"] for p in r["curve"]], [p["accuracy"] for p in r["curve"]])
                      for r in entry["runs"]] for label, entry in configs.items()}
    which = f"run {runs[0]}" if len(runs) == 1 else f"runs {runs[0]}-{runs[-1]}, mean ± std"
    plot_runs_band(out_dir / "accuracy_curve.png", curves,
                   title=f"{report['scenario']} ({which}): test accuracy after each batch")
    latency = {label: [v for r in entry["runs"] for v in (r.get("inference") or {}).get("per_frame_ms", [])]
               for label, entry in configs.items()}
    if any(latency.values()):
        plot_latency_histogram(out_dir / "latency_hist.png", {k: v for k, v in latency.items() if v},
                               title=f"End-to-end predict latency per frame after the stream ({which})")
    rss = {label: ([p["frames_seen"] for p in entry["runs"][0].get("rss_curve", [])],
                   [p["rss_bytes"] for p in entry["runs"][0].get("rss_curve", [])]) for label, entry in configs.items()}
    if any(x for x, _ in rss.values()):
        plot_rss_over_time(out_dir / "rss.png", {k: v for k, v in rss.items() if v[0]},
                           title=f"Process RSS during the stream (run {runs[0]}; strategies run one after another)")
    if len(configs) >= 2:
        def point(entry: dict[str, Any], key: str, scale: float = 1.0) -> dict[str, float | None]:
            s = entry["summary"]
            std = s["final_accuracy"]["std"] if s["final_accuracy"]["n"] > 1 else None
            x = s[key]["mean"] if isinstance(s[key], dict) else s[key]
            xstd = s[key]["std"] if isinstance(s[key], dict) and s[key]["n"] > 1 else None
            return {"x": None if x is None else x * scale, "y": s["final_accuracy"]["mean"], "yerr": std,
                    "xerr": None if xstd is None else xstd * scale}

        plot_tradeoff(out_dir / "accuracy_vs_memory.png",
                      {label: point(e, "learned_state_bytes", 1 / 1024) for label, e in configs.items()},
                      xlabel="learned state in RAM (KiB: head + replay buffer + strategy)", logx=True,
                      title=f"{report['scenario']}: final accuracy vs memory ({which})")
        plot_tradeoff(out_dir / "accuracy_vs_train_time.png",
                      {label: point(e, "train_seconds_total") for label, e in configs.items()},
                      xlabel="training time over the whole stream (s)", logx=True,
                      title=f"{report['scenario']}: final accuracy vs train time ({which})")
    for label, entry in report["configs"].items():
        first = entry["runs"][0]
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in label)
        plot_per_class(out_dir / f"per_class_{safe}.png", first["per_class_accuracy"], first["forgetting_per_class"],
                       title=f"{label}: per-class accuracy and forgetting")
        plot_confusion(out_dir / f"confusion_{safe}.png", first["confusion_matrix"], title=f"{label}: confusion")
