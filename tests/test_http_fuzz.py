"""HTTP fuzz test (issue 24): seeded generated requests against a real ``edge-agent run`` on loopback.

Methods, paths, Host and Origin headers, content types, tokens and bodies (valid, mutated, nested,
binary, huge numbers, odd Unicode) are drawn from a seeded generator and sent as raw bytes. The
agent must answer every one with a status below 500, log no traceback, and leave a state that a
fresh ``edge-agent status`` loads. A small sample runs in the fast suite, thousands under ``slow``.
"""

from __future__ import annotations

import json
import random
import signal
import socket
import subprocess
import sys
import time
from collections import Counter

import pytest

from _device_common import OBJ_A, OBJ_B, ROOT, RunningAgent, object_frames, write_png

pytest.importorskip("cv2", reason="the device runtime needs opencv-python-headless (the edge extra)")
pytest.importorskip("uvicorn", reason="the HTTP API needs uvicorn (the edge extra)")

TINY = str(ROOT / "models" / "tiny")
TOKEN = "fuzz-token-0123"
LABELS = ["cup", "ball", "mug", "caf\u00e9", "cafe\u0301", "\u0663", "unknown", "0", "1", "49", "50", "-1", "",
          " cup", "a/b", "x" * 65, "\u202e", "\x00", "\ud83d\ude00", "\U0001f600", "9" * 30]
ROUTES = ["/status", "/prediction", "/metrics", "/teach", "/teach/finish", "/", "/static/page.js",
          "/static/../../etc/passwd", "/frame.jpg", "/classes/{}/rename", "/classes/{}/forget"]


def _json_value(rng: random.Random, depth: int = 0) -> object:
    kind = rng.randrange(10 if depth < 3 else 6)
    if kind == 0:
        return rng.choice(LABELS)
    if kind == 1:
        return rng.choice([0, 1, -1, 3, 1000, 1001, 10 ** 20, 2 ** 63, -(2 ** 63) - 1])
    if kind == 2:
        return rng.choice([0.0, 0.5, 60.0, 60.0001, 1e308, -1e-9])
    if kind == 3:
        return rng.choice([True, False, None])
    if kind == 4:
        return "".join(chr(rng.randrange(0x20, 0x3000)) for _ in range(rng.randrange(0, 12)))
    if kind == 5:
        return rng.choice(["NaN", "Infinity", "1e999"])
    if kind in (6, 7):
        return [_json_value(rng, depth + 1) for _ in range(rng.randrange(0, 4))]
    return {rng.choice(["label", "frames", "seconds", "to", "x"]): _json_value(rng, depth + 1)
            for _ in range(rng.randrange(0, 4))}


def _body(rng: random.Random) -> bytes:
    kind = rng.randrange(9)
    if kind <= 2:  # a plausible request, perhaps with wrong types
        data: dict[str, object] = {"label": rng.choice(LABELS)}
        data[rng.choice(["frames", "seconds"])] = rng.choice([1, 1, 2, 3, 0.01, 0, 1001, 0.5, 61, "3", None, 10 ** 20])
        if rng.random() < 0.2:
            data["to"] = rng.choice(LABELS)
        return json.dumps(data, ensure_ascii=rng.random() < 0.5).encode("utf-8", "surrogatepass")
    if kind == 3:
        return json.dumps(_json_value(rng), ensure_ascii=False).encode("utf-8", "surrogatepass")
    if kind == 4:  # raw JSON tokens json.dumps never writes
        return rng.choice([b'{"label": "cup", "frames": NaN}', b'{"frames": 1e999, "label": "x"}',
                           b'{"label": "cup", "label": "ball", "frames": 1}', b'{"to": "\\ud800"}',
                           b'{"label": "cup", "frames": 3', b'{}', b'', b'null', b'"cup"', b'\xef\xbb\xbf{}'])
    if kind == 5:  # deep nesting
        depth = rng.choice([17, 100, 1000, 2000])
        return (b"[" * depth + b"]" * depth)[:4000] if rng.random() < 0.5 else (b'{"a":' * depth)[:4000]
    if kind == 6:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
    if kind == 7:
        return b"a" * rng.choice([4096, 4097, 5000])
    return ("label=cup&frames=3" if rng.random() < 0.5 else "x" * rng.randrange(50)).encode()


