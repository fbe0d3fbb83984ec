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
    plot_confusion,
    plot_per_class,
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
    assert back == json.loads((tmp_path / "run" / "report.json").read_text())
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
    assert json.loads((tmp_path / "report.json").read_text()) == {"v": 1}
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
        assert plot_per_class(tmp_path / "c.png", [0.5, 0.7]) is None
    assert "matplotlib is not installed" in caplog.text
    assert not os.path.exists(tmp_path / "c.png")


# --------------------------------------------------------------------------- run / compare plots (issue 14)


def test_plots_module_doctests():
    import firmware_sim.measure.plots as plots

    result = doctest.testmod(plots)
    assert result.failed == 0 and result.attempted >= 2


def test_runs_band_is_the_mean_and_sample_std_per_evaluation():
    from firmware_sim.measure.plots import runs_band

    runs = [([100, 200, 300], [0.2, 0.4, 0.6]), ([110, 210, 310], [0.4, 0.6, None]), ([90, 190], [0.3, 0.5])]
    x, mean, std = runs_band("replay", runs)
    assert x.tolist() == [100.0, 200.0]  # cut to the shortest run, x averaged
    np.testing.assert_allclose(mean, [0.3, 0.5])
    np.testing.assert_allclose(std, [np.std([0.2, 0.4, 0.3], ddof=1), np.std([0.4, 0.6, 0.5], ddof=1)])
    _, one_mean, one_std = runs_band("naive", runs[:1])
    assert one_mean.tolist() == [0.2, 0.4, 0.6] and one_std.tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="same length"):
        runs_band("bad", [([1, 2], [0.1])])
    with pytest.raises(ValueError, match="at least one run"):
        runs_band("empty", [])


@needs_mpl
def test_run_and_compare_plots_are_valid_pngs(tmp_path):
    from firmware_sim.measure.plots import plot_latency_histogram, plot_rss_over_time, plot_runs_band, plot_tradeoff

    rng = np.random.default_rng(1)
    x = np.arange(1, 40) * 30
    curves = {name: [(x, np.clip(base + np.cumsum(rng.normal(0.005, 0.01, x.size)), 0, 1)) for _ in range(3)]
              for name, base in (("naive", 0.1), ("replay", 0.2))}
    _assert_png(plot_runs_band(tmp_path / "band.png", curves))
    latency = {"naive": rng.gamma(2.0, 0.2, 200), "replay": rng.gamma(2.0, 0.25, 200)}
    _assert_png(plot_latency_histogram(tmp_path / "latency.png", latency))
    rss = {"naive": (x, 80e6 + x * 1e3), "replay": (x, 90e6 + x * 2e3)}
    _assert_png(plot_rss_over_time(tmp_path / "rss.png", rss))
    points = {"naive": {"x": 100.0, "y": 0.4, "yerr": 0.02}, "replay": {"x": 350.0, "y": 0.55, "yerr": None},
              "cumulative": {"x": 2000.0, "y": None}}  # a missing figure is left out, not drawn at 0
    _assert_png(plot_tradeoff(tmp_path / "acc_mem.png", points, xlabel="KiB", logx=True))
    with pytest.raises(ValueError, match="finite x and y"):
        plot_tradeoff(tmp_path / "none.png", {"a": {"x": None, "y": 0.5}}, xlabel="KiB")
    with pytest.raises(ValueError, match="latency samples"):
        plot_latency_histogram(tmp_path / "none.png", {"a": []})
    with pytest.raises(ValueError, match="same length"):
        plot_rss_over_time(tmp_path / "none.png", {"a": ([1, 2], [1])})
    assert not (tmp_path / "none.png").exists()


# --------------------------------------------------------------------------- progress without a terminal


def test_progress_writes_plain_lines_when_the_stream_is_not_a_terminal():
    import io

    from firmware_sim.loop.progress import Progress, progress_iter

    out = io.StringIO()
    assert list(progress_iter(range(5), 5, "replay", stream=out, interval_s=0)) == list(range(5))
    lines = out.getvalue().splitlines()
    assert lines[0] == "replay: 0/5 batch"
    assert [ln.split()[1] for ln in lines[1:-1]] == ["1/5", "2/5", "3/5", "4/5"]  # every update at interval 0
    assert "left" in lines[1] and "\r" not in out.getvalue()
    assert lines[-1].startswith("replay: 5/5 batch (100%) done in")

    quiet = io.StringIO()
    list(progress_iter(range(1000), 1000, "embed", stream=quiet, interval_s=3600))
    assert len(quiet.getvalue().splitlines()) == 2  # start and end only: the interval bounds the log

    stopped = io.StringIO()
    with Progress(10, "device", unit="frame", stream=stopped, interval_s=3600) as bar:
        bar.update_to(4)
        bar.update_to(2)  # never backwards
    assert stopped.getvalue().splitlines()[-1].startswith("device: 4/10 frame (40%)")

    off = io.StringIO()
    list(progress_iter(range(3), 3, "x", enabled=False, stream=off))
    assert off.getvalue() == ""


def test_progress_on_a_terminal_is_a_tqdm_bar():
    import io

    from firmware_sim.loop.progress import Progress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:  # what a real tty answers; tqdm then redraws one line with \r
            return True

    tty = Terminal()
    with Progress(3, "replay", stream=tty) as bar:
        for _ in range(3):
            bar.update()
    assert "\r" in tty.getvalue() and "replay" in tty.getvalue()
    assert "replay: 0/3 batch\n" not in tty.getvalue()


def test_machine_info_names_the_cpu_cores_and_runtime_versions():
    from firmware_sim.measure.machine import machine_info, machine_line

    info = machine_info()
    assert info["cpu"] and info["cores"] >= info["usable_cores"] >= 1
    assert info["versions"]["numpy"] == np.__version__
    line = machine_line(info)
    assert info["cpu"] in line and f"numpy {np.__version__}" in line and f"Python {info['python']}" in line
