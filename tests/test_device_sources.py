"""The folder source's order, memory and skip reports, and the events file's rotation (issues 24, 26).

Real files, FIFOs and symlinks in a temporary folder, read by `FolderSource` and by a `DeviceLoop` on
the tiny backbone; the end-to-end runs of ``edge-agent run`` are in test_device_run.py.
"""

from __future__ import annotations

import json
import logging
import os
import threading

import numpy as np
import pytest

from _device_common import OBJ_A, OBJ_B, ROOT, object_frames, write_png
from edge.device.events import EventWriter, RotatingFile
from edge.device.sources import FOLDER_MEMORY_NAME, FolderMemory, FolderSource


def _frames(source: FolderSource) -> list[tuple[str, str | None]]:
    return [(f.name, f.label) for f in iter(source.read, None)]


def _set_mtime(path, seconds: float) -> None:
    os.utime(path, ns=(int(seconds * 1e9), int(seconds * 1e9)))


def test_files_present_at_start_come_labelled_first_then_by_arrival(tmp_path):
    image = np.zeros((8, 8, 3), np.uint8)
    for name, t in (("a.png", 300), ("b.png", 100), ("ball/1.png", 50), ("cup/2.png", 400), ("cup/1.png", 500)):
        write_png(tmp_path / name, image)
        _set_mtime(tmp_path / name, 1_700_000_000 + t)
    source = FolderSource(tmp_path, watch=True, poll_s=0.02)
    first = [source.read() for _ in range(5)]
    # Label folders first (grouped by label, by name inside), then the other files oldest first.
    assert [(f.name, f.label) for f in first] == [("ball/1.png", "ball"), ("cup/1.png", "cup"), ("cup/2.png", "cup"),
                                                  ("b.png", None), ("a.png", None)]

    # Files arriving later come in arrival order (mtime), whatever their names or folders.
    def arrive() -> None:
        for name, t in (("z.png", 600), ("cup/0.png", 700), ("c.png", 800)):
            write_png(tmp_path / name, image)
            _set_mtime(tmp_path / name, 1_700_000_000 + t)

    threading.Timer(0.05, arrive).start()
    later = [source.read() for _ in range(3)]
    assert [f.name for f in later] == ["z.png", "cup/0.png", "c.png"]
    source.close()
    assert source.read() is None


def test_what_is_not_read_is_reported_once_each(tmp_path):
    write_png(tmp_path / "cup" / "ok.png", np.zeros((8, 8, 3), np.uint8))
    os.symlink(tmp_path / "cup" / "ok.png", tmp_path / "link.png")
    os.symlink(tmp_path / "cup", tmp_path / "linked_label")
    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg at all")
    (tmp_path / "cup" / "deeper").mkdir()
    (tmp_path / ".partial.png").write_bytes(b"\x89PNG")  # temp names: silently waited for
    events: list[dict] = []
    source = FolderSource(tmp_path, watch=True, poll_s=0.02)
    source.on_event = lambda kind, **fields: events.append({"event": kind, **fields})
    assert _frames_until_idle(source) == [("cup/ok.png", "cup")]
    reasons = {e["file"]: e["reason"] for e in events}
    assert all(e["event"] == "skipped" for e in events) and len(events) == len(reasons) == 6, events
    assert reasons["link.png"].startswith("a symlink") and reasons["linked_label"].startswith("a symlink")
    assert reasons["pipe.png"].startswith("not a regular file")
    assert reasons["notes.txt"].startswith("not an image file name")
    assert reasons["broken.jpg"].startswith("unreadable") and source.errors == 1
    assert reasons[os.path.join("cup", "deeper")].startswith("a folder below a label folder")


def _frames_until_idle(source: FolderSource, idle_s: float = 0.4) -> list[tuple[str, str | None]]:
    """Frames read until ``idle_s`` passes with no new one (the source keeps watching)."""
    got: list[tuple[str, str | None]] = []
    timer = threading.Timer(idle_s, source.close)
    timer.start()
    for frame in iter(source.read, None):
        got.append((frame.name, frame.label))
    timer.cancel()
    return got


