"""``edge-sim device`` end to end: open the stream, plan the teacher and the cuts, run, measure, report.

`run_device` runs the deployment once uninterrupted and, with power cuts, once more with them, and
compares the two. The report separates what the seed decides (``results``: accuracies, frames,
teach bursts, cuts) from what this machine's speed decides (``measured``: latencies, RSS, wall time).

Example:
    >>> spec = DeviceSpec(model="models/tiny", data="synthetic", scenario="nicv2_391",
    ...                   agent=AgentConfig(), options=DeviceOptions(power_cuts=20))  # doctest: +SKIP
    >>> report = run_device(spec, "runs/device")                                      # doctest: +SKIP
"""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge.agent import AgentConfig
from firmware_sim.device.report import run_entry
from firmware_sim.device.sim import DeviceOptions, StreamFrames, cut_plan, simulate
from firmware_sim.device.teacher import teach_plan

log = logging.getLogger(__name__)

__all__ = ["DeviceSpec", "run_device"]


@dataclass
class DeviceSpec:
    """What to deploy (model, agent) on which stream, and the device options."""

    model: str
    data: str
    scenario: str
    agent: AgentConfig
    options: DeviceOptions = field(default_factory=DeviceOptions)
    run: int = 0
    runtime: str = "auto"
    precision: str = "fp32"
    test: str = "full"
    labels: str = "object"
    cache_dir: str | None = None
    max_frames: int | None = None
    baseline: bool = True
    plots: bool = True
    progress: bool = False


def _open_frames(spec: DeviceSpec, image_size: int) -> tuple[Any, StreamFrames]:
    from firmware_sim.data.streams import open_stream

    stream = open_stream(spec.data, spec.scenario, spec.run, test=spec.test, labels=spec.labels,
                         image_size=image_size, seed=spec.options.seed, progress=spec.progress and sys.stderr.isatty())
    batches, starts, labels, total = [], [], [], 0
    for batch in stream.train_batches:
        if spec.max_frames is not None and total >= spec.max_frames:
            break
        batches.append(batch)
        starts.append(total)
        labels.append(np.asarray(batch.labels, np.int64))
        total += len(batch)
    y = np.concatenate(labels)
    if spec.max_frames is not None:
        y = y[: spec.max_frames]
    return stream, StreamFrames(y, starts, batches)


def run_device(spec: DeviceSpec, out_dir: str | Path | None) -> dict[str, Any]:
    """Deploy, run (with and without power cuts), and write the report; returns it."""
    from edge.runtimes import open_backbone
    from firmware_sim.cache import EmbeddingCache, embed_test_set
    from firmware_sim.cache_dir import default_cache_dir
    from firmware_sim.measure.machine import machine_info

    started = time.perf_counter()
    options = spec.options
    budgets = options.budgets()
    work = Path(tempfile.mkdtemp(prefix="edge-sim-device-"))
    try:
        cache = EmbeddingCache(Path(spec.cache_dir) if spec.cache_dir else default_cache_dir() / "embeddings")
        with open_backbone(spec.model, runtime=spec.runtime, precision=spec.precision,
                           num_threads=budgets["threads"]) as backbone:
            stream, frames = _open_frames(spec, backbone.manifest.input_shape[0])
            test_x, _ = embed_test_set(stream, backbone, cache)
            info = {"name": backbone.manifest.name, "fingerprint": backbone.manifest.fingerprint,
                    "runtime": backbone.info.runtime, "precision": backbone.info.precision,
                    "threads": budgets["threads"]}
        if spec.agent.max_classes < stream.n_classes:
            raise ValueError(f"--max-classes: expected >= {stream.n_classes} (classes in the stream), "
                             f"got {spec.agent.max_classes}")
        np.save(work / "test_x.npy", np.ascontiguousarray(test_x, np.float32))
        np.save(work / "test_y.npy", np.asarray(stream.test.labels, np.int64))
        plan = teach_plan(frames.labels, frames.batch_starts, options.fps, options.label_share,
                          options.label_delay_s, options.burst)
        base = {"model": str(spec.model), "runtime": spec.runtime, "precision": spec.precision,
                "threads": budgets["threads"], "agent": spec.agent.to_dict(), "realtime": options.realtime,
                "window": options.window, "unknown_threshold": options.unknown_threshold,
                "resize": options.resize, "teach_batch": options.burst, "eval_every": options.eval_every,
                "rss_every": 20, "thumbnails": options.thumbnails, "test_embeddings": str(work / "test_x.npy"),
                "test_labels": str(work / "test_y.npy")}
        cuts = cut_plan(options.power_cuts, len(frames), plan.n_bursts, options.seed)
        runs: dict[str, Any] = {}
        if not options.power_cuts or spec.baseline:
            done = simulate(frames, plan, base, options, work, [], progress=spec.progress, desc="uninterrupted")
            runs["uninterrupted"] = run_entry(done, frames, plan, options)
        if options.power_cuts:
            done = simulate(frames, plan, base, options, work, cuts, progress=spec.progress, desc="power cuts")
            runs["power_cuts"] = run_entry(done, frames, plan, options)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report: dict[str, Any] = {
        "tool": "edge-sim device", "model": str(spec.model), "backbone": info, "data": spec.data,
        "scenario": spec.scenario, "run": spec.run, "test": spec.test, "labels": spec.labels,
        "strategy": spec.agent.strategy, "agent": spec.agent.to_dict(), "options": asdict(options),
        "budgets": budgets, "stream": {"name": stream.name, "frames": len(frames), "batches": len(frames.batches),
                                       "test_frames": int(len(stream.test)), "classes": stream.n_classes},
        "cut_plan": [asdict(c) for c in cuts], "runs": runs, "machine": machine_info(),
        "wall_seconds": time.perf_counter() - started,
    }
    if "uninterrupted" in runs and "power_cuts" in runs:
        a, b = runs["uninterrupted"]["results"], runs["power_cuts"]["results"]
        report["power_cut_cost"] = {
            key: (b[key] - a[key]) if a[key] is not None and b[key] is not None else None
            for key in ("final_accuracy", "prequential_accuracy")}
    if out_dir is not None:
        from firmware_sim.device.report import write_device_outputs

        write_device_outputs(report, Path(out_dir), plots=spec.plots)
    return report
