"""One experiment = one backbone, one stream (over one or more runs), one or more agent configurations.

`run_experiment` is what `edge-sim run` and `edge-sim compare` (and the studies) call: it opens the
backbone once, embeds each run's stream once, replays it through every configuration, aggregates mean
and std over runs, and writes ``report.json`` (with the machine and runtime versions), ``curve.csv``,
``summary.md`` and the plots (`firmware_sim.measure.experiment_report`).

Example:
    >>> from firmware_sim.loop.experiment import ExperimentSpec, run_experiment      # doctest: +SKIP
    >>> spec = ExperimentSpec(model="models/tiny", data="synthetic", scenario="nicv2_391",
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
from edge.runtimes import open_backbone
from firmware_sim.cache import EmbeddingCache
from firmware_sim.cache_dir import default_cache_dir
from firmware_sim.data.streams import open_stream
from firmware_sim.loop.replay import SimOptions, embed_stream, embedding_summary, run_agent
from firmware_sim.loop.result import RunResult
from firmware_sim.measure.experiment_report import write_outputs
from firmware_sim.measure.machine import machine_info
from firmware_sim.measure.metrics import mean_std

log = logging.getLogger(__name__)

__all__ = ["ExperimentSpec", "machine_with_processor", "run_experiment", "summarise"]


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
        "machine": machine_with_processor(),
        "wall_seconds": time.perf_counter() - started,
    }
    if out_dir is not None:
        write_outputs(report, Path(out_dir), plots=spec.plots)
    return report


def machine_with_processor() -> dict[str, Any]:
    """`machine_info` plus ``processor`` (the CPU model under the key older readers of reports use)."""
    info = machine_info()
    return {**info, "processor": info["cpu"]}
