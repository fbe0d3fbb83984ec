"""Core50Arrays / Core50Folder / open_core50 on generator output (the official file forms)."""

import logging
import shutil
import zipfile

import numpy as np
import pytest

from firmware_sim.data.core50 import (
    N_BATCHES,
    SCENARIOS,
    Core50Arrays,
    Core50Folder,
    open_core50,
    parse_core50_path,
)
from firmware_sim.data.generator import GeneratorConfig, generate_core50

FRAMES, RUNS = 4, 2


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    out = tmp_path_factory.mktemp("core50")
    generate_core50(out, GeneratorConfig(frames=FRAMES, runs=RUNS, seed=1), progress=False)
    return out


@pytest.fixture(scope="module")
def arrays(root):
    return Core50Arrays(root)


def test_arrays_and_folder_give_same_batches(root, arrays):
    folder = Core50Folder(root / "core50_32x32", root)
    for scen in SCENARIOS:
        for run in range(RUNS):
            a, f = arrays.scenario(scen, run), folder.scenario(scen, run)
            assert len(a.train_batches) == len(f.train_batches) == N_BATCHES[scen]
            for ba, bf in zip(a.train_batches + [a.test], f.train_batches + [f.test]):
                assert ba.paths == bf.paths
                assert np.array_equal(ba.labels, bf.labels)
                assert np.array_equal(ba.indices, bf.indices)
    ba = arrays.scenario("nicv2_391", 1).train_batches[7]
    bf = folder.scenario("nicv2_391", 1).train_batches[7]
    assert np.array_equal(ba.images(), bf.images())


def test_images_are_memory_mapped_and_match_npz(root, arrays):
    assert isinstance(arrays.x, np.memmap)
    with np.load(root / "core50_imgs.npz") as z:
        full = z["x"]
    b = arrays.scenario("ni", 0).train_batches[3]
    imgs = b.images()
    assert imgs.dtype == np.uint8 and imgs.shape == (len(b), 32, 32, 3)
    assert np.array_equal(imgs, full[b.indices])


def test_compressed_npz_falls_back_with_warning(root, tmp_path, caplog):
    for name in ("paths.pkl", "labels.pkl", "LUP.pkl"):
        shutil.copy(root / name, tmp_path / name)
    with np.load(root / "core50_imgs.npz") as z:
        x = z["x"]
    np.savez_compressed(tmp_path / "core50_imgs.npz", x=x)
    with zipfile.ZipFile(tmp_path / "core50_imgs.npz") as zf:
        assert zf.getinfo("x.npy").compress_type == zipfile.ZIP_DEFLATED
    with caplog.at_level(logging.WARNING, logger="firmware_sim.data.core50"):
        data = Core50Arrays(tmp_path)
        assert not isinstance(data.x, np.memmap)
    assert "compressed" in caplog.text
    b = data.scenario("nc", 1).test
    assert np.array_equal(b.images(), x[b.indices])


def test_reduced_test_is_every_20th(arrays):
    full = arrays.scenario("nicv2_79", 0).test
    red = arrays.scenario("nicv2_79", 0, test="reduced").test
    assert np.array_equal(red.indices, full.indices[::20])
    assert np.array_equal(red.labels, full.labels[::20])
    assert len(red) == -(-len(full) // 20)


def test_category_labels_including_relabelled_nc(arrays):
    for scen in ("ni", "nc"):
        obj = arrays.scenario(scen, 1)
        cat = arrays.scenario(scen, 1, labels="category")
        assert cat.n_classes == 10 and obj.n_classes == 50
        for bo, bc in zip(obj.train_batches + [obj.test], cat.train_batches + [cat.test]):
            orig = np.array([parse_core50_path(p)[1] for p in bo.paths])
            assert np.array_equal(bc.labels, (orig - 1) // 5)
    nc = arrays.scenario("nc", 1)
    orig = np.array([parse_core50_path(p)[1] - 1 for p in nc.test.paths])
    assert not np.array_equal(nc.test.labels, orig)  # NC object labels are the relabelled ones
    assert not np.array_equal(nc.test.labels // 5, orig // 5)  # so category must come from the path


def test_resize_on_read(arrays):
    b = arrays.scenario("ni", 0, image_size=64).train_batches[0]
    assert b.images().shape == (len(b), 64, 64, 3)


def test_missing_file_is_named(root, tmp_path):
    for name in ("core50_imgs.npz", "paths.pkl", "labels.pkl"):
        shutil.copy(root / name, tmp_path / name)
    with pytest.raises(FileNotFoundError) as info:
        Core50Arrays(tmp_path)
    assert "LUP.pkl" in str(info.value) and str(tmp_path) in str(info.value)


def test_unknown_scenario_and_run_list_valid_ones(root, arrays):
    with pytest.raises(ValueError, match="nicv2_391"):
        arrays.scenario("nicv3", 0)
    with pytest.raises(ValueError, match="valid: 0, 1"):
        arrays.scenario("ni", 5)
    folder = Core50Folder(root)
    with pytest.raises(ValueError, match="ni, nc"):
        folder.scenario("bogus", 0)
    with pytest.raises(ValueError, match="valid: 0, 1"):
        folder.scenario("nc", 7)
    with pytest.raises(ValueError, match="reduced"):
        arrays.scenario("ni", 0, test="half")


def test_malformed_filelist_line_reports_file_and_line(root, tmp_path):
    fl = tmp_path / "lists"
    shutil.copytree(root / "batches_filelists", fl / "batches_filelists")
    target = fl / "batches_filelists" / "NI_inc" / "run0" / "train_batch_02_filelist.txt"
    lines = target.read_text().splitlines()
    lines[6] = "s1/o1/not_a_frame.png 0"
    target.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError) as info:
        Core50Folder(root / "core50_32x32", fl).scenario("ni", 0)
    assert f"{target}:7" in str(info.value)
    lines[6] = "s1/o1/C_01_01_000.png"
    target.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"train_batch_02_filelist\.txt:7"):
        Core50Folder(root / "core50_32x32", fl).scenario("ni", 0)


def test_folder_missing_filelists_named(root, tmp_path):
    shutil.copytree(root / "core50_32x32", tmp_path / "core50_32x32")
    with pytest.raises(FileNotFoundError, match="batches_filelists"):
        Core50Folder(tmp_path)


def test_open_core50_detects_form(root, tmp_path):
    assert isinstance(open_core50(root), Core50Arrays)
    shutil.copytree(root / "core50_32x32", tmp_path / "core50_32x32")
    shutil.copytree(root / "batches_filelists", tmp_path / "batches_filelists")
    for d in ("NIC_v2_79", "NIC_v2_196", "NIC_v2_391"):
        shutil.copytree(root / d, tmp_path / d)
    opened = open_core50(tmp_path)
    assert isinstance(opened, Core50Folder)
    assert len(opened.scenario("nicv2_196", 1).train_batches) == 196
    with pytest.raises(FileNotFoundError, match="no CORe50 form"):
        open_core50(tmp_path / "core50_32x32" / "s1")


def test_batch_metadata(arrays):
    b = arrays.scenario("nicv2_391", 0).train_batches[5]
    sessions, objects, _ = zip(*(parse_core50_path(p) for p in b.paths))
    assert len(set(sessions)) == 1 and len(set(objects)) == 1
    assert np.array_equal(b.labels, np.asarray(objects) - 1)
