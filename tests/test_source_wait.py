"""`edge-agent run --wait-for-source` (issue 26): a source that is missing at start is waited for.

A late camera at boot is the service's case: the unit runs with ``--wait-for-source``, so the agent
retries the source with capped exponential backoff (1 s doubling to 30 s), one log line per attempt,
its HTTP API answering ``/status`` meanwhile, instead of exiting and being restarted by systemd.
Without the flag a missing source is one clear line and exit 2, with no OpenCV warning before it.
The late sources here are a folder and a video file path created after the agent started (a
``/dev/videoN`` node cannot be created without root; it goes through the same `WaitingSource`).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from _device_common import OBJ_A, OBJ_B, ROOT, RunningAgent, object_frames, write_png, write_video
from edge.device.sources import (IterableSource, SourceUnavailable, WaitingSource, backoff_delays, is_realtime,
                                 open_source)
from edge.errors import InputError

TINY = str(ROOT / "models" / "tiny")


def _agent_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge.cli", "run", "--model", TINY, *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def test_backoff_doubles_from_one_second_up_to_thirty():
    assert list(itertools.islice(backoff_delays(), 9)) == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0, 30.0]
    assert list(itertools.islice(backoff_delays(0.5, 3.0), 5)) == [0.5, 1.0, 2.0, 3.0, 3.0]
    # Time to notice a camera plugged in T s after boot: at most the cap after it appears.
    waited = list(itertools.accumulate(itertools.islice(backoff_delays(), 8)))
    assert waited[:6] == [1.0, 3.0, 7.0, 15.0, 31.0, 61.0]


def test_waiting_source_retries_a_late_folder_with_one_log_line_per_attempt(tmp_path, caplog):
    folder = tmp_path / "late"
    events: list[tuple[str, dict]] = []
    source = WaitingSource(f"folder:{folder}", lambda: open_source(f"folder:{folder}", watch=False),
                           realtime=False, first_s=0.05, cap_s=0.2)
    source.on_event = lambda kind, **fields: events.append((kind, fields))
    assert source.state == "waiting" and not source.realtime
    timer = threading.Timer(0.6, lambda: write_png(folder / "a.png", object_frames(OBJ_A, 1)[0]))
    timer.start()
    with caplog.at_level(logging.WARNING, logger="edge.device.sources"):
        frame = source.read()
    timer.join()
    assert frame is not None and frame.name == "a.png" and frame.image.shape == (64, 64, 3)
    assert source.state == "open" and source.attempts >= 4
    waits = [f for k, f in events if k == "source_waiting"]
    assert [f["attempt"] for f in waits] == list(range(1, source.attempts))
    assert [f["retry_in_s"] for f in waits][:4] == [0.05, 0.1, 0.2, 0.2]
    assert events[-1] == ("source_opened", {"source": f"folder:{folder}", "attempt": source.attempts})
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == source.attempts  # one per failed attempt, one "opened"
    assert all("expected a directory, got none" in line for line in lines[:-1]), lines
    assert not any(r.exc_info for r in caplog.records)
    assert source.read() is None  # not watching: the folder's one file was all
    source.close()


def test_waiting_source_wakes_at_once_when_interrupted(tmp_path):
    source = WaitingSource("folder:/nonexistent/x", lambda: open_source("folder:/nonexistent/x"), realtime=False,
                           first_error="source folder:/nonexistent/x: expected a directory, got none")
    threading.Timer(0.3, source.interrupt).start()
    start = time.monotonic()
    assert source.read() is None  # the first wait is 1 s; interrupt ends it
    assert time.monotonic() - start < 0.9 and source.attempts == 1


def test_malformed_specs_are_not_waited_for_and_missing_sources_are_unavailable(tmp_path):
    for spec, message in (("camera:x", "expected camera:N"), ("picamera2:a", "expected picamera2"),
                          ("", "expected a spec")):
        with pytest.raises(InputError, match=message) as info:
            open_source(spec)
        assert not isinstance(info.value, SourceUnavailable)
    with pytest.raises(SourceUnavailable, match="expected a directory"):
        open_source(f"folder:{tmp_path / 'none'}")
    pytest.importorskip("cv2")
    with pytest.raises(SourceUnavailable, match="no such file"):
        open_source(str(tmp_path / "none.avi"))
    with pytest.raises(SourceUnavailable, match="no such device"):
        open_source("/dev/video97")
    (tmp_path / "bad.avi").write_bytes(b"not a video" * 100)
    with pytest.raises(InputError, match="decode") as info:  # a broken file stays broken: no waiting
        open_source(str(tmp_path / "bad.avi"))
    assert not isinstance(info.value, SourceUnavailable)
    assert [is_realtime(s) for s in ("camera:0", "/dev/video0", "rtsp://h/x", "folder:d", "v.avi")] == \
        [True, True, True, False, True]
    assert is_realtime("v.avi", pace=False) is False


def test_without_the_flag_a_missing_source_is_one_line_and_exit_2(tmp_path):
    pytest.importorskip("cv2")
    for spec in ("camera:7", f"folder:{tmp_path / 'none'}", str(tmp_path / "none.avi")):
        out = _agent_cli("--state", str(tmp_path / "s"), "--source", spec, "--no-http")
        lines = out.stderr.splitlines()
        assert out.returncode == 2 and len(lines) == 1, out.stderr
        assert lines[0].startswith("edge-agent: error: source") and "--wait-for-source" in lines[0], lines
        assert "WARN" not in out.stderr and "Traceback" not in out.stderr


def _late_folder_run(tmp_path, delay_s: float) -> tuple[RunningAgent, float, str]:
    folder = tmp_path / "inbox"
    agent = RunningAgent(tmp_path / "state", f"folder:{folder}", "--wait-for-source", "--teach-batch", "6")
    try:
        agent.started()
        status, info = agent.http("GET", "/status")  # the API answers while the source is missing
        assert status == 200 and info["source"]["state"] == "waiting", info
        assert "expected a directory" in info["source"]["last_error"] and info["frames"] == 0
        time.sleep(max(0.0, delay_s - 0.2))
        created = time.monotonic()  # the folder appears with the first file
        for i, frame in enumerate(object_frames(OBJ_A, 6)):
            write_png(folder / "cup" / f"{i}.png", frame)
        agent.wait_for(lambda e: e["event"] == "source_opened", delay_s + 60)
        picked_up = time.monotonic() - created
        learned = agent.wait_for(lambda e: e["event"] == "learned", 60)[0]
        assert learned["label"] == "cup" and learned["frames"] == 6
        assert agent.http("GET", "/status")[1]["source"] == {"state": "open"}
        write_png(folder / "new.png", object_frames(OBJ_A, 1, session=2)[0])
        found = agent.wait_for(lambda e: e["event"] == "prediction", 30)[0]
        assert found["file"] == "new.png" and found["label"] == "cup"
        agent.signal(15)
        assert agent.finish(30) == 0
        err = agent.stderr()
    finally:
        agent.close()
    return agent, picked_up, err


def _check_wait_log(agent: RunningAgent, err: str) -> None:
    waits = [e for e in agent.events if e["event"] == "source_waiting"]
    lines = [line for line in err.splitlines() if "expected a directory, got none" in line]
    assert len(lines) == len(waits) >= 2, err  # one line per attempt
    assert "Traceback" not in err
    assert [e["retry_in_s"] for e in waits] == list(itertools.islice(backoff_delays(), len(waits)))


def test_run_waits_for_a_folder_created_3_s_after_start(tmp_path):
    agent, picked_up, err = _late_folder_run(tmp_path, 3.0)
    _check_wait_log(agent, err)
    print(f"folder created 3 s after start: picked up {picked_up:.1f} s after it appeared")
    # Attempts at 0, 1, 3, 7 s: a folder created at ~3 s is opened by the attempt at 3 or 7 s (<= ~4 s later).
    assert picked_up < 6.0, picked_up


@pytest.mark.slow
def test_run_waits_for_a_folder_created_30_s_after_start(tmp_path):
    """The issue's case: a late camera (here a folder) 30 s after start; attempts at 0, 1, 3, 7, 15, 31 s."""
    agent, picked_up, err = _late_folder_run(tmp_path, 30.0)
    _check_wait_log(agent, err)
    opened = next(e for e in agent.events if e["event"] == "source_opened")
    print(f"folder created 30 s after start: opened at attempt {opened['attempt']}, "
          f"{opened['time'] - agent.events[0]['time']:.1f} s after start, {picked_up:.1f} s after it appeared")
    assert picked_up < 31.0, picked_up


