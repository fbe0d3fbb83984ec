"""A sweep's ``summary.md``: one table per scenario a person reads, rounded, best configuration marked.

Columns are the strategy, the keys the grid varies (``buffer_capacity``, a strategy's own
parameter, ...; a dash where a strategy was not varied along that key) and the headline metrics as
mean +- sample std over runs, rounded to what a reader compares (accuracies to 0.1 %, times to
three significant digits, bytes as KiB). Rows that share a stream (same model, data, scenario and
the other stream settings) compete: the highest mean final accuracy among them is marked ``best``.

Example:
    >>> fmt_value(12.3456), fmt_value(0.012345), fmt_value(1234.5)
    ('12.3', '0.0123', '1234')
"""

from __future__ import annotations

import math
import time
from typing import Any, Mapping, Sequence

__all__ = ["METRIC_COLUMNS", "fmt_value", "summary_markdown", "varied_keys"]

#: (column title, metric name, scale applied to the mean and std) in the order they are shown.
METRIC_COLUMNS: list[tuple[str, str, float]] = [
    ("final acc %", "final_accuracy", 100.0),
    ("avg acc %", "average_accuracy", 100.0),
    ("forgetting %", "forgetting_mean", 100.0),
    ("train ms/batch", "train_ms_per_batch.mean", 1.0),
    ("predict p50 ms", "inference.p50_ms", 1.0),
    ("replay KiB", "memory.replay_bytes", 1 / 1024),
    ("state on disk KiB", "memory.state_bytes_on_disk", 1 / 1024),
]
#: Settings never shown as a varied column (``run`` is averaged over; scenario heads each table).
_NOT_COLUMNS = {"run", "seed", "scenario", "strategy", "head_file"}
#: The simulation settings a stream depends on (`Cell.stream_spec` without ``run``).
_STREAM_KEYS = ("model", "data", "scenario", "runtime", "precision", "test", "labels", "seed", "protocol_params",
                "test_split")


def fmt_value(value: float) -> str:
    """``value`` with three significant digits (no exponent; whole numbers from 1000 up)."""
    if math.isnan(value):
        return "-"
    size = abs(value)
    if size >= 1000 or size == 0:
        return f"{value:.0f}"
    digits = max(0, 2 - math.floor(math.log10(size)))
    return f"{value:.{digits}f}"


def _cell(stat: Mapping[str, float] | None, scale: float, decimals: int | None) -> str:
    """``mean ± std`` (the std to the mean's decimals; no ``±`` when the runs agree or there is one run)."""
    if stat is None or math.isnan(stat["mean"]):
        return "-"
    mean, std = stat["mean"] * scale, stat.get("std", math.nan) * scale
    text = fmt_value(mean) if decimals is None else f"{mean:.{decimals}f}"
    if math.isnan(std) or std == 0:
        return text
    places = len(text.partition(".")[2])
    return f"{text} ± {std:.{places}f}"


def _values(conf: Mapping[str, Any]) -> dict[str, Any]:
    agent = conf["config"]["agent"]
    return {**conf["config"]["sim"], **{k: v for k, v in agent.items() if k != "strategy_params"},
            **agent.get("strategy_params", {})}


def varied_keys(merged: Sequence[Mapping[str, Any]]) -> dict[str, set[str]]:
    """Per strategy, the settings that take more than one value among its configurations."""
    seen: dict[str, dict[str, set[str]]] = {}
    for conf in merged:
        per = seen.setdefault(str(conf["strategy"]), {})
        for key, value in _values(conf).items():
            per.setdefault(key, set()).add(repr(value))
    return {s: {k for k, vs in per.items() if len(vs) > 1 and k not in _NOT_COLUMNS} for s, per in seen.items()}


def _stream_of(conf: Mapping[str, Any]) -> str:
    sim = conf["config"]["sim"]
    return repr([sim.get(k) for k in _STREAM_KEYS])


def _table(confs: Sequence[Mapping[str, Any]], varied: Mapping[str, set[str]]) -> list[str]:
    columns = sorted(set().union(*varied.values())) if varied else []
    best: dict[str, float] = {}
    for conf in confs:
        acc = conf["summary"].get("final_accuracy", {"mean": math.nan})["mean"]
        if not math.isnan(acc):
            best[_stream_of(conf)] = max(acc, best.get(_stream_of(conf), -math.inf))
    header = ["#", "", "strategy", *columns, "runs", *(title for title, _, _ in METRIC_COLUMNS)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for number, conf in enumerate(confs, 1):
        values = _values(conf)
        acc = conf["summary"].get("final_accuracy", {"mean": math.nan})["mean"]
        mark = "**best**" if not math.isnan(acc) and acc == best.get(_stream_of(conf)) else ""
        row = [str(number), mark, str(conf["strategy"])]
        row += [str(values.get(k, "-")) if k in varied.get(str(conf["strategy"]), set()) else "-" for k in columns]
        row.append(str(len(conf["runs"])))
        for title, name, scale in METRIC_COLUMNS:
            decimals = 1 if title.endswith("%") or title.endswith("KiB") else None
            row.append(_cell(conf["summary"].get(name), scale, decimals))
        lines.append("| " + " | ".join(row) + " |")
    return lines


def summary_markdown(merged: Sequence[Mapping[str, Any]], sweep: Mapping[str, Any]) -> str:
    """The text of ``summary.md`` for merged configurations (`results.merge`) and the sweep's facts."""
    varied = varied_keys(merged)
    lines = ["# Sweep summary", ""]
    if sweep.get("grid"):
        lines.append(f"- grid: `{sweep['grid']}`")
    if "cells_total" in sweep:
        lines.append(f"- cells: {sweep['cells_total']} ({sweep.get('cells_computed', 0)} computed, "
                     f"{sweep.get('cells_skipped', 0)} already done, {len(sweep.get('cells_failed', {}))} failed), "
                     f"{sweep.get('streams', '?')} streams, {sweep.get('embedding_passes', '?')} embedding passes")
    if "wall_seconds" in sweep:
        lines.append(f"- executor: {sweep.get('executor', '?')}, wall {fmt_value(float(sweep['wall_seconds']))} s, "
                     f"finished {sweep.get('finished_at', '?')}")
    else:
        lines.append(f"- rendered {time.strftime('%Y-%m-%dT%H:%M:%S%z')}")
    lines += ["- values: mean ± sample std over the runs (no ± where the runs agree); **best**: highest mean final "
              "accuracy among the rows that share a stream (model, data, scenario); '-' in a setting column: not "
              "varied for that strategy; # numbers the points of `pareto_<scenario>.png`", ""]
    for scenario in sorted({str(c["scenario"]) for c in merged}):
        confs = [c for c in merged if str(c["scenario"]) == scenario]
        lines += [f"## {scenario}", "", *_table(confs, varied), ""]
    return "\n".join(lines)
