"""``edge-sim device`` outputs: ``report.json``, ``summary.md`` and plots (timeline, latency, RSS).

`run_entry` turns a `DeviceRun` (typed records) into its ``report.json`` entry (plain JSON values).

The timeline plot shows each frame's processing time against the deadline over stream time, with
teach bursts (learned batches), dropped frames, frames while the device was off and power cuts marked.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from edge.atomic import atomic_write
from firmware_sim.measure.machine import machine_line
from firmware_sim.device.sim import DeviceOptions, DeviceRun, Failure, StreamFrames
from firmware_sim.device.teacher import TeachPlan
from firmware_sim.measure.report import _new_figure, _save, markdown_table, write_report

log = logging.getLogger(__name__)

__all__ = ["SUMMARY_COLUMNS", "failure_entry", "flash_lines", "run_entry", "summary_markdown", "summary_rows",
           "write_device_outputs"]

SUMMARY_COLUMNS = ["run", "final acc %", "prequential acc %", "frames", "dropped", "off", "deadline misses",
                   "latency p50 ms", "p95 ms", "p99 ms", "RSS peak MiB", "state KiB", "written MiB/h", "thumbnails %", "cuts",
                   "bursts lost", "wall s"]


def _percentiles(values: np.ndarray) -> dict[str, float | None]:
    if not values.size:
        return {"mean": None, "p50": None, "p95": None, "p99": None, "max": None}
    return {"mean": float(values.mean()), "p50": float(np.percentile(values, 50)),
            "p95": float(np.percentile(values, 95)), "p99": float(np.percentile(values, 99)),
            "max": float(values.max())}


def failure_entry(failure: Failure) -> dict[str, Any]:
    """The report's ``failure``: where and the disk figures for a flash budget, the full story otherwise."""
    keys = (("kind", "where", "disk_bytes", "flash_budget_mb") if failure.kind == "flash_budget" else
            ("kind", "reason", "message", "where", "site", "frame", "peak_rss_bytes", "ram_budget_mb",
             "ram_mechanism", "exit_status"))
    return {key: getattr(failure, key) for key in keys}


def run_entry(run: DeviceRun, frames: StreamFrames, plan: TeachPlan, options: DeviceOptions) -> dict[str, Any]:
    """The report entry of one run: ``results`` (seeded) and ``measured`` (machine speed)."""
    y = frames.labels
    done = ~np.isnan(run.proc_ms)
    correct = (run.pred == y) & done
    n_done = int(done.sum())
    points = np.unique(np.linspace(0, len(y), 51).astype(int)[1:])
    cum_done, cum_ok = np.cumsum(done), np.cumsum(correct)
    prequential_curve = [{"frame": int(p), "accuracy": float(cum_ok[p - 1] / cum_done[p - 1])}
                         for p in points if cum_done[p - 1] > 0]
    taught = plan.labels >= 0
    latency = run.proc_ms[done]
    hours = len(y) / options.fps / 3600.0
    final = run.final
    cuts = run.cuts
    results = {
        "completed": run.failure is None and final is not None,
        "failure": None if run.failure is None else failure_entry(run.failure),
        "frames": len(y), "frames_processed": n_done,
        "frames_dropped": int(run.dropped.sum()), "frames_while_off": int(run.lost_off.sum()),
        "taught_planned": int(taught.sum()), "bursts_planned": plan.n_bursts,
        "taught_received": int((taught & done).sum()),
        "prequential_accuracy": float(correct.sum() / n_done) if n_done else None,
        "prequential_curve": prequential_curve,
        "test_curve": [asdict(e) for e in run.evals],
        "final_accuracy": None if final is None else final.final_accuracy,
        "learned_batches": len(run.learned), "final_step": None if final is None else final.step,
        "power_cuts": [asdict(c) for c in cuts],
        "power_cut_totals": {
            "cuts": len(cuts), "during_checkpoint": sum(c.kind != "frame" for c in cuts),
            "frames_off": sum(c.frames_off for c in cuts), "taught_lost": sum(c.taught_lost for c in cuts),
            "bursts_lost": sum(c.bursts_lost for c in cuts),
            "max_bursts_lost_per_cut": max((c.bursts_lost for c in cuts), default=0),
            "max_bursts_touched_per_cut": max((c.bursts_touched for c in cuts), default=0),
            "updates_lost": sum(c.updates_lost for c in cuts)},
        "missed_cuts": list(run.missed_cuts),  # planned cuts that did not happen, with why
    }
    rss = [r for _, r in run.rss]
    peak = max([*rss, int(final.rss_peak or 0) if final is not None else 0]) if (rss or final is not None) else None
    measured = {
        "latency_ms": _percentiles(latency),
        "wall_latency_ms": _percentiles(run.wall_ms[done]),
        "deadline_ms": options.deadline_ms,
        "deadline_misses": int((latency > options.deadline_ms).sum()),
        "learn_ms": _percentiles(np.asarray([e.ms for e in run.learned], float)),
        "rss_over_time": [{"t": round(t, 3), "rss_bytes": r} for t, r in run.rss],
        "rss_peak_bytes": peak, "rss_avg_bytes": float(np.mean(rss)) if rss else None,
        "state_bytes_on_disk": None if final is None else final.disk_bytes,
        "memory": None if final is None else final.memory,
        "bytes_written": run.bytes_written, "checkpoints": run.checkpoints,
        "flash": run.flash.entry(int((taught & done).sum())),
        "bytes_written_per_hour": run.bytes_written / hours if hours > 0 else None,
        "stream_hours": hours,
        "recovery_s": _percentiles(np.asarray([c.recovery_s for c in cuts], float)),
        "boot_s": run.boots[0] if run.boots else None,
        "ram_mechanism": run.ram, "errors": [asdict(e) for e in run.errors], "wall_s": run.wall_s,
        "timeline": {"start_s": run.start_s, "proc_ms": run.proc_ms, "dropped": np.flatnonzero(run.dropped),
                     "off": np.flatnonzero(run.lost_off), "learned_t": [e.t for e in run.learned]},
    }
    return {"results": results, "measured": measured}


