"""A sweep's Pareto plots: final accuracy against replay memory and against training time, per scenario.

Each configuration is a numbered point (mean +- std over runs); the numbers are explained in a key
under the panels, so a long label never covers a point or leaves the panel. The numbers are placed
by `place_labels`: the first of a ring of offsets around the point whose box stays inside the axes
and clear of every point and earlier label (a leader line joins a number pushed further out).

Example:
    >>> boxes = place_labels([(50, 50), (52, 50)], ["1", "2"], (0, 0, 200, 200), (12.0, 14.0))
    >>> boxes[0] != boxes[1]
    True
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from edge.atomic import atomic_write

log = logging.getLogger(__name__)

__all__ = ["pareto_front", "place_labels", "plot_scenario"]

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in display pixels

#: Offsets tried around a point, in pixels: rings of growing radius, eight directions each.
_RADII = (7.0, 13.0, 21.0, 32.0, 46.0, 64.0)
_DIRECTIONS = [(1, 1), (1, -1), (-1, 1), (-1, -1), (1, 0), (0, 1), (-1, 0), (0, -1)]
_POINT_RADIUS = 7.0  # a point with its Pareto ring


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the (cost, accuracy) points no other point beats (cost <= and accuracy >=, one strictly).

    Example:
        >>> pareto_front([(1, 0.5), (2, 0.7), (3, 0.6), (2, 0.4)])
        [0, 1]
    """
    front = []
    for i, (cost, acc) in enumerate(points):
        dominated = any((c <= cost and a >= acc) and (c < cost or a > acc) for j, (c, a) in enumerate(points)
                        if j != i)
        if not dominated and not (math.isnan(cost) or math.isnan(acc)):
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def _overlap(a: Box, b: Box) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return w * h if w > 0 and h > 0 else 0.0


def place_labels(points: Sequence[tuple[float, float]], texts: Sequence[str], area: Box,
                 size: tuple[float, float], obstacles: Sequence[Box] = ()) -> list[Box]:
    """A box (pixels) per label, near its point, inside ``area``, overlapping no point and no other box.

    ``size`` is one character's (width, height) in pixels; ``obstacles`` are boxes to keep clear of
    too (a legend). Where no candidate is clear, the one with the least overlap is taken (so every
    label is placed, inside ``area`` when it fits at all).
    """
    occupied: list[Box] = [(x - _POINT_RADIUS, y - _POINT_RADIUS, x + _POINT_RADIUS, y + _POINT_RADIUS)
                           for x, y in points] + list(obstacles)
    placed: list[Box] = []
    for (x, y), text in zip(points, texts):
        w, h = size[0] * len(text) + 2, size[1]
        best: tuple[float, Box] | None = None
        for radius in _RADII:
            for dx, dy in _DIRECTIONS:
                scale = radius / math.hypot(dx, dy)
                cx, cy = x + dx * scale, y + dy * scale
                # anchor the box on the side facing away from the point
                x0 = cx if dx > 0 else cx - w if dx < 0 else cx - w / 2
                y0 = cy if dy > 0 else cy - h if dy < 0 else cy - h / 2
                box = (x0, y0, x0 + w, y0 + h)
                inside = box[0] >= area[0] and box[1] >= area[1] and box[2] <= area[2] and box[3] <= area[3]
                cost = sum(_overlap(box, other) for other in occupied) + (0.0 if inside else 1e9)
                if best is None or cost < best[0]:
                    best = (cost, box)
                if cost == 0:
                    break
            if best is not None and best[0] == 0:
                break
        assert best is not None
        placed.append(best[1])
        occupied.append(best[1])
    return placed


