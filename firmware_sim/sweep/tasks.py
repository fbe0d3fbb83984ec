"""What a sweep worker runs: embed one stream, or replay one cell through the device loop.

Both are plain functions of picklable arguments, so a process pool and Ray run the same code. A
cell reopens its backbone and stream (cheap: the model is small and frames are memory-mapped),
takes the stream's embeddings from the cache (or from Ray's object store) and calls
`firmware_sim.loop.replay.run_agent`, the loop `edge-sim run` uses; it never embeds.

``EDGE_SIM_SWEEP_CRASH_ONCE=KEYPREFIX:MARKER`` (tests only) makes the first attempt of the cell whose
key starts with KEYPREFIX end its worker process with ``os._exit`` (a real worker death) after
creating MARKER; a retry finds MARKER and runs normally.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import socket
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["CRASH_ENV", "embed_task", "run_cell"]

CRASH_ENV = "EDGE_SIM_SWEEP_CRASH_ONCE"
CRASH_EXIT_CODE = 17


_STREAMS: OrderedDict[str, Any] = OrderedDict()  # this worker's recently opened streams
_STREAMS_KEPT = 4


def _cell_stream(spec: Mapping[str, Any], image_size: int) -> Any:
    """The stream ``spec`` names, opened once per worker process (CORe50's label pickles take seconds
    to parse safely, and a worker runs many cells of one stream)."""
    from firmware_sim.sweep.embeddings import open_cell_stream

    names = ("data", "scenario", "run", "test", "labels", "seed", "protocol_params", "test_split")
    key = json.dumps({**{n: spec[n] for n in names}, "image_size": image_size}, sort_keys=True)
    if key in _STREAMS:
        _STREAMS.move_to_end(key)
        return _STREAMS[key]
    stream = open_cell_stream(spec, image_size)
    _STREAMS[key] = stream
    while len(_STREAMS) > _STREAMS_KEPT:
        _STREAMS.popitem(last=False)
    return stream


def _open_backbone(sim: Mapping[str, Any]) -> Any:
    from edge.runtimes import open_backbone

    return open_backbone(sim["model"], runtime=sim["runtime"], precision=sim["precision"],
                         num_threads=sim["threads"])


def resolve_stream(spec: Mapping[str, Any], threads: int | None) -> tuple[str, dict[str, Any]]:
    """The content key of the stream ``spec`` names and a description of it (opens backbone and stream)."""
    from firmware_sim.sweep.embeddings import stream_key

    with _open_backbone({**spec, "threads": threads}) as backbone:
        stream = _cell_stream(spec, backbone.manifest.input_shape[0])
        return stream_key(backbone, stream, spec), {
            "name": stream.name, "n_batches": len(stream.train_batches), "n_train_frames": stream.n_train_frames,
            "n_test_frames": len(stream.test), "n_classes": stream.n_classes, "test_split": stream.test_split}


def embed_task(spec: Mapping[str, Any], key: str, cache_dir: str, threads: int | None,
               return_arrays: bool = False) -> dict[str, Any]:
    """Embed the stream ``spec`` once into the cache under ``key``; return its meta (and arrays for Ray)."""
    from firmware_sim.cache import EmbeddingCache
    from firmware_sim.loop.replay import embed_stream, embedding_summary
    from firmware_sim.sweep.embeddings import StreamCache, stream_key

    cache = StreamCache(cache_dir)
    started = time.perf_counter()
    with _open_backbone({**spec, "threads": threads}) as backbone:
        stream = _cell_stream(spec, backbone.manifest.input_shape[0])
        got = stream_key(backbone, stream, spec)
        if got != key:
            raise ValueError(f"stream {spec['data']} {spec['scenario']} run {spec['run']}: expected content key "
                             f"{key}, got {got} (did the data or model change during the sweep?)")
        embedded = embed_stream(stream, backbone, EmbeddingCache(Path(cache_dir) / "test"), progress=False)
        meta: dict[str, Any] = {"key": key, "spec": dict(spec), "embedding": embedding_summary(embedded),
                "backbone": embedded.backbone_info}
    seconds = time.perf_counter() - started
    meta["seconds"] = seconds
    cache.put(key, embedded.train, embedded.test, meta)
    cache.record_pass(key, seconds)
    out: dict[str, Any] = {"meta": meta}
    if return_arrays:
        out["train"], out["test"] = embedded.train, embedded.test
    return out


def _maybe_crash(key: str, crash: tuple[str, str] | None) -> None:
    if crash is None or not key.startswith(crash[0]):
        return
    try:
        fd = os.open(crash[1], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return  # the retry: run normally
    os.close(fd)
    os._exit(CRASH_EXIT_CODE)


def run_cell(cell: Mapping[str, Any], stream_key: str, cache_dir: str,
             embedded: Mapping[str, Any] | None = None, crash: tuple[str, str] | None = None) -> dict[str, Any]:
    """Replay one cell (``Cell.to_dict()``) through `run_agent`; return the record stored for it.

    ``embedded`` (Ray) holds ``train``/``test``/``meta``; without it they are read from the cache.
    """
    from edge.agent import AgentConfig
    from firmware_sim.loop.replay import EmbeddedStream, SimOptions, run_agent
    from firmware_sim.measure.metrics import LatencyRecorder
    from firmware_sim.measure.report import to_jsonable
    from firmware_sim.sweep.embeddings import StreamCache
    from firmware_sim.sweep.embeddings import stream_key as key_of

    _maybe_crash(str(cell["key"]), crash)
    started = time.perf_counter()
    sim = cell["sim"]
    if embedded is None:
        got = StreamCache(cache_dir).get(stream_key)
        if got is None:
            raise ValueError(f"cell {cell['key']}: expected the embedded stream {stream_key} in {cache_dir}, "
                             "got none")
        train, test, meta = got
    else:
        train, test, meta = list(embedded["train"]), np.asarray(embedded["test"]), dict(embedded["meta"])
    config = AgentConfig.from_dict(dict(cell["agent"]))
    with _open_backbone(sim) as backbone:
        stream = _cell_stream(sim, backbone.manifest.input_shape[0])
        if key_of(backbone, stream, sim) != stream_key:
            raise ValueError(f"cell {cell['key']}: the stream's content key changed since it was embedded "
                             f"(expected {stream_key}); did the data or model change during the sweep?")
        if config.max_classes < stream.n_classes:
            raise ValueError(f"cell {cell['key']}: max_classes expected >= {stream.n_classes} (classes in the "
                             f"stream), got {config.max_classes}")
        if len(train) != len(stream.train_batches) or len(test) != len(stream.test):
            raise ValueError(f"cell {cell['key']}: expected {len(stream.train_batches)} batches and "
                             f"{len(stream.test)} test rows, got {len(train)} and {len(test)}")
        view = EmbeddedStream(stream=stream, train=train, test=test, embed_latency=LatencyRecorder(),
                              test_from_cache=True, backbone_info=dict(meta.get("backbone", {})))
        options = SimOptions(eval_every=int(sim["eval_every"]), latency_frames=int(sim["latency_frames"]),
                             progress=False)
        result = run_agent(config.strategy, config, view, backbone, options)
    result.run = int(sim["run"])
    result.test_split = stream.test_split
    return {
        "key": cell["key"], "group": cell["group"], "cell": {"sim": sim, "agent": cell["agent"]},
        "stream_key": stream_key, "stream": {"name": stream.name, "n_classes": stream.n_classes,
                                             "test_split": stream.test_split},
        "embedding": meta.get("embedding", {}), "backbone": meta.get("backbone", {}),
        "result": to_jsonable(result.to_dict()),
        "seconds": time.perf_counter() - started, "pid": os.getpid(), "host": socket.gethostname(),
        "python": platform.python_version(),
    }