def _pct(v: Any) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}"


def _num(v: Any, fmt: str = "{:.2f}") -> str:
    return "n/a" if v is None else fmt.format(v)


def summary_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per run (uninterrupted, power cuts)."""
    rows = []
    for name, entry in report["runs"].items():
        r, m = entry["results"], entry["measured"]
        rows.append({
            "run": name + ("" if r["completed"] else " (FAILED)"),
            "final acc %": _pct(r["final_accuracy"]), "prequential acc %": _pct(r["prequential_accuracy"]),
            "frames": r["frames_processed"], "dropped": r["frames_dropped"], "off": r["frames_while_off"],
            "deadline misses": m["deadline_misses"], "latency p50 ms": _num(m["latency_ms"]["p50"], "{:.3f}"),
            "p95 ms": _num(m["latency_ms"]["p95"], "{:.3f}"), "p99 ms": _num(m["latency_ms"]["p99"], "{:.3f}"),
            "RSS peak MiB": _num(None if m["rss_peak_bytes"] is None else m["rss_peak_bytes"] / 2**20, "{:.0f}"),
            "state KiB": _num(None if m["state_bytes_on_disk"] is None else m["state_bytes_on_disk"] / 1024, "{:.0f}"),
            "written MiB/h": _num(None if m["bytes_written_per_hour"] is None
                                  else m["bytes_written_per_hour"] / 2**20, "{:.1f}"),
            "thumbnails %": _pct(m["flash"]["thumbnail_share"]),
            "cuts": r["power_cut_totals"]["cuts"], "bursts lost": r["power_cut_totals"]["bursts_lost"],
            "wall s": _num(m["wall_s"], "{:.1f}"),
        })
    return rows


def _size(n: Any) -> str:
    if n is None:
        return "n/a"
    return f"{n:,} B" if n < 1024 else f"{n / 1024:,.1f} KiB" if n < 2**20 else f"{n / 2**20:,.1f} MiB"


def flash_lines(report: dict[str, Any]) -> list[str]:
    """Per run: the bytes written to flash by part, the thumbnails' share, and the thumbnails stored."""
    lines = []
    for name, entry in report["runs"].items():
        f = entry["measured"]["flash"]
        p = f["parts"]
        size = f["thumbnail_size"]
        stored = (f"{f['thumbnails_stored']:,} thumbnails stored (longer side <= {size} px) in "
                  f"{_size(f['thumbnail_bytes_stored'])} of the newest checkpoint, "
                  f"{_size(None if f['thumbnail_bytes_per_1000'] is None else round(f['thumbnail_bytes_per_1000']))} "
                  f"per 1,000, {f['thumbnails_dropped'] or 0} dropped by the thumbnail budget" if size else
                  "thumbnails off (--no-thumbnails)")
        lines.append(f"- flash written ({name}): {_size(f['bytes_written'])} in {f['checkpoints']:,} checkpoints: "
                     f"thumbnails {_size(p['thumbnails'])} ({_pct(f['thumbnail_share'])} %), the rest of the teach "
                     f"ledger {_size(p['ledger'])}, the agent state {_size(p['state'])}, the lock file "
                     f"{_size(p['lock'])}, temp files torn by cuts {_size(p['torn'])}; {stored}")
    return lines + [""] if lines else lines