def test_memory_skips_learned_files_until_they_change(tmp_path):
    folder, memory = tmp_path / "inbox", tmp_path / "state" / FOLDER_MEMORY_NAME
    memory.parent.mkdir()
    for i in range(3):
        write_png(folder / "cup" / f"{i}.png", np.full((8, 8, 3), i, np.uint8))
    write_png(folder / "q.png", np.zeros((8, 8, 3), np.uint8))
    source = FolderSource(folder, watch=False, poll_s=0.01, memory=memory)
    assert len(_frames(source)) == 4
    # What the loop tells it: a batch was learned, then a checkpoint holds it.
    source.note_event({"event": "learned", "files": ["cup/0.png", "cup/1.png"]})
    assert not memory.exists()  # not before a checkpoint
    source.note_event({"event": "checkpoint", "step": 1})
    saved = json.loads(memory.read_text())
    assert saved["version"] == 1 and [row[0] for row in saved["files"]] == ["cup/0.png", "cup/1.png"]
    assert not list(memory.parent.glob(".*.tmp"))
    skipped: list[dict] = []
    again = FolderSource(folder, watch=False, poll_s=0.01, memory=memory)
    again.on_event = lambda kind, **fields: skipped.append(fields)
    assert _frames(again) == [("cup/2.png", "cup"), ("q.png", None)]  # unlabelled files are answered again
    assert sorted(s["file"] for s in skipped) == ["cup/0.png", "cup/1.png"]
    assert all(s["reason"].startswith("already learned") for s in skipped)
    write_png(folder / "cup" / "0.png", np.full((8, 8, 3), 99, np.uint8))  # new content, same name
    _set_mtime(folder / "cup" / "0.png", 1_800_000_000)
    third = FolderSource(folder, watch=False, poll_s=0.01, memory=memory)
    assert ("cup/0.png", "cup") in _frames(third)


def test_memory_is_bounded_and_survives_a_corrupt_file(tmp_path, caplog):
    path = tmp_path / FOLDER_MEMORY_NAME
    memory = FolderMemory(path, limit=5)
    memory.add((f"cup/{i}.png", i, i) for i in range(8))
    assert len(FolderMemory(path, limit=5)) == 5
    assert FolderMemory(path).knows("cup/7.png", 7, 7) and not FolderMemory(path).knows("cup/2.png", 2, 2)
    assert path.stat().st_size < 400
    path.write_bytes(b'{"version": 1, "files": [["a", 1')
    with caplog.at_level(logging.WARNING, logger="edge.device.sources"):
        assert len(FolderMemory(path)) == 0
    assert "may be learned again" in caplog.text


def test_every_file_gets_one_event_and_no_answer_uses_a_later_class(tmp_path):
    """The issue's 13 files, in-process: 4 + 3 label files and 3 files to answer present at start (their
    names sort before the label folders), then a file to answer, a new class and another file to
    answer, arriving in that order."""
    from edge.agent import Agent
    from edge.device.loop import DeviceLoop, LoopOptions
    from edge.runtimes import open_backbone

    folder = tmp_path / "inbox"
    for label, obj, n in (("cup", OBJ_A, 4), ("ball", OBJ_B, 3)):
        for i, frame in enumerate(object_frames(obj, n)):
            write_png(folder / label / f"{i}.png", frame)
    for i, obj in enumerate((OBJ_A, OBJ_B, OBJ_A)):
        write_png(folder / f"0{i}.png", object_frames(obj, 1, session=2)[0])
    events: list[dict] = []
    writer = EventWriter(None)
    writer.listeners.append(events.append)
    source = FolderSource(folder, watch=True, poll_s=0.02)
    loop = DeviceLoop(Agent(open_backbone(ROOT / "models" / "tiny")), source, events=writer,
                      options=LoopOptions(teach_batch=32))
    runner = threading.Thread(target=loop.run)
    runner.start()
    try:
        _wait(lambda: sum(e["event"] == "prediction" for e in events) == 3)
        write_png(folder / "later_teapot_lookalike.png", object_frames(21, 1, session=2)[0])
        _wait(lambda: sum(e["event"] == "prediction" for e in events) == 4)
        write_png(folder / "teapot" / "0.png", object_frames(21, 1)[0])
        _wait(lambda: any(e["event"] == "learned" and e["label"] == "teapot" for e in events))
        write_png(folder / "after.png", object_frames(21, 1, session=3)[0])
        _wait(lambda: sum(e["event"] == "prediction" for e in events) == 5)
    finally:
        loop.stop()
        runner.join(30)
    named = [f for e in events if e["event"] == "learned" for f in e["files"]]
    named += [e["file"] for e in events if e["event"] == "prediction"]
    on_disk = sorted(os.path.relpath(p, folder) for p in folder.rglob("*.png"))
    assert len(on_disk) == 13 and sorted(named) == on_disk  # every file exactly once
    order = [(e["event"], e.get("label")) for e in events if e["event"] in ("learned", "prediction")]
    learned_before: set[str] = set()
    for e in events:
        if e["event"] == "learned":
            learned_before.add(e["label"])
        elif e["event"] == "prediction":  # never a class taught by a later file ("unknown" is no class)
            assert e["label"] in learned_before | {"unknown"}, (e, learned_before)
    first_answer = order.index(next(o for o in order if o[0] == "prediction"))
    assert {label for _, label in order[:first_answer]} == {"ball", "cup"}, order  # all at-start files learned
    assert sum(e["frames"] for e in events if e["event"] == "learned" and e["label"] != "teapot") == 7
    first_answers = [e for e in events if e["event"] == "prediction"][:4]
    assert all(e["label"] != "teapot" for e in first_answers)


