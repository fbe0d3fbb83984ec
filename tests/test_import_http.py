"""``POST /import`` (issue 25, "the same over HTTP"): a knowledge pack merged into a running agent.

Real parts only: ``edge-agent run`` children on loopback with folder sources and the tiny backbone,
packs written by ``edge-agent export`` and `edge.knowledge.pack.write_pack`, raw sockets for the
size limit, and an in-process `edge.device.http.HTTPServer` over a real `DeviceLoop` for a streamed
body past a small ``max_import``.
"""

from __future__ import annotations

import json
import signal
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from _device_common import ROOT, RunningAgent, checkpoint_files, object_frames, write_png
from _http_raw import raw_request

pytest.importorskip("cv2", reason="the device runtime needs opencv-python-headless (the edge extra)")
pytest.importorskip("uvicorn", reason="the HTTP API needs uvicorn (the edge extra)")

TINY = str(ROOT / "models" / "tiny")
CUP, BALL, KEY = 1, 11, 21   # generated CORe50 objects
OCTET = {"Content-Type": "application/octet-stream"}


def _pngs(folder: Path, obj: int, n: int, session: int) -> list[str]:
    paths = []
    for i, frame in enumerate(object_frames(obj, n, session=session)):
        path = folder / f"{i:03d}.png"
        write_png(path, frame)
        paths.append(str(path))
    return paths


def _cli(*argv: str) -> str:
    """``edge-agent ARGV`` in this process; its stdout (exit status 0 asserted)."""
    import contextlib
    import io

    from edge.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(list(argv)) == 0, argv
    return out.getvalue()


def _state_a(tmp_path: Path) -> tuple[Path, dict[str, list[str]]]:
    """State A taught with the CLI (cup, and ball from another session), exported to a pack."""
    files = {"cup": _pngs(tmp_path / "a" / "cup", CUP, 6, 1), "ball": _pngs(tmp_path / "a" / "ball", BALL, 5, 2)}
    common = ["--model", TINY, "--state", str(tmp_path / "A"), "--strategy", "slda"]
    for name in ("cup", "ball"):
        _cli("learn", *common, "--label", name, *files[name])
    pack = tmp_path / "a.pack"
    assert "exported cup (6), ball (5)" in _cli("export", *common, "-o", str(pack))
    return pack, files


def _post(agent: RunningAgent, body: bytes, query: str = "on_conflict=merge", **kw: Any) -> tuple[int, Any]:
    headers = {**OCTET, **kw.pop("headers", {})}
    return agent.http("POST", f"/import?{query}" if query else "/import", raw=body, headers=headers, **kw)


def _classes(agent: RunningAgent) -> dict[str, Any]:
    status, listing = agent.http("GET", "/classes")
    assert status == 200, listing
    return listing


def _foreign_pack(path: Path, embedding_size: int) -> str:
    """A real pack of the right embedding size taught on "another backbone" (its fingerprint)."""
    from edge.agent import Agent, AgentConfig
    from edge.device.labels import LabelMap
    from edge.knowledge.pack import write_pack

    agent = Agent(None, AgentConfig(strategy="slda"), embedding_size=embedding_size)
    agent.enable_ledger()
    labels = LabelMap(agent.config.max_classes)
    index = labels.index_for("lamp", create=True)
    agent.teach_embeddings(np.random.default_rng(0).normal(size=(4, embedding_size)).astype(np.float32),
                           np.full(4, index), source="test")
    labels.add_counts(index, 4)
    fingerprint = "ab" * 32
    write_pack(path, agent, labels, fingerprint=fingerprint)
    return fingerprint


def _mutants(blob: bytes, rng: np.random.Generator, n: int):
    """Bit flips, byte runs and truncations of a real pack."""
    for i in range(n):
        data = bytearray(blob)
        kind = i % 3
        if kind == 0:
            for _ in range(int(rng.integers(1, 6))):
                data[int(rng.integers(0, len(data)))] ^= 1 << int(rng.integers(0, 8))
        elif kind == 1:
            data = data[: int(rng.integers(1, len(data)))]
        else:
            at = int(rng.integers(0, len(data)))
            data[at:at + 16] = bytes([int(rng.integers(0, 256))]) * len(data[at:at + 16])
        yield bytes(data)