def _budget(mb: Any) -> str:
    return "none" if not mb else f"{mb:g} MB"


def summary_markdown(report: dict[str, Any]) -> str:
    """``summary.md``: what was run (data, model, strategy, device, machine), then the table and failures."""
    o, b, bud = report["options"], report["backbone"], report["budgets"]
    s = report["stream"]
    lines = [
        f"# edge-sim device: {report['scenario']} on {report['data']}",
        "",
        f"- data: {report['data']}, scenario {report['scenario']} run {report['run']}: {s['frames']} frames in "
        f"{s['batches']} batches, {s['test_frames']} test frames ({report['test']}), {s['classes']} classes",
        f"- model: {b['name']} ({b['runtime']} {b['precision']}, threads {b['threads'] or 'runtime default'}), "
        f"strategy {report['strategy']}",
        f"- device: {bud['device']} ({bud['source']}); RAM budget: "
        f"{_budget(bud['ram_budget_mb'])}, flash budget: {_budget(bud['flash_budget_mb'])}",
        f"- clock: {'wall time (--realtime)' if o['realtime'] else 'simulated'}, {o['fps']:g} fps, deadline "
        f"{o['frame_deadline_ms'] or 1000 / o['fps']:.1f} ms; teacher: share {o['label_share']:g}, delay "
        f"{o['label_delay_s']:g} s, bursts of {o['burst']} frames; power cuts {o['power_cuts']} "
        f"(outage {o['outage_s']:g} s), seed {o['seed']}",
        f"- machine: {machine_line(report['machine'])}",
        "",
        markdown_table(summary_rows(report), SUMMARY_COLUMNS),
        "",
    ]
    lines += flash_lines(report)
    cost = report.get("power_cut_cost")
    if cost:
        lines.append(f"Power cuts cost {_num(None if cost['final_accuracy'] is None else -100 * cost['final_accuracy'], '{:.2f}')} "
                     f"points of final accuracy and "
                     f"{_num(None if cost['prequential_accuracy'] is None else -100 * cost['prequential_accuracy'], '{:.2f}')} "
                     "points of prequential accuracy against the same run uninterrupted.")
        lines.append("")
    for name, entry in report["runs"].items():
        failure = entry["results"]["failure"]
        if failure:
            lines.append(f"**{name} failed**: {failure}")
            lines.append("")
    return "\n".join(lines)


