"""Issue 24 (hardening, round 2), against a real ``edge-agent run`` on loopback: cross-site requests,
class slots, forgetting, bad bodies, the final checkpoint's exit code, label aliases, answer counters.

Each test reproduces a finding of the campaign (it failed before the fix) and checks the fix.
"""

from __future__ import annotations

import json
import signal
import shutil
import socket
import subprocess
import sys
import time
import unicodedata

import pytest

from _device_common import OBJ_A, OBJ_B, ROOT, RunningAgent, checkpoint_files, object_frames, write_png
from _http_raw import raw_request

pytest.importorskip("cv2", reason="the device runtime needs opencv-python-headless (the edge extra)")
pytest.importorskip("starlette", reason="the HTTP API needs starlette (the edge extra)")
pytest.importorskip("uvicorn", reason="the HTTP API needs uvicorn (the edge extra)")

TINY = str(ROOT / "models" / "tiny")


def _labelled_inbox(tmp_path, classes=(("cup", OBJ_A),), n=8):
    folder = tmp_path / "inbox"
    for name, obj in classes:
        for i, frame in enumerate(object_frames(obj, n)):
            write_png(folder / name / f"{i:03d}.png", frame)
    return folder


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


# ------------------------------------------------------------------ 1. cross-site requests
def test_cross_site_requests_and_foreign_hosts_are_refused(tmp_path):
    folder = _labelled_inbox(tmp_path)
    state = tmp_path / "state"
    agent = RunningAgent(state, f"folder:{folder}", "--teach-batch", "8")
    try:
        agent.started()
        agent.wait_for(lambda e: e["event"] == "checkpoint" and e["step"] == 1, 60)
        port = agent.port
        own = f"127.0.0.1:{port}"
        before = checkpoint_files(state)
        teach = json.dumps({"label": "evil", "frames": 3}).encode()
        refused = [
            # "simple" requests a foreign page can send without a preflight
            (dict(method="POST", path="/teach", headers={"Host": own, "Content-Type": "text/plain"}, body=teach), 415),
            (dict(method="POST", path="/classes/cup/forget",
                  headers={"Host": own, "Content-Type": "application/x-www-form-urlencoded"}, body=b"a=b"), 415),
            (dict(method="POST", path="/classes/cup/forget", headers={"Host": own}, body=b""), 415),
            (dict(method="POST", path="/classes/cup/rename",
                  headers={"Host": own, "Content-Type": "multipart/form-data; boundary=x"}, body=b'{"to": "x"}'), 415),
            # a foreign origin, even with the JSON content type (after a CORS preflight it would never get)
            (dict(method="POST", path="/teach", headers={"Host": own, "Content-Type": "application/json",
                                                         "Origin": "http://evil.example"}, body=teach), 403),
            (dict(method="POST", path="/teach", headers={"Host": own, "Content-Type": "application/json",
                                                         "Origin": "null"}, body=teach), 403),
            (dict(method="POST", path="/teach", headers={"Host": own, "Content-Type": "application/json",
                                                         "Origin": f"http://127.0.0.1:{port + 1}"}, body=teach), 403),
            # DNS rebinding: the browser sends the attacker's name as Host
            *[(dict(method="GET", path=path, headers={"Host": f"evil.example:{port}"}), 421)
              for path in ("/status", "/frame.jpg", "/stream.mjpg", "/prediction", "/metrics", "/events", "/")],
            (dict(method="GET", path="/status", headers={"Host": "127.0.0.1:1"}), 421),
            (dict(method="POST", path="/teach", headers={"Host": f"evil.example:{port}",
                                                         "Content-Type": "application/json"}, body=teach), 421),
        ]
        for request, code in refused:
            status, body = raw_request(port, **request)
            assert status == code and "expected" in body["error"], (request, status, body)
        assert raw_request(port, "GET", "/status", {})[0] == 400  # HTTP/1.1 without Host: h11 refuses it
        allowed = [
            dict(method="GET", path="/status", headers={"Host": own}),
            dict(method="GET", path="/status", headers={"Host": f"localhost:{port}"}),
            dict(method="GET", path="/status", headers={"Host": f"[::1]:{port}"}),
            dict(method="GET", path="/frame.jpg", headers={"Host": own}),
            dict(method="POST", path="/classes/cup/rename", headers={
                "Host": own, "Content-Type": "application/json; charset=utf-8", "Origin": f"http://{own}"},
                 body=b'{"to": "mug"}'),
            dict(method="POST", path="/classes/mug/rename", headers={
                "Host": f"localhost:{port}", "Content-Type": "application/json", "Origin": f"http://localhost:{port}"},
                 body=b'{"to": "cup"}'),
        ]
        for request in allowed:
            status, body = raw_request(port, **request)
            assert status == 200, (request, status, body)
        status, info = agent.http("GET", "/status")
        assert [c["name"] for c in info["classes"]] == ["cup"] and info["teach_pending"] == []
        assert info["step"] == 1
        assert len(before) >= 1
        agent.signal(signal.SIGTERM)
        assert agent.finish(30) == 0
    finally:
        agent.close()


