"""The teach page (``GET /``) in a real headless Chromium against a real ``edge-agent run``.

Debian's ``chromium`` + ``chromium-driver`` driven by Selenium; the agent's source is a video file
made here with OpenCV's VideoWriter. Browsers reach out to the internet on their own (updates, safe
browsing), so the agent and the browser run inside a private network namespace that has only ``lo``
(``unshare -n``, as root): `test_teach_page_in_headless_chromium` re-runs this file's
`test_inner_page_scenario` there and reads what it measured. Where the namespace, Chromium or its
driver cannot start, the test skips with the reason.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from _device_common import OBJ_A, OBJ_B, ROOT, RunningAgent, write_video
from _edge_common import need_model

pytest.importorskip("cv2", reason="the device runtime needs opencv-python-headless (the edge extra)")
pytest.importorskip("starlette", reason="the HTTP API needs starlette (the edge extra)")

#: Set (to the output folder) inside the network namespace only.
NETNS_OUT = "EDGE_PAGE_TEST_OUT"
FPS = 20
#: The video: (object, seconds, session). The page teaches A in the first segment and B in the
#: second; the answer must then follow the objects through the next two segments (another session).
SEGMENTS = [(OBJ_A, 8, 1), (OBJ_B, 6, 1), (OBJ_A, 4, 2), (OBJ_B, 4, 2)]
TOKEN = "page-test-token-1234"


def _why_no_browser() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    for exe in ("chromium", "chromedriver"):
        if shutil.which(exe) is None:
            return f"{exe} is not installed (apt-get install -y chromium chromium-driver)"
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "unshare or ip (util-linux, iproute2) is missing: no private network namespace"
    probe = subprocess.run(["unshare", "-n", "sh", "-c", "ip link set lo up"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"cannot start a private network namespace (unshare -n needs root): {probe.stderr.strip()[:200]}"
    return None


@pytest.mark.slow
def test_teach_page_in_headless_chromium(tmp_path):
    need_model()
    reason = _why_no_browser()
    if reason:
        pytest.skip(reason)
    began = time.monotonic()
    script = 'ip link set lo up && exec "$0" -m pytest -q -p no:cacheprovider -o addopts=-ra "$1" -k inner'
    proc = subprocess.run(["unshare", "-n", "sh", "-c", script, sys.executable, __file__], cwd=ROOT,
                          env={**os.environ, NETNS_OUT: str(tmp_path)}, capture_output=True, text=True,
                          timeout=600)
    seconds = time.monotonic() - began
    skipped = tmp_path / "skipped.txt"
    if skipped.is_file():
        pytest.skip(skipped.read_text())
    assert proc.returncode == 0 and "1 passed" in proc.stdout, proc.stdout[-8000:] + proc.stderr[-2000:]
    result = json.loads((tmp_path / "page-result.json").read_text())
    for name in ("teach-page.png", "teach-page-phone.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    result["outer_seconds"] = round(seconds, 1)
    (tmp_path / "page-result.json").write_text(json.dumps(result, indent=2))
    # What the closing note reports (pytest -s shows it).
    sys.stdout.write(f"\nteach page: {json.dumps(result)}\n")
    assert result["view_fps"] > 0 and result["answers_per_s"] > 0


# ---------------------------------------------------------------- inside the namespace


def _source_time(port: int, token: str | None) -> float:
    """The source time of the newest frame (``X-Frame-Time`` of ``GET /frame.jpg``)."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}/frame.jpg",
                                 headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return float(resp.headers["X-Frame-Time"])


def _browser(out: Path) -> Any:
    from selenium import webdriver
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--user-data-dir={out / 'chromium-profile'}", "--window-size=1180,1120", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-default-apps", "--disable-extensions", "--hide-scrollbars"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=shutil.which("chromedriver"), log_output=str(out / "chromedriver.log"))
    try:
        return webdriver.Chrome(service=service, options=options)
    except WebDriverException as exc:
        (out / "skipped.txt").write_text(f"headless Chromium did not start: {str(exc)[:300]}")
        pytest.skip(f"headless Chromium did not start: {exc}")


