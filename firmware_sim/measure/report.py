"""Writing a run's results: ``report.json``, ``curve.csv``, PNG plots and Markdown tables.

Files are written atomically (temporary file in the same folder, fsync, rename), so a reader never
sees half a report. JSON is strict: NumPy scalars and arrays become plain numbers and lists, and
non-finite floats (NaN, inf) become ``null``. Plots need matplotlib (the ``sim`` extra); without it
they are skipped with a logged warning and the plot functions return ``None``. Plots use the
object-oriented ``Figure`` API with the Agg canvas, so no global backend or pyplot state is touched.

Example:
    >>> import tempfile
    >>> out = tempfile.mkdtemp()
    >>> path = write_report(out, {"final_accuracy": np.float32(0.5), "forgetting": np.array([0.1, np.nan])})
    >>> json.loads(path.read_text())
    {'final_accuracy': 0.5, 'forgetting': [0.1, None]}
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edge.atomic import atomic_write

logger = logging.getLogger(__name__)

__all__ = [
    "CURVE_COLUMNS",
    "format_mean_std",
    "markdown_table",
    "plot_confusion",
    "plot_per_class",
    "to_jsonable",
    "write_curve_csv",
    "write_report",
]

#: The fixed leading columns of ``curve.csv``; extra keys of the rows (per-strategy accuracy in
#: ``compare``) follow in order of first appearance.
CURVE_COLUMNS = ("step", "batch_index", "frames_seen", "accuracy")
REPORT_NAME = "report.json"
CURVE_NAME = "curve.csv"

# --------------------------------------------------------------------------- atomic files


def _atomic_write(path: Path, write: Callable[[Any], None], binary: bool = False) -> Path:
    """Write ``path`` through ``write(fileobj)`` atomically (see `edge.atomic`)."""
    return atomic_write(path, write, text=not binary)


# --------------------------------------------------------------------------- JSON


def to_jsonable(obj: Any) -> Any:
    """Convert to plain JSON types: NumPy scalars/arrays, tuples, sets, paths, dataclasses; NaN/inf -> None.

    Example:
        >>> to_jsonable({"a": np.int64(3), "b": (np.float32(0.25), float("nan")), 1: np.array([True])})
        {'a': 3, 'b': [0.25, None], '1': [True]}
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, np.ndarray):
        return [to_jsonable(v) for v in obj.tolist()] if obj.ndim else to_jsonable(obj.item())
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return [to_jsonable(v) for v in sorted(obj, key=repr)]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj))
    raise TypeError(f"cannot write {type(obj).__name__} to JSON: expected numbers, strings, lists, dicts or arrays")


def write_report(out_dir: str | os.PathLike[str], report: Mapping[str, Any], name: str = REPORT_NAME) -> Path:
    """Write ``report`` as ``out_dir/report.json`` (atomic, indented, NaN -> null); return the path."""
    data = to_jsonable(report)
    text = json.dumps(data, indent=2, allow_nan=False) + "\n"
    path = _atomic_write(Path(out_dir) / name, lambda f: f.write(text))
    logger.info("wrote %s", path)
    return path


# --------------------------------------------------------------------------- CSV


def _csv_cell(v: Any) -> Any:
    v = to_jsonable(v)
    return "" if v is None else v


def write_curve_csv(out_dir: str | os.PathLike[str], rows: Sequence[Mapping[str, Any]],
                    name: str = CURVE_NAME) -> Path:
    """Write the accuracy curve as ``out_dir/curve.csv``: one row per evaluation.

    Columns: ``step, batch_index, frames_seen, accuracy`` then any other keys found in the rows (for
    ``compare``: one accuracy column per strategy, e.g. ``accuracy_slda``), in order of first
    appearance. Missing values and NaN are written as empty cells.

    Example:
        >>> import tempfile
        >>> p = write_curve_csv(tempfile.mkdtemp(), [{"step": 0, "batch_index": 0, "frames_seen": 300,
        ...                                           "accuracy": 0.4, "accuracy_ncm": 0.3}])
        >>> p.read_text().splitlines()
        ['step,batch_index,frames_seen,accuracy,accuracy_ncm', '0,0,300,0.4,0.3']
    """
    columns = list(CURVE_COLUMNS)
    for row in rows:
        for k in row:
            if k not in columns:
                columns.append(str(k))

    def write(f: io.TextIOBase) -> None:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(columns)
        for row in rows:
            w.writerow([_csv_cell(row.get(c)) for c in columns])

    return _atomic_write(Path(out_dir) / name, write)


# --------------------------------------------------------------------------- tables


