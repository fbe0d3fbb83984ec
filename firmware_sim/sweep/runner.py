"""Run a sweep: expand the grid, skip finished cells, embed each needed stream once, run the cells.

Output folder::

    DIR/grid.json            the cells of the grid (configuration and key of each)
    DIR/cells/<key>.json     one finished cell (written atomically when it finishes)
    DIR/cache/               embedded streams (<stream key>.npz), test-set embeddings, passes.jsonl
    DIR/results.json, results.csv, pareto_<scenario>.png

A rerun (or a sweep killed halfway) finds the finished cells by key and recomputes none of them;
a stream whose embeddings are in the cache is not embedded again.

Example:
    >>> from firmware_sim.sweep.runner import run_sweep            # doctest: +SKIP
    >>> facts = run_sweep("docs/sweep-example.toml", "runs/sweep")  # doctest: +SKIP
    >>> facts["cells_computed"], facts["embedding_passes"]          # doctest: +SKIP
    (16, 4)
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Iterator

from edge.atomic import atomic_write
from firmware_sim.measure.metrics import mean_std
from firmware_sim.sweep.embeddings import StreamCache
from firmware_sim.sweep.executors import Executor, make_executor
from firmware_sim.sweep.grid import Cell, Grid, expand, load_grid, make_cell, varying_keys
from firmware_sim.sweep.results import CELLS_DIR, render
from firmware_sim.sweep.tasks import CRASH_ENV, embed_task, resolve_stream, run_cell

log = logging.getLogger(__name__)

__all__ = ["SweepFailed", "run_sweep"]


class SweepFailed(ValueError):
    """Some cells failed; the others' results are written. ``facts`` is the sweep summary."""

    def __init__(self, message: str, facts: dict[str, Any]) -> None:
        super().__init__(message)
        self.facts = facts


def _resolve_head_files(cells: list[Cell]) -> list[Cell]:
    """Cells training a TFLite head name its file (the manifest's matching head) so the key pins it."""
    out = []
    for cell in cells:
        if cell.agent.get("head_backend") != "tflite" or cell.agent.get("head_file"):
            out.append(cell)
            continue
        from edge.agent import AgentConfig
        from edge.manifest import load_manifest
        from edge.tflite_head import find_head_file

        model_dir = Path(cell.sim["model"])
        head = find_head_file(model_dir, load_manifest(model_dir), AgentConfig.from_dict(cell.agent))
        out.append(make_cell(cell.sim, {**cell.agent, "head_file": str(Path(head).resolve())}))
    return out


class _Idle(Executor):
    """Stands in for the requested executor when every cell is finished."""

    def __init__(self, name: str) -> None:
        self.name = name

    def run(self, jobs: dict[str, Any], desc: str = "", label: Any = None) -> Iterator[tuple[str, Any]]:
        if jobs:
            raise ValueError(f"no executor for {len(jobs)} job(s): expected none")
        return iter(())


def _crash_hook() -> tuple[str, str] | None:
    value = os.environ.get(CRASH_ENV)
    if not value:
        return None
    prefix, sep, marker = value.partition(":")
    if not sep or not prefix or not marker:
        raise ValueError(f"{CRASH_ENV}: expected KEYPREFIX:MARKER_PATH, got {value!r}")
    return prefix, marker


def _spec_label(spec: dict[str, Any]) -> str:
    return f"{spec['data']} {spec['scenario']} run {spec['run']}"


def _cell_label(cell: Cell, keys: set[str]) -> str:
    """``<key> (<scenario> <strategy> <the grid's varied settings> run <n>)`` for a progress line."""
    values = {**cell.sim, **cell.agent, **cell.agent.get("strategy_params", {})}
    shown = sorted(k for k in keys if k in values and k not in ("scenario", "strategy", "run", "seed", "head_file"))
    settings = "".join(f" {k}={values[k]}" for k in shown)
    return f"{cell.key} ({cell.sim['scenario']} {cell.agent['strategy']}{settings} run {cell.sim['run']})"


def _write_json(path: Path, data: Any) -> None:
    text = json.dumps(data, indent=1, sort_keys=True, allow_nan=False) + "\n"
    atomic_write(path, lambda handle: handle.write(text), text=True)