def _number_points(fig: Any, ax: Any, x: Sequence[float], y: Sequence[float], yerr: Sequence[float],
                   numbers: Sequence[str], fontsize: float) -> None:
    """Write each point's number next to it (called once the figure's layout is fixed)."""
    keep = [i for i in range(len(x)) if not (math.isnan(x[i]) or math.isnan(y[i]))]
    pixels = ax.transData.transform([(x[i], y[i]) for i in keep]) if keep else []
    bbox = ax.get_window_extent()
    char = fontsize * fig.dpi / 72.0
    legend = ax.get_legend()
    obstacles = []
    for i in keep:  # the error bars: thin vertical boxes
        if yerr[i] > 0:
            (bx, low), (_, high) = ax.transData.transform([(x[i], y[i] - yerr[i]), (x[i], y[i] + yerr[i])])
            obstacles.append((bx - 2.5, low, bx + 2.5, high))
    if legend is not None:
        lb = legend.get_window_extent()
        obstacles.append((lb.x0, lb.y0, lb.x1, lb.y1))
    boxes = place_labels([(float(p[0]), float(p[1])) for p in pixels], [numbers[i] for i in keep],
                         (bbox.x0 + 2, bbox.y0 + 2, bbox.x1 - 2, bbox.y1 - 2), (char * 0.62, char * 1.25),
                         obstacles)
    to_data = ax.transData.inverted()
    for i, (px, py), box in zip(keep, pixels, boxes):
        centre = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
        far = math.hypot(centre[0] - px, centre[1] - py) > 16
        tx, ty = to_data.transform(centre)
        ax.annotate(numbers[i], (x[i], y[i]), xytext=(tx, ty), textcoords="data", ha="center", va="center",
                    fontsize=fontsize, annotation_clip=False,
                    arrowprops={"arrowstyle": "-", "color": "gray", "lw": 0.6} if far else None)


def plot_scenario(path: Path, scenario: str, groups: Sequence[Mapping[str, Any]]) -> Path | None:
    """``pareto_<scenario>.png``: two panels of numbered points with their Pareto fronts, a key below."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        log.warning("matplotlib is not installed (pip install '.[sim]' in the project folder): sweep plots skipped")
        return None
    labels = [str(g["label"]) for g in groups]
    numbers = [str(i + 1) for i in range(len(groups))]
    longest = max((len(t) for t in labels), default=10)
    ncol = 1 if len(groups) <= 4 else 2 if len(groups) <= 16 or longest > 45 else 3
    rows = math.ceil(len(groups) / ncol)
    key_height = 0.35 + 0.2 * rows
    fig = Figure(figsize=(12, 5 + key_height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(2, 2, height_ratios=[5, key_height])
    axes = [fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1])]
    key = fig.add_subplot(grid[1, :])
    key.set_axis_off()
    y = [g["summary"]["final_accuracy"]["mean"] * 100 for g in groups]
    yerr = [g["summary"]["final_accuracy"]["std"] * 100 for g in groups]
    columns = []
    for ax, metric, xlabel in ((axes[0], "memory.replay_bytes", "replay buffer (KiB)"),
                               (axes[1], "train_ms_per_batch.mean", "training time per batch (ms)")):
        scale = 1024.0 if metric == "memory.replay_bytes" else 1.0
        x = [g["summary"].get(metric, {"mean": math.nan})["mean"] / scale for g in groups]
        columns.append(x)
        ax.errorbar(x, y, yerr=[0 if math.isnan(e) else e for e in yerr], fmt="o", color="tab:blue",
                    ecolor="lightgray", capsize=3, label="configuration (mean ± std over runs)")
        front = pareto_front(list(zip(x, y)))
        if front:
            ax.step([x[i] for i in front], [y[i] for i in front], where="post", color="tab:red", lw=1.2)
            ax.scatter([x[i] for i in front], [y[i] for i in front], s=90, facecolors="none",
                       edgecolors="tab:red", label="Pareto front")
        ax.margins(x=0.12, y=0.15)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("final test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    for i, text in enumerate(labels):
        col, row = divmod(i, rows)
        key.text(col / ncol, 1 - (row + 0.5) / rows, f"{numbers[i]:>3}  {text}", transform=key.transAxes,
                 fontsize=8.5, va="center", ha="left", family="monospace")
    fig.suptitle(f"{scenario}: accuracy against memory and training cost (numbers: key below)")
    fig.canvas.draw()  # fixes the layout: the numbers are placed in the final pixel coordinates
    fig.set_layout_engine("none")
    for ax, x in zip(axes, columns):
        _number_points(fig, ax, x, y, [0 if math.isnan(e) else e for e in yerr], numbers, fontsize=8.5)
    atomic_write(path, lambda handle: fig.savefig(handle, format="png"))
    return path
