"""`edge-agent run` end to end: a real video file, folder and HTTP server in a child process.

Every test starts the real CLI (``python -m edge.cli run``) with the shipped default model, talks to
its HTTP API on 127.0.0.1 (a free port) and reads its JSON-line events.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from _device_common import (OBJ_A, OBJ_B, ROOT, RunningAgent, checkpoint_files, object_frames,
                                  write_png, write_video)
from _edge_common import need_model

pytest.importorskip("cv2", reason="the device runtime needs opencv-python-headless (the edge extra)")
pytest.importorskip("starlette", reason="the HTTP API needs starlette (the edge extra)")
pytest.importorskip("uvicorn", reason="the HTTP API needs uvicorn (the edge extra)")


def answer_at(predictions: list[dict], t: float) -> str | None:
    """The answer in force at source time ``t`` (prediction events come when it changes)."""
    current = None
    for event in predictions:
        if event["frame_time"] <= t:
            current = event["label"]
    return current


@pytest.mark.slow
def test_video_taught_over_http_then_predicts_later_segments(tmp_path):
    need_model()
    video = tmp_path / "objects.avi"
    # 20 fps: A (s1) 0-4 s, B (s1) 4-8 s, then the same objects in another session: A 8-11 s, B 11-14 s.
    write_video(video, [(OBJ_A, 80, 1), (OBJ_B, 80, 1), (OBJ_A, 60, 2), (OBJ_B, 60, 2)])
    agent = RunningAgent(tmp_path / "state", str(video), "--exit-at-end")  # at the video's own frame rate
    try:
        agent.started()
        status, body = agent.http("POST", "/teach", {"label": "cup", "frames": 20})
        assert status == 200 and body["label"] == "cup", body
        agent.wait_for(lambda e: e["event"] == "learned" and e["label"] == "cup", 30)
        deadline = time.monotonic() + 30
        while True:  # wait until the video is inside B's segment, then teach B
            status, latest = agent.http("GET", "/prediction")
            if status == 200 and latest["frame_time"] >= 4.6:
                break
            assert time.monotonic() < deadline, latest
            time.sleep(0.05)
        assert latest["frame_time"] < 6.0, f"the loop fell behind the video: {latest}"
        status, body = agent.http("POST", "/teach", {"label": "ball", "seconds": 1.0})
        assert status == 200, body
        learned = agent.wait_for(lambda e: e["event"] == "learned" and e["label"] == "ball", 30)[0]
        assert learned["frames"] >= 15 and learned["step"] == 2
        status, info = agent.http("GET", "/status")
        assert status == 200 and info["fingerprint"] and info["rss_bytes"] > 0
        assert {c["name"]: c["samples"] for c in info["classes"]} == {"cup": 20, "ball": learned["frames"]}
        assert agent.finish(60) == 0, agent.stderr()
    finally:
        agent.close()
    predictions = [e for e in agent.events if e["event"] == "prediction"]
    assert answer_at(predictions, 10.0) == "cup", predictions
    assert answer_at(predictions, 13.5) == "ball", predictions
    checkpoints = [e for e in agent.events if e["event"] == "checkpoint"]
    assert [e["step"] for e in checkpoints if e["reason"] == "learned"] == [1, 2]
    assert checkpoints[-1]["final"] is True
    assert agent.events[-1]["event"] == "stopped"


def test_folder_source_teaches_from_label_folders_and_picks_up_new_files(tmp_path):
    need_model()
    folder = tmp_path / "inbox"
    for name, obj in (("cup", OBJ_A), ("ball", OBJ_B)):
        for i, frame in enumerate(object_frames(obj, 12)):
            write_png(folder / name / f"{i:03d}.png", frame)
    agent = RunningAgent(tmp_path / "state", f"folder:{folder}", "--teach-batch", "12")
    try:
        agent.started()
        agent.wait_for(lambda e: e["event"] == "learned", 60, count=2)
        # New files appear while it runs: each gets one prediction event with its file name.
        write_png(folder / "new_a.png", object_frames(OBJ_A, 1, session=2)[0])
        write_png(folder / "new_b.png", object_frames(OBJ_B, 1, session=2)[0])
        found = agent.wait_for(lambda e: e["event"] == "prediction", 30, count=2)
        assert {e["file"]: e["label"] for e in found} == {"new_a.png": "cup", "new_b.png": "ball"}
        agent.signal(signal.SIGTERM)
        assert agent.finish(30) == 0, agent.stderr()
    finally:
        agent.close()
    final = [e for e in agent.events if e["event"] == "checkpoint" and e["final"]]
    assert len(final) == 1 and final[0]["step"] == 2
    assert agent.events[-1] == {**agent.events[-1], "event": "stopped", "signal": "SIGTERM"}


def test_sigkill_then_restart_resumes_and_a_second_run_is_refused(tmp_path):
    need_model()
    folder = tmp_path / "inbox"
    for i, frame in enumerate(object_frames(OBJ_A, 8)):
        write_png(folder / "cup" / f"{i:03d}.png", frame)
    state = tmp_path / "state"
    agent = RunningAgent(state, f"folder:{folder}", "--teach-batch", "8")
    try:
        agent.started()
        agent.wait_for(lambda e: e["event"] == "checkpoint" and e["step"] == 1, 60)
        # A second run on the same state is refused at once (the first holds the lock).
        second = subprocess.run([sys.executable, "-m", "edge.cli", "run", "--model", str(need_model()), "--state", str(state), "--source",
                                 f"folder:{folder}", "--no-http"], cwd=ROOT, capture_output=True, text=True,
                                timeout=60)
        assert second.returncode == 2 and "locked by another writer" in second.stderr, second.stderr
        # More teaching in flight, then a power cut.
        for i, frame in enumerate(object_frames(OBJ_B, 8)):
            write_png(folder / "ball" / f"{i:03d}.png", frame)
        agent.signal(signal.SIGKILL)
        assert agent.finish(30) == -signal.SIGKILL
    finally:
        agent.close()
    saved = max(e["step"] for e in agent.events if e["event"] == "checkpoint")
    again = RunningAgent(state, f"folder:{folder}", "--teach-batch", "8")
    try:
        started = again.started()
        assert started["step"] == saved >= 1  # at most the update in flight is lost
        status, info = again.http("GET", "/status")
        assert status == 200 and "cup" in [c["name"] for c in info["classes"]]
        again.signal(signal.SIGINT)  # Ctrl-C: a final checkpoint, no traceback, exit 130
        assert again.finish(30) == 130
        assert "Traceback" not in again.stderr()
    finally:
        again.close()
    assert any(e["event"] == "checkpoint" and e["final"] for e in again.events)


def test_bad_requests_are_4xx_with_a_message_and_leave_the_state_intact(tmp_path):
    need_model()
    folder = tmp_path / "inbox"
    for i, frame in enumerate(object_frames(OBJ_A, 8)):
        write_png(folder / "cup" / f"{i:03d}.png", frame)
    state = tmp_path / "state"
    token = "s3cret-token-for-tests"
    agent = RunningAgent(state, f"folder:{folder}", "--teach-batch", "8", token=token)
    try:
        agent.started()
        agent.wait_for(lambda e: e["event"] == "checkpoint" and e["step"] == 1, 60)
        before = checkpoint_files(state)
        _, status_before = agent.http("GET", "/status")
        cases = [
            (dict(method="GET", path="/status", token=False), 401, "Bearer"),
            (dict(method="POST", path="/teach", body={"label": "x", "frames": 3}, token="wrong-token!"), 401, "wrong"),
            (dict(method="POST", path="/teach", raw=b'{"label": "cup", "frames": '), 400, "malformed JSON"),
            (dict(method="POST", path="/teach", raw=b'[1, 2]'), 400, "JSON object"),
            (dict(method="POST", path="/teach", body={"label": "cup", "frames": 0}), 400, "teach frames"),
            (dict(method="POST", path="/teach", body={"label": "cup"}), 400, "exactly one of frames or seconds"),
            (dict(method="POST", path="/teach", body={"label": "a/b", "frames": 3}), 400, "class name"),
            (dict(method="POST", path="/teach", body={"label": "cup", "frames": 3, "x": 1}), 400, "expected keys"),
            (dict(method="POST", path="/teach", raw=b'{"label": "' + b"c" * 10_000 + b'", "frames": 3}'), 413,
             "at most 4096 bytes"),
            (dict(method="POST", path="/classes/nosuch/rename", body={"to": "y"}), 404, "unknown name"),
            (dict(method="POST", path="/classes/nosuch/forget"), 404, "unknown name"),
            (dict(method="POST", path="/classes/cup/rename", body={"to": 5}), 400, "rename"),
        ]
        for request, code, message in cases:
            status, body = agent.http(**request)
            assert status == code and message in body["error"], (request, status, body)
        _, status_after = agent.http("GET", "/status")
        assert checkpoint_files(state) == before
        assert status_after["step"] == status_before["step"] == 1
        assert status_after["classes"] == status_before["classes"]
        assert status_after["teach_pending"] == []
        # The good requests work, and /metrics is Prometheus text.
        assert agent.http("POST", "/classes/cup/rename", {"to": "mug"})[0] == 200
        assert [c["name"] for c in agent.http("GET", "/status")[1]["classes"]] == ["mug"]
        status, text = agent.http("GET", "/metrics")
        assert status == 200 and "edge_agent_frames_total 8.0" in text and "edge_agent_rss_bytes" in text
        assert agent.http("POST", "/classes/mug/forget")[0] == 200
        assert agent.http("GET", "/status")[1]["classes"] == []
        agent.signal(signal.SIGTERM)
        assert agent.finish(30) == 0
    finally:
        agent.close()


def test_non_loopback_bind_needs_a_token_and_teach_cli_reaches_the_agent(tmp_path):
    need_model()
    out = subprocess.run([sys.executable, "-m", "edge.cli", "run", "--model", str(need_model()), "--state", str(tmp_path / "s"), "--source",
                          f"folder:{tmp_path}", "--http", "0.0.0.0:0"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2 and "expected --token for a non-loopback address" in out.stderr, out.stderr
    (tmp_path / "inbox").mkdir()
    agent = RunningAgent(tmp_path / "state", f"folder:{tmp_path / 'inbox'}")
    try:
        agent.started()
        taught = subprocess.run([sys.executable, "-m", "edge.cli", "teach", "--label", "cup", "--frames", "5",
                                 "--http", f"127.0.0.1:{agent.port}"], cwd=ROOT, capture_output=True,
                                text=True, timeout=60)
        assert taught.returncode == 0, taught.stderr
        assert json.loads(taught.stdout) == {"label": "cup", "index": 0, "frames": 5, "seconds": None, "queued": 1}
        agent.wait_for(lambda e: e["event"] == "teach" and e["label"] == "cup", 10)
        pending = agent.http("GET", "/status")[1]["teach_pending"]
        assert pending == [{"label": "cup", "frames": 5, "seconds": None, "collected": 0}]  # no frame yet
        bad = subprocess.run([sys.executable, "-m", "edge.cli", "teach", "--label", "cup", "--frames", "5",
                              "--http", f"127.0.0.1:{agent.port}", "--token", "x" * 10], cwd=ROOT,
                             capture_output=True, text=True, timeout=60)
        assert bad.returncode == 0  # no token configured: any is accepted
        agent.signal(signal.SIGTERM)
        assert agent.finish(30) == 0
    finally:
        agent.close()


def _run_to_end(state, source: str, *extra: str) -> tuple[int, list[dict], str]:
    out = subprocess.run([sys.executable, "-m", "edge.cli", "run", "--model", str(ROOT / "models" / "tiny"),
                          "--state", str(state), "--source", source, "--no-http", "--exit-at-end", *extra],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    return out.returncode, [json.loads(line) for line in out.stdout.splitlines()], out.stderr


def test_a_restarted_folder_source_does_not_learn_again_and_reports_what_it_skips(tmp_path):
    """Issue 24 item 7: restarts over the same folder keep the step; symlinks and FIFOs are events."""
    need_model()
    folder, state = tmp_path / "inbox", tmp_path / "state"
    for name, obj in (("cup", OBJ_A), ("ball", OBJ_B)):
        for i, frame in enumerate(object_frames(obj, 6)):
            write_png(folder / name / f"{i}.png", frame)
    write_png(folder / "q.png", object_frames(OBJ_A, 1, session=2)[0])
    os.symlink(folder / "q.png", folder / "link.png")
    os.mkfifo(folder / "pipe.png")
    steps = []
    for run in range(3):
        code, events, err = _run_to_end(state, f"folder:{folder}", "--teach-batch", "6")
        assert code == 0 and "Traceback" not in err, err
        started, stopped = events[0], events[-1]
        assert started["event"] == "started" and stopped["event"] == "stopped"
        learned = [f for e in events if e["event"] == "learned" for f in e["files"]]
        skipped = {e["file"]: e["reason"] for e in events if e["event"] == "skipped"}
        answered = [e["file"] for e in events if e["event"] == "prediction"]
        assert answered == ["q.png"]  # files to answer are answered again on each run
        assert skipped["link.png"].startswith("a symlink") and skipped["pipe.png"].startswith("not a regular")
        if run == 0:
            assert len(learned) == 12 and len(skipped) == 2
        else:
            assert learned == [] and len(skipped) == 14, skipped  # the 12 learned files: skipped, named
            assert all(skipped[f"{n}/{i}.png"].startswith("already learned") for n in ("cup", "ball") for i in range(6))
        assert sorted(learned + list(skipped) + answered) == sorted(
            os.path.relpath(p, folder) for p in folder.rglob("*") if not p.is_dir() or p.is_symlink())
        assert any(e["event"] == "source_ended" for e in events)
        steps.append((started["step"], stopped["step"]))
    assert steps == [(0, 2), (2, 2), (2, 2)]


def test_a_video_file_plays_at_its_own_rate_and_says_when_it_ended(tmp_path):
    need_model()
    video = tmp_path / "clip.avi"
    write_video(video, [(OBJ_A, 20, 1), (OBJ_B, 20, 1)])  # 40 frames at 20 fps: 2 s
    code, events, err = _run_to_end(tmp_path / "s1", str(video))
    assert code == 0, err
    kinds = [e["event"] for e in events]
    assert kinds[0] == "started" and kinds[-2:] == ["source_ended", "stopped"], kinds
    played_s = events[-2]["time"] - events[0]["time"]
    assert played_s >= 1.8, f"expected the video's own 2 s, got {played_s:.2f} s"
    # Batch use: every frame, as fast as it goes; --realtime is a deprecated no-op with one line.
    code, events, err = _run_to_end(tmp_path / "s2", str(video), "--as-fast-as-possible", "--realtime")
    assert code == 0 and err.count("--realtime is deprecated") == 1, err
    ended = [e for e in events if e["event"] == "source_ended"]
    assert len(ended) == 1 and ended[0]["frames"] == 40 and events[-1]["dropped"] == 0
    # Without --exit-at-end the agent keeps serving and says the source ended.
    agent = RunningAgent(tmp_path / "s3", str(video), "--as-fast-as-possible")
    try:
        agent.started()
        status, info = agent.http("GET", "/status")
        assert status == 200 and info["source_ended"] in (False, True)
        agent.wait_for(lambda e: e["event"] == "source_ended", 30)
        status, info = agent.http("GET", "/status")
        assert info["source_ended"] is True and info["source"]["state"] == "ended" and info["frames"] == 40
        assert agent.http("POST", "/teach", {"label": "cup", "frames": 3})[0] == 200  # nothing comes to learn
        agent.wait_for(lambda e: e["event"] == "error" and e.get("where") == "teach", 10)
        assert agent.proc.poll() is None
        agent.signal(signal.SIGTERM)
        assert agent.finish(30) == 0
    finally:
        agent.close()


def test_events_file_rotates_at_the_given_size(tmp_path):
    need_model()
    folder = tmp_path / "inbox"
    for i, frame in enumerate(object_frames(OBJ_A, 4)):
        write_png(folder / "cup" / f"{i}.png", frame)
    for i, frame in enumerate(object_frames(OBJ_A, 30, session=2)):
        write_png(folder / f"q{i:02d}.png", frame)
    log = tmp_path / "events.jsonl"
    code, stdout_events, err = _run_to_end(tmp_path / "s", f"folder:{folder}", "--events", str(log),
                                           "--events-max-bytes", "2000", "--events-keep", "2")
    assert code == 0 and stdout_events == [], err  # the events go to the file, not stdout
    files = [log.with_name("events.jsonl.2"), log.with_name("events.jsonl.1"), log]
    assert all(f.exists() and 0 < f.stat().st_size <= 2000 for f in files), [f.stat().st_size for f in files]
    assert not log.with_name("events.jsonl.3").exists()
    events = [json.loads(line) for f in files for line in f.read_text().splitlines()]
    assert events[-1]["event"] == "stopped"  # the newest lines, whole and in order
    answered = [e["file"] for e in events if e["event"] == "prediction"]
    assert answered == sorted(answered) and answered[-1] == "q29.png"


def test_files_of_a_lost_checkpoint_are_learned_again(tmp_path):
    """The folder memory follows the checkpoint resumed: a corrupt newest one (step 2) falls back to
    step 1, and the files only step 2 held are learned again (never skipped as if learned)."""
    need_model()
    folder, state = tmp_path / "inbox", tmp_path / "state"
    for name, obj in (("ball", OBJ_B), ("cup", OBJ_A)):
        for i, frame in enumerate(object_frames(obj, 4)):
            write_png(folder / name / f"{i}.png", frame)
    code, events, err = _run_to_end(state, f"folder:{folder}", "--teach-batch", "4")
    assert code == 0, err
    assert [(e["label"], e["step"]) for e in events if e["event"] == "learned"] == [("ball", 1), ("cup", 2)]
    newest = max(state.glob("state-*.npz"), key=lambda p: p.stat().st_mtime_ns)
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    newest.write_bytes(bytes(data))
    code, events, err = _run_to_end(state, f"folder:{folder}", "--teach-batch", "4")
    assert code == 0, err
    assert events[0]["step"] == 1 and "learned again" in err
    assert [e["label"] for e in events if e["event"] == "learned"] == ["cup"]
    assert sorted(e["file"] for e in events if e["event"] == "skipped") == [f"ball/{i}.png" for i in range(4)]
    assert events[-1]["step"] == 2