def test_allow_host_and_allow_origin_extend_the_lists(tmp_path):
    folder = _labelled_inbox(tmp_path)
    agent = RunningAgent(tmp_path / "state", f"folder:{folder}", "--teach-batch", "8",
                         "--allow-host", "device.example", "--allow-origin", "http://kiosk.example")
    try:
        agent.started()
        agent.wait_for(lambda e: e["event"] == "checkpoint" and e["step"] == 1, 60)
        port = agent.port
        status, _ = raw_request(port, "GET", "/status", {"Host": f"device.example:{port}"})
        assert status == 200
        assert raw_request(port, "GET", "/status", {"Host": f"other.example:{port}"})[0] == 421
        status, body = raw_request(port, "POST", "/classes/cup/rename", {
            "Host": f"device.example:{port}", "Content-Type": "application/json", "Origin": "http://kiosk.example"},
            b'{"to": "mug"}')
        assert status == 200, body
        status, body = raw_request(port, "POST", "/classes/mug/rename", {
            "Host": f"device.example:{port}", "Content-Type": "application/json", "Origin": "http://kiosk2.example"},
            b'{"to": "cup"}')
        assert status == 403, body
        agent.signal(signal.SIGTERM)
        assert agent.finish(30) == 0
    finally:
        agent.close()
    out = _cli("run", "--model", TINY, "--state", str(tmp_path / "s2"), "--source", f"folder:{folder}",
               "--allow-origin", "kiosk.example")
    assert out.returncode == 2 and "--allow-origin" in out.stderr and "expected" in out.stderr, out.stderr


def test_page_script_sends_json_on_every_state_changing_request():
    from edge.device.page import static_file

    script = static_file("page.js").decode()
    api = script[script.index("async function api("):]
    api = api[:api.index("\n  }\n")]
    # every non-GET request of the page carries the JSON content type (the server refuses others: 415)
    assert 'method !== "GET"' in api and '"Content-Type"] = "application/json"' in api, api


# ------------------------------------------------------------------ 3. class slots
def test_forgetting_unlearned_indices_and_empty_teaches_do_not_use_up_class_slots(tmp_path):
    folder = tmp_path / "inbox"
    folder.mkdir()
    state = tmp_path / "state"
    agent = RunningAgent(state, f"folder:{folder}", "--teach-batch", "4", "--max-classes", "4")
    try:
        agent.started()
        for i in range(50):
            status, body = agent.http("POST", f"/classes/{i % 4}/forget")
            assert status == 404 and "expected" in body["error"], (i, status, body)
            status, body = agent.http("POST", "/teach", {"label": f"tap{i}", "seconds": 60})
            assert status == 200, (i, body)
            status, body = agent.http("POST", "/teach/finish", {"label": f"tap{i}"})
            assert status == 200 and body["frames"] == 0, (i, body)
        status, info = agent.http("GET", "/status")
        assert info["classes"] == [] and info["teach_pending"] == []
        # every slot is still free: four real classes can be learned
        for k, name in enumerate(("a", "b", "c", "d")):
            for i, frame in enumerate(object_frames(OBJ_A + k, 4)):
                write_png(folder / name / f"{i:03d}.png", frame)
            learned = agent.wait_for(lambda e, name=name: e["event"] == "learned" and e["label"] == name, 60)[0]
            assert learned["index"] == k, learned
        assert not [e for e in agent.events if e["event"] == "error"], agent.events
        agent.signal(signal.SIGTERM)
        assert agent.finish(30) == 0
    finally:
        agent.close()


