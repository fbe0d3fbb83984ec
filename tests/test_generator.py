"""The synthetic CORe50: determinism, official structure of the scenarios, consistency of the forms."""

import hashlib
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from firmware_sim.data.core50 import N_BATCHES, SCENARIO_DIRS, SCENARIOS, TEST_SESSIONS, TRAIN_SESSIONS, parse_core50_path
from firmware_sim.data.generator import (
    GeneratorConfig,
    build_scenarios,
    core50_object_style,
    generate_core50,
    make_pretraining_set,
    pretraining_object_styles,
    render_object_session,
)
from firmware_sim.data.safe_pickle import safe_load_pickle

FRAMES, RUNS = 4, 2


@pytest.fixture(scope="module")
def gen(tmp_path_factory):
    out = tmp_path_factory.mktemp("gen")
    summary = generate_core50(out, GeneratorConfig(frames=FRAMES, runs=RUNS, seed=3), progress=False)
    paths = safe_load_pickle(out / "paths.pkl")
    lup = safe_load_pickle(out / "LUP.pkl")
    labels = safe_load_pickle(out / "labels.pkl")
    with np.load(out / "core50_imgs.npz") as z:
        x = z["x"]
    return {"out": out, "summary": summary, "paths": paths, "lup": lup, "labels": labels, "x": x}


def _parsed(paths, idx):
    return [parse_core50_path(paths[i]) for i in idx]


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- determinism


@pytest.mark.slow
def test_same_seed_gives_byte_identical_files_and_other_seed_differs(tmp_path):
    cfg = GeneratorConfig(frames=2, runs=1, seed=11)
    generate_core50(tmp_path / "a", cfg, progress=False)
    generate_core50(tmp_path / "b", cfg, progress=False)
    generate_core50(tmp_path / "c", GeneratorConfig(frames=2, runs=1, seed=12), progress=False)
    da, db, dc = (_tree_digest(tmp_path / n) for n in "abc")
    assert len(da) > 1100  # PNGs, pickles, npz, filelists
    assert da == db
    assert set(da) == set(dc)
    assert da["core50_imgs.npz"] != dc["core50_imgs.npz"]
    assert da["LUP.pkl"] != dc["LUP.pkl"]


def test_render_object_session_deterministic_shape_and_smooth():
    a = render_object_session(7, 2, n_frames=12, image_size=32, seed=0)
    b = render_object_session(7, 2, n_frames=12, image_size=32, seed=0)
    assert a.shape == (12, 32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, render_object_session(7, 2, n_frames=12, image_size=32, seed=1))
    # consecutive frames are much closer than frames of another object or another session
    f = a.astype(np.float32)
    consecutive = np.abs(np.diff(f, axis=0)).mean()
    other_obj = np.abs(f - render_object_session(30, 2, 12, 32, 0).astype(np.float32)).mean()
    other_ses = np.abs(f - render_object_session(7, 9, 12, 32, 0).astype(np.float32)).mean()
    assert consecutive < 0.75 * other_obj
    assert consecutive < 0.5 * other_ses


@pytest.mark.parametrize("size", [64, 128])
def test_other_image_sizes(size):
    x = render_object_session(1, 1, n_frames=2, image_size=size, seed=0)
    assert x.shape == (2, size, size, 3)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="image_size"):
        render_object_session(1, 1, 2, 48, 0)
    with pytest.raises(ValueError, match="object_id"):
        render_object_session(51, 1, 2, 32, 0)
    with pytest.raises(ValueError, match="forms"):
        GeneratorConfig(forms=("png", "jpeg"))


@pytest.mark.slow
def test_refuses_foreign_non_empty_dir_but_regenerates_own_output(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="overwrite"):
        generate_core50(tmp_path, GeneratorConfig(frames=1, runs=1, forms=("arrays",)), progress=False)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    own = tmp_path / "own"
    generate_core50(own, GeneratorConfig(frames=2, runs=1, forms=("png",)), progress=False)
    generate_core50(own, GeneratorConfig(frames=1, runs=1, forms=("png",)), progress=False)  # no error
    assert not list(own.rglob("C_01_01_001.png"))  # stale frames of the first generation removed
    generate_core50(tmp_path, GeneratorConfig(frames=1, runs=1, forms=("arrays",), overwrite=True), progress=False)
    assert (tmp_path / "notes.txt").exists() and (tmp_path / "core50_imgs.npz").exists()


# ---------------------------------------------------------------- official structure


def test_arrays_form_shapes(gen):
    x, paths = gen["x"], gen["paths"]
    assert x.shape == (50 * 11 * FRAMES, 32, 32, 3) and x.dtype == np.uint8
    assert len(paths) == len(x) == len(set(paths))
    assert paths[0] == "s1/o1/C_01_01_000.png"
    assert gen["summary"]["n_images"] == len(x)
    assert set(gen["lup"]) == set(SCENARIOS) == set(gen["labels"])