def _oversized(port: int, length: int, sent: bytes) -> tuple[int, bytes, bool]:
    """Headers claiming ``length`` bytes and only ``sent`` of them; returns (status, answer, whether
    the server then closed the connection without waiting for the rest)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        head = (f"POST /import HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/octet-stream\r\n"
                f"Content-Length: {length}\r\n\r\n").encode()
        sock.sendall(head + sent)
        data = b""
        while b"\r\n\r\n" not in data or len(data) < data.find(b"\r\n\r\n") + 4 + _content_length(data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        closed = False
        try:
            closed = sock.recv(1) == b""          # EOF: the server is done with this connection
        except ConnectionResetError:
            closed = True
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else 0
    return status, data, closed


def _content_length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":", 1)[1])
    return 0


def test_a_pack_posted_to_a_running_agent_merges_exactly_and_refusals_change_nothing(tmp_path: Path) -> None:
    """State A (cup, ball) is exported with the CLI and POSTed to a running agent B (ball, key): B's
    answers on held-out files and its statistics equal a state taught all of it; then another
    backbone's pack, a conflict with ``refuse``, wrong content types and an oversized body are refused
    with the documented errors, and B's classes and checkpoints stay as they were."""
    from edge.checkpoint import CheckpointStore
    from edge.device.loop import restore_agent
    from edge.knowledge.pack import read_pack
    from edge.runtimes import open_backbone

    pack, a_files = _state_a(tmp_path)
    folder = tmp_path / "inbox"
    b_files = {"ball": _pngs(folder / "ball", BALL, 6, 1), "key": _pngs(folder / "key", KEY, 6, 1)}
    state = tmp_path / "B"
    agent = RunningAgent(state, f"folder:{folder}", "--teach-batch", "6", "--strategy", "slda")
    try:
        agent.started()
        agent.wait_for(lambda e: e["event"] == "checkpoint" and e["step"] == 2, 60)
        fingerprint = agent.http("GET", "/status")[1]["fingerprint"]

        status, done = _post(agent, pack.read_bytes())
        assert status == 200, done
        assert (done["added"], done["merged"], done["renamed"]) == (["cup"], ["ball"], {}), done
        assert (done["samples"], done["events"], done["re_embedded"]) == (11, 2, False), done
        assert {c["name"]: (c["action"], c["samples"]) for c in done["classes"]} == {"cup": ("added", 6),
                                                                                     "ball": ("merged", 5)}
        listing = _classes(agent)
        assert {c["name"]: c["ledger_samples"] for c in listing["classes"]} == {"ball": 11, "key": 6, "cup": 6}
        assert listing["last_event"]["source"] == "import:cli"
        agent.wait_for(lambda e: e["event"] == "checkpoint" and e.get("reason") == "import", 10)

        # held-out files: B answers them live, with what it imported
        truth = {CUP: "cup", BALL: "ball", KEY: "key"}
        held = {f"held-{truth[obj]}-{i}.png": (frame, truth[obj]) for obj in (CUP, BALL, KEY)
                for i, frame in enumerate(object_frames(obj, 3, session=3))}
        for name, (frame, _) in held.items():
            write_png(folder / name, frame)
        live = {e["file"]: e for e in agent.wait_for(lambda e: e["event"] == "prediction" and e.get("file") in held,
                                                     60, count=len(held))}

        # --- refusals: none of them may change B's classes or its checkpoint files
        before_classes, before_files = _classes(agent), checkpoint_files(state)
        foreign = tmp_path / "foreign.pack"
        other = _foreign_pack(foreign, read_pack(pack).embedding_size)
        status, err = _post(agent, foreign.read_bytes())
        assert status == 400 and f"backbone fingerprint expected {fingerprint}, got {other}" in err["error"], err
        assert "POST /import body" in err["error"] and "re_embed=1" in err["error"], err
        status, err = _post(agent, foreign.read_bytes(), "on_conflict=merge&re_embed=1")
        assert status == 400 and "re_embed=1: expected a thumbnail for every sample, got 4 of 4" in err["error"], err
        status, err = _post(agent, pack.read_bytes(), "on_conflict=refuse")
        assert status == 409 and "classes ['cup', 'ball']: expected names this state does not have" in err["error"]
        for query, words in (("on_conflict=overwrite", "on_conflict: expected one of"),
                             ("on_conflict=merge&force=1", "expected parameters among"),
                             ("re_embed=yes", "re_embed: expected 0 or 1")):
            status, err = _post(agent, pack.read_bytes(), query)
            assert status == 400 and words in err["error"], (query, err)
        status, err = _post(agent, b"", "")
        assert status == 400 and "got an empty body" in err["error"], err
        for kind in ("application/json", "text/plain", "application/zip"):
            status, err = _post(agent, pack.read_bytes(), headers={"Content-Type": kind})
            assert status == 415 and "expected 'application/octet-stream' for a POST /import" in err["error"], err
        # the other routes still take JSON only
        assert agent.http("POST", "/undo", raw=b"{}", headers=OCTET)[0] == 415
        # a cross-site page may not import
        assert _post(agent, pack.read_bytes(), headers={"Origin": "http://evil.example"})[0] == 403
        # over the limit (512 MiB): refused from Content-Length, having read 64 KiB of it; connection closed
        began = time.monotonic()
        status, answer, closed = _oversized(agent.port, 600 << 20, b"\0" * 65536)
        assert status == 413 and b"expected a pack of at most 536870912 bytes" in answer and closed, answer
        assert time.monotonic() - began < 5

        assert _classes(agent) == before_classes
        assert checkpoint_files(state) == before_files       # not one byte written

        agent.signal(signal.SIGTERM)
        assert agent.finish(30) == 0, agent.stderr()
    finally:
        agent.close()
    assert not [e for e in agent.events if e["event"] == "error"], agent.events

    # one state taught everything with the CLI, in B's order: its own teaches, then A's
    everything = tmp_path / "C"
    common = ["--model", TINY, "--state", str(everything), "--strategy", "slda"]
    for name, files in (("ball", b_files["ball"]), ("key", b_files["key"]), ("cup", a_files["cup"]),
                        ("ball", a_files["ball"])):
        _cli("learn", *common, "--label", name, *files)
    names = sorted(held)
    answers = [json.loads(line) for line in
               _cli("predict", *common, "--json", *[str(folder / n) for n in names]).splitlines()]
    for name, want in zip(names, answers, strict=True):
        got = live[name]
        assert got["label"] == want["label"] and got["index"] == want["index"], (name, got, want)
        assert got["score"] == pytest.approx(want["score"], abs=1e-5), (name, got, want)
    assert sum(live[n]["label"] == held[n][1] for n in names) >= 7      # and they are mostly right
    with open_backbone(TINY) as backbone:
        merged = restore_agent(backbone, CheckpointStore(state, backbone.manifest.fingerprint).latest())
        taught = restore_agent(backbone, CheckpointStore(everything, backbone.manifest.fingerprint).latest())
    assert merged[1].names == taught[1].names and np.array_equal(merged[1].counts, taught[1].counts)
    want_stats = taught[0].stats.state_dict()
    for key, value in merged[0].stats.state_dict().items():
        np.testing.assert_allclose(value, want_stats[key], rtol=1e-9, atol=1e-9, err_msg=key)


