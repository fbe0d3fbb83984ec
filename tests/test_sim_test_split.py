"""Issue 12 item 1: a stream is never evaluated on its training frames.

Sources without their own test split (npz with only ``x``/``y``, a folder of class folders) get a
seeded stratified hold-out; sources with one (npz ``x_test``/``y_test``, IDX ``t10k-*``) keep it;
``report.json`` and ``summary.md`` say which was used.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from firmware_sim.data.sources import LabelledImages
from firmware_sim.data.streams import OWN_TEST_SPLIT, holdout_split, open_stream

REPO = Path(__file__).resolve().parents[1]
MODEL = str(REPO / "models" / "tiny")


def _random_images(n_classes: int, per_class: int, size: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Distinct random images: nothing but memorisation links an image to its label."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n_classes * per_class, size, size, 3), dtype=np.uint8)
    return x, np.repeat(np.arange(n_classes), per_class)


def _hashes(x: np.ndarray) -> list[str]:
    return [hashlib.sha1(img.tobytes()).hexdigest() for img in x]


def _pixel_1nn_accuracy(stream) -> float:
    train_x = np.concatenate([b.images() for b in stream.train_batches]).reshape(stream.n_train_frames, -1)
    train_y = np.concatenate([b.labels for b in stream.train_batches])
    test_x = stream.test.images().reshape(len(stream.test), -1).astype(np.float32)
    d = ((test_x[:, None, :] - train_x[None, :, :].astype(np.float32)) ** 2).sum(axis=2)
    return float(np.mean(train_y[d.argmin(axis=1)] == stream.test.labels))


def _assert_disjoint(stream) -> None:
    train_hashes = set()
    for b in stream.train_batches:
        train_hashes |= set(_hashes(b.images()))
    assert not train_hashes & set(_hashes(stream.test.images())), "a test frame is also a training frame"


def test_holdout_split_is_stratified_seeded_and_disjoint() -> None:
    x, y = _random_images(5, 10)
    data = LabelledImages(x, y, np.tile(np.arange(10), 5))
    train, test = holdout_split(data, 0.2, seed=3)
    assert len(train) == 40 and len(test) == 10 and np.bincount(test.y).tolist() == [2] * 5
    assert not set(_hashes(train.x)) & set(_hashes(test.x))
    assert sorted(_hashes(train.x) + _hashes(test.x)) == sorted(_hashes(x))
    assert train.session is not None and test.session is not None and len(test.session) == 10
    again, _ = holdout_split(data, 0.2, seed=3)
    other, _ = holdout_split(data, 0.2, seed=4)
    np.testing.assert_array_equal(again.x, train.x)
    assert not np.array_equal(other.x, train.x)
    assert len(holdout_split(data, 0.5)[1]) == 25
    for bad in (0, 1.0, -0.1, True):
        with pytest.raises(ValueError, match="expected a fraction strictly between 0 and 1"):
            holdout_split(data, bad)  # type: ignore[arg-type]


def test_npz_with_only_x_y_is_never_evaluated_on_training_frames(tmp_path: Path) -> None:
    x, y = _random_images(4, 25)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    stream = open_stream(f"npz:{tmp_path / 'd.npz'}", "class_incremental", seed=0)
    assert stream.n_train_frames == 80 and len(stream.test) == 20
    assert np.bincount(stream.test.labels).tolist() == [5] * 4
    _assert_disjoint(stream)
    # on distinct random images a pixel 1-NN can only memorise: 100 % on the old train==test set,
    # near chance on a real hold-out
    assert _pixel_1nn_accuracy(stream) < 0.6
    assert stream.test_split == "held-out 20 % stratified, seed 0"
    assert "test split: held-out 20 % stratified, seed 0" in stream.description
    wider = open_stream(f"npz:{tmp_path / 'd.npz'}", "class_incremental", test_split=0.4, seed=2)
    assert len(wider.test) == 40 and wider.test_split == "held-out 40 % stratified, seed 2"
    # every run replays the same hold-out (runs differ in order, not in the test set)
    run1 = open_stream(f"npz:{tmp_path / 'd.npz'}", "class_incremental", run=1, seed=0)
    np.testing.assert_array_equal(run1.test.images(), stream.test.images())
    assert run1.identity == stream.identity


def test_image_folder_is_held_out_too(tmp_path: Path) -> None:
    x, y = _random_images(3, 10, size=8, seed=1)
    for i, (img, label) in enumerate(zip(x, y)):
        folder = tmp_path / f"class{label}"
        folder.mkdir(exist_ok=True)
        Image.fromarray(img).save(folder / f"{i:03d}.png")
    stream = open_stream(f"folder:{tmp_path}", "nic_like", params={"batch_size": 4})
    assert stream.n_train_frames == 24 and len(stream.test) == 6
    _assert_disjoint(stream)
    assert _pixel_1nn_accuracy(stream) < 0.8
    assert stream.summary()["test_split"] == "held-out 20 % stratified, seed 0"


def test_own_test_splits_are_kept_and_test_split_refused_there(tmp_path: Path) -> None:
    x, y = _random_images(3, 10)
    xt, yt = _random_images(3, 2, seed=5)
    np.savez(tmp_path / "own.npz", x_train=x, y_train=y, x_test=xt, y_test=yt)
    stream = open_stream(f"npz:{tmp_path / 'own.npz'}", "class_incremental")
    assert stream.n_train_frames == 30 and len(stream.test) == 6 and stream.test_split == OWN_TEST_SPLIT
    with pytest.raises(ValueError, match="has its own test split; expected no --test-split, got 0.3"):
        open_stream(f"npz:{tmp_path / 'own.npz'}", "class_incremental", test_split=0.3)
    idx = tmp_path / "idx"
    idx.mkdir()

    def write(name: str, arr: np.ndarray, code: int) -> None:
        header = bytes([0, 0, code, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
        with gzip.open(idx / f"{name}.gz", "wb") as f:
            f.write(header + arr.astype(np.uint8).tobytes())

    write("train-images-idx3-ubyte", x[..., 0], 0x08)
    write("train-labels-idx1-ubyte", y, 0x08)
    only_train = open_stream(f"idx:{idx}", "class_incremental")  # no t10k files yet: held out
    assert len(only_train.test) == 6 and only_train.test_split.startswith("held-out 20 %")
    _assert_disjoint(only_train)
    write("t10k-images-idx3-ubyte", xt[..., 0], 0x08)
    write("t10k-labels-idx1-ubyte", yt, 0x08)
    with_test = open_stream(f"idx:{idx}", "class_incremental")
    assert with_test.test_split == OWN_TEST_SPLIT and len(with_test.test) == 6 and with_test.n_train_frames == 30
    with pytest.raises(ValueError, match="expected no --test-split"):
        open_stream("synthetic:/nonexistent", "ni", test_split=0.2)


def test_domain_incremental_test_sessions_split_one_source_by_session(tmp_path: Path) -> None:
    x, y = _random_images(2, 12)
    session = np.tile(np.repeat(np.arange(3), 4), 2)
    np.savez(tmp_path / "s.npz", x=x, y=y, session=session)
    spec = f"npz:{tmp_path / 's.npz'}"
    stream = open_stream(spec, "domain_incremental", params={"test_sessions": [2]})
    assert [b.name for b in stream.train_batches] == ["session_0", "session_1"] and len(stream.test) == 8
    _assert_disjoint(stream)
    assert stream.test_split == "held-out sessions [2] of the source (test_sessions)"
    with pytest.raises(ValueError, match="expected no --test-split"):
        open_stream(spec, "domain_incremental", params={"test_sessions": [2]}, test_split=0.2)


def test_edge_sim_reports_the_split(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from firmware_sim.commands.cli import main as sim_main
    from firmware_sim.data.generator import make_pretraining_set

    x, y = make_pretraining_set(n_objects=4, frames=5, sessions=2, image_size=32, seed=9)
    np.savez(tmp_path / "xy.npz", x=x, y=y)
    out = tmp_path / "out"
    code = sim_main(["run", "--model", MODEL, "--data", f"npz:{tmp_path / 'xy.npz'}", "--scenario",
                     "class_incremental", "--protocol-param", "class_order=[3,2,1,0]", "--test-split", "0.25",
                     "--strategy", "naive", "--max-classes", "4", "--out", str(out), "--cache",
                     str(tmp_path / "cache"), "--latency-frames", "0", "--no-plots", "--no-progress"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    note = "held-out 25 % stratified, seed 0"
    assert report["test_split"] == note and report["streams"][0]["test_split"] == note
    assert report["configs"]["naive"]["runs"][0]["test_split"] == note
    assert report["streams"][0]["n_test_frames"] == 4 * 3 and report["streams"][0]["n_train_frames"] == 4 * 7
    assert f"Test split: {note}." in (out / "summary.md").read_text()
    assert note in capsys.readouterr().out
    code = sim_main(["run", "--model", MODEL, "--data", f"npz:{tmp_path / 'xy.npz'}", "--scenario",
                     "class_incremental", "--test-split", "1.5", "--out", str(out), "--no-progress"])
    assert code == 2 and "--test-split: test split: expected a fraction strictly between 0 and 1, got 1.5" in \
        capsys.readouterr().err


def test_run_help_lists_protocol_parameters(capsys: pytest.CaptureFixture[str]) -> None:
    from firmware_sim.commands.cli import main as sim_main

    assert sim_main(["run", "--help"]) == 0
    text = capsys.readouterr().out
    assert "--test-split" in text and "domain_incremental: session_order=None" in text
    assert "test_sessions=None" in text and "split_transfer: pretrain_classes=None" in text
