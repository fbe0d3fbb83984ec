"""Issue 24 item 2, against a real ``edge-agent run`` on loopback: idle and slow connections do not
make the API unreachable, do not flood the log and do not starve checkpoint writes.

Every loop here is bounded and every socket is closed by the test (or by the agent's timeouts).
"""

from __future__ import annotations

import resource
import signal
import socket
import time

import pytest

from _device_common import OBJ_A, RunningAgent, object_frames, write_png

pytest.importorskip("cv2", reason="the device runtime needs opencv-python-headless (the edge extra)")
pytest.importorskip("uvicorn", reason="the HTTP API needs uvicorn (the edge extra)")

IDLE, SLOW = 5000, 500


def _open_idle(port: int, n: int, batch: int = 500) -> list[socket.socket]:
    """``n`` connections, ``batch`` started at once (non-blocking connects); those established within
    5 s of their batch are returned (the others are closed)."""
    socks: list[socket.socket] = []
    for start in range(0, n, batch):
        socks += _open_batch(port, min(batch, n - start))
    return socks


def _open_batch(port: int, n: int, wait_s: float = 5.0) -> list[socket.socket]:
    import errno
    import selectors

    pending = []
    for _ in range(n):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        code = sock.connect_ex(("127.0.0.1", port))
        if code not in (0, errno.EINPROGRESS):
            sock.close()
            continue
        pending.append(sock)
    done: list[socket.socket] = []
    with selectors.DefaultSelector() as sel:
        for sock in pending:
            sel.register(sock, selectors.EVENT_WRITE)
        deadline = time.monotonic() + wait_s
        while len(sel.get_map()) and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=0.5):
                sock = key.fileobj
                sel.unregister(sock)
                if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                    done.append(sock)
                else:
                    sock.close()
        for key in list(sel.get_map().values()):
            sel.unregister(key.fileobj)
            key.fileobj.close()
    return done


def _closed_by_peer(sock: socket.socket) -> bool:
    try:
        data = sock.recv(65536)
    except BlockingIOError:
        return False
    except OSError:
        return True
    return data == b"" or data.startswith(b"HTTP/1.1 4")  # EOF, or an error answer before it


def _trickle(socks: list[socket.socket], parts: list[bytes], seconds: float) -> None:
    """Send each socket its ``parts`` one byte every 0.5 s for ``seconds`` (bounded)."""
    sent = [0] * len(socks)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for i, sock in enumerate(socks):
            if sent[i] < len(parts[i]):
                try:
                    sock.send(parts[i][sent[i]:sent[i] + 1])
                    sent[i] += 1
                except OSError:
                    sent[i] = len(parts[i])
        time.sleep(0.5)


def _status_ms(agent: RunningAgent) -> float:
    began = time.monotonic()
    status, body = agent.http("GET", "/status")
    assert status == 200, body
    return (time.monotonic() - began) * 1000.0


@pytest.mark.slow
def test_idle_and_slow_connections_leave_status_and_checkpoints_working(tmp_path):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = IDLE + SLOW + 512
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.skip(f"the hard open-file limit is {hard}, expected >= {need} for this test")
    resource.setrlimit(resource.RLIMIT_NOFILE, (need if hard == resource.RLIM_INFINITY else max(soft, need), hard))
    folder = tmp_path / "inbox"
    folder.mkdir()
    agent = RunningAgent(tmp_path / "state", f"folder:{folder}", "--teach-batch", "8")
    idle: list[socket.socket] = []
    slow: list[socket.socket] = []
    try:
        agent.started()
        port = agent.port
        assert port is not None
        began = time.monotonic()
        idle = _open_idle(port, IDLE)
        slow = _open_idle(port, SLOW)
        opened = time.monotonic() - began
        assert len(idle) == IDLE and len(slow) == SLOW
        head = b"POST /teach HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n" % port
        # half never finish their headers, half never finish their body (one byte every 0.5 s)
        for i, sock in enumerate(slow):
            sock.send(head if i % 2 else head + b"Content-Length: 1000\r\n\r\n")
        parts = [b"X-Slow: " + b"a" * 40 if i % 2 else b"{" * 40 for i in range(SLOW)]
        # a normal client during the flood, and a taught batch checkpointed during it
        latencies = [_status_ms(agent) for _ in range(5)]
        for i, frame in enumerate(object_frames(OBJ_A, 8)):
            write_png(folder / "cup" / f"{i:03d}.png", frame)
        _trickle(slow, parts, 6.0)
        latencies += [_status_ms(agent) for _ in range(5)]
        checkpoint = agent.wait_for(lambda e: e["event"] == "checkpoint" and e["step"] == 1, 30)[0]
        assert (tmp_path / "state" / checkpoint["path"].rsplit("/", 1)[1]).is_file()
        # the header / body timeouts close every idle and slow connection (10 s each; slack for slow CI)
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            open_idle = sum(not _closed_by_peer(s) for s in idle)
            open_slow = sum(not _closed_by_peer(s) for s in slow)
            if open_idle == open_slow == 0:
                break
            time.sleep(1.0)
        closed_after = time.monotonic() - began
        assert open_idle == 0 and open_slow == 0, (open_idle, open_slow)
        latencies += [_status_ms(agent) for _ in range(3)]
        print(f"\n{IDLE} idle + {SLOW} slow connections opened in {opened:.1f} s; /status during the flood: "
              f"max {max(latencies):.0f} ms; all closed by the agent after {closed_after:.1f} s")
        assert max(latencies) < 5000, latencies
        agent.signal(signal.SIGTERM)
        assert agent.finish(30) == 0
        err = agent.stderr()
        assert "Traceback" not in err and len(err) < 10_000, err[-3000:]
    finally:
        for sock in idle + slow:
            sock.close()
        agent.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.slow