def test_run_waits_for_a_video_file_then_plays_it_to_the_end(tmp_path):
    pytest.importorskip("cv2")
    video = tmp_path / "late.avi"
    agent = RunningAgent(tmp_path / "state", str(video), "--wait-for-source", "--exit-at-end",
                         "--as-fast-as-possible")
    try:
        agent.started()
        agent.wait_for(lambda e: e["event"] == "source_waiting", 10)
        part = tmp_path / "part" / "late.avi"  # written elsewhere, then moved in whole
        part.parent.mkdir()
        write_video(part, [(OBJ_A, 10, 1), (OBJ_B, 10, 1)])
        part.rename(video)
        opened = agent.wait_for(lambda e: e["event"] == "source_opened", 20)[0]
        ended = agent.wait_for(lambda e: e["event"] == "source_ended", 30)[0]
        assert opened["attempt"] >= 2 and ended["frames"] == 20 and ended["error"] is None
        assert agent.finish(30) == 0, agent.stderr()
    finally:
        agent.close()
    assert agent.events[-1]["event"] == "stopped"


def test_the_unit_waits_for_its_source():
    from test_deploy_unit import _execstart

    assert "--wait-for-source" in _execstart()


def test_read_through_a_waiting_source_decodes_at_the_model_size(tmp_path):
    """`DeviceLoop` sets ``decode_size`` before the source exists; the folder opened later gets it."""
    folder = tmp_path / "f"
    source = WaitingSource(f"folder:{folder}", lambda: open_source(f"folder:{folder}", watch=False),
                           realtime=False, first_s=0.05)
    source.decode_size = (16, 16)
    folder.mkdir()
    write_png(folder / "a.png", np.full((64, 64, 3), 7, np.uint8))
    frame = source.read()
    assert frame is not None and frame.name == "a.png"
    assert getattr(source._inner, "decode_size") == (16, 16)
    source.close()


