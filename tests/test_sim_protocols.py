"""firmware_sim.data.protocols: streams over small synthetic LabelledImages built here."""

import doctest
import hashlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import firmware_sim.data.protocols as protocols
from firmware_sim.data.protocols import (
    PROTOCOLS,
    Stream,
    class_incremental,
    domain_incremental,
    few_shot,
    make_protocol,
    nic_like,
    split_transfer,
)
from firmware_sim.data.sources import LabelledImages

N_CLASSES = 6
PER_CLASS = 20  # 4 sessions x 5 frames
SESSIONS = 4


def _images(ids: np.ndarray) -> np.ndarray:
    """Unique 4x4 RGB images: the id is written into the first pixels (so hashes identify samples)."""
    x = np.zeros((ids.size, 4, 4, 3), np.uint8)
    x[:, 0, 0, 0] = ids % 256
    x[:, 0, 0, 1] = ids // 256
    x[:, 1:, :, :] = (ids[:, None, None, None] * 7) % 251
    return x


def _data(with_session: bool = True) -> tuple[LabelledImages, LabelledImages]:
    # Train: class-major, and within a class session-major (like video: consecutive frames).
    y = np.repeat(np.arange(N_CLASSES), PER_CLASS)
    session = np.tile(np.repeat(np.arange(1, SESSIONS + 1), PER_CLASS // SESSIONS), N_CLASSES)
    train = LabelledImages(_images(np.arange(y.size)), y, session if with_session else None,
                           [f"obj{c}" for c in range(N_CLASSES)])
    yt = np.tile(np.arange(N_CLASSES), 4)  # 4 test images per class, interleaved
    test = LabelledImages(_images(np.arange(1000, 1000 + yt.size)), yt, None, train.class_names)
    return train, test


def _hashes(x: np.ndarray) -> set[str]:
    return {hashlib.sha1(img.tobytes()).hexdigest() for img in x}


def _assert_no_test_in_training(stream: Stream, test: LabelledImages) -> None:
    test_hashes = _hashes(test.x)
    for b in stream.train_batches:
        assert not (_hashes(b.images()) & test_hashes), f"batch {b.name} trains on a test image"
    # and the stream's test set is made of test images only
    assert _hashes(stream.test.images()) <= test_hashes


def _assert_consistent(stream: Stream, train: LabelledImages) -> None:
    for b in stream.train_batches:
        assert b.images().dtype == np.uint8 and b.images().shape == (len(b), 4, 4, 3)
        assert b.labels.dtype == np.int64 and b.replayed.dtype == bool and b.replayed.shape == b.labels.shape
        np.testing.assert_array_equal(b.images(), train.x[b.indices])
    assert stream.test.images().shape[0] == stream.test.labels.shape[0] == stream.test.indices.shape[0]


def test_doctests():
    result = doctest.testmod(protocols)
    assert result.failed == 0 and result.attempted > 10


# --------------------------------------------------------------------------- class-incremental


def test_class_incremental_order_and_all_samples():
    train, test = _data()
    order = [4, 2, 0, 5, 1, 3]
    s = class_incremental(train, test, classes_per_experience=2, class_order=order)
    assert [sorted(c) for c in s.classes_per_batch] == [[2, 4], [0, 5], [1, 3]]
    assert [b.name for b in s.train_batches][0].startswith("exp000_classes_4-2")
    assert [len(b) for b in s.train_batches] == [2 * PER_CLASS] * 3
    assert s.params["class_order"] == order
    assert s.test.images().shape[0] == len(test)  # every class of the stream: the whole test set
    _assert_consistent(s, train)
    _assert_no_test_in_training(s, test)
    # labels are not remapped: label = source label
    for b in s.train_batches:
        np.testing.assert_array_equal(b.labels, train.y[b.indices])
    # one label at a time
    s1 = class_incremental(train, test, classes_per_experience=1, class_order=order)
    assert s1.classes_per_batch == [[c] for c in order]


def test_class_incremental_subset_order_restricts_test_set():
    train, test = _data()
    s = class_incremental(train, test, 1, class_order=[5, 0])
    assert s.classes_per_batch == [[5], [0]]
    assert set(s.test.labels.tolist()) == {0, 5} and s.test.labels.size == 8
    np.testing.assert_array_equal(s.test.labels, test.y[s.test.indices])


def test_class_incremental_new_and_replay_counts_exact():
    train, test = _data()
    s = class_incremental(train, test, classes_per_experience=2, class_order="random", seed=3,
                          new_per_experience=7, replay_per_experience=5)
    assert [len(b) for b in s.train_batches] == [7, 12, 12]
    assert [b.n_replayed for b in s.train_batches] == [0, 5, 5]
    order = s.params["class_order"]
    streamed: set[int] = set()
    for e, b in enumerate(s.train_batches):
        new_y = b.labels[~b.replayed]
        group = order[2 * e: 2 * e + 2]
        # 7 new samples over 2 classes: the first class of the group gets 4, the second 3
        assert np.bincount(new_y, minlength=N_CLASSES)[group].tolist() == [4, 3]
        # replayed samples come only from earlier experiences' classes, and were streamed before
        rep_idx = b.indices[b.replayed]
        assert set(train.y[rep_idx].tolist()) <= set(order[: 2 * e])
        assert set(rep_idx.tolist()) <= streamed
        assert len(set(b.indices.tolist())) == len(b)  # no duplicates inside a batch
        streamed |= set(b.indices[~b.replayed].tolist())
    _assert_no_test_in_training(s, test)


def test_class_incremental_replay_capped_by_earlier_data(caplog):
    train, test = _data()
    with caplog.at_level("WARNING", logger="firmware_sim.data.protocols"):
        s = class_incremental(train, test, 1, new_per_experience=3, replay_per_experience=5)
    # experience 1 can only replay the 3 samples of experience 0; later ones have >= 6 to draw from
    assert [b.n_replayed for b in s.train_batches] == [0, 3, 5, 5, 5, 5]
    assert "fewer" in caplog.text


def test_class_incremental_errors():
    train, test = _data()
    with pytest.raises(ValueError, match=r"class_order: \[9\] not in the training data"):
        class_incremental(train, test, class_order=[0, 9])
    with pytest.raises(ValueError, match="duplicates"):
        class_incremental(train, test, class_order=[0, 0])
    with pytest.raises(ValueError, match="needs 21 samples of class 0, which has only 20"):
        class_incremental(train, test, 1, new_per_experience=21)
    with pytest.raises(ValueError, match="classes_per_experience: expected an integer >= 1, got 0"):
        class_incremental(train, test, 0)
    small = LabelledImages(np.zeros((2, 8, 8, 3), np.uint8), np.array([0, 1]))
    with pytest.raises(ValueError, match="test images: expected shape"):
        class_incremental(train, small)


@settings(max_examples=25, deadline=None)
@given(k=st.integers(1, N_CLASSES), new=st.integers(1, PER_CLASS), replay=st.integers(0, 30),
       seed=st.integers(0, 2**16))
def test_class_incremental_counts_property(k, new, replay, seed):
    train, test = _data()
    n_new = min(new * k, PER_CLASS)  # keep the request feasible: at most PER_CLASS per class
    s = class_incremental(train, test, k, "random", seed, new_per_experience=n_new,
                          replay_per_experience=replay or None)
    groups = [s.params["class_order"][i:i + k] for i in range(0, N_CLASSES, k)]
    seen = 0
    for g, b in zip(groups, s.train_batches):
        if len(g) == k:
            assert (~b.replayed).sum() == n_new
        assert b.n_replayed == (min(replay, seen) if replay else 0)
        assert set(b.labels[b.replayed].tolist()).isdisjoint(g)
        seen += int((~b.replayed).sum())


# --------------------------------------------------------------------------- split transfer


def test_split_transfer_disjoint_and_remapped():
    train, test = _data()
    r = split_transfer(train, test, pretrain_classes=[5, 1, 3], protocol="class_incremental",
                       classes_per_experience=1)
    assert r.pretrain_label_map == {5: 0, 1: 1, 3: 2}
    assert r.label_map == {0: 0, 2: 1, 4: 2} == r.stream.label_map
    assert set(r.pretrain_label_map).isdisjoint(r.label_map)
    # pretraining data: only pretrain classes, relabelled 0..2, names follow
    assert sorted(np.unique(r.pretrain.y).tolist()) == [0, 1, 2]
    assert r.pretrain.class_names == ["obj5", "obj1", "obj3"]
    assert len(r.pretrain) == 3 * PER_CLASS and len(r.pretrain_test) == 3 * 4
    assert r.pretrain.session is not None
    # the stream: labels 0..2, indices still into the original source, mapping consistent
    s = r.stream
    assert s.n_classes == 3 and s.class_names == ["obj0", "obj2", "obj4"]
    assert s.classes_per_batch == [[0], [1], [2]]
    inverse = {v: k for k, v in r.label_map.items()}
    for b in s.train_batches:
        assert [inverse[v] for v in b.labels.tolist()] == train.y[b.indices].tolist()
    assert set(s.test.labels.tolist()) == {0, 1, 2}
    assert [inverse[v] for v in s.test.labels.tolist()] == test.y[s.test.indices].tolist()
    # no pretraining image is in the stream, no test image in either training set
    pre_h = _hashes(r.pretrain.x)
    assert all(not (_hashes(b.images()) & pre_h) for b in s.train_batches)
    assert not (pre_h & _hashes(test.x))
    _assert_no_test_in_training(s, test)
    assert s.name == "split_transfer/class_incremental"


def test_split_transfer_defaults_random_and_errors():
    train, test = _data()
    r = split_transfer(train, test)
    assert list(r.pretrain_label_map) == [0, 1, 2] and list(r.label_map) == [3, 4, 5]
    a = split_transfer(train, test, pretrain_classes="random", seed=4)
    b = split_transfer(train, test, pretrain_classes="random", seed=4)
    assert a.pretrain_label_map == b.pretrain_label_map and len(a.pretrain_label_map) == 3
    fs = split_transfer(train, test, protocol="few_shot", shots=2)
    assert np.bincount(fs.stream.train_batches[0].labels).tolist() == [2, 2, 2]
    with pytest.raises(ValueError, match=r"disjoint, both hold \[1\]"):
        split_transfer(train, test, pretrain_classes=[0, 1], stream_classes=[1, 2])
    with pytest.raises(ValueError, match="expected one of"):
        split_transfer(train, test, protocol="split_transfer")


# --------------------------------------------------------------------------- few-shot, domain, NIC


def test_few_shot_exactly_n_per_class():
    train, test = _data()
    s = few_shot(train, test, shots=3, seed=1)
    assert len(s) == 1
    assert np.bincount(s.train_batches[0].labels).tolist() == [3] * N_CLASSES
    several = few_shot(train, test, shots=4, seed=1, classes_per_batch=4)
    assert [len(b) for b in several] == [16, 8]
    total = np.bincount(np.concatenate([b.labels for b in several]), minlength=N_CLASSES)
    assert total.tolist() == [4] * N_CLASSES
    _assert_no_test_in_training(several, test)
    with pytest.raises(ValueError, match="which has only 20"):
        few_shot(train, test, shots=21)


def test_domain_incremental_one_batch_per_session():
    train, test = _data()
    s = domain_incremental(train, test)
    assert [b.name for b in s] == [f"session_{i}" for i in range(1, SESSIONS + 1)]
    for i, b in enumerate(s, start=1):
        assert set(train.session[b.indices].tolist()) == {i}
        assert len(b) == N_CLASSES * PER_CLASS // SESSIONS
    assert s.classes_per_batch == [list(range(N_CLASSES))] * SESSIONS
    assert s.test.labels.size == len(test)
    rev = domain_incremental(train, test, session_order=[4, 3, 2, 1])
    assert [b.name for b in rev] == ["session_4", "session_3", "session_2", "session_1"]
    no_session, _ = _data(with_session=False)
    with pytest.raises(ValueError, match="expected a `session` array.*got session=None"):
        domain_incremental(no_session, test)


def test_nic_like_single_class_batches_of_m():
    train, test = _data(with_session=False)
    s = nic_like(train, test, batch_size=5, seed=2)
    assert len(s) == N_CLASSES * PER_CLASS // 5
    for b in s:
        assert len(b) == 5 and len(b.classes) == 1
        assert np.all(np.diff(b.indices) == 1)  # consecutive frames, in source order
    # every training sample exactly once
    assert sorted(np.concatenate([b.indices for b in s]).tolist()) == list(range(len(train)))
    # classes come back again and again (not all batches of one class in a row)
    first_classes = [b.classes[0] for b in s][:N_CLASSES]
    assert len(set(first_classes)) > 1


def test_nic_like_sessions_remainders_and_first_batch():
    train, test = _data(with_session=True)
    s = nic_like(train, test, batch_size=3, seed=0)  # 5 frames per (class, session): runs of 3 + 2
    assert sorted({len(b) for b in s}) == [2, 3]
    for b in s:
        assert len(b.classes) == 1 and len(set(train.session[b.indices].tolist())) == 1
    dropped = nic_like(train, test, batch_size=3, seed=0, drop_last=True)
    assert {len(b) for b in dropped} == {3}
    f = nic_like(train, test, batch_size=5, seed=0, first_batch_classes=2)
    first = f.train_batches[0]
    assert len(first) == 2 * PER_CLASS and len(first.classes) == 2
    assert all(len(b.classes) == 1 and b.classes[0] not in first.classes for b in f.train_batches[1:])
    with pytest.raises(ValueError, match="batch_size: expected an integer >= 1"):
        nic_like(train, test, batch_size=0)


# --------------------------------------------------------------------------- determinism and registry


@pytest.mark.parametrize("name,params", [
    ("class_incremental", {"class_order": "random", "new_per_experience": 5, "replay_per_experience": 4}),
    ("few_shot", {"shots": 2}),
    ("domain_incremental", {"session_order": "random"}),
    ("nic_like", {"batch_size": 4}),
    ("split_transfer", {"pretrain_classes": "random", "classes_per_experience": 2}),
])
def test_deterministic_for_a_seed(name, params):
    train, test = _data()
    build = make_protocol(name, seed=11, **params)
    a, b = build(train, test), build(train, test)
    other = make_protocol(name, seed=12, **params)(train, test)
    assert isinstance(a, Stream)
    assert [x.name for x in a] == [x.name for x in b]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.indices, y.indices)
        np.testing.assert_array_equal(x.replayed, y.replayed)
    np.testing.assert_array_equal(a.test.indices, b.test.indices)
    assert any(not np.array_equal(x.indices, y.indices) for x, y in zip(a, other)) or len(a) != len(other)
    summary = a.summary()
    assert summary["n_batches"] == len(a) and summary["n_train_samples"] == a.n_train_frames


def test_make_protocol_registry_and_errors():
    assert sorted(PROTOCOLS) == ["class_incremental", "domain_incremental", "few_shot", "nic_like",
                                 "split_transfer"]
    with pytest.raises(ValueError, match="unknown protocol 'ni'; valid names: class_incremental, "):
        make_protocol("ni")
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['shots'\]; valid: \['classes_per"):
        make_protocol("class_incremental", shots=3)
    make_protocol("split_transfer", protocol="few_shot", shots=3)  # inner protocol's parameters accepted
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['shots'\]"):
        make_protocol("split_transfer", shots=3)
    train, test = _data()
    s = make_protocol("split_transfer", classes_per_experience=3)(train, test)
    assert s.pretrain is not None and len(s.pretrain) == 3 * PER_CLASS and s.label_map == {3: 0, 4: 1, 5: 2}
    # one-shot forms: build now
    direct = make_protocol("few_shot", train=train, test=test, shots=2, seed=5)
    again = make_protocol("few_shot", shots=2, seed=5)(train, test)  # the same as building later
    assert isinstance(direct, Stream)
    np.testing.assert_array_equal(direct.train_batches[0].indices, again.train_batches[0].indices)
    with pytest.raises(ValueError, match="expected both train and test"):
        make_protocol("few_shot", train=train, shots=2)


# --------------------------------------------------------------------------- issue 12 item 6


def test_list_and_range_protocol_params_parse_from_the_command_line():
    from firmware_sim.commands.run import _parse_params
    from firmware_sim.data.protocols import parse_int_list, parse_protocol_value

    params = _parse_params(["pretrain_classes=[5,6,7,8,9]", "stream_classes=0-4", "class_order=3,1,2",
                            "seed=7", "shuffle=false", "replay_per_experience=none", "protocol=few_shot"])
    assert params == {"pretrain_classes": [5, 6, 7, 8, 9], "stream_classes": [0, 1, 2, 3, 4],
                      "class_order": [3, 1, 2], "seed": 7, "shuffle": False, "replay_per_experience": None,
                      "protocol": "few_shot"}
    assert parse_int_list("0-2,7") == [0, 1, 2, 7] and parse_protocol_value("-3") == -3
    with pytest.raises(ValueError, match="LOW <= HIGH, got 9 > 5"):
        parse_int_list("9-5")
    with pytest.raises(ValueError, match="expected KEY=VALUE"):
        _parse_params(["pretrain_classes"])
    # the parsed lists build the classic "pretrain on 5-9, learn 0-4" split ...
    y = np.repeat(np.arange(10), 4)
    train = LabelledImages(_images(np.arange(y.size)), y)
    test = LabelledImages(_images(np.arange(500, 500 + y.size)), y)
    r = split_transfer(train, test, **_parse_params(["pretrain_classes=[5,6,7,8,9]"]))
    assert r.pretrain_label_map == {5: 0, 6: 1, 7: 2, 8: 3, 9: 4} and r.label_map == {0: 0, 1: 1, 2: 2, 3: 3, 4: 4}
    # ... and a range given as text straight to the Python API means the same
    same = split_transfer(train, test, pretrain_classes="5-9")  # type: ignore[arg-type]
    assert same.pretrain_label_map == r.pretrain_label_map
    with pytest.raises(ValueError, match="a range such as 5-9, got 'five'"):
        split_transfer(train, test, pretrain_classes="five")  # type: ignore[arg-type]


def test_domain_incremental_holds_test_sessions_out():
    train, _ = _data()
    s = domain_incremental(train, train, test_sessions=[4])
    assert [b.name for b in s] == ["session_1", "session_2", "session_3"]
    trained = np.concatenate([b.indices for b in s])
    assert set(train.session[trained].tolist()) == {1, 2, 3}
    assert set(train.session[s.test.indices].tolist()) == {4}
    assert len(s.test) == N_CLASSES * PER_CLASS // SESSIONS
    assert not set(trained.tolist()) & set(s.test.indices.tolist())
    assert not _hashes(np.concatenate([b.images() for b in s])) & _hashes(s.test.images())
    assert s.params["test_sessions"] == [4] and "sessions [4] held out" in s.description
    two = make_protocol("domain_incremental", train=train, test=train, test_sessions="3-4")
    assert [b.name for b in two] == ["session_1", "session_2"]
    with pytest.raises(ValueError, match=r"test_sessions: \[7\] not among the test images' sessions"):
        domain_incremental(train, train, test_sessions=7)
    with pytest.raises(ValueError, match="expected at least one training session left"):
        domain_incremental(train, train, test_sessions="1-4")
    _, no_session_test = _data()
    with pytest.raises(ValueError, match="test_sessions: expected a `session` array on the test images"):
        domain_incremental(train, no_session_test, test_sessions=[4])


def test_protocol_parameters_are_listed_with_defaults():
    from firmware_sim.data.protocols import protocol_help, protocol_parameters

    params = protocol_parameters()
    assert set(params) == set(PROTOCOLS)
    assert params["domain_incremental"]["test_sessions"] is None and params["nic_like"]["batch_size"] == 300
    text = protocol_help()
    for name in PROTOCOLS:
        assert f"  {name}: " in text
    assert "classes_per_experience=1" in text and "pretrain_classes=None" in text and "batch_size=300" in text