def format_mean_std(mean: float | None, std: float | None = None, digits: int = 1, scale: float = 1.0) -> str:
    """``"57.1 ± 0.3"``; ``std`` omitted or None gives just the mean; a missing mean gives ``"n/a"``.

    ``scale`` multiplies both (``scale=100`` turns accuracies in [0, 1] into percent).

    Example:
        >>> format_mean_std(0.5712, 0.0031, digits=1, scale=100), format_mean_std(float("nan"))
        ('57.1 ± 0.3', 'n/a')
    """
    if mean is None or not math.isfinite(float(mean)):
        return "n/a"
    text = f"{float(mean) * scale:.{digits}f}"
    if std is not None and math.isfinite(float(std)):
        text += f" ± {float(std) * scale:.{digits}f}"
    return text


def _cell(v: Any, float_format: str) -> tuple[str, bool]:
    """Text of a cell and whether it is numeric (right-aligned)."""
    if v is None:
        return "", False
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v)), False
    if isinstance(v, (int, np.integer)):
        return str(int(v)), True
    if isinstance(v, (float, np.floating)):
        return ("n/a" if not math.isfinite(float(v)) else float_format.format(float(v))), True
    return str(v).replace("|", "\\|").replace("\n", " "), False


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str | tuple[str, str]],
                   float_format: str = "{:.3f}") -> str:
    """A GitHub Markdown table of ``rows``; ``columns`` are keys or ``(key, header)`` pairs.

    Columns whose cells are all numbers are right-aligned (``---:``), others left-aligned; cells are
    padded so the source lines up. Floats use ``float_format``; NaN shows as ``n/a``, missing as empty.

    Example:
        >>> print(markdown_table([{"strategy": "slda", "acc": 0.8}, {"strategy": "naive", "acc": 0.25}],
        ...                      ["strategy", ("acc", "final acc")]))
        | strategy | final acc |
        | :------- | --------: |
        | slda     |     0.800 |
        | naive    |     0.250 |
    """
    if not columns:
        raise ValueError("columns: expected at least one column, got none")
    keys = [c[0] if isinstance(c, tuple) else c for c in columns]
    headers = [c[1] if isinstance(c, tuple) else c for c in columns]
    cells = [[_cell(row.get(k), float_format) for k in keys] for row in rows]
    numeric = [bool(cells) and all(c[j][1] or c[j][0] == "" for c in cells) and any(c[j][1] for c in cells)
               for j in range(len(keys))]
    widths = [max([len(headers[j]), 3] + [len(c[j][0]) for c in cells]) for j in range(len(keys))]

    def line(texts: Sequence[str]) -> str:
        parts = [t.rjust(w) if num else t.ljust(w) for t, w, num in zip(texts, widths, numeric)]
        return "| " + " | ".join(parts) + " |"

    rule = ["-" * (w - 1) + ":" if num else ":" + "-" * (w - 1) for w, num in zip(widths, numeric)]
    out = [line(headers), "| " + " | ".join(rule) + " |"]
    out += [line([c[j][0] for j in range(len(keys))]) for c in cells]
    return "\n".join(out)


# --------------------------------------------------------------------------- plots