def test_runs_and_batch_counts_and_test_last(gen):
    paths = gen["paths"]
    expected_test = sorted(i for i, p in enumerate(paths) if parse_core50_path(p)[0] in TEST_SESSIONS)
    for scen in SCENARIOS:
        assert len(gen["lup"][scen]) == RUNS
        for run in range(RUNS):
            batches, labs = gen["lup"][scen][run], gen["labels"][scen][run]
            assert len(batches) == N_BATCHES[scen] + 1
            assert [len(b) for b in batches] == [len(b) for b in labs]
            assert sorted(batches[-1]) == expected_test
            train = [i for b in batches[:-1] for i in b]
            assert not set(train) & set(expected_test)
            assert all(parse_core50_path(paths[i])[0] in TRAIN_SESSIONS for i in train)
            assert all(isinstance(i, int) for i in batches[0]) and all(isinstance(v, int) for v in labs[0])


@pytest.mark.parametrize("scen", ["ni", "nc", "nic", "nicv2_79", "nicv2_196", "nicv2_391"])
def test_every_training_image_exactly_once_per_run(gen, scen):
    n_train = len(TRAIN_SESSIONS) * 50 * FRAMES
    for run in range(RUNS):
        train = [i for b in gen["lup"][scen][run][:-1] for i in b]
        assert len(train) == n_train and len(set(train)) == n_train


def test_ni_batch_is_one_whole_session_with_all_objects(gen):
    orders = []
    for run in range(RUNS):
        sessions = []
        for b in gen["lup"]["ni"][run][:-1]:
            parsed = _parsed(gen["paths"], b)
            assert len({s for s, _, _ in parsed}) == 1
            assert {o for _, o, _ in parsed} == set(range(1, 51))
            assert len(b) == 50 * FRAMES
            sessions.append(parsed[0][0])
        assert sorted(sessions) == sorted(TRAIN_SESSIONS)
        orders.append(sessions)
    assert orders[0] != orders[1]  # runs reorder the sessions