def _wait(pred, timeout: float = 60.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_events_file_rotates_by_size_and_keeps_k(tmp_path):
    path = tmp_path / "events.jsonl"
    stream = RotatingFile(path, max_bytes=2_000, keep=2)
    writer = EventWriter(stream)
    for i in range(200):
        writer.emit("prediction", label="cup", frame=i, file=f"f{i:04d}.png")
    stream.close()
    files = [path, path.with_name("events.jsonl.1"), path.with_name("events.jsonl.2")]
    assert all(f.exists() for f in files) and not path.with_name("events.jsonl.3").exists()
    assert all(0 < f.stat().st_size <= 2_000 for f in files)
    frames = [json.loads(line)["frame"] for f in reversed(files) for line in f.read_text().splitlines()]
    assert frames == list(range(200 - len(frames), 200)) and len(frames) > 30  # whole lines, newest kept
    with pytest.raises(ValueError, match="keep >= 1"):
        RotatingFile(path, max_bytes=10, keep=0)
    # Reopened (a restart), it appends, counting the bytes already there.
    again = RotatingFile(path, max_bytes=2_000, keep=2)
    EventWriter(again).emit("stopped", step=1)
    again.close()
    assert json.loads(path.read_text().splitlines()[-1])["event"] == "stopped" and path.stat().st_size <= 2_000


def test_the_loop_says_when_its_source_ended_and_keeps_serving(tmp_path):
    from edge.agent import Agent
    from edge.device.loop import DeviceLoop
    from edge.device.sources import Frame, IterableSource

    frames = [Frame(f, i / 20, label="cup") for i, f in enumerate(object_frames(OBJ_A, 6))]
    frames += [Frame(f, 1 + i / 20) for i, f in enumerate(object_frames(OBJ_A, 4, session=2))]
    events: list[dict] = []
    writer = EventWriter(None)
    writer.listeners.append(events.append)
    from edge.runtimes import open_backbone

    loop = DeviceLoop(Agent(open_backbone(ROOT / "models" / "tiny")), IterableSource(frames), events=writer)
    runner = threading.Thread(target=loop.run)
    runner.start()
    try:
        _wait(lambda: any(e["event"] == "source_ended" for e in events))
        latest, status = loop.latest_prediction(), loop.status()
        assert runner.is_alive()  # no --exit-at-end: still serving
    finally:
        loop.stop()
        runner.join(30)
    assert latest is not None and latest["source_ended"] is True and latest["frame"] == 10
    assert status["source_ended"] is True and status["source"] == {"state": "ended", "error": None}
    kinds = [e["event"] for e in events]
    assert kinds.count("source_ended") == 1 and kinds.index("learned") < kinds.index("source_ended")
    ended = next(e for e in events if e["event"] == "source_ended")
    assert ended["frames"] == 10 and ended["error"] is None
