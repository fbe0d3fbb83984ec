"""The teach ledger in segment files beside the checkpoint (edge/knowledge/segments.py).

A checkpoint after a teach writes one new segment (the new samples) and a small checkpoint; loading
gives back exactly the ledger's arrays; removals are tombstones until a segment is mostly dead; a
segment goes only when no kept checkpoint names it; every segment is verified (sha256, bounded
decoding) and a checkpoint with a missing or changed segment is refused in favour of the previous one;
when every checkpoint names it, the newest loads without that segment's samples (the learned state
intact, a warning naming it).
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

import edge.checkpoint as checkpoint_module
from edge.agent import Agent, AgentConfig
from edge.checkpoint import CheckpointStore, header_sha256, resume
from edge.errors import CheckpointError, InputError
from edge.knowledge import segments
from edge.knowledge.ledger import Ledger

FP = "ab" * 32
D = 32


def _agent(thumbnail_budget: int | None = None) -> Agent:
    agent = Agent(None, AgentConfig(strategy="ncm", max_classes=6), embedding_size=D)
    agent.enable_ledger(**({} if thumbnail_budget is None else {"thumbnail_budget": thumbnail_budget}))
    return agent


def _teach(agent: Agent, rng: np.random.Generator, n: int = 10, label: int | None = None,
           thumb_bytes: tuple[int, int] = (50, 300)) -> None:
    y = np.full(n, int(rng.integers(0, 6)) if label is None else label)
    thumbs = [rng.bytes(int(rng.integers(*thumb_bytes))) for _ in range(n)]
    agent.teach_embeddings(rng.normal(size=(n, D)).astype(np.float32), y, source="test", thumbnails=thumbs)


def _save(store: CheckpointStore, agent: Agent, step: int | None = None) -> Path:
    return store.save(agent.state_dict(), agent.config.to_dict(), agent.step_ if step is None else step)


def _same_state(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> bool:
    return set(got) == set(want) and all(got[k].dtype == want[k].dtype and np.array_equal(got[k], want[k])
                                         for k in want)


def _written(path: Path) -> list[dict]:
    header = CheckpointStore(path.parent, FP).load(path).header
    names = set(header["segments_written"])
    return [ref for ref in header["segments"] if ref["name"] in names]


def _segment_files(folder: Path) -> set[str]:
    return {p.name for p in (folder / "ledger").glob("seg-*.bin")}


def _named(store: CheckpointStore) -> set[str]:
    return {ref["name"] for path in store.paths() for ref in store.load(path).header.get("segments", [])}


def test_a_checkpoint_after_a_teach_writes_only_the_new_samples(tmp_path: Path) -> None:
    agent, rng = _agent(), np.random.default_rng(0)
    store = CheckpointStore(tmp_path, FP)
    sizes = []
    for _ in range(12):
        _teach(agent, rng)
        path = _save(store, agent)
        written = _written(path)
        assert [ref["samples"] for ref in written] == [10]            # one segment: the 10 new samples
        sizes.append(path.stat().st_size + sum(ref["bytes"] for ref in written))
        assert "knowledge.rows.npy" not in zipfile.ZipFile(path).namelist()
        loaded = store.latest()
        assert loaded is not None and _same_state(loaded.state, agent.state_dict())
    assert len(agent.knowledge) == 120
    # What a save writes does not grow with the ledger (it grew linearly before: the whole ledger).
    assert sizes[-1] < 1.2 * sizes[1], sizes
    assert _segment_files(tmp_path) == _named(store)                 # nothing orphaned


def test_undo_and_delete_are_tombstones_and_reload_exactly(tmp_path: Path) -> None:
    agent, rng = _agent(), np.random.default_rng(1)
    store = CheckpointStore(tmp_path, FP)
    for _ in range(4):
        _teach(agent, rng, n=20)
        _save(store, agent)
    agent.remove_sample(int(agent.knowledge.sample_id[3]))              # one sample in the oldest segment
    agent.undo_last()                                                    # the whole newest segment
    path = _save(store, agent, agent.step_ + 1)
    assert _written(path) == []                                          # nothing rewritten
    assert len(store.load(path).header["segments"]) == 3
    back = _agent()
    back.load_state_dict(store.latest().state)
    assert _same_state(back.state_dict(), agent.state_dict())
    assert [e.to_dict() for e in back.knowledge.events()] == [e.to_dict() for e in agent.knowledge.events()]


def test_a_mostly_dead_segment_is_compacted_and_its_file_goes_once_unnamed(tmp_path: Path) -> None:
    agent, rng = _agent(), np.random.default_rng(2)
    store = CheckpointStore(tmp_path, FP, exclusive=True)
    _teach(agent, rng, n=30, label=1)
    first = _save(store, agent)
    old = store.load(first).header["segments"][0]["name"]
    for sample in agent.knowledge.sample_id[:20].tolist():               # 20 of 30 removed: dead > live
        agent.remove_sample(int(sample))
    _teach(agent, rng, n=5, label=2)
    path = _save(store, agent)
    (written,) = _written(path)
    assert written["samples"] == 15                                       # 10 survivors + 5 new, one file
    assert [ref["name"] for ref in store.load(path).header["segments"]] == [written["name"]]
    assert old in _segment_files(tmp_path)                                # the previous checkpoint names it
    _teach(agent, rng, n=5, label=2)
    _save(store, agent)
    assert old not in _segment_files(tmp_path)                            # no kept checkpoint does now
    assert _segment_files(tmp_path) == _named(store)
    assert _same_state(store.latest().state, agent.state_dict())


def test_dropped_thumbnails_are_tombstones_and_reload_exactly(tmp_path: Path) -> None:
    agent, rng = _agent(thumbnail_budget=4000), np.random.default_rng(3)
    store = CheckpointStore(tmp_path, FP)
    for _ in range(6):   # thumbnails smaller than a row: a segment never becomes mostly dead
        _teach(agent, rng, n=10, thumb_bytes=(50, 150))
        path = _save(store, agent)
        assert [ref["samples"] for ref in _written(path)] == [10]
    assert agent.knowledge.dropped_thumbnails > 0
    loaded = store.latest()
    assert _same_state(loaded.state, agent.state_dict())
    assert loaded.header["ledger"]["thumbnail_bytes"] == agent.knowledge.thumbnail_bytes <= 4000
    assert loaded.header["ledger"]["thumbnails"] == sum(1 for t in agent.knowledge.thumbs if t)


def test_many_small_segments_are_merged(tmp_path: Path) -> None:
    agent, rng = _agent(), np.random.default_rng(4)
    store = CheckpointStore(tmp_path, FP, exclusive=True)
    counts = []
    for _ in range(segments.MAX_SMALL_SEGMENTS + 8):
        _teach(agent, rng, n=2)
        path = _save(store, agent)
        counts.append(len(store.load(path).header["segments"]))
    assert max(counts) <= segments.MAX_SMALL_SEGMENTS + 1
    assert counts[segments.MAX_SMALL_SEGMENTS] == 1                       # all merged into one file
    assert _same_state(store.latest().state, agent.state_dict())
    assert len(_segment_files(tmp_path)) <= 2 * (segments.MAX_SMALL_SEGMENTS + 1)


def test_reuse_never_trusts_a_sample_id_alone(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, FP)
    first, second = _agent(), _agent()
    _teach(first, np.random.default_rng(5))
    _save(store, first)
    _teach(second, np.random.default_rng(6))                              # same ids 1..10, other rows
    assert np.array_equal(first.knowledge.sample_id, second.knowledge.sample_id)
    path = _save(store, second, 5)
    assert [ref["samples"] for ref in _written(path)] == [10]
    assert _same_state(store.load(path).state, second.state_dict())


def test_a_missing_or_changed_segment_falls_back_to_the_previous_checkpoint(tmp_path: Path) -> None:
    agent, rng = _agent(), np.random.default_rng(7)
    store = CheckpointStore(tmp_path, FP)
    _teach(agent, rng)
    _save(store, agent)
    _teach(agent, rng)
    newest = _save(store, agent)
    (only_newest,) = _written(newest)
    seg = tmp_path / "ledger" / only_newest["name"]
    pristine = seg.read_bytes()
    data = bytearray(pristine)
    data[len(data) // 2] ^= 0x01
    seg.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="segment.*sha256"):
        store.load(newest)
    assert store.latest().step == 1 and store.latest().notes == ()       # an intact older one is preferred
    seg.unlink()
    with pytest.raises(CheckpointError, match="missing"):
        store.load(newest)
    assert store.latest().step == 1 and store.latest().notes == ()
    seg.write_bytes(pristine)
    assert store.latest().step == 2


def _damage_shared_segment(tmp_path: Path, how: str) -> tuple[Agent, Path, dict, bytes]:
    """Two checkpoints (teach of class 1, save, teach of class 2, save); then the segment both name (the
    first teach's samples) is bit-flipped or removed. Returns the agent, the newest path, the segment's
    reference and its pristine bytes."""
    agent, rng = _agent(), np.random.default_rng(12)
    store = CheckpointStore(tmp_path, FP)
    _teach(agent, rng, n=10, label=1)
    _save(store, agent)
    _teach(agent, rng, n=7, label=2)
    newest = _save(store, agent)
    header = store.load(newest).header
    (shared,) = [ref for ref in header["segments"] if ref["name"] not in header["segments_written"]]
    assert shared["name"] in {ref["name"] for ref in store.load(store.paths()[1]).header["segments"]}
    seg = tmp_path / "ledger" / shared["name"]
    pristine = seg.read_bytes()
    if how == "flipped":
        data = bytearray(pristine)
        data[len(data) // 2] ^= 0x10
        seg.write_bytes(bytes(data))
    else:
        seg.unlink()
    return agent, newest, shared, pristine


@pytest.mark.parametrize("how", ["flipped", "missing"])
def test_a_damaged_segment_every_checkpoint_names_costs_only_its_ledger_samples(tmp_path: Path, how: str,
                                                                                caplog) -> None:
    agent, newest, shared, pristine = _damage_shared_segment(tmp_path, how)
    lost_ids = set(segments.decode_segment(pristine).sample_id.tolist())
    assert len(lost_ids) == 10
    probe = np.random.default_rng(13).normal(size=(40, D)).astype(np.float32)
    want = agent.predict_proba_embeddings(probe)
    before = agent.knowledge
    store = CheckpointStore(tmp_path, FP)
    with pytest.raises(CheckpointError, match=shared["name"]):
        store.load(newest)                                                # strictly, it is invalid
    with caplog.at_level("WARNING", logger="edge.checkpoint"):
        back, ckpt = resume(store, _restored)
    assert ckpt.path == newest and ckpt.step == agent.step_               # the newest, not a refusal
    (note,) = ckpt.notes
    assert shared["name"] in note and "10 samples" in note
    assert any(shared["name"] in r.getMessage() and "10 samples" in r.getMessage() and r.levelname == "WARNING"
               for r in caplog.records)
    # the learned state (head, strategy, statistics, buffer) is intact: identical answers
    assert np.array_equal(back.predict_proba_embeddings(probe), want)
    rest = {k: v for k, v in agent.state_dict().items() if not k.startswith("knowledge.")}
    assert _same_state({k: v for k, v in back.state_dict().items() if not k.startswith("knowledge.")}, rest)
    # the ledger lost exactly that segment's samples; they count as sealed; the event left empty is gone
    ledger = back.knowledge
    kept = np.array([i not in lost_ids for i in before.sample_id.tolist()])
    assert ledger.sample_id.tolist() == before.sample_id[kept].tolist()
    assert np.array_equal(ledger.rows, before.rows[kept])
    assert ledger.thumbs == [t for t, k in zip(before.thumbs, kept) if k]
    assert ledger.sealed_samples == before.sealed_samples + 10
    assert [e.label for e in ledger.events()] == [2] and ledger.events()[0].samples == 7
    # what is left is undone exactly
    done = back.undo_last()
    assert done["label"] == 2 and done["samples"] == 7 and done["removal"] == "exact"
    # the next save names no damaged segment, and reloads cleanly
    path = _save(store, back)
    assert shared["name"] not in {ref["name"] for ref in store.load(path).header["segments"]}
    fresh = CheckpointStore(tmp_path, FP)
    again = fresh.latest()
    assert again.path == path and again.notes == ()
    assert _same_state(again.state, back.state_dict())


def _one_segment_plan() -> segments.Split:
    """The split of a 3-sample ledger (two thumbnails) into one segment."""
    ledger = Ledger(4)
    ledger.record(np.ones((3, 4), np.float32), np.array([0, 1, 1]), thumbnails=[b"ab", b"", b"cde"], when=0.0)
    flat = {k[len("knowledge."):]: v for k, v in ledger.state_dict().items()}
    plan = segments.split(flat, None, lambda ref: False)
    assert plan is not None
    return plan


def test_a_lost_segment_reference_stays_within_the_budgets() -> None:
    plan = _one_segment_plan()
    back, index = segments.join(plan.inline, [b""], plan.refs, plan.summary, lost={0})
    assert back["sample_id"].size == 0 and index.sample_id.size == 0
    assert json.loads(back["meta"].tobytes())["sealed_samples"] == 3 and json.loads(back["events"].tobytes()) == []
    crafted = [dict(plan.refs[0], samples=1 << 40)]                       # more slots than its bytes hold
    with pytest.raises(InputError, match="fit its"):
        segments.join(plan.inline, [b""], crafted, plan.summary, lost={0})


def test_an_old_state_with_the_ledger_inside_loads_and_is_converted(tmp_path: Path, monkeypatch) -> None:
    agent, rng = _agent(), np.random.default_rng(8)
    _teach(agent, rng)
    with monkeypatch.context() as patch:                                  # how every save was before segments
        patch.setattr(segments, "split", lambda *args: None)
        old = _save(CheckpointStore(tmp_path, FP), agent)
    ckpt = CheckpointStore(tmp_path, FP).load(old)
    assert ckpt.header["schema_version"] == 2 and "knowledge.rows" in ckpt.state
    assert not (tmp_path / "ledger").exists()
    store = CheckpointStore(tmp_path, FP)
    back, _ = resume(store, lambda c: _restored(c))
    assert _same_state(back.state_dict(), agent.state_dict())
    _teach(back, rng)
    path = _save(store, back)
    assert store.load(path).header["schema_version"] == 3
    assert _same_state(store.latest().state, back.state_dict())


def _restored(ckpt) -> Agent:
    agent = _agent()
    agent.load_state_dict(ckpt.state)
    return agent


def _rewrite_header(path: Path, change) -> None:
    with zipfile.ZipFile(path) as zf:
        blobs = {n: zf.read(n) for n in zf.namelist()}
    header = json.loads(np.load(io.BytesIO(blobs["__header__.npy"])).tobytes())
    change(header)
    header["header_sha256"] = header_sha256(header)
    buf = io.BytesIO()
    np.save(buf, np.frombuffer(json.dumps(header).encode(), np.uint8))
    blobs["__header__.npy"] = buf.getvalue()
    with zipfile.ZipFile(path, "w") as zf:
        for name, blob in blobs.items():
            zf.writestr(name, blob)


def test_crafted_segment_references_are_refused_within_budgets(tmp_path: Path) -> None:
    agent, rng = _agent(), np.random.default_rng(9)
    _teach(agent, rng, n=400)
    store = CheckpointStore(tmp_path, FP)
    path = _save(store, agent)
    ref = store.load(path).header["segments"][0]
    assert ref["bytes"] > 4 * 400 * D
    small = CheckpointStore(tmp_path, FP, max_bytes=path.stat().st_size + ref["bytes"] // 2)
    with pytest.raises(CheckpointError, match="segment.*budget"):
        small.load(path)
    (tmp_path / "ledger" / "seg-x.bin").write_bytes(b"x")
    for change in (lambda h: h["segments"][0].update(name="../state-000000000001.npz"),
                   lambda h: h["segments"][0].update(name="seg-x.bin"),
                   lambda h: h["segments"][0].update(sha256="0" * 64),
                   lambda h: h["segments"][0].update(bytes=1 << 40),
                   lambda h: h["segments"].extend([ref] * (checkpoint_module.MAX_SEGMENTS + 1)),
                   lambda h: h["ledger"].update(samples=401)):
        copy = tmp_path / "copy" / path.name
        copy.parent.mkdir(exist_ok=True)
        copy.write_bytes(path.read_bytes())
        _rewrite_header(copy, change)
        (copy.parent / "ledger").mkdir(exist_ok=True)
        (copy.parent / "ledger" / ref["name"]).write_bytes((tmp_path / "ledger" / ref["name"]).read_bytes())
        with pytest.raises(CheckpointError):
            CheckpointStore(copy.parent, FP).load(copy)


def test_segment_decoding_refuses_any_damage_with_an_input_error() -> None:
    plan = _one_segment_plan()
    (blob,) = plan.blobs.values()
    seg = segments.decode_segment(blob)
    assert seg.samples == 3 and bytes(seg.thumb_data) == b"abcde"
    rng = np.random.default_rng(10)
    for cut in range(len(blob)):                                          # every truncation
        with pytest.raises(InputError):
            segments.decode_segment(blob[:cut])
    refused = 0
    for bit in rng.choice(len(blob) * 8, 400, replace=False):             # bit flips: refused or decoded
        data = bytearray(blob)
        data[bit // 8] ^= 1 << (bit % 8)
        try:
            segments.decode_segment(bytes(data))
        except InputError:
            refused += 1
    assert refused > 0   # (a flip in row or thumbnail bytes decodes: the checkpoint's sha256 catches those)


def test_a_save_cut_after_its_segment_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch) -> None:
    agent, rng = _agent(), np.random.default_rng(11)
    store = CheckpointStore(tmp_path, FP, exclusive=True)
    _teach(agent, rng)
    _save(store, agent)
    _teach(agent, rng)
    real = checkpoint_module.atomic_write

    def cut(path, write, **kwargs):
        if Path(path).name.startswith("state-"):
            raise OSError(5, "power cut")
        return real(path, write, **kwargs)

    monkeypatch.setattr(checkpoint_module, "atomic_write", cut)
    with pytest.raises(CheckpointError):
        _save(store, agent)
    monkeypatch.setattr(checkpoint_module, "atomic_write", real)
    orphans = _segment_files(tmp_path) - _named(store)
    assert len(orphans) == 1                                              # written, named by no checkpoint
    fresh = CheckpointStore(tmp_path, FP, exclusive=True)                 # the reboot
    assert fresh.latest().step == 1
    back = _restored(fresh.latest())
    _teach(back, rng)
    _save(fresh, back)
    assert _segment_files(tmp_path) == _named(fresh)                      # the orphan is collected