def test_fuzzed_packs_are_each_refused_with_the_readers_text_and_the_state_is_intact(tmp_path: Path) -> None:
    """Bit flips, byte runs and truncations of a real pack, POSTed with ``on_conflict=merge`` to a
    running agent: each answers 400 with exactly the text the CLI's reader gives for the same bytes
    (the upload named instead of a path); classes and checkpoint files are unchanged. (A mutant the
    reader accepts, in zip padding, is not sent: it would be a valid import.)"""
    from edge.knowledge.pack import PackError, read_pack

    pack, _ = _state_a(tmp_path)
    folder = tmp_path / "inbox"
    _pngs(folder / "key", KEY, 4, 1)
    state = tmp_path / "B"
    agent = RunningAgent(state, f"folder:{folder}", "--teach-batch", "4", "--strategy", "slda")
    try:
        agent.started()
        agent.wait_for(lambda e: e["event"] == "checkpoint" and e["step"] == 1, 60)
        before_classes, before_files = _classes(agent), checkpoint_files(state)
        blob = pack.read_bytes()
        rng = np.random.default_rng(25)
        sent = checked = 0
        began = time.monotonic()
        local = tmp_path / "mutant.pack"
        for data in _mutants(blob, rng, 300):
            local.write_bytes(data)
            try:
                read_pack(local)
                continue                     # a mutation the format cannot see (zip padding): not sent
            except PackError as exc:
                expected = str(exc).replace(str(local), "POST /import body")
            status, err = _post(agent, data)
            sent += 1
            assert status == 400, (status, err)
            checked += err["error"] == expected
        took = time.monotonic() - began
        print(f"\n{sent} mutant packs refused over HTTP in {took:.1f} s ({checked} with the CLI reader's exact text)")
        assert sent > 250 and checked == sent
        assert _classes(agent) == before_classes
        assert checkpoint_files(state) == before_files
        agent.signal(signal.SIGTERM)
        assert agent.finish(30) == 0, agent.stderr()
    finally:
        agent.close()


