"""A sweep's merged results: one row per configuration (mean +- std over its runs) and the plots.

Every scalar metric of a cell's ``report.json`` run entry (`RunResult.to_dict`: accuracies,
forgetting, timings, latency, memory; nested keys dotted, e.g. ``memory.replay_bytes``) is averaged
over the runs of its configuration with `firmware_sim.measure.metrics.mean_std` (sample std).
``results.json`` keeps the configuration and the per-run values; ``results.csv`` has one column
pair ``<metric>_mean`` / ``<metric>_std`` per metric (full precision, for programs);
``summary.md`` (`firmware_sim.sweep.summary`) is the rounded table a person reads. Plots
(`firmware_sim.sweep.plots`), one pair per scenario: final accuracy against replay bytes and against
training ms per batch, with the Pareto front (no other point is both cheaper and more accurate) marked.

Example:
    >>> flat_metrics({"final_accuracy": 0.5, "memory": {"replay_bytes": 1024}, "label": "naive"})
    {'final_accuracy': 0.5, 'memory.replay_bytes': 1024.0}
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from edge.atomic import atomic_write
from firmware_sim.measure.metrics import mean_std
from firmware_sim.measure.report import to_jsonable
from firmware_sim.sweep.grid import Cell, describe, varying_keys
from firmware_sim.sweep.plots import pareto_front, plot_scenario
from firmware_sim.sweep.summary import summary_markdown

log = logging.getLogger(__name__)

__all__ = ["CELLS_DIR", "flat_metrics", "load_records", "merge", "pareto_front", "render", "write_results"]

CELLS_DIR = "cells"
#: Run-entry keys that are not metrics (configuration, identity) or not scalars.
_NOT_METRICS = {"label", "strategy", "config", "run", "test_split", "curve", "classes_seen"}
#: Metrics shown in the plots and first in the CSV.
HEADLINE = ["final_accuracy", "average_accuracy", "forgetting_mean", "train_ms_per_batch.mean",
            "inference.p50_ms", "memory.replay_bytes", "memory.state_bytes_on_disk"]


def flat_metrics(run: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The scalar numeric leaves of a run entry, nested keys dotted (lists and strings skipped)."""
    out: dict[str, float] = {}
    for key, value in run.items():
        if not prefix and key in _NOT_METRICS:
            continue
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flat_metrics(value, f"{name}."))
        elif isinstance(value, bool):
            continue
        elif isinstance(value, (int, float)) or value is None:
            out[name] = float("nan") if value is None else float(value)
    return out


def load_records(out_dir: str | Path) -> list[dict[str, Any]]:
    """Every finished cell's record (``cells/<key>.json``) under a sweep's output folder, by key."""
    folder = Path(out_dir) / CELLS_DIR
    records = []
    for path in sorted(folder.glob("*.json")):
        try:
            records.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable cell record %s (%s)", path, exc)
    return records


def merge(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One entry per configuration (cells equal but for ``run``): its runs and mean +- std of every metric."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for record in records:
        groups.setdefault(str(record["group"]), []).append(record)
    cells = {str(r["key"]): Cell.from_dict(r["cell"]) for r in records}
    by_strategy: dict[str, list[Cell]] = {}
    for cell in cells.values():
        by_strategy.setdefault(str(cell.agent["strategy"]), []).append(cell)
    # a label names what varies among one strategy's cells (naive's buffer size, fixed, is not shown)
    varying = {name: varying_keys(members) - {"scenario"} for name, members in by_strategy.items()}
    merged = []
    for group, members in groups.items():
        members = sorted(members, key=lambda r: int(r["cell"]["sim"]["run"]))
        per_run = [flat_metrics(r["result"]) for r in members]
        names = sorted(set().union(*per_run))
        summary = {n: mean_std(run.get(n) for run in per_run) for n in names}
        first = cells[str(members[0]["key"])]
        merged.append({
            "group": group,
            "label": describe(first, varying[str(first.agent["strategy"])]),
            "scenario": first.sim["scenario"],
            "strategy": first.agent["strategy"],
            "config": {"sim": {k: v for k, v in first.sim.items() if k != "run"}, "agent": first.agent},
            "runs": [int(r["cell"]["sim"]["run"]) for r in members],
            "cells": [str(r["key"]) for r in members],
            "summary": summary,
            "per_run": per_run,
            "cell_seconds": mean_std(float(r["seconds"]) for r in members),
        })
    merged.sort(key=lambda g: (str(g["scenario"]), _natural(str(g["label"]))))
    return merged


def _natural(label: str) -> list[tuple[int, float, str]]:
    """Sort key comparing a label's numbers as numbers ("buffer_capacity=50" before "=200")."""
    parts: list[tuple[int, float, str]] = []
    for word in label.replace("=", " = ").split():
        try:
            parts.append((0, float(word), ""))
        except ValueError:
            parts.append((1, 0.0, word))
    return parts


def _csv_text(merged: Sequence[Mapping[str, Any]]) -> str:
    names = sorted(set().union(*(g["summary"] for g in merged))) if merged else []
    ordered = [n for n in HEADLINE if n in names] + [n for n in names if n not in HEADLINE]
    columns = ["scenario", "label", "strategy", "n_runs", "group"]
    columns += [f"{n}_{part}" for n in ordered for part in ("mean", "std")]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for g in merged:
        row: dict[str, Any] = {"scenario": g["scenario"], "label": g["label"], "strategy": g["strategy"],
                               "n_runs": len(g["runs"]), "group": g["group"]}
        for n in ordered:
            s = g["summary"].get(n, {"mean": math.nan, "std": math.nan})
            row[f"{n}_mean"] = "" if math.isnan(s["mean"]) else repr(s["mean"])
            row[f"{n}_std"] = "" if math.isnan(s["std"]) else repr(s["std"])
        writer.writerow(row)
    return buffer.getvalue()


def write_results(out_dir: str | Path, merged: Sequence[Mapping[str, Any]], sweep: Mapping[str, Any]) -> None:
    """``results.json`` (``sweep`` facts + merged configurations), ``results.csv`` and ``summary.md``, atomically."""
    out = Path(out_dir)
    data = to_jsonable({"sweep": sweep, "configurations": list(merged)})
    text = json.dumps(data, indent=2, allow_nan=False) + "\n"
    atomic_write(out / "results.json", lambda handle: handle.write(text), text=True)
    table = _csv_text(merged)
    atomic_write(out / "results.csv", lambda handle: handle.write(table), text=True)
    summary = summary_markdown(merged, sweep)
    atomic_write(out / "summary.md", lambda handle: handle.write(summary), text=True)


def render(out_dir: str | Path, sweep: Mapping[str, Any] | None = None, plots: bool = True) -> list[dict[str, Any]]:
    """Merge the finished cells under ``out_dir``; (re)write results.json, results.csv, summary.md and plots."""
    out = Path(out_dir)
    records = load_records(out)
    if not records:
        raise ValueError(f"--report {out}: expected finished cells in {out / CELLS_DIR}, got none")
    if sweep is None:
        previous = out / "results.json"
        sweep = json.loads(previous.read_text(encoding="utf-8")).get("sweep", {}) if previous.is_file() else {}
    merged = merge(records)
    write_results(out, merged, sweep)
    if plots:
        for scenario in sorted({str(g["scenario"]) for g in merged}):
            safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in scenario)
            plot_scenario(out / f"pareto_{safe}.png", scenario, [g for g in merged if g["scenario"] == scenario])
    return merged