def _plot_timeline(path: Path, name: str, entry: dict[str, Any], deadline_ms: float) -> None:
    """Per-frame time against the deadline (dots, with the p50 and p95 of each time bin) and, below,
    teach bursts learned and frames dropped per time bin; the device's off periods shaded. Counts per
    bin stay readable with thousands of bursts, where a tick per burst merges into a solid block."""
    fig = _new_figure(10.0, 5.2)
    if fig is None:
        return
    tl = entry["measured"]["timeline"]
    start = np.asarray([np.nan if v is None else v for v in tl["start_s"]], float)
    proc = np.asarray([np.nan if v is None else v for v in tl["proc_ms"]], float)
    ok = ~np.isnan(start) & ~np.isnan(proc)
    end = float(np.nanmax(start)) if ok.any() else 1.0
    fps = len(start) / max(end, 1e-9)
    frame_t = np.arange(len(start)) / fps  # stream time of frames never started (dropped, device off)
    edges = np.linspace(0.0, max(end, 1e-9), min(120, max(10, len(start) // 50)) + 1)
    width = float(edges[1] - edges[0])
    centres = (edges[:-1] + edges[1:]) / 2
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1.4])
    top.plot(start[ok], proc[ok], ",", color="tab:blue", alpha=0.5, label="frame processing ms")
    which = np.clip(np.digitize(start[ok], edges) - 1, 0, len(centres) - 1)
    per_bin = [proc[ok][which == i] for i in range(len(centres))]
    filled = np.asarray([v.size > 0 for v in per_bin])
    if filled.any():
        for q, style, label in ((50, "-", "p50 per bin"), (95, "--", "p95 per bin")):
            values = np.asarray([np.percentile(v, q) if v.size else np.nan for v in per_bin])
            top.plot(centres[filled], values[filled], style, color="navy", linewidth=1, label=label)
    top.axhline(deadline_ms, color="tab:red", linewidth=0.8, label=f"deadline {deadline_ms:.1f} ms")
    cuts = entry["results"]["power_cuts"]
    off = np.asarray(tl["off"], int)
    # contiguous runs of frames while off -> (first, last) frame of each period
    breaks = np.flatnonzero(np.diff(off) > 1)
    periods = list(zip(off[np.r_[0, breaks + 1]], off[np.r_[breaks, off.size - 1]])) if off.size else []
    for ax in (top, bottom):
        for cut in cuts:
            ax.axvline(cut["t"], color="black", linestyle="--", linewidth=0.8)
        for first, last in periods:
            ax.axvspan(frame_t[first], frame_t[last] + 1 / fps, color="0.85", zorder=0)
    if cuts:
        top.plot([], [], "k--", linewidth=0.8, label=f"power cut ({len(cuts)})")
    if periods:
        top.fill_between([], [], color="0.85", label=f"device off ({off.size} frames)")
    top.set_yscale("log")
    top.set_ylabel("ms per frame")
    top.set_title(f"{name}: per-frame processing, teach bursts, drops and power cuts")
    top.legend(loc="upper right", fontsize="small", ncol=2)
    series = (("learned_t", None, "tab:green", "teach bursts learned"),
              ("dropped", frame_t, "tab:orange", "frames dropped"))
    for key, times, color, label in series:
        raw = np.asarray(tl[key], float if times is None else int)
        at = raw if times is None else times[raw]
        counts = np.histogram(at, bins=edges)[0]
        bottom.step(centres, counts, where="mid", color=color, linewidth=1.2, label=f"{label} ({raw.size})")
    bottom.set_ylabel(f"per {width:.3g} s")
    bottom.set_xlabel("stream time (s)")
    bottom.legend(loc="upper right", fontsize="small", ncol=2)
    bottom.set_ylim(0, max(1.0, bottom.get_ylim()[1]) * 1.3)  # room for the legend
    bottom.grid(alpha=0.3)
    _save(fig, path)


def _plot_latency(path: Path, report: dict[str, Any]) -> None:
    fig = _new_figure(6.0, 3.8)
    if fig is None:
        return
    ax = fig.add_subplot()
    for name, entry in report["runs"].items():
        proc = np.asarray([v for v in entry["measured"]["timeline"]["proc_ms"] if v is not None], float)
        if proc.size:
            ax.hist(proc, bins=60, alpha=0.5, label=name)
    ax.set_xlabel("frame processing ms (fit + embed + predict + collect)")
    ax.set_ylabel("frames")
    ax.set_yscale("log")
    ax.legend(fontsize="small")
    ax.set_title("Latency histogram while learning")
    _save(fig, path)


def _plot_rss(path: Path, report: dict[str, Any]) -> None:
    fig = _new_figure(6.5, 3.8)
    if fig is None:
        return
    ax = fig.add_subplot()
    for name, entry in report["runs"].items():
        points = entry["measured"]["rss_over_time"]
        ax.plot([p["t"] for p in points], [p["rss_bytes"] / 2**20 for p in points], label=name, linewidth=1)
    budget = report["budgets"]["ram_budget_mb"]
    if budget:
        ax.axhline(budget, color="tab:red", linewidth=0.8, label=f"RAM budget {budget:g} MB")
    ax.set_xlabel("stream time (s)")
    ax.set_ylabel("child RSS (MiB)")
    ax.legend(fontsize="small")
    ax.set_title("Device RSS over time")
    _save(fig, path)


def _plot_accuracy(path: Path, report: dict[str, Any]) -> None:
    fig = _new_figure(7.0, 4.0)
    if fig is None:
        return
    ax = fig.add_subplot()
    fps = report["options"]["fps"]
    for name, entry in report["runs"].items():
        r = entry["results"]
        ax.plot([p["frame"] / fps for p in r["prequential_curve"]], [p["accuracy"] for p in r["prequential_curve"]],
                label=f"{name}: prequential (cumulative)")
        ax.plot([e["t"] for e in r["test_curve"]], [e["accuracy"] for e in r["test_curve"]], linewidth=0.8,
                label=f"{name}: held-out test after each burst")
    ax.set_ylim(0, 1)
    ax.set_xlabel("stream time (s)")
    ax.set_ylabel("accuracy")
    ax.legend(fontsize="small")
    _save(fig, path)


def write_device_outputs(report: dict[str, Any], out_dir: Path, plots: bool = True) -> None:
    """``report.json``, ``summary.md`` and (with matplotlib) ``timeline_<run>.png``, ``latency.png``,
    ``rss.png``, ``accuracy.png``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    text = summary_markdown(report)
    atomic_write(out_dir / "summary.md", lambda handle: handle.write(text), text=True)
    write_report(out_dir, report)
    if not plots:
        return
    deadline = report["runs"][next(iter(report["runs"]))]["measured"]["deadline_ms"]
    for name, entry in report["runs"].items():
        _plot_timeline(out_dir / f"timeline_{name}.png", name, entry, deadline)
    _plot_latency(out_dir / "latency.png", report)
    _plot_rss(out_dir / "rss.png", report)
    _plot_accuracy(out_dir / "accuracy.png", report)
