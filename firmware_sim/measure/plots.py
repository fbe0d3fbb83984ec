"""Plots of ``edge-sim run`` / ``compare`` beyond the accuracy curve: every run with a mean ± std band,
the predict-latency histogram, RSS over the stream, and accuracy against memory and train time.

Like `firmware_sim.measure.report`, each function draws on an Agg ``Figure`` (no pyplot state),
writes the PNG atomically and returns its path, or returns None (with a warning) without matplotlib.

Example:
    >>> import tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> p = plot_runs_band(os.path.join(d, "runs.png"),
    ...                    {"replay": [([300, 600], [0.5, 0.7]), ([300, 600], [0.4, 0.6])]})
    >>> p is None or p.stat().st_size > 1000
    True
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from firmware_sim.measure.report import _new_figure, _save

__all__ = ["plot_latency_histogram", "plot_rss_over_time", "plot_runs_band", "plot_tradeoff", "runs_band"]


def _floats(values: Sequence[Any]) -> np.ndarray:
    return np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)


Curve = tuple[Sequence[float], Sequence[float]]


def runs_band(label: str, runs: Sequence[Curve]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(x, mean, std)`` of runs aligned by evaluation index: x is the mean x, std the sample std (ddof=1,
    0 for one run); runs of different lengths are cut to the shortest.

    Example:
        >>> x, mean, std = runs_band("a", [([1, 2], [0.2, 0.4]), ([3, 4, 5], [0.4, 0.8, 0.9])])
        >>> x.tolist(), mean.round(3).tolist(), std.round(3).tolist()
        ([2.0, 3.0], [0.3, 0.6], [0.141, 0.283])
    """
    if not runs:
        raise ValueError(f"curve {label!r}: expected at least one run, got none")
    xs, ys = [], []
    for x, y in runs:
        xa, ya = np.asarray(x, dtype=np.float64), _floats(y)
        if xa.shape != ya.shape:
            raise ValueError(f"curve {label!r}: expected x and y of the same length, got {xa.shape} and {ya.shape}")
        xs.append(xa)
        ys.append(ya)
    n = min(len(ya) for ya in ys)
    x_mean = np.mean([xa[:n] for xa in xs], axis=0)
    y_all = np.stack([ya[:n] for ya in ys])
    if len(runs) == 1:
        return x_mean, y_all[0], np.zeros(n)
    return x_mean, np.nanmean(y_all, axis=0), np.nanstd(y_all, axis=0, ddof=1)


def plot_runs_band(path: str | os.PathLike[str], curves: Mapping[str, Sequence[Curve]],
                   title: str = "Test accuracy during the stream (every run, mean ± std)",
                   xlabel: str = "frames seen", ylabel: str = "test accuracy") -> Path | None:
    """Every run of every label as a thin line, their mean as a thick one and mean ± sample std as a band.

    ``curves`` maps a label to its runs, each ``(x, y)``. Runs are aligned by evaluation index (the
    same scenario evaluates at the same batches in every run; a shorter run truncates the band) and
    the band's x is the mean x at each index. One run draws its line and no band.
    """
    if not curves:
        raise ValueError("curves: expected at least one label with its runs, got none")
    bands = {label: runs_band(label, runs) for label, runs in curves.items()}  # validate before drawing
    fig = _new_figure(7.0, 4.2)
    if fig is None:
        return None
    ax = fig.add_subplot()
    colors = [f"C{i % 10}" for i in range(len(curves))]
    for color, (label, runs) in zip(colors, curves.items()):
        x_mean, mean, std = bands[label]
        xs = [np.asarray(x, dtype=np.float64) for x, _ in runs]
        ys = [_floats(y) for _, y in runs]
        if len(runs) == 1:
            ax.plot(xs[0], ys[0], color=color, linewidth=1.5, label=f"{label} (1 run)")
            continue
        for xa, ya in zip(xs, ys):
            ax.plot(xa, ya, color=color, linewidth=0.5, alpha=0.35)
        ax.fill_between(x_mean, mean - std, mean + std, color=color, alpha=0.2, linewidth=0)
        ax.plot(x_mean, mean, color=color, linewidth=1.8, label=f"{label} (mean ± std of {len(runs)} runs)")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize="medium")
    ax.set_ylim(0.0, 1.0)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    return _save(fig, path)