def test_a_low_open_file_limit_refuses_sockets_before_checkpoints_fail(tmp_path):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = 512
    if hard != resource.RLIM_INFINITY and hard < 2000:
        pytest.skip(f"the hard open-file limit is {hard}, expected >= 2000 for this test")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 2000), hard))  # this test's own sockets
    folder = tmp_path / "inbox"
    folder.mkdir()
    agent = RunningAgent(tmp_path / "state", f"folder:{folder}", "--teach-batch", "8")
    # soft = hard = 512 from its first moments (long before it binds), as a unit without LimitNOFILE
    try:
        resource.prlimit(agent.proc.pid, resource.RLIMIT_NOFILE, (limit, limit))
    except (AttributeError, OSError) as exc:
        agent.close()
        pytest.skip(f"cannot lower the agent's open-file limit here ({exc})")
    idle: list[socket.socket] = []
    try:
        agent.started()
        port = agent.port
        assert port is not None
        limits = open(f"/proc/{agent.proc.pid}/limits").read()
        assert any(line.startswith("Max open files") and line.split()[3:5] == [str(limit)] * 2
                   for line in limits.splitlines()), limits
        idle = _open_idle(port, 3 * limit)
        time.sleep(1.0)
        refused = sum(_closed_by_peer(s) for s in idle)
        assert refused > limit, refused  # beyond the budget: closed at once
        for i, frame in enumerate(object_frames(OBJ_A, 8)):
            write_png(folder / "cup" / f"{i:03d}.png", frame)
        checkpoint = agent.wait_for(lambda e: e["event"] in ("checkpoint", "error"), 60)[0]
        assert checkpoint["event"] == "checkpoint" and checkpoint["step"] == 1, checkpoint
        time.sleep(11.0)  # the header timeout closes the accepted idle ones
        assert agent.http("GET", "/status")[0] == 200
        agent.signal(signal.SIGTERM)
        assert agent.finish(30) == 0
        err = agent.stderr()
        assert "Traceback" not in err and len(err.splitlines()) <= 5, err[-3000:]
        print(f"\nRLIMIT_NOFILE {limit}: {len(idle)} connections, {refused} refused at once; checkpoint written; "
              f"stderr {len(err.splitlines())} line(s)")
    finally:
        for sock in idle:
            sock.close()
        agent.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_accept_errors_and_repeated_warnings_are_logged_once_per_interval(caplog):
    import asyncio
    import errno
    import logging

    from edge.device.connections import ConnectionGuard, OncePerInterval

    guard = ConnectionGuard(max_connections=4, log_interval_s=60.0)
    loop = asyncio.new_event_loop()
    try:
        with caplog.at_level(logging.WARNING):
            for _ in range(500):  # what asyncio's accept loop reports on EMFILE
                guard.exception_handler(loop, {"message": "socket.accept() out of system resource",
                                               "exception": OSError(errno.EMFILE, "Too many open files")})
            assert [guard.admit(n) for n in (3, 4, 5)] == [True, False, False]
    finally:
        loop.close()
    lines = [r.getMessage() for r in caplog.records]
    assert guard.accept_errors == 500 and guard.refused == 2
    assert len(lines) == 2 and "EMFILE" in lines[0] and "at most 4 open" in lines[1], lines
    assert "Traceback" not in caplog.text

    log = logging.getLogger("test.once")
    once = OncePerInterval(60.0)
    log.addFilter(once)
    try:
        with caplog.at_level(logging.WARNING, logger="test.once"):
            caplog.clear()
            for _ in range(100):
                log.warning("Invalid HTTP request received.")
            log.warning("another message")
        assert [r.getMessage() for r in caplog.records] == ["Invalid HTTP request received.", "another message"]
    finally:
        log.removeFilter(once)