def _wait(driver: Any, script: str, timeout: float, what: str, *args: Any) -> Any:
    """Poll ``return <script>`` in the page until it is truthy; returns it."""
    deadline = time.monotonic() + timeout
    while True:
        value = driver.execute_script(f"return {script}", *args)
        if value:
            return value
        if time.monotonic() > deadline:
            state = driver.execute_script("return document.querySelector('main').innerText")
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}; page: {state[:1500]}")
        time.sleep(0.1)


def _answer(driver: Any) -> dict[str, Any]:
    return driver.execute_script(
        "const a = document.getElementById('answer');"
        "return {text: a.textContent, label: a.dataset.label, unknown: a.dataset.unknown,"
        " t: parseFloat(a.dataset.frameTime)};")


def _hold(driver: Any, element: Any, seconds: float, keyboard: bool) -> str:
    """Hold the teach button (mouse or Space); returns the sample counter read mid-hold."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    chain = ActionChains(driver)
    (chain.key_down(Keys.SPACE) if keyboard else chain.click_and_hold(element)).perform()
    time.sleep(seconds * 0.7)
    recording = "recording" in element.get_attribute("class")
    counter = driver.find_element("id", "teach-count").text
    time.sleep(seconds * 0.3)
    chain = ActionChains(driver)
    (chain.key_up(Keys.SPACE) if keyboard else chain.release(element)).perform()
    assert recording, "the hold button did not show that it records"
    return counter


@pytest.mark.skipif(NETNS_OUT not in os.environ,
                    reason="runs inside the network namespace started by test_teach_page_in_headless_chromium")
def test_inner_page_scenario():
    out = Path(os.environ[NETNS_OUT])
    began = time.monotonic()
    video = out / "objects.avi"
    write_video(video, [(obj, seconds * FPS, session) for obj, seconds, session in SEGMENTS], fps=FPS, size=128)
    # A non-loopback bind (only lo exists here): the page must ask for the token once.
    agent = RunningAgent(out / "state", str(video), "--realtime", "--http", "0.0.0.0:0", token=TOKEN)
    (out / "inbox").mkdir(exist_ok=True)
    plain = RunningAgent(out / "state-plain", f"folder:{out / 'inbox'}")  # loopback, no token
    driver = None
    result: dict[str, Any] = {}
    try:
        driver = _browser(out)
        browser_ready = time.monotonic()
        agent.started()
        plain.started()
        port = agent.port
        assert port is not None
        driver.get(f"http://127.0.0.1:{port}/")

        # Before the stream connects the camera box shows a placeholder, not the image's alt text.
        dialog = _wait(driver, "document.getElementById('token-dialog').open", 10, "the token dialog")
        assert dialog
        box = driver.execute_script(
            "const f = document.getElementById('frame');"
            "return {waiting: f.classList.contains('waiting'), img: getComputedStyle(document.getElementById('live')).display,"
            " text: document.getElementById('view-placeholder').innerText}")
        assert box == {"waiting": True, "img": "none", "text": "Waiting for the access token…"}, box
        driver.find_element("id", "token-input").send_keys(TOKEN + "\n")
        _wait(driver, "document.getElementById('st-fingerprint').textContent.length > 10", 10, "the status")
        status = agent.http("GET", "/status")[1]
        assert driver.find_element("id", "st-fingerprint").get_attribute("title") == status["fingerprint"]
        assert driver.find_element("id", "st-model").text == status["model"]
        _wait(driver, "document.getElementById('live').naturalWidth > 0", 10, "the first live frame")
        live = driver.find_element("id", "live")
        first, first_encoded = live.screenshot_as_png, int(_wait(
            driver, "document.getElementById('st-view').dataset.encoded", 10, "live view counters"))
        time.sleep(1.0)
        second = live.screenshot_as_png
        encoded = int(driver.execute_script("return document.getElementById('st-view').dataset.encoded"))
        assert first != second and encoded > first_encoded, "the live image did not update"
        panel = driver.find_element("id", "answer-panel")
        assert "none" in panel.get_attribute("class") and "nothing learned" in panel.text

        # Teach A with the keyboard alone: type the name, Tab to the button, hold Space for a second.
        name = driver.find_element("id", "class-name")
        name.click()
        name.send_keys("cup")
        name.send_keys("\t")
        hold = driver.find_element("id", "hold")
        focus = driver.execute_script(
            "const b = document.activeElement; return {id: b.id, visible: b.matches(':focus-visible'),"
            " outline: getComputedStyle(b).outlineStyle}")
        assert focus == {"id": "hold", "visible": True, "outline": "solid"}, focus
        t_cup = _source_time(port, TOKEN)
        assert t_cup < SEGMENTS[0][1] - 1.5, f"the page was ready too late in the video ({t_cup:.1f} s)"
        counter = _hold(driver, hold, 1.0, keyboard=True)
        assert counter.endswith("frames") and int(counter.split()[0]) > 0, counter
        row = _wait(driver, "document.querySelector('#class-list li[data-name=\"cup\"]')", 15, "class cup")
        samples = int(row.get_attribute("data-samples"))
        assert 10 <= samples <= 40 and f"{samples} samples" in row.text, row.text
        # "learning N frames" turns into "learned N frames" once the class holds them.
        learned = _wait(driver, "document.getElementById('teach-message').dataset.state === 'learned'"
                                " && document.getElementById('teach-message').textContent", 15, "the learned state")
        assert learned == f"learned {samples} frames of “cup”", learned
        _wait(driver, "document.getElementById('answer').dataset.label === 'cup'", 10, "the answer cup")

        # Wait for B's segment, then teach it with the mouse (press and hold for a second).
        while _source_time(port, TOKEN) < SEGMENTS[0][1] + 0.7:
            time.sleep(0.05)
        name.clear()
        name.send_keys("ball")
        t_ball = _source_time(port, TOKEN)
        counter = _hold(driver, hold, 1.0, keyboard=False)
        assert int(counter.split()[0]) > 0, counter
        row = _wait(driver, "document.querySelector('#class-list li[data-name=\"ball\"]')", 15, "class ball")
        ball_samples = int(row.get_attribute("data-samples"))
        assert 10 <= ball_samples <= 40, row.text
        options = driver.execute_script(
            "return [...document.querySelectorAll('#known-classes option')].map(o => o.value)")
        assert sorted(options) == ["ball", "cup"]

        # The next segments (another session): the answer follows the objects.
        seen: list[dict[str, Any]] = []
        a2_start = SEGMENTS[0][1] + SEGMENTS[1][1]
        b2_start = a2_start + SEGMENTS[2][1]
        end = b2_start + SEGMENTS[3][1]
        deadline = time.monotonic() + end + 20
        shot = False
        while time.monotonic() < deadline:
            answer = _answer(driver)
            seen.append(answer)
            if not shot and answer["t"] > b2_start + 2.0:
                rates = driver.execute_script(
                    "const v = document.getElementById('st-view').dataset, a = document.getElementById('st-answers').dataset;"
                    "return {view: parseFloat(v.fps), answers: parseFloat(a.rate),"
                    " loop: parseFloat(document.getElementById('st-fps').dataset.fps)}")
                result.update(view_fps=rates["view"], answers_per_s=rates["answers"], page_loop_fps=rates["loop"],
                              loop_fps=agent.http("GET", "/status")[1]["fps"])
                assert 0 < rates["answers"] <= rates["loop"], rates  # an answer needs a frame of the loop
                driver.save_screenshot(str(out / "teach-page.png"))
                shot = True
            if answer["t"] > end - 0.6:
                break
            time.sleep(0.1)
        in_a2 = [s["text"] for s in seen if a2_start + 1.0 <= s["t"] <= b2_start - 0.2]
        in_b2 = [s["text"] for s in seen if b2_start + 1.0 <= s["t"] <= end - 0.6]
        assert in_a2 and in_a2.count("cup") >= 0.8 * len(in_a2), in_a2
        assert in_b2 and in_b2.count("ball") >= 0.8 * len(in_b2) and in_b2[-1] == "ball", in_b2
        bars = driver.execute_script(
            "return [...document.querySelectorAll('#bars li')].map(li => [li.dataset.label, li.classList.contains('top')])")
        assert ["ball", True] in bars, bars
        assert shot, "no screenshot: the video ended before the last segment was shown"
        camera = driver.execute_script(  # the placeholder gave way to the live image
            "return [document.getElementById('frame').className,"
            " getComputedStyle(document.getElementById('view-placeholder')).display]")
        assert camera == ["frame", "none"], camera

        # A phone screen (a 390 x 844 viewport): one column, nothing wider than the screen, and the
        # camera, the answer and the Teach button all on the first screen.
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                               {"width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": True})
        time.sleep(0.5)
        driver.execute_script("window.scrollTo(0, 0)")
        phone = driver.execute_script(
            "const r = (id) => document.getElementById(id).getBoundingClientRect();"
            "return {scroll: document.documentElement.scrollWidth, width: innerWidth, height: innerHeight,"
            " hold: r('hold').bottom, answer: r('answer').bottom, camera: r('frame').bottom}")
        assert phone["width"] == 390 and phone["height"] == 844 and phone["scroll"] <= 390, phone
        assert phone["camera"] < phone["answer"] < phone["hold"] <= phone["height"], phone
        result["phone_hold_bottom_px"] = round(phone["hold"])
        driver.save_screenshot(str(out / "teach-page-phone.png"))
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})

        # Rename and forget from the class list.
        driver.find_element("css selector", '#class-list li[data-name="ball"] [data-action="rename"]').click()
        box = driver.switch_to.active_element
        assert box.get_attribute("value") == "ball"  # selected: typing replaces it
        box.send_keys("toy\n")
        _wait(driver, "document.querySelector('#class-list li[data-name=\"toy\"]')", 10, "the renamed class")
        forget = driver.find_element("css selector", '#class-list li[data-name="toy"] [data-action="forget"]')
        forget.click()
        assert forget.text == "Really forget?"
        forget.click()
        _wait(driver, "!document.querySelector('#class-list li[data-name=\"toy\"]')", 10, "the class forgotten")
        assert [c["name"] for c in agent.http("GET", "/status")[1]["classes"]] == ["cup"]

        # Nothing left the device, and the page logged no error (CSP violations would be errors).
        urls = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert urls and all(u.startswith(f"http://127.0.0.1:{port}/") for u in urls), urls
        severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"
                  and not ("/status" in e["message"] and "status of 401" in e["message"])]
        assert not severe, severe

        # A wrong token kept by the browser (the owner changed it): a plain sentence, not the server's
        # developer text, and the camera box says what it waits for.
        driver.execute_script("localStorage.setItem('edge-agent-token', 'not-the-token-0000')")
        driver.get(f"http://127.0.0.1:{port}/")
        error = _wait(driver, "document.getElementById('token-dialog').open"
                              " && document.getElementById('token-error').textContent", 10, "the wrong-token message")
        assert error == "Wrong access token — ask the device owner for the right one.", error
        assert driver.find_element("id", "view-placeholder").text == "Waiting for the access token…"

        # A loopback bind needs no token: no dialog, the status fills in.
        driver.set_window_size(1180, 1120)
        driver.get(f"http://127.0.0.1:{plain.port}/")
        _wait(driver, "document.getElementById('st-fingerprint').textContent.length > 10", 10, "the status (no token)")
        assert not driver.execute_script("return document.getElementById('token-dialog').open")
        result.update(seconds=round(time.monotonic() - began, 1),
                      browser_start_s=round(browser_ready - began, 1), cup_taught_at=round(t_cup, 2),
                      ball_taught_at=round(t_ball, 2), cup_samples=samples, ball_samples=ball_samples)
        (out / "page-result.json").write_text(json.dumps(result, indent=2))
    finally:
        if driver is not None:
            driver.quit()
        agent.close()
        plain.close()


# ---------------------------------------------------------------- the page's API, without a browser


def _get(port: int, path: str, headers: dict[str, str], read: int = -1) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read(read) if read > 0 else resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def _read_stream(port: int, path: str, headers: dict[str, str], marker: bytes, count: int,
                 timeout: float = 15.0) -> tuple[bytes, float]:
    """Read a streaming response until ``marker`` was seen ``count`` times; returns (bytes, seconds)."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers)
    began = time.monotonic()
    data = b""
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200
        while data.count(marker) < count:
            assert time.monotonic() - began < timeout, data[-300:]
            data += resp.read1(65536)
    return data, time.monotonic() - began


