"""One experiment = one backbone, one stream (over one or more runs), one or more agent configurations.

`run_experiment` is what `edge-sim run` and `edge-sim compare` call: it opens the backbone once,
embeds each run's stream once, replays it through every configuration, aggregates mean and std
over runs, and writes ``report.json`` (with the machine and runtime versions), ``curve.csv``,
``summary.md`` (what was run, then the table) and the plots.

Example:
    >>> from firmware_sim.commands.experiment import ExperimentSpec, run_experiment   # doctest: +SKIP
    >>> spec = ExperimentSpec(model="models/default", data="synthetic", scenario="nicv2_391",
    ...                       configs={"naive": AgentConfig(strategy="naive")})  # doctest: +SKIP
    >>> report = run_experiment(spec, out_dir="runs/demo")                   # doctest: +SKIP
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.agent import AgentConfig
from edge.atomic import atomic_write
from edge.runtimes import open_backbone
from firmware_sim.measure.report import (
    format_mean_std,
    markdown_table,
    plot_confusion,
    plot_per_class,
    write_curve_csv,
    write_report,
)
from firmware_sim.cache import EmbeddingCache, default_cache_dir
from firmware_sim.data.streams import open_stream
from firmware_sim.loop.replay import SimOptions, embed_stream, embedding_summary, run_agent
from firmware_sim.loop.result import RunResult
from firmware_sim.measure.machine import machine_info, machine_line
from firmware_sim.measure.metrics import mean_std
from firmware_sim.measure.plots import plot_latency_histogram, plot_rss_over_time, plot_runs_band, plot_tradeoff

log = logging.getLogger(__name__)


@dataclass
class ExperimentSpec:
    """What to run. ``configs`` maps a label (shown in tables and plots) to an agent configuration."""

    model: str
    data: str
    scenario: str
    configs: dict[str, AgentConfig]
    runs: list[int] = field(default_factory=lambda: [0])
    runtime: str = "auto"
    precision: str = "fp32"
    num_threads: int | None = None
    test: str = "full"
    labels: str = "object"
    seed: int = 0
    protocol_params: dict[str, Any] = field(default_factory=dict)
    test_split: float | None = None
    cache_dir: str | None = None
    options: SimOptions = SimOptions()
    plots: bool = True


def summarise(results: list[RunResult]) -> dict[str, Any]:
    """Mean and sample std (ddof=1) over runs of the headline metrics of one configuration."""
    first = results[0].memory
    return {
        "final_accuracy": mean_std([r.final_accuracy for r in results]),
        "average_accuracy": mean_std([r.average_accuracy for r in results]),
        "forgetting_mean": mean_std([r.forgetting_mean for r in results]),
        "train_ms_per_batch": mean_std([r.train_ms_per_batch["mean"] for r in results]),
        "train_seconds_total": mean_std([r.train_seconds_total for r in results]),
        "inference_p50_ms": mean_std([r.inference_p50_ms for r in results]),
        "inference_p95_ms": mean_std([r.inference_ms("p95_ms") for r in results]),
        "inference_p99_ms": mean_std([r.inference_ms("p99_ms") for r in results]),
        "replay_bytes": first.replay_bytes,
        "learned_state_bytes": first.learned_state_bytes,
        "state_bytes_on_disk": first.state_bytes_on_disk,
        "rss_peak_bytes": max(r.memory.rss_peak_bytes for r in results),
        "rss_avg_bytes": mean_std([r.memory.rss.get("rss_avg_bytes") for r in results])["mean"],
    }


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


def run_experiment(spec: ExperimentSpec, out_dir: str | Path | None) -> dict[str, Any]:
    """Run every configuration over every run; write outputs to ``out_dir`` (None: write nothing)."""
    if not spec.configs:
        raise ValueError("configs: expected at least one agent configuration, got none")
    started = time.perf_counter()
    cache = EmbeddingCache(Path(spec.cache_dir) if spec.cache_dir else default_cache_dir() / "embeddings")
    per_config: dict[str, list[RunResult]] = {label: [] for label in spec.configs}
    streams_info = []
    with open_backbone(spec.model, runtime=spec.runtime, precision=spec.precision,
                       num_threads=spec.num_threads) as backbone:
        image_size = backbone.manifest.input_shape[0]
        for run in spec.runs:
            stream = open_stream(spec.data, spec.scenario, run, test=spec.test, labels=spec.labels,
                                 image_size=image_size, seed=spec.seed, params=spec.protocol_params,
                                 progress=spec.options.progress and sys.stderr.isatty(), test_split=spec.test_split)
            max_label = stream.n_classes
            for label, config in spec.configs.items():
                if config.max_classes < max_label:
                    raise ValueError(f"{label}: max_classes expected >= {max_label} (classes in the stream), "
                                     f"got {config.max_classes}")
            embedded = embed_stream(stream, backbone, cache, progress=spec.options.progress)
            streams_info.append({"run": run, "name": stream.name, "description": stream.description,
                                 "n_batches": len(stream.train_batches), "n_train_frames": stream.n_train_frames,
                                 "n_test_frames": len(stream.test), "n_classes": stream.n_classes,
                                 "test_split": stream.test_split,
                                 "embedding": embedding_summary(embedded)})
            for label, config in spec.configs.items():
                result = run_agent(label, config, embedded, backbone, spec.options)
                result.run = run
                result.test_split = stream.test_split
                per_config[label].append(result)
                log.info("%s run %d: final accuracy %.3f", label, run, result.final_accuracy)
        backbone_info = embedded.backbone_info

    report = {
        "tool": "edge-sim",
        "model": spec.model,
        "backbone": backbone_info,
        "data": spec.data,
        "scenario": spec.scenario,
        "runs": spec.runs,
        "test": spec.test,
        "labels": spec.labels,
        "test_split": streams_info[0]["test_split"] if streams_info else "",
        "streams": streams_info,
        "configs": {label: {"config": spec.configs[label].to_dict(), "summary": summarise(results),
                            "runs": [r.to_dict() for r in results]}
                    for label, results in per_config.items()},
        "machine": _machine(),
        "wall_seconds": time.perf_counter() - started,
    }
    if out_dir is not None:
        write_outputs(report, Path(out_dir), plots=spec.plots)
    return report


def _machine() -> dict[str, Any]:
    """`machine_info` plus ``processor`` (the CPU model under the key older readers of reports use)."""
    info = machine_info()
    return {**info, "processor": info["cpu"]}


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
