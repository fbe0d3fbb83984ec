"""`edge-sim sweep` with the local executor on a small generated grid: cells, cache, resume, results."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import tomllib
from pathlib import Path

import numpy as np
import pytest

from _sim_common import MODEL, REPO, generate_small, sweep_grid_text as grid_text
from firmware_sim.commands.cli import main as sim_main
from firmware_sim.measure.metrics import mean_std
from firmware_sim.sweep.embeddings import count_passes
from firmware_sim.sweep.grid import expand, load_grid, parse_grid
from firmware_sim.sweep.plots import place_labels
from firmware_sim.sweep.results import flat_metrics, pareto_front
from firmware_sim.sweep.tasks import CRASH_ENV

#: Result fields that depend only on the seeds, never on timing or the process that ran the cell.
DETERMINISTIC = ("final_accuracy", "average_accuracy", "forgetting_mean", "forgetting_per_class", "curve",
                 "per_class_accuracy", "confusion_matrix", "classes_seen", "n_batches", "n_train_frames")


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_small(tmp_path_factory.mktemp("core50"))


@pytest.fixture(scope="module")
def grid_file(generated: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("grid") / "grid.toml"
    path.write_text(grid_text(generated))
    return path


def sweep(grid: Path, out: Path, *extra: str) -> int:
    return sim_main(["sweep", "--grid", str(grid), "--out", str(out), "--workers", "2", "--no-progress", *extra])


def results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def cell_results(out: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text())["result"] for p in (out / "cells").glob("*.json")}


@pytest.fixture(scope="module")
def first_sweep(grid_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sweep")
    assert sweep(grid_file, out) == 0
    return out


# --------------------------------------------------------------------------- grid


def test_grid_cells_are_the_cross_product_less_the_exclusions(generated: Path, tmp_path: Path) -> None:
    path = tmp_path / "g.toml"
    path.write_text(grid_text(generated, '[[exclude]]\nstrategy = "naive"\nbuffer_capacity = 200\n'))
    cells = expand(load_grid(path))
    assert len(cells) == 2 * 2 * 2 - 2  # strategies x buffers x runs, less naive at 200 for both runs
    assert {(c.agent["strategy"], c.agent["buffer_capacity"]) for c in cells} == {
        ("naive", 50), ("replay", 50), ("replay", 200)}
    replay = [c for c in cells if c.agent["strategy"] == "replay"]
    assert all(c.agent["replay_ratio"] == 0.5 and c.agent["strategy_params"] == {} for c in replay)
    assert len({c.key for c in cells}) == len(cells)
    assert len({c.group for c in cells}) == 3 and sorted(c.sim["run"] for c in cells) == [0, 0, 0, 1, 1, 1]
    again = expand(load_grid(path))
    assert [c.key for c in again] == [c.key for c in cells]  # the key is a pure function of the configuration


def test_grid_strategy_parameters_and_relative_paths(tmp_path: Path) -> None:
    raw = tomllib.loads('[sweep]\nmodel = "m"\ndata = "synthetic:d"\n[strategies]\newc = { ewc_lambda = [1.0, 10.0] }\n')
    cells = expand(parse_grid(raw, base=tmp_path))
    assert [c.agent["strategy_params"] for c in cells] == [{"ewc_lambda": 1.0}, {"ewc_lambda": 10.0}]
    assert cells[0].sim["model"] == str(tmp_path / "m") and cells[0].sim["data"] == f"synthetic:{tmp_path / 'd'}"


@pytest.mark.parametrize(("raw", "message"), [
    ({"grid": {"buffer": [1]}, "strategies": {"naive": {}}}, "unknown key 'buffer'"),
    ({"strategies": {"dream": {}}}, "expected one of"),
    ({}, "expected at least one strategy"),
    ({"grid": {"buffer_capacity": []}, "strategies": {"naive": {}}}, "expected at least one value"),
    ({"sweep": {"runs": 0}, "strategies": {"naive": {}}}, "number of runs >= 1, got 0"),
    ({"grid": {"buffer_capacity": [-1]}, "strategies": {"naive": {}}}, r"buffer_capacity: expected an int in \[0, 1000000\], got -1"),
    ({"grid": {"lr": ["fast"]}, "strategies": {"naive": {}}}, "lr: expected float, got str"),
    ({"strategies": {"naive": {}}, "exclude": [{"strategy": "naive"}]}, "every cell excluded"),
    ({"oops": {}, "strategies": {"naive": {}}}, "unknown section"),
])
def test_bad_grids_name_what_was_expected(raw: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        expand(parse_grid(raw))


def test_pareto_front_keeps_points_nothing_beats() -> None:
    assert pareto_front([(0, 0.2), (10, 0.6), (5, 0.6), (20, 0.9), (30, 0.8)]) == [0, 2, 3]


def test_plot_numbers_overlap_neither_points_nor_each_other_and_stay_inside() -> None:
    # a cluster: eight points within a few pixels of each other, two on the panel's edge
    points = [(100.0 + 3 * (i % 3), 100.0 + 2 * i) for i in range(8)] + [(2.0, 50.0), (198.0, 198.0)]
    texts = [str(i + 1) for i in range(len(points))]
    area = (0.0, 0.0, 200.0, 200.0)
    boxes = place_labels(points, texts, area, (6.0, 12.0))
    for i, box in enumerate(boxes):
        assert area[0] <= box[0] < box[2] <= area[2] and area[1] <= box[1] < box[3] <= area[3], box
        for x, y in points:  # no number covers any point (its marker box)
            assert not (box[0] < x + 5 and x - 5 < box[2] and box[1] < y + 5 and y - 5 < box[3]), (texts[i], x, y)
        for other in boxes[:i]:
            assert not (box[0] < other[2] and other[0] < box[2] and box[1] < other[3] and other[1] < box[3])


# --------------------------------------------------------------------------- local sweep


def test_local_sweep_embeds_each_stream_once_and_merges_every_metric(first_sweep: Path) -> None:
    facts = results(first_sweep)["sweep"]
    assert facts["executor"] == "local" and facts["cells_total"] == facts["cells_computed"] == 8
    assert facts["streams"] == 2 and facts["embedding_passes"] == 2  # run 0 and run 1, shared by 4 cells each
    passes = count_passes(first_sweep / "cache")
    assert sorted(passes.values()) == [1, 1]
    records = [json.loads(p.read_text()) for p in (first_sweep / "cells").glob("*.json")]
    assert len(records) == 8 and {r["stream_key"] for r in records} == set(passes)
    confs = results(first_sweep)["configurations"]
    assert len(confs) == 4 and all(c["runs"] == [0, 1] for c in confs)
    by_cell = {r["key"]: r for r in records}
    for conf in confs:
        runs = [flat_metrics(by_cell[k]["result"]) for k in conf["cells"]]
        for name in ("final_accuracy", "memory.state_bytes_on_disk", "inference.p95_ms", "train_ms_per_batch.max"):
            expected = mean_std(r[name] for r in runs)
            assert conf["summary"][name]["mean"] == pytest.approx(expected["mean"])
            assert conf["summary"][name]["std"] == pytest.approx(expected["std"])  # sample std over runs
    with open(first_sweep / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4 and {r["strategy"] for r in rows} == {"naive", "replay"}
    replay = [r for r in rows if r["strategy"] == "replay"]
    assert all(float(r["memory.replay_bytes_mean"]) > 0 for r in replay)
    assert {float(r["memory.replay_bytes_mean"]) for r in replay} == {
        c["summary"]["memory.replay_bytes"]["mean"] for c in confs if c["strategy"] == "replay"}
    assert (first_sweep / "pareto_ni.png").stat().st_size > 1000


def test_summary_md_is_a_rounded_table_with_named_columns_and_the_best_row_marked(first_sweep: Path) -> None:
    text = (first_sweep / "summary.md").read_text()
    confs = results(first_sweep)["configurations"]
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| #")]
    header = next(line for line in text.splitlines() if line.startswith("| #"))
    columns = [c.strip() for c in header.strip("|").split("|")]
    assert columns[:4] == ["#", "", "strategy", "buffer_capacity"]  # the grid's varied key is a column
    for name in ("runs", "final acc %", "avg acc %", "forgetting %", "train ms/batch", "predict p50 ms",
                 "replay KiB", "state on disk KiB"):
        assert name in columns
    assert "mean_mean" not in text and "train_ms_per_batch" not in text
    assert len(rows) == len(confs) == 4 and text.count("## ni") == 1
    cells = [dict(zip(columns, (c.strip() for c in row.strip("|").split("|")))) for row in rows]
    for number in re.findall(r"-?\d+\.\d+", text):  # nothing printed with more than 3 decimals
        assert len(number.split(".")[1]) <= 3, number
    by_label = {c["label"]: c for c in confs}
    for cell in cells:
        conf = by_label[f"{cell['strategy']} buffer_capacity={cell['buffer_capacity']}"]
        acc = conf["summary"]["final_accuracy"]
        assert cell["final acc %"] == f"{acc['mean'] * 100:.1f} ± {acc['std'] * 100:.1f}"
        assert cell["runs"] == "2"
    best = max(c["summary"]["final_accuracy"]["mean"] for c in confs)
    marked = [c for c in cells if c[""] == "**best**"]
    assert marked and all(float(c["final acc %"].split(" ")[0]) == round(best * 100, 1) for c in marked)
    assert [c["buffer_capacity"] for c in cells if c["strategy"] == "replay"] == ["50", "200"]  # numeric order


def test_progress_lines_name_each_finished_cell_when_stderr_is_no_terminal(
        first_sweep: Path, grid_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "copy"
    shutil.copytree(first_sweep, out)
    lost = sorted(cell_results(out))[:2]
    for key in lost:
        (out / "cells" / f"{key}.json").unlink()
    capsys.readouterr()
    assert sim_main(["sweep", "--grid", str(grid_file), "--out", str(out), "--workers", "2"]) == 0
    err = capsys.readouterr().err  # pytest's capture is not a terminal: plain lines, no bar
    lines = [line for line in err.splitlines() if line.startswith("sweep cells:")]
    assert lines[0] == "sweep cells: 0/2 started"
    assert len(lines) == 3 and {line.split()[3] for line in lines[1:]} == set(lost)
    for i, line in enumerate(lines[1:], 1):
        assert re.fullmatch(rf"sweep cells: {i}/2 \w{{20}} \(ni (naive|replay) .*run [01]\), \d+ s elapsed", line)
    assert "\r" not in err


def test_a_cell_equals_edge_sim_run_of_the_same_configuration(first_sweep: Path, generated: Path,
                                                             tmp_path: Path) -> None:
    record = next(json.loads(p.read_text()) for p in (first_sweep / "cells").glob("*.json")
                  if json.loads(p.read_text())["cell"]["agent"]["strategy"] == "replay"
                  and json.loads(p.read_text())["cell"]["agent"]["buffer_capacity"] == 200
                  and json.loads(p.read_text())["cell"]["sim"]["run"] == 1)
    code = sim_main(["run", "--model", MODEL, "--data", f"synthetic:{generated}", "--scenario", "ni", "--run", "1",
                     "--test", "reduced", "--strategy", "replay", "--buffer", "200", "--replay-ratio", "0.5",
                     "--threads", "1", "--eval-every", "4", "--latency-frames", "0", "--no-plots", "--no-progress",
                     "--cache", str(tmp_path / "c"), "--out", str(tmp_path / "run")])
    assert code == 0
    direct = json.loads((tmp_path / "run" / "report.json").read_text())["configs"]["replay"]["runs"][0]
    for name in DETERMINISTIC:
        assert record["result"][name] == direct[name], name


def test_rerun_recomputes_nothing_and_a_lost_cell_only_that_cell(first_sweep: Path, grid_file: Path,
                                                                 tmp_path: Path) -> None:
    out = tmp_path / "copy"
    shutil.copytree(first_sweep, out)
    before = cell_results(out)
    assert sweep(grid_file, out) == 0
    facts = results(out)["sweep"]
    assert facts["cells_computed"] == 0 and facts["cells_skipped"] == 8 and facts["embedding_passes"] == 0
    lost = sorted(before)[3]
    (out / "cells" / f"{lost}.json").unlink()
    assert sweep(grid_file, out) == 0
    facts = results(out)["sweep"]
    assert facts["cells_computed"] == 1 and facts["embedding_passes"] == 0  # the stream came from the cache
    assert sorted(count_passes(out / "cache").values()) == [1, 1]
    for name in DETERMINISTIC:
        assert cell_results(out)[lost][name] == before[lost][name]


def test_report_rerenders_results_and_plots(first_sweep: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "copy"
    shutil.copytree(first_sweep, out)
    for name in ("results.csv", "results.json", "pareto_ni.png", "summary.md"):
        (out / name).unlink()
    assert sim_main(["sweep", "--report", str(out)]) == 0
    assert "4 configurations" in capsys.readouterr().out
    assert (out / "results.csv").read_text() == (first_sweep / "results.csv").read_text()
    assert (out / "pareto_ni.png").is_file()
    rerendered, first = ((d / "summary.md").read_text() for d in (out, first_sweep))
    assert rerendered.split("## ni")[1] == first.split("## ni")[1]  # the same table (the header facts were lost)
    assert sim_main(["sweep", "--report", str(tmp_path / "empty")]) == 2
    assert "expected finished cells" in capsys.readouterr().err


def test_a_worker_killed_mid_sweep_is_retried_with_the_same_results(first_sweep: Path, grid_file: Path,
                                                                    tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    victim = sorted(cell_results(first_sweep))[2]
    marker = tmp_path / "died-once"
    monkeypatch.setenv(CRASH_ENV, f"{victim}:{marker}")
    out = tmp_path / "crashed"
    assert sweep(grid_file, out) == 0
    assert marker.is_file()  # the first attempt really ended its worker (os._exit)
    facts = results(out)["sweep"]
    assert facts["worker_deaths_retried"] >= 1 and facts["cells_computed"] == 8 and not facts["cells_failed"]
    expected, got = cell_results(first_sweep), cell_results(out)
    assert set(got) == set(expected)
    for key in expected:
        for name in DETERMINISTIC:
            assert got[key][name] == expected[key][name], (key, name)


@pytest.mark.slow
def test_a_cell_whose_worker_keeps_dying_fails_alone_and_the_rerun_finishes_it(
        first_sweep: Path, grid_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    victim = sorted(cell_results(first_sweep))[5]
    monkeypatch.setenv(CRASH_ENV, f"{victim}:{tmp_path / 'marker'}")
    out = tmp_path / "killed"
    # one worker: only the victim is executing when its worker dies, so only it is charged the death
    assert sweep(grid_file, out, "--max-retries", "0", "--workers", "1") == 2
    err = capsys.readouterr().err
    assert "1 of 8" in err and victim in err and "Traceback" not in err
    assert len(list((out / "cells").glob("*.json"))) == 7
    monkeypatch.delenv(CRASH_ENV)
    assert sweep(grid_file, out) == 0
    facts = results(out)["sweep"]
    assert facts["cells_skipped"] == 7 and facts["cells_computed"] == 1 and facts["embedding_passes"] == 0


def test_sweep_usage_errors_exit_2(grid_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert sim_main(["sweep", "--out", str(tmp_path)]) == 2
    assert "expected --grid" in capsys.readouterr().err
    assert sim_main(["sweep", "--grid", str(grid_file), "--out", str(tmp_path), "--workers", "0"]) == 2
    assert "--workers: expected >= 1, got 0" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text("[sweep\n")
    assert sim_main(["sweep", "--grid", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "expected a TOML file" in capsys.readouterr().err


def test_example_grid_parses_and_meets_the_issue(tmp_path: Path) -> None:
    grid = load_grid(REPO / "docs" / "sweep-example.toml")
    cells = expand(grid)
    assert len({c.agent["strategy"] for c in cells}) >= 2
    assert len({c.agent["buffer_capacity"] for c in cells}) >= 2 and len({c.sim["run"] for c in cells}) >= 2
    assert all(Path(c.sim["model"]).is_dir() for c in cells)
    assert np.unique([c.key for c in cells]).size == len(cells)
    assert os.path.isabs(cells[0].sim["model"])