@pytest.mark.slow
def test_page_routes_live_view_events_and_hold_to_record_over_http(tmp_path):
    need_model()
    video = tmp_path / "objects.avi"
    write_video(video, [(OBJ_A, 200, 1), (OBJ_B, 200, 1)], fps=FPS)
    agent = RunningAgent(tmp_path / "state", str(video), "--realtime", token=TOKEN)
    try:
        agent.started()
        port = agent.port
        assert port is not None
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        cookie = {"Cookie": f"edge_token={TOKEN}"}
        # The page and its files need no token and carry the CSP; nothing else is served from static/.
        status, headers, body = _get(port, "/", {})
        assert status == 200 and b"/static/page.js" in body and "default-src 'self'" in headers["content-security-policy"]
        for name, media in (("page.js", "text/javascript"), ("page.css", "text/css")):
            status, headers, body = _get(port, f"/static/{name}", {})
            assert status == 200 and headers["content-type"].startswith(media) and len(body) > 1000
        assert _get(port, "/static/secret.txt", {})[0] == 404
        # The streams take the header or the cookie; without either, 401.
        assert _get(port, "/frame.jpg", {})[0] == 401
        status, headers, jpeg = _get(port, "/frame.jpg", cookie)
        assert status == 200 and jpeg[:2] == b"\xff\xd8" and int(headers["x-frame"]) >= 1
        data, seconds = _read_stream(port, "/stream.mjpg?fps=5", bearer, b"Content-Type: image/jpeg", 6)
        assert data.startswith(b"--frame\r\n") and data.count(b"\xff\xd8") >= 6
        assert seconds >= 0.8, f"?fps=5 sent 6 frames in {seconds:.2f} s: expected at least 1 s"
        assert _get(port, "/stream.mjpg?fps=99", bearer)[0] == 400
        # A cookie never authorises a change.
        assert agent.http("POST", "/teach", {"label": "cup", "seconds": 60}, token=False, headers=cookie)[0] == 401
        # Hold to record: press (60 s at most), release after ~1 s: what was collected is learned.
        status, body = agent.http("POST", "/teach", {"label": "cup", "seconds": 60})
        assert status == 200 and body["seconds"] == 60.0
        time.sleep(1.0)
        status, body = agent.http("POST", "/teach/finish", {"label": "cup"})
        assert status == 200 and body["label"] == "cup" and 10 <= body["frames"] <= 30, body
        learned = agent.wait_for(lambda e: e["event"] == "learned", 30)[0]
        assert learned["frames"] == body["frames"]
        status, info = agent.http("GET", "/status")
        assert info["teach_pending"] == [] and info["classes"][0]["samples"] == body["frames"]
        # A release with nothing waiting, an unknown class, a bad body: 4xx, nothing changes.
        for request, code, message in ((({"label": "cup"}), 400, "expected a waiting teach"),
                                       (({"label": "nosuch"}), 404, "unknown name"),
                                       (({}), 400, "expected a 'label'"),
                                       (({"label": "cup", "x": 1}), 400, "expected keys")):
            status, answer = agent.http("POST", "/teach/finish", request)
            assert status == code and message in answer["error"], (request, status, answer)
        assert agent.http("GET", "/status")[1]["step"] == info["step"]
        # Server-Sent Events: predictions with the top classes, and the live view's rate.
        data, _ = _read_stream(port, "/events", cookie, b"event: prediction", 3)
        messages = [m for m in data.decode().split("\n\n") if m.startswith("event: prediction")]
        latest = json.loads(messages[-1].split("data: ", 1)[1])
        assert latest["label"] == "cup" and latest["top"][0] == {"label": "cup", "p": latest["top"][0]["p"]}
        assert 0.0 < latest["top"][0]["p"] <= 1.0
        data, _ = _read_stream(port, "/events", bearer, b"event: view", 1)
        view = json.loads(data.decode().split("event: view\ndata: ", 1)[1].split("\n\n", 1)[0])
        assert view["max_fps"] == 10.0 and view["encoded"] >= 6
    finally:
        agent.close()