def test_import_over_http_needs_the_token_and_renames_on_request(tmp_path: Path) -> None:
    token = "import-token-0123"
    pack, _ = _state_a(tmp_path)
    folder = tmp_path / "inbox"
    _pngs(folder / "cup", CUP, 4, 2)
    state = tmp_path / "B"
    agent = RunningAgent(state, f"folder:{folder}", "--teach-batch", "4", "--strategy", "ncm", token=token)
    try:
        agent.started()
        agent.wait_for(lambda e: e["event"] == "checkpoint" and e["step"] == 1, 60)
        before = checkpoint_files(state)
        for given, why in ((None, "got none"), ("wrong-token-0000", "got a wrong token")):
            status, err = _post(agent, pack.read_bytes(), token=given or False)
            assert status == 401 and why in err["error"], err
        assert checkpoint_files(state) == before
        status, done = _post(agent, pack.read_bytes(), "on_conflict=rename")
        assert status == 200 and done["renamed"] == {"cup": "cup-2"} and done["added"] == ["ball"], done
        assert {c["name"] for c in _classes(agent)["classes"]} == {"cup", "cup-2", "ball"}
        agent.signal(signal.SIGTERM)
        assert agent.finish(30) == 0, agent.stderr()
    finally:
        agent.close()


def test_a_streamed_body_past_max_import_is_refused_while_it_arrives(tmp_path: Path) -> None:
    """No Content-Length (chunked): the in-process server answers 413 once the bytes pass
    ``max_import`` and closes the connection, long before the client would have finished; a body
    trickling in past ``import_timeout_s`` gets 408."""
    from edge.agent import Agent, AgentConfig
    from edge.device.http import HTTPServer
    from edge.device.loop import DeviceLoop, LoopOptions
    from edge.device.sources import IterableSource
    from edge.runtimes import open_backbone

    with open_backbone(TINY) as backbone:
        loop = DeviceLoop(Agent(backbone, AgentConfig(strategy="ncm")), IterableSource([]),
                          options=LoopOptions(checkpoint=False))
        server = HTTPServer(loop, port=0, max_import=100_000, import_timeout_s=3.0).start()
        try:
            port = server.port
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall((f"POST /import HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                              "Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n").encode())
                chunk = b"%x\r\n%s\r\n" % (16384, b"\1" * 16384)
                sent, answer = 0, b""
                for _ in range(64):           # 1 MiB offered in all
                    try:
                        sock.sendall(chunk)
                    except (BrokenPipeError, ConnectionResetError):
                        break
                    sent += 16384
                    sock.settimeout(0.2)
                    try:
                        answer = sock.recv(65536)
                    except socket.timeout:
                        continue
                    break
                sock.settimeout(10)
                while b"\r\n\r\n" in answer and len(answer) < answer.find(b"\r\n\r\n") + 4 + _content_length(answer):
                    more = sock.recv(65536)
                    if not more:
                        break
                    answer += more
                closed = sock.recv(1) == b""
            assert answer.startswith(b"HTTP/1.1 413") and b"got more" in answer, answer[:300]
            assert closed
            assert b"connection: close" in answer.lower()
            assert 100_000 < sent <= 100_000 + 3 * 16384, sent
            # a whole small body under the limit is read and refused as a pack, not for its size
            status, err = raw_request(port, "POST", "/import", {"Host": f"127.0.0.1:{port}", **OCTET}, b"PK\3\4" * 10)
            assert status == 400 and "POST /import body: expected a knowledge pack" in err["error"], err
            # a trickle (a byte every 0.2 s) is cut at the whole body's time limit: 408
            began = time.monotonic()
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall((f"POST /import HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                              "Content-Type: application/octet-stream\r\nContent-Length: 1000\r\n\r\n").encode())
                answer = b""
                sock.settimeout(0.2)
                while not answer and time.monotonic() - began < 10:
                    try:
                        sock.sendall(b"P")
                        answer = sock.recv(65536)
                    except socket.timeout:
                        continue
            assert answer.startswith(b"HTTP/1.1 408"), answer[:300]
            assert 2.9 < time.monotonic() - began < 6
        finally:
            server.stop()
