"""One experiment = one backbone, one stream (over one or more runs), one or more agent configurations.

`run_experiment` is what `edge-sim run` and `edge-sim compare` call: it opens the backbone once,
embeds each run's stream once, replays it through every configuration, aggregates mean and std
over runs, and writes ``report.json``, ``curve.csv`` and the plots.

Example:
    >>> from firmware_sim.commands.experiment import ExperimentSpec, run_experiment   # doctest: +SKIP
    >>> spec = ExperimentSpec(model="models/default", data="synthetic", scenario="nicv2_391",
    ...                       configs={"naive": AgentConfig(strategy="naive")})  # doctest: +SKIP
    >>> report = run_experiment(spec, out_dir="runs/demo")                   # doctest: +SKIP
"""

from __future__ import annotations

import logging
import platform
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
    plot_accuracy_curve,
    plot_confusion,
    plot_per_class,
    write_curve_csv,
    write_report,
)
from firmware_sim.cache import EmbeddingCache, default_cache_dir
from firmware_sim.data.streams import open_stream
from firmware_sim.loop.device_loop import SimOptions, embed_stream, embedding_summary, run_agent
from firmware_sim.loop.result import RunResult
from firmware_sim.measure.metrics import mean_std

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
        "inference_p50_ms": mean_std([r.inference_p50_ms for r in results]),
        "replay_bytes": first.replay_bytes,
        "learned_state_bytes": first.learned_state_bytes,
        "state_bytes_on_disk": first.state_bytes_on_disk,
        "rss_peak_bytes": max(r.memory.rss_peak_bytes for r in results),
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
            "replay KiB": f"{s['replay_bytes'] / 1024:.0f}",
            "state KiB": f"{s['state_bytes_on_disk'] / 1024:.0f}",
        })
    return rows


TABLE_COLUMNS = ["strategy", "final acc %", "avg acc %", "forgetting %", "train ms/batch",
                 "predict p50 ms", "replay KiB", "state KiB"]


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
                                 progress=spec.options.progress, test_split=spec.test_split)
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
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "processor": platform.processor() or platform.machine()},
        "wall_seconds": time.perf_counter() - started,
    }
    if out_dir is not None:
        write_outputs(report, Path(out_dir), plots=spec.plots)
    return report


def write_outputs(report: dict[str, Any], out_dir: Path, plots: bool = True) -> None:
    """``report.json``, ``curve.csv``, ``summary.md`` and (with matplotlib) PNG plots."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for label, entry in report["configs"].items():
        for result in entry["runs"]:
            for point in result["curve"]:
                rows.append({"strategy": label, "run": result["run"], **point})
    write_curve_csv(out_dir, rows)
    table = markdown_table(summary_rows(report), TABLE_COLUMNS) + "\n"
    if report.get("test_split"):
        table = f"Test split: {report['test_split']}.\n\n{table}"
    atomic_write(out_dir / "summary.md", lambda handle: handle.write(table), text=True)
    write_report(out_dir, report)
    if not plots:
        return
    curves = {}
    for label, entry in report["configs"].items():
        first = entry["runs"][0]
        curves[label] = ([p["frames_seen"] for p in first["curve"]], [p["accuracy"] for p in first["curve"]])
    plot_accuracy_curve(out_dir / "accuracy_curve.png", curves,
                        title=f"{report['scenario']} run {report['runs'][0]}: test accuracy after each batch")
    for label, entry in report["configs"].items():
        first = entry["runs"][0]
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in label)
        plot_per_class(out_dir / f"per_class_{safe}.png", first["per_class_accuracy"], first["forgetting_per_class"],
                       title=f"{label}: per-class accuracy and forgetting")
        plot_confusion(out_dir / f"confusion_{safe}.png", first["confusion_matrix"], title=f"{label}: confusion")