def test_nc_first_batch_one_object_per_category_then_five_new(gen):
    for run in range(RUNS):
        seen: set[int] = set()
        for k, b in enumerate(gen["lup"]["nc"][run][:-1]):
            parsed = _parsed(gen["paths"], b)
            objs = {o for _, o, _ in parsed}
            assert {s for s, _, _ in parsed} == set(TRAIN_SESSIONS)
            if k == 0:
                assert len(objs) == 10 and sorted((o - 1) // 5 for o in objs) == list(range(10))
            else:
                assert len(objs) == 5
            assert not objs & seen
            seen |= objs
        assert seen == set(range(1, 51))


def test_nc_relabels_in_order_of_appearance_and_test_consistently(gen):
    paths = gen["paths"]
    for run in range(RUNS):
        batches, labs = gen["lup"]["nc"][run], gen["labels"]["nc"][run]
        first_seen = list(dict.fromkeys(v for lab in labs[:-1] for v in lab))
        assert first_seen == list(range(50))
        mapping = {}
        for b, lab in zip(batches, labs):
            for i, v in zip(b, lab):
                obj = parse_core50_path(paths[i])[1]
                assert mapping.setdefault(obj, v) == v  # one label per object, train and test alike
        assert sorted(mapping.values()) == list(range(50))
    # the relabelling is not the identity for at least one run
    assert any(
        any(v != parse_core50_path(paths[i])[1] - 1 for i, v in zip(gen["lup"]["nc"][r][-1], gen["labels"]["nc"][r][-1]))
        for r in range(RUNS)
    )


def test_object_labels_in_other_scenarios(gen):
    paths = gen["paths"]
    for scen in ("ni", "nic", "nicv2_391"):
        for b, lab in zip(gen["lup"][scen][0], gen["labels"][scen][0]):
            assert [parse_core50_path(paths[i])[1] - 1 for i in b] == lab


def test_nic_and_nicv2_first_batch_and_units(gen):
    paths = gen["paths"]
    per = {"nic": 5, "nicv2_79": 5, "nicv2_196": 2, "nicv2_391": 1}
    for scen, n_units in per.items():
        for run in range(RUNS):
            batches = gen["lup"][scen][run][:-1]
            first = _parsed(paths, batches[0])
            assert {s for s, _, _ in first} == {1}
            assert sorted((o - 1) // 5 for o in {o for _, o, _ in first}) == list(range(10))
            for b in batches[1:]:
                units = {(s, o) for s, o, _ in _parsed(paths, b)}
                assert len(units) == n_units and len(b) == n_units * FRAMES
                if scen in ("nic", "nicv2_391"):
                    assert len({s for s, _ in units}) == 1  # one session per batch


def test_nicv2_391_later_batch_is_one_object_in_one_session_consecutive_frames(gen):
    paths = gen["paths"]
    for b in gen["lup"]["nicv2_391"][0][1:-1]:
        parsed = _parsed(paths, b)
        assert len({(s, o) for s, o, _ in parsed}) == 1
        assert [f for _, _, f in parsed] == list(range(FRAMES))


def test_runs_differ(gen):
    for scen in ("nc", "nic", "nicv2_79", "nicv2_391"):
        assert gen["lup"][scen][0] != gen["lup"][scen][1]


def test_build_scenarios_is_deterministic():
    assert build_scenarios(2, 2, seed=5) == build_scenarios(2, 2, seed=5)
    assert build_scenarios(2, 2, seed=5)[0] != build_scenarios(2, 2, seed=6)[0]


# ---------------------------------------------------------------- PNG tree and filelists


def test_png_tree_matches_arrays(gen):
    from PIL import Image

    root = gen["out"] / "core50_32x32"
    pngs = sorted(str(p.relative_to(root)) for p in root.rglob("*.png"))
    assert sorted(gen["paths"]) == pngs
    for i in (0, 5, 1234, len(gen["paths"]) - 1):
        assert re.fullmatch(r"s(\d+)/o(\d+)/C_(\d\d)_(\d\d)_(\d{3})\.png", gen["paths"][i])
        with Image.open(root / gen["paths"][i]) as im:
            assert np.array_equal(np.asarray(im), gen["x"][i])


def test_filelists_match_lup_and_labels(gen):
    out, paths = gen["out"], gen["paths"]
    for scen in SCENARIOS:
        for run in range(RUNS):
            folder = out / SCENARIO_DIRS[scen] / f"run{run}"
            files = sorted(p.name for p in folder.iterdir())
            assert len(files) == N_BATCHES[scen] + 1 and "test_filelist.txt" in files
            for b in (0, N_BATCHES[scen] - 1, N_BATCHES[scen]):
                name = "test_filelist.txt" if b == N_BATCHES[scen] else f"train_batch_{b:02d}_filelist.txt"
                lines = (folder / name).read_text().splitlines()
                expect = [f"{paths[i]} {v}" for i, v in zip(gen["lup"][scen][run][b], gen["labels"][scen][run][b])]
                assert lines == expect
    assert (out / "batches_filelists/NI_inc/run0/train_batch_00_filelist.txt").is_file()
    assert (out / "NIC_v2_391/run1/train_batch_390_filelist.txt").is_file()


# ---------------------------------------------------------------- pretraining objects


def test_pretraining_objects_disjoint_from_core50_and_balanced():
    core = [core50_object_style(o, 0) for o in range(1, 51)]
    pre = pretraining_object_styles(120, 0)
    core_vecs = {tuple(np.round(c.vector(), 6)) for c in core}
    for p in pre:
        assert tuple(np.round(p.vector(), 6)) not in core_vecs
        for c in core:
            if (c.shape, c.pattern) == (p.shape, p.pattern):
                assert np.linalg.norm(c.vector() - p.vector()) > 0.35
    assert Counter(p.shape for p in pre) == Counter({s: 12 for s in range(10)})
    x, y = make_pretraining_set(n_objects=20, frames=3, sessions=2, image_size=32, seed=0)
    assert x.shape == (120, 32, 32, 3) and x.dtype == np.uint8 and y.dtype == np.int64
    assert Counter(y.tolist()) == Counter({k: 6 for k in range(20)})
    x2, y2 = make_pretraining_set(n_objects=20, frames=3, sessions=2, image_size=32, seed=0)
    assert np.array_equal(x, x2) and np.array_equal(y, y2)
    x3, _ = make_pretraining_set(n_objects=20, frames=3, sessions=2, image_size=32, seed=0, variant=1)
    assert not np.array_equal(x, x3)


def test_pretrain_npz_written(gen):
    with np.load(gen["out"] / "pretrain.npz", allow_pickle=False) as z:
        assert z["x"].dtype == np.uint8 and z["x"].shape[1:] == (32, 32, 3)
        assert z["y"].dtype == np.int64 and len(z["y"]) == len(z["x"])


# ---------------------------------------------------------------- CLI


def test_cli_generate_and_usage_errors(tmp_path, capsys):
    from firmware_sim.commands.cli import main

    out = tmp_path / "cli"
    assert main(["generate", "--out", str(out), "--frames", "1", "--runs", "1", "--forms", "arrays", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "550 images" in printed and (out / "core50_imgs.npz").is_file() and not (out / "core50_32x32").exists()
    assert main(["generate", "--out", str(out), "--frames", "0"]) == 2
    err = capsys.readouterr().err
    assert "frames must be >= 1" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "x.txt").write_text("keep")
    assert main(["generate", "--out", str(tmp_path / "foreign"), "--frames", "1"]) == 2
    assert "overwrite" in capsys.readouterr().err
    assert main(["generate", "--out", str(out), "--forms", "gif"]) == 2