def plot_latency_histogram(path: str | os.PathLike[str], samples_ms: Mapping[str, Sequence[float]],
                           title: str = "End-to-end predict latency per frame",
                           xlabel: str = "ms per frame (preprocess + embed + head)") -> Path | None:
    """Overlaid histograms of per-frame latencies (ms), one per label, with each label's p99 dashed."""
    data = {k: _floats(v) for k, v in samples_ms.items()}
    data = {k: v[np.isfinite(v)] for k, v in data.items()}
    if not data or not any(v.size for v in data.values()):
        raise ValueError("samples_ms: expected at least one label with latency samples, got none")
    fig = _new_figure(6.5, 3.8)
    if fig is None:
        return None
    ax = fig.add_subplot()
    both = np.concatenate([v for v in data.values() if v.size])
    lo, hi = float(both.min()), float(both.max())
    bins = np.linspace(lo, hi if hi > lo else lo + 1e-3, 40)
    for i, (label, values) in enumerate(data.items()):
        if not values.size:
            continue
        color = f"C{i % 10}"
        p99 = float(np.percentile(values, 99))
        ax.hist(values, bins=bins, alpha=0.5, color=color, label=f"{label} (p99 {p99:.2f} ms)")
        ax.axvline(p99, color=color, linestyle="--", linewidth=0.8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("frames")
    ax.set_title(title, fontsize="medium")
    ax.legend(fontsize="small")
    return _save(fig, path)


def plot_rss_over_time(path: str | os.PathLike[str], series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
                       title: str = "Process RSS during the stream", xlabel: str = "frames seen") -> Path | None:
    """RSS in MiB against ``x`` (frames seen), one line per label (``label -> (x, rss_bytes)``)."""
    if not series:
        raise ValueError("series: expected at least one labelled (x, rss_bytes) series, got none")
    fig = _new_figure(6.5, 3.8)
    if fig is None:
        return None
    ax = fig.add_subplot()
    for label, (x, rss) in series.items():
        xa, ra = np.asarray(x, dtype=np.float64), _floats(rss)
        if xa.shape != ra.shape:
            raise ValueError(f"series {label!r}: expected x and RSS of the same length, got {xa.shape} and {ra.shape}")
        ax.plot(xa, ra / 2**20, linewidth=1.2, label=str(label))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("RSS (MiB)")
    ax.set_title(title, fontsize="medium")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, path)


def plot_tradeoff(path: str | os.PathLike[str], points: Mapping[str, Mapping[str, float | None]], xlabel: str,
                  ylabel: str = "final test accuracy", title: str = "", logx: bool = False) -> Path | None:
    """One labelled point per strategy: ``label -> {"x", "y", "xerr"?, "yerr"?}`` (error bars: std over runs)."""
    def value(p: Mapping[str, float | None], key: str) -> float | None:
        v = p.get(key)
        return None if v is None or not np.isfinite(float(v)) else float(v)

    good = {k: (value(p, "x"), value(p, "y"), value(p, "xerr"), value(p, "yerr")) for k, p in points.items()}
    good = {k: v for k, v in good.items() if v[0] is not None and v[1] is not None}
    if not good:
        raise ValueError(f"points: expected at least one point with finite x and y, got {dict(points)}")
    fig = _new_figure(6.0, 4.2)
    if fig is None:
        return None
    ax = fig.add_subplot()
    for i, (label, (x, y, xerr, yerr)) in enumerate(good.items()):
        ax.errorbar([x], [y], xerr=None if xerr is None else [xerr], yerr=None if yerr is None else [yerr],
                    fmt="o", color=f"C{i % 10}", capsize=3)
        ax.annotate(str(label), (x, y), textcoords="offset points", xytext=(5, 4), fontsize="small")
    if logx and all(v[0] is not None and v[0] > 0 for v in good.values()):
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0.0, 1.0)
    ax.grid(True, alpha=0.3)
    if title:
        ax.set_title(title, fontsize="medium")
    return _save(fig, path)