def _new_figure(width: float, height: float) -> Any | None:
    """A Figure on an Agg canvas, or None (with a warning) when matplotlib is not installed."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        logger.warning("matplotlib is not installed (pip install '.[sim]' in the project folder): plot skipped")
        return None
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    fmt = p.suffix.lstrip(".").lower() or "png"
    out = _atomic_write(p, lambda f: fig.savefig(f, format=fmt), binary=True)
    logger.info("wrote %s", out)
    return out


def _class_labels(n: int, class_names: Sequence[str] | None) -> list[str]:
    if class_names is None:
        return [str(i) for i in range(n)]
    if len(class_names) < n:
        raise ValueError(f"class_names: expected at least {n} names, got {len(class_names)}")
    return [str(c) for c in class_names[:n]]


def plot_per_class(path: str | os.PathLike[str], per_class_acc: Sequence[float],
                   forgetting: Sequence[float] | None = None, class_names: Sequence[str] | None = None,
                   title: str = "Per-class results") -> Path | None:
    """Bar charts of final accuracy per class and, when given, forgetting per class (NaN bars left empty)."""
    acc = np.asarray(per_class_acc, dtype=np.float64)
    n = acc.shape[0]
    if forgetting is not None and len(forgetting) != n:
        raise ValueError(f"forgetting: expected {n} values (one per class), got {len(forgetting)}")
    labels = _class_labels(n, class_names)
    fig = _new_figure(max(6.0, min(0.25 * n + 2, 24.0)), 5.5 if forgetting is not None else 3.2)
    if fig is None:
        return None
    axes = fig.subplots(2 if forgetting is not None else 1, 1, sharex=True, squeeze=False)[:, 0]
    x = np.arange(n)
    axes[0].bar(x, np.nan_to_num(acc, nan=0.0), color="tab:blue")
    axes[0].set_ylabel("final accuracy")
    axes[0].set_ylim(0.0, 1.0)
    axes[0].set_title(title)
    if forgetting is not None:
        f = np.asarray([np.nan if v is None else v for v in forgetting], dtype=np.float64)
        axes[1].bar(x, np.nan_to_num(f, nan=0.0), color=np.where(f >= 0, "tab:red", "tab:green"))
        axes[1].axhline(0.0, color="black", linewidth=0.8)
        axes[1].set_ylabel("forgetting")
    for ax in axes:
        ax.grid(True, axis="y", alpha=0.3)
    axes[-1].set_xlabel("class")
    axes[-1].set_xticks(x)
    axes[-1].set_xticklabels(labels, rotation=90 if n > 12 else 0, fontsize="small" if n > 12 else None)
    return _save(fig, path)


def plot_confusion(path: str | os.PathLike[str], matrix: Any, class_names: Sequence[str] | None = None,
                   normalize: bool = True, title: str = "Confusion matrix") -> Path | None:
    """Heat map of a confusion matrix (rows true, columns predicted), row-normalised by default."""
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"matrix: expected a square 2-D array, got shape {m.shape}")
    n = m.shape[0]
    labels = _class_labels(n, class_names)
    if normalize:
        rows = m.sum(axis=1, keepdims=True)
        m = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    size = max(4.5, min(0.3 * n + 3, 20.0))
    fig = _new_figure(size + 1.0, size)
    if fig is None:
        return None
    ax = fig.add_subplot()
    im = ax.imshow(m, cmap="Blues", vmin=0.0, vmax=1.0 if normalize else None, interpolation="nearest")
    fig.colorbar(im, ax=ax, shrink=0.8, label="fraction of true class" if normalize else "count")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    if n <= 60:
        small = "small" if n > 12 else None
        ax.set_xticks(np.arange(n))
        ax.set_yticks(np.arange(n))
        ax.set_xticklabels(labels, rotation=90, fontsize=small)
        ax.set_yticklabels(labels, fontsize=small)
    if n <= 12:
        for i in range(n):
            for j in range(n):
                v = m[i, j]
                text = f"{v:.2f}" if normalize else f"{int(v)}"
                dark = v > 0.5 * (1.0 if normalize else max(m.max(), 1.0))
                ax.text(j, i, text, ha="center", va="center", fontsize="small",
                        color="white" if dark else "black")
    return _save(fig, path)


def plot_score_histograms(path: str | os.PathLike[str], known: Mapping[str, Sequence[float]],
                          unknown: Mapping[str, Sequence[float]], thresholds: Mapping[str, float] | None = None,
                          title: str = "Open-set novelty scores") -> Path | None:
    """One panel per strategy: histograms of the novelty of known and unknown test frames (log x),
    with the agent's calibrated threshold as a vertical line; returns the PNG path or None.

    Example:
        >>> import tempfile, os
        >>> p = plot_score_histograms(os.path.join(tempfile.mkdtemp(), "h.png"), {"ncm": [1.0, 1.2]},
        ...                           {"ncm": [3.0, 5.0]}, {"ncm": 2.0})
        >>> p is None or p.stat().st_size > 1000
        True
    """
    names = list(known)
    if not names or set(names) != set(unknown):
        raise ValueError(f"known/unknown: expected the same non-empty strategies, got {sorted(known)} "
                         f"and {sorted(unknown)}")
    fig = _new_figure(3.2 * len(names), 3.0)
    if fig is None:
        return None
    axes = fig.subplots(1, len(names), squeeze=False)[0]
    for ax, name in zip(axes, names):
        k = np.asarray(known[name], np.float64)
        u = np.asarray(unknown[name], np.float64)
        both = np.concatenate([k, u])
        both = both[np.isfinite(both) & (both > 0)]
        lo, hi = (both.min(), both.max()) if both.size else (0.1, 10.0)
        bins = np.geomspace(max(lo, 1e-3), max(hi, lo * 1.01, 1e-3 * 1.01), 40)
        ax.hist(np.clip(k, bins[0], bins[-1]), bins=bins, alpha=0.6, label="known", density=True)
        ax.hist(np.clip(u, bins[0], bins[-1]), bins=bins, alpha=0.6, label="unknown", density=True)
        if thresholds and name in thresholds and math.isfinite(thresholds[name]):
            ax.axvline(thresholds[name], color="k", linestyle="--", linewidth=1, label="threshold")
        ax.set_xscale("log")
        ax.set_title(name, fontsize="small")
        ax.set_xlabel("novelty")
        ax.legend(fontsize="x-small")
    fig.suptitle(title, fontsize="small")
    return _save(fig, path)