# ------------------------------------------------------------------ 4. after a forget
def test_forget_cancels_its_teach_clears_the_answer_and_status_and_predict_agree(tmp_path):
    folder = _labelled_inbox(tmp_path, (("cup", OBJ_A), ("ball", OBJ_B)))
    state = tmp_path / "state"
    agent = RunningAgent(state, f"folder:{folder}", "--teach-batch", "8")
    probe = tmp_path / "probe.png"
    write_png(probe, object_frames(OBJ_A, 1, session=2)[0])
    try:
        agent.started()
        agent.wait_for(lambda e: e["event"] == "checkpoint" and e["step"] == 2, 60)
        # a teach of a new class collects 2 of its 3 frames, then its class is forgotten
        assert agent.http("POST", "/teach", {"label": "mug", "frames": 3})[0] == 200
        write_png(folder / "u1.png", object_frames(OBJ_B, 1, session=3)[0])
        write_png(folder / "u2.png", object_frames(OBJ_B, 1, session=4)[0])
        agent.wait_for(lambda e: e["event"] == "prediction" and e.get("file") == "u2.png", 30)
        assert agent.http("GET", "/status")[1]["teach_pending"][0]["collected"] == 2
        status, body = agent.http("POST", "/classes/mug/forget")
        assert status == 200, body
        assert agent.http("GET", "/status")[1]["teach_pending"] == []
        write_png(folder / "u3.png", object_frames(OBJ_B, 1, session=5)[0])
        agent.wait_for(lambda e: e["event"] == "prediction" and e.get("file") == "u3.png", 30)
        # the class of the latest answer is forgotten: the latest answer never names it again
        write_png(folder / "u4.png", object_frames(OBJ_A, 1, session=3)[0])
        last = agent.wait_for(lambda e: e["event"] == "prediction" and e.get("file") == "u4.png", 30)[0]
        assert last["label"] == "cup", last
        assert agent.http("POST", "/classes/cup/forget")[0] == 200
        status, latest = agent.http("GET", "/prediction")
        assert status == 404 or latest["label"] not in ("cup", "mug"), latest
        write_png(folder / "u5.png", object_frames(OBJ_A, 1, session=4)[0])
        again = agent.wait_for(lambda e: e["event"] == "prediction" and e.get("file") == "u5.png", 30)[0]
        assert again["label"] in ("ball", "unknown"), again
        assert agent.http("GET", "/prediction")[1]["label"] in ("ball", "unknown")
        http_classes = agent.http("GET", "/status")[1]["classes"]
        assert [c["name"] for c in http_classes] == ["ball"]
        agent.signal(signal.SIGTERM)
        assert agent.finish(30) == 0, agent.stderr()
    finally:
        agent.close()
    assert not [e for e in agent.events if e["event"] == "learned" and e["label"] not in ("cup", "ball")], \
        [e for e in agent.events if e["event"] == "learned"]
    out = _cli("status", "--model", TINY, "--state", str(state), "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["classes"] == http_classes
    for extra in ((), ("--unknown-threshold", "0")):
        out = _cli("predict", "--model", TINY, "--state", str(state), "--json", *extra, str(probe))
        assert out.returncode == 0, out.stderr
        answer = json.loads(out.stdout)
        assert answer["label"] in ("ball", "unknown") and "cup" not in json.dumps(answer["top"]), answer


# ------------------------------------------------------------------ 6. bad bodies, the final checkpoint
def test_nested_json_and_a_client_leaving_mid_body_leave_no_traceback(tmp_path):
    folder = _labelled_inbox(tmp_path)
    state = tmp_path / "state"
    agent = RunningAgent(state, f"folder:{folder}", "--teach-batch", "8")
    try:
        agent.started()
        agent.wait_for(lambda e: e["event"] == "checkpoint" and e["step"] == 1, 60)
        for path in ("/teach", "/teach/finish", "/classes/cup/rename", "/classes/cup/forget"):
            for nested in (b"[" * 4000, b'{"a":' * 800):
                status, body = agent.http("POST", path, raw=nested)
                assert status == 400 and "nested" in body["error"], (path, status, body)
        for _ in range(5):  # a client that goes away halfway through its body
            with socket.create_connection(("127.0.0.1", agent.port), timeout=5) as sock:
                sock.sendall(b"POST /teach HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
                             b"Content-Length: 1000\r\n\r\n{\"label\": " % agent.port)
                time.sleep(0.05)
        time.sleep(0.5)
        assert agent.http("GET", "/status")[1]["classes"][0]["name"] == "cup"
        agent.signal(signal.SIGTERM)
        assert agent.finish(30) == 0
        err = agent.stderr()
        assert "Traceback" not in err and "RecursionError" not in err, err
    finally:
        agent.close()


def test_a_failed_final_checkpoint_exits_non_zero_with_one_line(tmp_path):
    folder = _labelled_inbox(tmp_path)
    state = tmp_path / "state"
    agent = RunningAgent(state, f"folder:{folder}", "--teach-batch", "8")
    try:
        agent.started()
        agent.wait_for(lambda e: e["event"] == "checkpoint" and e["step"] == 1, 60)
        state.rename(tmp_path / "moved-away")
        state.write_text("not a folder any more\n")  # every later save fails
        agent.signal(signal.SIGTERM)
        code = agent.finish(30)
        err = agent.stderr()
    finally:
        agent.close()
    assert code == 1, (code, err)
    errors = [line for line in err.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("edge-agent: error: final checkpoint failed: "), err
    assert "Traceback" not in err, err


# ------------------------------------------------------------------ 9. label aliases over HTTP
def test_label_aliases_are_refused_or_normalised_over_http(tmp_path):
    folder = tmp_path / "inbox"
    folder.mkdir()
    agent = RunningAgent(tmp_path / "state", f"folder:{folder}")
    try:
        agent.started()
        for label in ("\u0663", "unknown", "Unknown", "\uff13"):
            status, body = agent.http("POST", "/teach", {"label": label, "frames": 2})
            assert status == 400 and "expected" in body["error"] and "got" in body["error"], (label, status, body)
        nfc, nfd = unicodedata.normalize("NFC", "caf\u00e9"), unicodedata.normalize("NFD", "caf\u00e9")
        assert nfc != nfd
        first = agent.http("POST", "/teach", {"label": nfc, "frames": 2})[1]
        second = agent.http("POST", "/teach", {"label": nfd, "frames": 2})[1]
        assert first["index"] == second["index"] == 0 and first["label"] == second["label"] == nfc
        assert agent.http("POST", "/classes/caf%C3%A9/rename", {"to": "unknown"})[0] == 400
        assert agent.http("POST", "/classes/cafe%CC%81/rename", {"to": "UNKNOWN"})[0] == 400
        agent.signal(signal.SIGTERM)
        assert agent.finish(30) == 0
    finally:
        agent.close()


# ------------------------------------------------------------------ issue 26: answer counters
def test_metrics_count_unknown_answers_and_answers_per_class(tmp_path):
    folder = _labelled_inbox(tmp_path, (("cup", OBJ_A), ("ball", OBJ_B)))
    agent = RunningAgent(tmp_path / "state", f"folder:{folder}", "--teach-batch", "8")
    try:
        agent.started()
        agent.wait_for(lambda e: e["event"] == "checkpoint" and e["step"] == 2, 60)
        for i in range(3):
            write_png(folder / f"a{i}.png", object_frames(OBJ_A, 1, session=2 + i)[0])
        found = agent.wait_for(lambda e: e["event"] == "prediction" and "file" in e, 30, count=3)
        status, text = agent.http("GET", "/metrics")
        assert status == 200
        by_label: dict[tuple, int] = {}
        for e in found:
            by_label[(e["index"], e["label"])] = by_label.get((e["index"], e["label"]), 0) + 1
        unknown = by_label.pop((None, "unknown"), 0)
        assert f"edge_agent_unknown_answers_total {float(unknown)}" in text, text
        for (index, label), n in by_label.items():
            assert f'edge_agent_answers_total{{index="{index}",label="{label}"}} {float(n)}' in text, text
        agent.signal(signal.SIGTERM)
        assert agent.finish(30) == 0
    finally:
        agent.close()


# ------------------------------------------------------------------ 9. labels (the real LabelMap), manifest, cut plan
def test_label_map_normalises_refuses_reserved_and_non_ascii_digits():
    from edge.device.labels import LabelMap, check_name
    from edge.errors import InputError

    labels = LabelMap(max_classes=8)
    nfd = unicodedata.normalize("NFD", "caf\u00e9")
    assert labels.index_for(nfd, create=True) == labels.index_for("caf\u00e9", create=True) == 0
    assert labels.names == {0: "caf\u00e9"} and labels.find(nfd) == 0
    for bad in ("\u0663", "\uff13", "\u00b2", "unknown", "UNKNOWN", "Unknown"):
        with pytest.raises(InputError, match="expected .* got"):
            labels.index_for(bad, create=True)
    assert labels.find("3") == 3 and labels.find("\u0663") is None  # "٣" is not index 3
    with pytest.raises(InputError, match="other than 'unknown'"):
        labels.rename("caf\u00e9", "unknown")
    # a state saved before the rule still loads (its names are kept as saved)
    old = LabelMap(4)
    old.names = {0: "unknown"}
    assert LabelMap.from_state(old.state_dict(), 4).names == {0: "unknown"}
    assert check_name("caf\u00e9") == "caf\u00e9"


def test_cli_label_of_non_ascii_digits_is_not_an_index(tmp_path):
    folder = tmp_path / "imgs"
    write_png(folder / "a.png", object_frames(OBJ_A, 1)[0])
    out = _cli("learn", "--model", TINY, "--state", str(tmp_path / "s"), "--label", "\u0663", str(folder / "a.png"))
    assert out.returncode == 2 and "expected" in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_manifest_verify_checks_the_size_before_the_hash(tmp_path):
    from edge.errors import ChecksumError
    from edge.manifest import load_manifest

    model = tmp_path / "tiny"
    shutil.copytree(TINY, model)
    manifest = load_manifest(model)
    target = model / manifest.files[0].path
    target.write_bytes(target.read_bytes() + b"\0")
    with pytest.raises(ChecksumError, match=r"size expected \d+ bytes, got \d+"):
        manifest.verify(model)


def test_cut_plan_says_when_it_cannot_place_every_cut(caplog):
    import logging

    from firmware_sim.device.sim import cut_plan

    with caplog.at_level(logging.WARNING, logger="firmware_sim.device.sim"):
        assert len(cut_plan(60, 1000, 40, seed=0)) == 60
        assert not caplog.records
        cuts = cut_plan(60, 20, 3, seed=0)
    assert len(cuts) == 20
    assert any("--power-cuts 60: planned 20" in r.getMessage() for r in caplog.records), caplog.text


# ------------------------------------------------------------------ 8. loaders and the image memory budget
def test_filelist_labels_out_of_range_and_non_utf8_name_the_file(tmp_path):
    from firmware_sim.data.core50 import read_filelist

    good = "s1/o1/C_01_01_000.png 0\n"
    cases = [(good + "s1/o1/C_01_01_001.png 99999999999999999999\n", ":2:"),
             (good + "s1/o1/C_01_01_001.png 50\n", ":2:"),
             (good + "s1/o1/C_01_01_001.png \u0663\n", ":2:"),
             (good + "s1/o1/C_01_01_001.png -1\n", ":2:")]
    for i, (text, where) in enumerate(cases):
        path = tmp_path / f"list{i}.txt"
        path.write_text(text, encoding="utf-8")
        with pytest.raises(ValueError, match="expected") as info:
            read_filelist(path)
        assert f"{path}{where}" in str(info.value), info.value
    path = tmp_path / "latin1.txt"
    path.write_bytes(good.encode() + b"s1/o1/C_01_01_\xe9.png 0\n")
    with pytest.raises(ValueError, match="UTF-8") as info:
        read_filelist(path)
    assert str(path) in str(info.value)


# The peak is this process's own: ru_maxrss survives fork + exec (a child of a large pytest process starts
# with its parent's high-water mark), so the mark is reset (clear_refs 5) and read back as VmHWM.
_PEAK = """
import os, resource, sys
import psutil
from edge.images import load_image
load_image(sys.argv[2])  # Pillow's plugins loaded before measuring
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
except OSError:
    pass
rss = psutil.Process(os.getpid()).memory_info().rss
frame = load_image(sys.argv[1])
try:
    with open("/proc/self/status") as f:
        peak = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) * 1024
except (OSError, StopIteration):
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
print(frame.shape[0], frame.shape[1], peak - rss)
"""


def _decode_peak(path, warm) -> tuple[int, int, int]:
    out = subprocess.run([sys.executable, "-c", _PEAK, str(path), str(warm)], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    h, w, grown = (int(v) for v in out.stdout.split())
    return h, w, grown


@pytest.mark.slow
def test_image_decoding_stays_within_the_memory_budget(tmp_path):
    import numpy as np
    from PIL import Image

    from edge.images import DECODE_BUDGET_BYTES, MAX_PIXELS, PEAK_BYTES_PER_PIXEL

    assert MAX_PIXELS * PEAK_BYTES_PER_PIXEL <= DECODE_BUDGET_BYTES
    warm = tmp_path / "warm.png"
    Image.new("RGB", (8, 8)).save(warm)
    rng = np.random.default_rng(0)
    side = int(MAX_PIXELS ** 0.5)  # an image at the cap, in the modes that cost the most
    noise = rng.integers(0, 256, (side, side // 16, 1), dtype=np.uint8).repeat(16, axis=1)
    for mode in ("RGB", "RGBA", "P"):
        path = tmp_path / f"cap-{mode}.png"
        Image.fromarray(noise[..., 0]).convert(mode).save(path, compress_level=1)
        h, w, grown = _decode_peak(path, warm)
        assert (h, w) == (side, side // 16 * 16)
        assert grown <= DECODE_BUDGET_BYTES, (mode, grown, DECODE_BUDGET_BYTES)
        print(f"\n{mode} PNG {w}x{h}: decode peak +{grown / 2**20:.0f} MiB (budget {DECODE_BUDGET_BYTES / 2**20:.0f} MiB)")
        path.unlink()
    # a 100-megapixel JPEG is decoded reduced (draft), within the budget, not refused
    big = tmp_path / "100mp.jpg"
    Image.new("L", (10_000, 10_000), 128).save(big, quality=50)
    h, w, grown = _decode_peak(big, warm)
    assert h * w <= MAX_PIXELS and (h, w) == (2500, 2500), (h, w)
    assert grown <= DECODE_BUDGET_BYTES, grown
    print(f"100 Mpx JPEG: decoded at {w}x{h}, peak +{grown / 2**20:.0f} MiB")


def test_a_teach_interrupted_by_a_restart_does_not_keep_its_index(tmp_path):
    folder = tmp_path / "inbox"
    folder.mkdir()
    state = tmp_path / "state"
    agent = RunningAgent(state, f"folder:{folder}", "--teach-batch", "4")
    try:
        agent.started()
        assert agent.http("POST", "/teach", {"label": "tap", "seconds": 60})[1]["index"] == 0
        for i, frame in enumerate(object_frames(OBJ_A, 4)):  # a class learned meanwhile: a checkpoint
            write_png(folder / "cup" / f"{i:03d}.png", frame)
        agent.wait_for(lambda e: e["event"] == "checkpoint" and e["step"] == 1, 60)
        agent.signal(signal.SIGKILL)
        agent.finish(30)
    finally:
        agent.close()
    again = RunningAgent(state, f"folder:{folder}", "--teach-batch", "4")
    try:
        again.started()
        status, body = again.http("POST", "/classes/tap/forget")
        assert status == 404, body
        assert [c["name"] for c in again.http("GET", "/status")[1]["classes"]] == ["cup"]
        assert again.http("POST", "/teach", {"label": "mug", "frames": 2})[1]["index"] == 0
        again.signal(signal.SIGTERM)
        assert again.finish(30) == 0
    finally:
        again.close()


@pytest.mark.parametrize("strategy", ["slda", "replay"])
def test_learned_and_forgotten_classes_free_their_index(tmp_path, strategy):
    """Issue 24 item 3: a class that was learned and then forgotten gives its index back (the teach ledger
    removes every sample: exact for slda, a refit for replay), so teach/forget cycles never use up the
    class slots; the forgotten class is never answered again."""
    folder = tmp_path / "inbox"
    folder.mkdir()
    agent = RunningAgent(tmp_path / "state", f"folder:{folder}", "--teach-batch", "4", "--max-classes", "2",
                         "--strategy", strategy)
    try:
        agent.started()
        for k, name in enumerate(("a", "b", "c", "d", "e")):
            for i, frame in enumerate(object_frames(OBJ_A + k, 4)):
                write_png(folder / name / f"{i:03d}.png", frame)
            learned = agent.wait_for(lambda e, name=name: e["event"] == "learned" and e["label"] == name, 60)[0]
            assert learned["index"] == 0, learned
            status, body = agent.http("POST", f"/classes/{name}/forget")
            assert status == 200, body
            assert agent.http("GET", "/status")[1]["classes"] == []
        assert not [e for e in agent.events if e["event"] == "error"], agent.events
        agent.signal(signal.SIGTERM)
        assert agent.finish(30) == 0, agent.stderr()
    finally:
        agent.close()
