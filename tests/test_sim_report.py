"""firmware_sim.measure.report: report.json, curve.csv, PNG plots and Markdown tables."""

import csv
import doctest
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import firmware_sim.measure.report as report
from firmware_sim.measure.report import (
    CURVE_COLUMNS,
    format_mean_std,
    markdown_table,
    plot_accuracy_curve,
    plot_confusion,
    plot_per_class,
    read_report,
    to_jsonable,
    write_curve_csv,
    write_report,
)

try:
    import matplotlib  # noqa: F401

    HAVE_MPL = True
except ImportError:  # pragma: no cover - the sim extra is missing
    HAVE_MPL = False
needs_mpl = pytest.mark.skipif(not HAVE_MPL, reason="matplotlib (the 'sim' extra) is not installed")


def test_doctests():
    result = doctest.testmod(report)
    assert result.failed == 0 and result.attempted > 5


def test_report_json_round_trip_numpy_and_nan(tmp_path):
    rep = {
        "final_accuracy": np.float32(0.75),
        "frames": np.int64(12000),
        "ok": np.bool_(True),
        "forgetting": np.array([0.1, np.nan, -0.05]),
        "matrix": np.arange(4, dtype=np.int32).reshape(2, 2),
        "latency": {"p50_ms": np.float64(1.5), "p99_ms": float("inf")},
        "classes": (np.int16(3), 4),
        "path": tmp_path / "model.onnx",
        7: "int key",
    }
    path = write_report(tmp_path / "run", rep)
    assert path == tmp_path / "run" / "report.json"
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    back = json.loads(text)
    assert back == read_report(tmp_path / "run")
    assert back["final_accuracy"] == 0.75 and isinstance(back["frames"], int) and back["ok"] is True
    assert back["forgetting"] == [0.1, None, -0.05]
    assert back["matrix"] == [[0, 1], [2, 3]]
    assert back["latency"] == {"p50_ms": 1.5, "p99_ms": None}
    assert back["classes"] == [3, 4]
    assert back["path"] == str(tmp_path / "model.onnx")
    assert back["7"] == "int key"
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)


def test_report_write_is_atomic_and_leaves_old_file_on_error(tmp_path):
    write_report(tmp_path, {"v": 1})
    with pytest.raises(TypeError, match="cannot write object"):
        write_report(tmp_path, {"v": 2, "bad": object()})
    assert read_report(tmp_path) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]  # no temp files left behind


def test_to_jsonable_scalar_array():
    assert to_jsonable(np.array(2.5)) == 2.5
    assert to_jsonable(np.float64("nan")) is None
    assert to_jsonable({1, 2}) == [1, 2]


def test_curve_csv_header_and_rows(tmp_path):
    rows = [{"step": i, "batch_index": i, "frames_seen": 300 * (i + 1), "accuracy": np.float64(0.1 * i),
             "accuracy_slda": 0.5 + 0.1 * i} for i in range(3)]
    rows[1]["accuracy_ncm"] = float("nan")  # a column seen later, NaN written empty
    path = write_curve_csv(tmp_path, rows)
    assert path.name == "curve.csv"
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        data = list(reader)
    assert header == [*CURVE_COLUMNS, "accuracy_slda", "accuracy_ncm"]
    assert len(data) == 3
    assert data[0] == ["0", "0", "300", "0.0", "0.5", ""]
    assert data[1][5] == "" and float(data[2][3]) == pytest.approx(0.2)
    assert int(data[2][2]) == 900


def test_markdown_table_alignment():
    rows = [{"strategy": "slda", "final": 0.8123, "batches": 391, "note": None},
            {"strategy": "latent_replay", "final": float("nan"), "batches": 9, "note": "a|b"}]
    text = markdown_table(rows, ["strategy", ("final", "final acc"), "batches", "note"])
    lines = text.splitlines()
    assert lines[0] == "| strategy      | final acc | batches | note |"
    assert lines[1] == "| :------------ | --------: | ------: | :--- |"
    assert lines[2] == "| slda          |     0.812 |     391 |      |"
    assert lines[3] == "| latent_replay |       n/a |       9 | a\\|b |"
    assert len({len(line) for line in lines}) == 1  # every line padded to the same width
    with pytest.raises(ValueError, match="at least one column"):
        markdown_table(rows, [])


def test_format_mean_std():
    assert format_mean_std(0.5712, 0.0031, digits=1, scale=100) == "57.1 ± 0.3"
    assert format_mean_std(12.345, None, digits=2) == "12.35"
    assert format_mean_std(None) == "n/a"
    assert format_mean_std(1.0, float("nan")) == "1.0"


def _assert_png(path: Path, min_bytes: int = 5000) -> tuple[int, int]:
    assert path.is_file() and path.stat().st_size > min_bytes
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert img.width >= 300 and img.height >= 200
        arr = np.asarray(img.convert("L"))
    assert arr.std() > 5  # not a blank image
    return img.size


@needs_mpl
def test_plot_accuracy_curve_many_strategies(tmp_path):
    x = np.arange(1, 11) * 300
    curves = {"slda": (x, np.linspace(0.3, 0.8, 10)), "naive": (x.tolist(), [0.3] * 9 + [None])}
    out = plot_accuracy_curve(tmp_path / "plots" / "curve.png", curves)
    assert out == tmp_path / "plots" / "curve.png"
    _assert_png(out)
    with pytest.raises(ValueError, match="same length"):
        plot_accuracy_curve(tmp_path / "bad.png", {"a": ([1, 2], [0.1])})
    assert not (tmp_path / "bad.png").exists()


@needs_mpl
def test_plot_per_class_and_confusion(tmp_path):
    rng = np.random.default_rng(0)
    acc = rng.uniform(0, 1, 10)
    acc[3] = np.nan
    f = rng.uniform(-0.2, 0.5, 10)
    _assert_png(plot_per_class(tmp_path / "per_class.png", acc, f, [f"c{i}" for i in range(10)]))
    _assert_png(plot_per_class(tmp_path / "per_class_acc_only.png", acc))
    cm = rng.integers(0, 10, (5, 5))
    cm[2] = 0  # a class never in the test set: its row stays empty, no division by zero
    _assert_png(plot_confusion(tmp_path / "confusion.png", cm, ["a", "b", "c", "d", "e"]))
    _assert_png(plot_confusion(tmp_path / "confusion_counts.png", cm, normalize=False))
    with pytest.raises(ValueError, match="square"):
        plot_confusion(tmp_path / "x.png", np.zeros((2, 3)))
    with pytest.raises(ValueError, match="at least 5 names"):
        plot_confusion(tmp_path / "x.png", cm, ["a"])


def test_plots_skip_with_warning_without_matplotlib(tmp_path, monkeypatch, caplog):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("no matplotlib")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with caplog.at_level("WARNING", logger="firmware_sim.measure.report"):
        assert plot_accuracy_curve(tmp_path / "c.png", {"a": ([1], [0.5])}) is None
    assert "matplotlib is not installed" in caplog.text
    assert not os.path.exists(tmp_path / "c.png")