def run_sweep(grid: Grid | str | Path, out_dir: str | Path, *, executor: str | Executor = "local",
              workers: int | None = None, ray_address: str | None = None, max_retries: int = 3,
              cache_dir: str | Path | None = None, progress: bool = False, plots: bool = True) -> dict[str, Any]:
    """Run every unfinished cell of ``grid``; write the cell records and merged results; return the facts."""
    started = time.perf_counter()
    grid = grid if isinstance(grid, Grid) else load_grid(grid)
    out = Path(out_dir)
    cells = _resolve_head_files(expand(grid))
    _write_json(out / "grid.json", {"source": grid.source, "cells": [c.to_dict() for c in cells]})
    finished = {c.key for c in cells if (out / CELLS_DIR / f"{c.key}.json").is_file()}
    todo = [c for c in cells if c.key not in finished]
    cache = StreamCache(Path(cache_dir) if cache_dir else out / "cache")
    crash = _crash_hook()
    threads = cells[0].sim["threads"]

    failures: dict[str, str] = {}
    computed: list[float] = []
    passes = 0
    embed_seconds: list[float] = []
    own = not isinstance(executor, Executor)
    if todo:
        runner = make_executor(executor, workers=workers, address=ray_address, max_retries=max_retries,
                               progress=progress) if isinstance(executor, str) else executor
    else:  # nothing to run: no pool, no cluster connection
        runner = _Idle(str(executor) if isinstance(executor, str) else executor.name)
    specs: dict[str, dict[str, Any]] = {}  # stream key -> spec (specs naming the same content share one)
    try:
        # each distinct stream's content key (opening a CORe50 stream parses its label pickles: in parallel)
        spec_of = {json.dumps(c.stream_spec, sort_keys=True): c.stream_spec for c in todo}
        resolved: dict[str, str] = {}
        for text, value in runner.run({t: (resolve_stream, {"spec": s, "threads": threads})
                                       for t, s in spec_of.items()}, desc="sweep streams",
                                      label=lambda t: _spec_label(spec_of[t])):
            if isinstance(value, BaseException):
                raise ValueError(f"stream {spec_of[text]['data']} {spec_of[text]['scenario']} run "
                                 f"{spec_of[text]['run']}: {value}") from value
            resolved[text] = value[0]
        stream_of = {c.key: resolved[json.dumps(c.stream_spec, sort_keys=True)] for c in todo}
        for text, key in resolved.items():
            specs.setdefault(key, spec_of[text])
        shared = runner.name == "ray"
        missing = {k: (embed_task, {"spec": spec, "key": k, "cache_dir": str(cache.directory), "threads": threads,
                                    "return_arrays": shared})
                   for k, spec in specs.items() if not cache.has(k)}
        handles: dict[str, Any] = {}
        for key, value in runner.run(missing, desc="sweep embed",
                                     label=lambda k: f"stream {k} ({_spec_label(specs[k])})"):
            if isinstance(value, BaseException):
                failures[f"stream {key}"] = f"{type(value).__name__}: {value}"
                continue
            passes += 1
            embed_seconds.append(float(value["meta"]["seconds"]))
            if shared:
                if not cache.has(key):  # the worker ran on another machine: keep a copy here too
                    cache.put(key, value["train"], value["test"], value["meta"])
                handles[key] = runner.share(value)
        if shared:
            for key in specs:
                if key not in handles and key not in missing:
                    got = cache.get(key)
                    if got is not None:
                        handles[key] = runner.share({"train": got[0], "test": got[1], "meta": got[2]})
        jobs = {}
        for cell in todo:
            skey = stream_of[cell.key]
            if f"stream {skey}" in failures:
                failures[cell.key] = f"its stream {skey} could not be embedded"
                continue
            jobs[cell.key] = (run_cell, {"cell": cell.to_dict(), "stream_key": skey,
                                         "cache_dir": str(cache.directory), "embedded": handles.get(skey),
                                         "crash": crash})
        by_key = {c.key: c for c in todo}
        strategies = {str(c.agent["strategy"]) for c in cells}  # as the results label them: what varies per strategy
        varied = {s: varying_keys([c for c in cells if c.agent["strategy"] == s]) for s in strategies}
        for key, value in runner.run(jobs, desc="sweep cells",
                                     label=lambda k: _cell_label(by_key[k], varied[str(by_key[k].agent["strategy"])])):
            if isinstance(value, BaseException):
                failures[key] = f"{type(value).__name__}: {value}"
                log.warning("cell %s failed: %s", key, failures[key])
                continue
            _write_json(out / CELLS_DIR / f"{key}.json", value)
            computed.append(float(value["seconds"]))
        retries = runner.retries
        kind = runner.name
    finally:
        if own:
            runner.close()
    facts = {
        "grid": grid.source, "executor": kind,
        "workers": getattr(runner, "workers", workers), "ray_address": ray_address,
        "cells_total": len(cells), "cells_skipped": len(finished), "cells_computed": len(computed),
        "cells_failed": failures, "streams": len(specs), "embedding_passes": passes,
        "embed_seconds": mean_std(embed_seconds), "cell_seconds": mean_std(computed),
        "worker_deaths_retried": retries, "wall_seconds": time.perf_counter() - started,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if len(finished) + len(computed):
        render(out, facts, plots=plots)
    if failures:
        first = next(iter(failures.items()))
        raise SweepFailed(f"{len(failures)} of {len(todo)} cell(s)/stream(s) failed (first: {first[0]}: "
                          f"{first[1]}); the others are in {out / CELLS_DIR}", facts)
    return facts