def _request(rng: random.Random, port: int, token: str | None) -> bytes:
    method = rng.choice(["GET", "GET", "POST", "POST", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS",
                         "TRACE", "CONNECT", "get", "FOO"])
    route = rng.choice(ROUTES)
    if "{}" in route:
        from urllib.parse import quote

        route = route.format(quote(rng.choice(LABELS), safe="", errors="surrogatepass") if rng.random() < 0.9 else "%ZZ%00")
    if rng.random() < 0.05:
        route = "/" + "".join(chr(rng.randrange(0x21, 0x7F)) for _ in range(rng.randrange(1, 40)))
    if rng.random() < 0.03:
        route = "/status?" + "a=" * rng.randrange(1, 500)
    good_host = rng.choice([f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", f"LOCALHOST:{port}"])
    host = good_host if rng.random() < 0.9 else rng.choice(
        [f"evil.example:{port}", "127.0.0.1", f"127.0.0.1:{port + 1}", "", f"127.0.0.1:{port}@evil", "[::1",
         f"127.0.0.1:{port}, evil.example", "\u00e9:1"])
    headers = [("Host", host)] if rng.random() < 0.97 else []
    if rng.random() < 0.2:
        headers.append(("Origin", rng.choice([f"http://{good_host}", "http://evil.example", "null", "",
                                              f"https://127.0.0.1:{port}", "http://127.0.0.1"])))
    if rng.random() < 0.85:
        headers.append(("Content-Type", rng.choice(
            ["application/json"] * 12 + ["application/json; charset=utf-8", "APPLICATION/JSON", "text/plain",
                                        "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                                        "application/jsonx", "", "application/json;;;"])))
    if token is not None and rng.random() < 0.8:
        headers.append(("Authorization", f"Bearer {token}" if rng.random() < 0.9 else "Bearer wrong-token-xx"))
    if rng.random() < 0.05:
        headers.append(("X-" + "h" * rng.randrange(1, 40), "v" * rng.randrange(0, 2000)))
    if rng.random() < 0.02:
        headers.append(("Cookie", f"edge_token={'%' * rng.randrange(5)}{token or ''}"))
    body = _body(rng) if method not in ("GET", "HEAD") or rng.random() < 0.05 else b""
    if body or rng.random() < 0.5:
        headers.append(("Content-Length", str(len(body))))
    if rng.random() < 0.02:  # a second Host or Content-Type
        headers.append(("Host", "evil.example") if rng.random() < 0.5 else ("Content-Type", "text/plain"))
    lines = [f"{method} {route} HTTP/1.1"] + [f"{k}: {v}" for k, v in headers] + ["Connection: close", "", ""]
    return "\r\n".join(lines).encode("utf-8", "surrogatepass") + body


def _send(port: int, raw: bytes) -> int:
    """Send one raw request; the status code of the answer (0: the connection closed without one)."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        try:  # no half-close: asyncio closes a transport at EOF, before the answer (as clients expect)
            sock.sendall(raw)
        except OSError:
            pass
        data = b""
        try:
            while len(data) < 64 and b"\r\n" not in data:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
        except OSError:
            return 0
    first = data.split(b"\r\n", 1)[0].split()
    return int(first[1]) if len(first) >= 2 and first[1].isdigit() else 0


def _fuzz(tmp_path, n: int, seed: int, token: str | None) -> Counter:
    folder = tmp_path / "inbox"
    for name, obj in (("cup", OBJ_A), ("ball", OBJ_B)):
        for i, frame in enumerate(object_frames(obj, 8)):
            write_png(folder / name / f"{i:03d}.png", frame)
    state = tmp_path / "state"
    agent = RunningAgent(state, f"folder:{folder}", "--teach-batch", "8", token=token)
    statuses: Counter = Counter()
    rng = random.Random(seed)
    try:
        agent.started()
        agent.wait_for(lambda e: e["event"] == "checkpoint" and e["step"] == 2, 60)
        port = agent.port
        assert port is not None
        began = time.monotonic()
        for i in range(n):
            raw = _request(rng, port, token)
            status = _send(port, raw)
            statuses[status] += 1
            assert status < 500, (i, status, raw[:300])
            if i % 40 == 0:  # frames now and then, so teaches collect and learn
                write_png(folder / f"f{i}.png", object_frames(OBJ_A if i % 2 else OBJ_B, 1, session=2)[0])
        took = time.monotonic() - began
        assert agent.http("GET", "/status", headers={"Host": f"127.0.0.1:{port}"})[0] == 200
        agent.signal(signal.SIGTERM)
        assert agent.finish(60) == 0
        err = agent.stderr()
    finally:
        agent.close()
    learned = sum(e["event"] == "learned" for e in agent.events)
    print(f"\n{n} requests in {took:.1f} s: {dict(sorted(statuses.items()))}; {learned} batches learned")
    assert "Traceback" not in err and "Exception" not in err, err[-3000:]
    assert not [e for e in agent.events if e["event"] == "error" and e.get("where") in ("checkpoint", "learn")]
    out = subprocess.run([sys.executable, "-m", "edge.cli", "status", "--model", TINY, "--state", str(state),
                          "--json"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["step"] == agent.events[-1]["step"] >= 2
    return statuses


def test_http_fuzz_sample(tmp_path):
    statuses = _fuzz(tmp_path, 1000, seed=1, token=None)
    assert statuses[0] == 0 and sum(v for k, v in statuses.items() if 200 <= k < 300) > 10, statuses


@pytest.mark.slow
def test_http_fuzz_thousands_with_a_token(tmp_path):
    statuses = _fuzz(tmp_path, 15000, seed=24, token=TOKEN)
    assert statuses[0] == 0 and sum(v for k, v in statuses.items() if 200 <= k < 300) > 100, statuses


def test_http_fuzz_import_bodies(tmp_path):
    """``POST /import`` (issue 25) with seeded content types, queries, lengths and bodies (random
    bytes, zip-like prefixes, a declared length over the 512 MiB limit): every answer is below 500,
    no traceback, and the state still loads with the classes it had."""
    folder = tmp_path / "inbox"
    for i, frame in enumerate(object_frames(OBJ_A, 4)):
        write_png(folder / "cup" / f"{i:03d}.png", frame)
    state = tmp_path / "state"
    agent = RunningAgent(state, f"folder:{folder}", "--teach-batch", "4")
    rng = random.Random(25)
    statuses: Counter = Counter()
    try:
        agent.started()
        agent.wait_for(lambda e: e["event"] == "checkpoint" and e["step"] == 1, 60)
        port = agent.port
        for i in range(300):
            body = rng.choice([b"", b"PK\x03\x04" + bytes(rng.randrange(256) for _ in range(rng.randrange(200))),
                               bytes(rng.randrange(256) for _ in range(rng.randrange(1, 2000))), b"{}"])
            query = rng.choice(["", "?on_conflict=merge", "?on_conflict=refuse&re_embed=1", "?on_conflict=x",
                                "?re_embed=2", "?a=b", "?on_conflict=%ZZ"])
            kind = rng.choice(["application/octet-stream"] * 6 + ["application/json", "text/plain", ""])
            length = rng.choice([str(len(body))] * 6 + [str(600 << 20), "-1", "abc"])
            raw = (f"POST /import{query} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {kind}\r\n"
                   f"Content-Length: {length}\r\nConnection: close\r\n\r\n").encode() + body
            status = _send(port, raw)
            statuses[status] += 1
            assert 0 < status < 500, (i, status, raw[:300])
        agent.signal(signal.SIGTERM)
        assert agent.finish(60) == 0
        err = agent.stderr()
    finally:
        agent.close()
    print(f"\n300 import requests: {dict(sorted(statuses.items()))}")
    assert "Traceback" not in err and "Exception" not in err, err[-3000:]
    assert statuses[400] > 100 and statuses[413] and statuses[415], statuses
    out = subprocess.run([sys.executable, "-m", "edge.cli", "status", "--model", TINY, "--state", str(state),
                          "--json"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert [c["name"] for c in json.loads(out.stdout)["classes"]] == ["cup"]
