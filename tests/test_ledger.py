"""The teach ledger (issue 25): events, thumbnails, undo and delete, saved with the checkpoint (its rows and
thumbnails in segment files beside it: tests/test_ledger_segments.py)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from _edge_common import need_model
from edge.agent import Agent, AgentConfig
from edge.checkpoint import CheckpointStore
from edge.cli import main
from edge.errors import CheckpointError, InputError
from edge.knowledge.ledger import Ledger
from edge.knowledge.thumbnails import decode_thumbnail, encode_thumbnail

D = 16


def _data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, D)) * 3
    return centres, rng.normal(size=(60, D)) * 3


def _agent(strategy: str) -> Agent:
    params = {"dims": 128} if strategy == "ridge" else {}   # a small projection: fast
    agent = Agent(None, AgentConfig(strategy=strategy, max_classes=5, buffer_capacity=40, strategy_params=params),
                  embedding_size=D, embedding_mean=np.full(D, 0.5), embedding_std=np.full(D, 2.0))
    agent.enable_ledger()
    return agent


def _taught(strategy: str, seed: int = 0) -> tuple[Agent, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed + 1)
    centres, queries = _data(seed)
    agent = _agent(strategy)
    for c in range(3):
        agent.teach_embeddings(centres[c] + rng.normal(size=(12, D)), np.full(12, c), source="test")
    return agent, centres, queries


@pytest.mark.parametrize("strategy", ["slda", "ncm", "ridge"])
def test_a_wrong_teach_undone_gives_bit_identical_answers(strategy: str) -> None:
    agent, centres, queries = _taught(strategy)
    before = agent.answer_embeddings(queries)
    stats_before = agent.stats.state_dict()
    wrong = centres[0] + np.random.default_rng(9).normal(size=(10, D))   # a cup taught as "ball" (2)
    agent.teach_embeddings(wrong, np.full(10, 2), source="test")
    assert not np.array_equal(agent.answer_embeddings(queries).probabilities, before.probabilities)
    done = agent.undo_last()
    assert done == {"event": 4, "label": 2, "samples": 10, "removal": "exact"}
    after = agent.answer_embeddings(queries)
    assert np.array_equal(after.index, before.index)
    assert np.array_equal(after.probabilities, before.probabilities)      # bit-identical
    assert np.array_equal(after.unknown, before.unknown)
    for key, value in agent.stats.state_dict().items():
        np.testing.assert_allclose(value, stats_before[key], rtol=0, atol=1e-9)
    assert [e.id for e in agent.knowledge.events()] == [1, 2, 3]


@pytest.mark.parametrize("strategy", ["slda", "ncm", "ridge"])
def test_deleting_one_sample_equals_never_teaching_it(strategy: str) -> None:
    agent, centres, queries = _taught(strategy)
    ledger = agent.knowledge
    victim = int(ledger.sample_id[5])
    rows = np.delete(ledger.rows, 5, axis=0)
    labels = np.delete(ledger.sample_label, 5)
    assert agent.remove_sample(victim)["removal"] == "exact"
    fresh = _agent(strategy)
    for c in range(3):
        fresh.teach_embeddings(rows[labels == c], labels[labels == c])
    np.testing.assert_allclose(agent.stats.sum_, fresh.stats.sum_, atol=1e-9)
    assert np.array_equal(agent.stats.count_, fresh.stats.count_)
    a, b = agent.answer_embeddings(queries), fresh.answer_embeddings(queries)
    assert np.array_equal(a.index, b.index)
    np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-5)
    with pytest.raises(InputError, match="unknown id"):
        agent.remove_sample(victim)


def test_a_gradient_head_loses_the_rows_from_its_buffer_and_is_refitted() -> None:
    agent, centres, queries = _taught("replay")
    wrong = centres[0] + np.random.default_rng(9).normal(size=(10, D))
    agent.teach_embeddings(wrong, np.full(10, 2))
    stored_before = len(agent.buffer)
    assert agent.undo_last()["removal"] == "refit"
    assert len(agent.buffer) < stored_before
    rows, labels = agent.buffer.contents()
    wrong_z = agent.standardizer(wrong.astype(np.float32))
    for row in wrong_z:                       # none of the undone rows is replayed any more
        assert not np.any(np.all(np.isclose(rows, row, atol=1e-6), axis=1) & (labels == 2))
    assert agent.evaluate_embeddings(centres, np.arange(3)) == 1.0   # refitted on what remains


def test_undo_on_an_empty_ledger_or_without_one_is_a_clear_error() -> None:
    agent = _agent("slda")
    with pytest.raises(InputError, match="empty ledger"):
        agent.undo_last()
    plain = Agent(None, AgentConfig(strategy="ncm", max_classes=3), embedding_size=D)
    with pytest.raises(Exception, match="ledger"):
        plain.undo_last()


def test_thumbnail_budget_drops_the_oldest_of_the_fullest_class_and_counts() -> None:
    frame = np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    thumb = encode_thumbnail(frame, 96)
    assert decode_thumbnail(thumb).shape == (72, 96, 3)     # aspect kept, longer side 96
    ledger = Ledger(4, thumbnail_budget=5 * len(thumb) + 10)
    ledger.record(np.zeros((4, 4)), np.zeros(4, np.int64), thumbnails=[thumb] * 4, when=1.0)
    ledger.record(np.zeros((2, 4)), np.ones(2, np.int64), thumbnails=[thumb] * 2, when=2.0)
    assert ledger.dropped_thumbnails == 1
    assert [len(t) > 0 for t in ledger.thumbs] == [False, True, True, True, True, True]   # class 0's oldest
    assert len(ledger) == 6                                 # the rows stay: removal stays exact


def test_the_ledger_lives_in_the_checkpoint_verified(tmp_path: Path) -> None:
    agent, _, queries = _taught("slda")
    thumb = encode_thumbnail(np.full((64, 64, 3), 90, np.uint8))
    agent.knowledge.thumbs[0] = thumb
    store = CheckpointStore(tmp_path, fingerprint="ab" * 32)
    path = store.save(agent.state_dict(), agent.config.to_dict(), agent.step_)
    loaded = store.latest()
    assert loaded is not None and any(k.startswith("knowledge.") for k in loaded.state)
    back = _agent("slda")
    back.load_state_dict(loaded.state)
    assert back.knowledge is not None and back.knowledge.thumbs[0] == thumb
    assert [e.to_dict() for e in back.knowledge.events()] == [e.to_dict() for e in agent.knowledge.events()]
    assert np.array_equal(back.answer_embeddings(queries).probabilities, agent.answer_embeddings(queries).probabilities)
    # an old state (no knowledge.* keys) loads with no ledger
    old = {k: v for k, v in agent.state_dict().items() if not k.startswith("knowledge.")}
    plain = _agent("slda")
    plain.load_state_dict(old)
    assert plain.knowledge is None
    # the rows and thumbnails live in a segment file beside the checkpoint, named with its sha256 in
    # the checkpoint's verified header: a changed thumbnail byte there is caught
    assert "knowledge.thumb_data.npy" not in zipfile.ZipFile(path).namelist()
    (ref,) = loaded.header["segments"]
    segment = tmp_path / "ledger" / ref["name"]
    data = bytearray(segment.read_bytes())
    at = bytes(data).index(thumb)
    data[at + len(thumb) // 2] ^= 0xFF
    segment.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        store.load(path)


def test_a_malformed_ledger_state_is_refused_and_changes_nothing() -> None:
    agent, _, queries = _taught("ncm")
    state = agent.state_dict()
    before = agent.answer_embeddings(queries).probabilities
    bad = dict(state)
    bad["knowledge.sample_label"] = state["knowledge.sample_label"] + 7   # out of range
    with pytest.raises(InputError, match="teach ledger"):
        agent.load_state_dict(bad)
    assert np.array_equal(agent.answer_embeddings(queries).probabilities, before)
    assert len(agent.knowledge) == 36


def _write_images(folder: Path, name: str, colour: tuple[int, int, int], n: int, seed: int) -> list[str]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        pixels = (np.array(colour)[None, None, :] + rng.normal(0, 25, (80, 100, 3))).clip(0, 255).astype(np.uint8)
        path = folder / f"{name}{i}.png"
        Image.fromarray(pixels).save(path)
        paths.append(str(path))
    return paths


def test_cli_teach_wrong_undo_samples_rename_forget(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = str(need_model())
    common = ["--model", model, "--state", str(tmp_path / "st"), "--strategy", "slda"]
    cup = _write_images(tmp_path, "cup", (200, 30, 30), 4, 0)
    ball = _write_images(tmp_path, "ball", (30, 200, 30), 4, 1)
    probe = _write_images(tmp_path, "probe", (120, 120, 40), 3, 2)
    assert main(["learn", *common, "--label", "cup", *cup]) == 0
    assert main(["learn", *common, "--label", "ball", *ball]) == 0
    capsys.readouterr()
    assert main(["predict", *common, "--json", *probe]) == 0
    before = capsys.readouterr().out
    assert main(["learn", *common, "--label", "ball", *cup]) == 0          # the wrong teach
    assert main(["predict", *common, "--json", *probe]) == 0
    assert capsys.readouterr().out.splitlines()[-3:] != before.splitlines()
    assert main(["undo", *common]) == 0
    assert "removed teach 3 (4 samples) of class ball (exact)" in capsys.readouterr().out
    assert main(["predict", *common, "--json", *probe]) == 0
    after = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    first = [json.loads(line) for line in before.splitlines()]
    for a, b in zip(after, first, strict=True):   # the answers are identical; the novelty score
        na, nb = a.pop("novelty", None), b.pop("novelty", None)   # up to float rounding (1e-9)
        assert a == b
        assert na == pytest.approx(nb, rel=1e-9)
    assert main(["samples", *common, "--label", "cup", "--json", "--thumbnails", str(tmp_path / "th")]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert listing["learned_rows"] == 4 and [s["event"] for s in listing["samples"]] == [1] * 4
    assert all(s["thumbnail_bytes"] > 0 for s in listing["samples"])
    assert decode_thumbnail((tmp_path / "th" / "1.jpg").read_bytes()).shape == (80, 100, 3)  # the original, not 32 px
    assert main(["undo", *common, "--sample", "2"]) == 0
    assert main(["rename", *common, "--label", "ball", "--to", "sphere"]) == 0
    assert main(["forget", *common, "--label", "cup"]) == 0
    assert "3 samples removed (exact)" in capsys.readouterr().out
    assert main(["status", *common, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert [c["name"] for c in status["classes"]] == ["sphere"]
    assert main(["undo", *common, "--event", "99"]) == 2                  # unknown: one line, exit 2
    assert "teach event 99" in capsys.readouterr().err


def test_undo_help_says_which_strategies_remove_exactly(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["undo", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "exact for the statistics strategies slda, ncm and ridge" in text and "refitted" in text


def test_flash_cost_of_thumbnails_per_1000_samples() -> None:
    """Default (128 px, JPEG q80) thumbnails of the real photographs' 224-px teach frames
    (tests/_real_photos.py, ImageNet set, rotation 0): measured 4.0 MB per 1,000 samples
    (2.7 MB at 96 px, 5.7 MB at 160 px)."""
    from _real_photos import photo_sets_or_skip, split
    from edge.knowledge.thumbnails import THUMBNAIL_SIZE

    frames = np.concatenate(split(photo_sets_or_skip()["imagenet"], 0).teach)
    sizes = {size: np.mean([len(encode_thumbnail(f, size)) + 8 for f in frames]) * 1000   # + its int64 offset
             for size in (96, THUMBNAIL_SIZE, 160)}
    print("thumbnail flash per 1,000 samples: " + ", ".join(f"{k} px {v / 1e6:.2f} MB" for k, v in sizes.items()))
    assert 2e6 < sizes[THUMBNAIL_SIZE] < 6e6
    assert sizes[96] < sizes[THUMBNAIL_SIZE] < sizes[160]
    assert Ledger(8).thumbnail_budget / (sizes[THUMBNAIL_SIZE] / 1000) > 3000   # the default budget's samples


def test_http_classes_samples_delete_undo_and_export_on_a_running_agent(tmp_path: Path) -> None:
    """A real ``edge-agent run`` on loopback: folder teaches become ledger events; the API lists,
    deletes one sample, undoes the last teach (answers back to before, exact) and exports a pack."""
    from _device_common import RunningAgent, object_frames, write_png
    from edge.knowledge.pack import read_pack

    need_model()
    folder = tmp_path / "inbox"
    for name, obj in (("cup", 1), ("ball", 2)):
        for i, frame in enumerate(object_frames(obj, 6)):
            write_png(folder / name / f"{i:03d}.png", frame)
    agent = RunningAgent(tmp_path / "state", f"folder:{folder}", "--teach-batch", "6", "--strategy", "slda")
    try:
        agent.started()
        agent.wait_for(lambda e: e["event"] == "learned", 60, count=2)
        status, listing = agent.http("GET", "/classes")
        assert status == 200 and listing["removal"] == "exact"
        assert {c["name"]: c["ledger_samples"] for c in listing["classes"]} == {"cup": 6, "ball": 6}
        assert listing["last_event"]["source"] == "device" and listing["last_event"]["samples"] == 6
        status, page = agent.http("GET", "/classes/cup/samples?limit=4")
        assert status == 200 and page["total"] == 6 and len(page["samples"]) == 4
        assert all(s["thumbnail"] for s in page["samples"])            # the camera pictures' thumbnails
        req = __import__("urllib.request").request.Request(f"http://127.0.0.1:{agent.port}{page['samples'][0]['thumbnail']}")
        with __import__("urllib.request").request.urlopen(req, timeout=20) as resp:
            assert resp.headers["Content-Type"] == "image/jpeg"
            assert decode_thumbnail(resp.read()).shape == (64, 64, 3)     # the 64-px folder files, not 32-px input
        victim = page["samples"][0]["id"]
        status, done = agent.http("DELETE", f"/samples/{victim}")
        assert status == 200 and done["removal"] == "exact" and done["name"] == "cup", done
        assert agent.http("DELETE", f"/samples/{victim}")[0] == 400          # already gone
        assert agent.http("GET", "/classes/nothing/samples")[0] == 404
        assert agent.http("GET", "/classes/cup/samples?limit=9999")[0] == 400
        # a cross-site page may not delete (the API's Origin check applies to these routes too)
        assert agent.http("DELETE", "/events/1", headers={"Origin": "http://evil.example"})[0] == 403
        status, done = agent.http("POST", "/undo", {})   # the folder's last teach: "cup" (ball/ comes first)
        assert status == 200 and done["name"] == "cup" and done["samples"] == 5, done
        status, listing = agent.http("GET", "/classes")
        assert {c["name"]: c["ledger_samples"] for c in listing["classes"]} == {"ball": 6}
        req = __import__("urllib.request").request.Request(f"http://127.0.0.1:{agent.port}/export")
        with __import__("urllib.request").request.urlopen(req, timeout=20) as resp:
            (tmp_path / "x.pack").write_bytes(resp.read())
        pack = read_pack(tmp_path / "x.pack")
        assert pack.class_names == ["ball"] and len(pack.ledger) == 6
        agent.signal(__import__("signal").SIGTERM)
        assert agent.finish(30) == 0, agent.stderr()
    finally:
        agent.close()


def test_a_state_from_before_the_ledger_loads_with_a_note(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from edge.runtimes import open_backbone

    model = need_model()
    state = tmp_path / "st"
    with open_backbone(model) as backbone:
        agent = Agent(backbone, AgentConfig(strategy="ncm"))       # no ledger: as before issue 25
        rng = np.random.default_rng(0)
        agent.learn_many(rng.integers(0, 255, (4, 32, 32, 3), dtype=np.uint8), np.zeros(4, int))
        CheckpointStore(state, backbone.manifest.fingerprint).save(agent.state_dict(), agent.config.to_dict(),
                                                                    agent.step_)
    common = ["--model", str(model), "--state", str(state), "--strategy", "ncm"]
    assert main(["undo", *common]) == 2
    captured = capsys.readouterr()
    assert "taught before the teach ledger" in captured.out and "empty ledger" in captured.err
    assert main(["samples", *common, "--label", "0", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert listing["learned_rows"] == 4 and listing["samples"] == []


@pytest.mark.slow
def test_the_page_shows_thumbnails_deletes_a_sample_and_undoes_the_last_teach(tmp_path: Path) -> None:
    """Headless Chromium on the page of a real ``edge-agent run`` (loopback): a class's thumbnails
    load, one is deleted, "Undo last teach" removes the newest teach. Screenshot: docs/knowledge-page.png
    is copied from tmp_path/knowledge-page.png."""
    import shutil

    from _device_common import RunningAgent, object_frames, write_png

    need_model()
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.skip("chromium and chromedriver are needed (make setup-test installs them)")
    pytest.importorskip("selenium")
    from test_device_page import _browser, _wait

    folder = tmp_path / "inbox"
    for name, obj in (("cup", 1), ("ball", 2)):
        for i, frame in enumerate(object_frames(obj, 5, size=128)):
            write_png(folder / name / f"{i:03d}.png", frame)
    agent = RunningAgent(tmp_path / "state", f"folder:{folder}", "--teach-batch", "5", "--strategy", "ncm")
    driver = None
    try:
        agent.started()
        agent.wait_for(lambda e: e["event"] == "learned", 60, count=2)
        driver = _browser(tmp_path)
        driver.get(f"http://127.0.0.1:{agent.port}/")
        _wait(driver, "document.querySelectorAll('#class-list li').length === 2", 20, "two classes")
        driver.execute_script("document.querySelector('#class-list li[data-name=\"ball\"] [data-action=\"samples\"]').click()")
        loaded = ("Array.from(document.querySelectorAll('.thumb img'))"
                  ".filter((i) => i.complete && i.naturalWidth === 128).length")
        assert _wait(driver, f"{loaded} === 5 && {loaded}", 20, "five 128-px thumbnails of ball") == 5
        driver.save_screenshot(str(tmp_path / "knowledge-page.png"))
        driver.execute_script("document.querySelector('.thumb [data-action=\"delete-sample\"]').click()")
        _wait(driver, "document.getElementById('classes-message').textContent.includes('deleted sample')", 20,
              "the delete message")
        _wait(driver, "document.querySelectorAll('.thumb').length === 4", 20, "four thumbnails left")
        driver.execute_script("document.getElementById('undo').click()")
        _wait(driver, "document.getElementById('classes-message').textContent.includes('undid the last teach')",
              20, "the undo message")
        _wait(driver, "document.querySelectorAll('#class-list li').length === 1", 20, "one class left")
        status, listing = agent.http("GET", "/classes")
        assert status == 200 and len(listing["classes"]) == 1
        left = listing["classes"][0]
        # the undone teach was the newest (cup: the folder's second label); ball lost one sample
        assert (left["name"], left["ledger_samples"]) == ("ball", 4), listing
        assert (tmp_path / "knowledge-page.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        if driver is not None:
            driver.quit()
        agent.close()