def test_a_live_source_that_stops_is_waited_for_again(caplog):
    """A camera unplugged mid-run (its reads fail): closed, waited for, and read again when back."""
    opened: list[int] = []

    def opener():
        opened.append(1)
        if len(opened) == 2:  # unplugged: the first retry fails
            raise SourceUnavailable("source camera:9: expected a source OpenCV can open, got a failure")
        return IterableSource([(np.full((2, 2, 3), len(opened), np.uint8), float(i)) for i in range(2)])

    source = WaitingSource("camera:9", opener, realtime=True, reopen=True, opened=opener(), first_s=0.05)
    assert source.state == "open"
    with caplog.at_level(logging.WARNING, logger="edge.device.sources"):
        values = [int(source.read().image[0, 0, 0]) for _ in range(4)]
    assert values == [1, 1, 3, 3] and len(opened) == 3 and source.state == "open"
    assert "no more frames; waiting for it again" in caplog.text and "(attempt 2)" in caplog.text
    source.interrupt()
    assert source.read() is None  # closed: no more waiting
    once = WaitingSource("v.avi", opener, realtime=False, opened=IterableSource([]))  # a file: its end is the end
    assert once.read() is None


def test_a_folder_open_at_start_under_wait_for_source_still_reports_and_remembers(tmp_path):
    """The unit's flags over a folder that exists: skipped entries are events, learned files remembered."""
    folder = tmp_path / "inbox"
    for i, frame in enumerate(object_frames(OBJ_A, 3)):
        write_png(folder / "cup" / f"{i}.png", frame)
    os.mkfifo(folder / "pipe.png")
    for run in range(2):
        out = _agent_cli("--state", str(tmp_path / "s"), "--source", f"folder:{folder}", "--no-http",
                         "--exit-at-end", "--wait-for-source")
        assert out.returncode == 0, out.stderr
        events = [json.loads(line) for line in out.stdout.splitlines()]
        skipped = sorted(e["file"] for e in events if e["event"] == "skipped")
        learned = [f for e in events if e["event"] == "learned" for f in e["files"]]
        assert skipped == (["pipe.png"] if run == 0 else ["cup/0.png", "cup/1.png", "cup/2.png", "pipe.png"])
        assert len(learned) == (3 if run == 0 else 0)


def test_sigterm_while_waiting_stops_at_once(tmp_path):
    agent = RunningAgent(tmp_path / "state", f"folder:{tmp_path / 'never'}", "--wait-for-source")
    try:
        agent.started()
        agent.wait_for(lambda e: e["event"] == "source_waiting" and e["attempt"] == 2, 10)  # in the 2 s wait
        start = time.monotonic()
        agent.signal(15)
        assert agent.finish(10) == 0 and time.monotonic() - start < 2.0
        err = agent.stderr()
    finally:
        agent.close()
    assert agent.events[-1]["event"] == "stopped" and agent.events[-1]["frames"] == 0
    assert "Traceback" not in err
