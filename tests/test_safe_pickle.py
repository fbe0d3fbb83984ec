"""safe_load_pickle: plain containers load, globals (code execution) are refused."""

import os
import pickle

import pytest

from firmware_sim.data.safe_pickle import UnsafePickleError, safe_load_pickle


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_plain_nested_lists_and_dicts_load(tmp_path):
    obj = {"ni": [[[0, 1, 2], [3]], [[4], []]], "meta": ("x", 1.5, True, None, -7)}
    for protocol in (2, 4, pickle.HIGHEST_PROTOCOL):
        path = tmp_path / f"p{protocol}.pkl"
        path.write_bytes(pickle.dumps(obj, protocol=protocol))
        assert safe_load_pickle(path) == obj


def test_reduce_to_os_system_is_refused_and_named(tmp_path):
    path = tmp_path / "LUP.pkl"
    path.write_bytes(pickle.dumps([1, _Exploit()], protocol=2))
    with pytest.raises(UnsafePickleError) as info:
        safe_load_pickle(path)
    msg = str(info.value)
    assert str(path) in msg
    assert "posix.system" in msg or "os.system" in msg or "nt.system" in msg
    assert isinstance(info.value, ValueError)


def test_any_class_is_refused(tmp_path):
    path = tmp_path / "set.pkl"
    path.write_bytes(pickle.dumps({1, 2}, protocol=2))  # protocol 2 sets need builtins.set
    with pytest.raises(UnsafePickleError, match=r"builtins?_*\.set'"):
        safe_load_pickle(path)


def test_missing_file_names_path(tmp_path):
    path = tmp_path / "nope" / "paths.pkl"
    with pytest.raises(FileNotFoundError, match="paths.pkl"):
        safe_load_pickle(path)


def test_truncated_file_is_value_error_naming_file(tmp_path):
    path = tmp_path / "labels.pkl"
    path.write_bytes(pickle.dumps(list(range(1000)), protocol=2)[:-50])
    with pytest.raises(ValueError, match="labels.pkl") as info:
        safe_load_pickle(path)
    assert not isinstance(info.value, UnsafePickleError)


def test_garbage_file_is_value_error(tmp_path):
    path = tmp_path / "junk.pkl"
    path.write_bytes(b"this is not a pickle at all")
    with pytest.raises(ValueError, match="junk.pkl"):
        safe_load_pickle(path)


def test_shared_references_count_each_time_and_cycles_stop_at_the_budget(tmp_path):
    inner = list(range(100))
    path = tmp_path / "LUP.pkl"
    path.write_bytes(pickle.dumps([inner] * 100, protocol=2))  # 101 + 100 x 101 = 10,201 elements reachable
    assert len(safe_load_pickle(path, max_elements=10_201)) == 100
    with pytest.raises(ValueError, match="expected at most 10200 elements"):
        safe_load_pickle(path, max_elements=10_200)
    cycle = []
    cycle.append(cycle)
    path.write_bytes(pickle.dumps(cycle, protocol=2))
    with pytest.raises(ValueError, match="expands too far"):
        safe_load_pickle(path, max_elements=1000)


def test_huge_memo_index_does_not_allocate(tmp_path):
    import tracemalloc

    # EMPTY_LIST, LONG_BINPUT 2**31, STOP: the C unpickler grows its memo array to 2**32 slots (32 GB).
    path = tmp_path / "memo.pkl"
    path.write_bytes(b"\x80\x02]r\x00\x00\x00\x80.")
    tracemalloc.start()
    try:
        assert safe_load_pickle(path) == []
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_other_types_and_non_regular_files_are_refused(tmp_path):
    path = tmp_path / "set.pkl"
    path.write_bytes(pickle.dumps({"a": frozenset({1})}, protocol=4))  # FROZENSET opcode, no global
    with pytest.raises(ValueError, match="got a frozenset"):
        safe_load_pickle(path)
    if hasattr(os, "mkfifo"):
        fifo = tmp_path / "fifo.pkl"
        os.mkfifo(fifo)
        with pytest.raises(ValueError, match="expected a regular pickle file, got a FIFO"):
            safe_load_pickle(fifo)
    with pytest.raises(ValueError, match="expected a pickle of at most 10 bytes, got"):
        safe_load_pickle(path, max_bytes=10)
