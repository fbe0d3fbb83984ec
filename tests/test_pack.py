"""Knowledge packs (issue 25): export, import, exact merge, refusals and a fuzzed parser."""

from __future__ import annotations

import io
import json
import time
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

from _edge_common import need_model
from edge.agent import Agent, AgentConfig
from edge.cli import main
from edge.device.labels import LabelMap
from edge.knowledge.pack import PackError, import_packs, read_pack, write_pack

D = 12
FP = "f" * 64
NAMES = ["cup", "ball", "key"]


def _rows(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, D)) * 3
    return {n: (centres[i] + rng.normal(size=(20, D))).astype(np.float32) for i, n in enumerate(NAMES)}


def _device(strategy: str, teaches: list[tuple[str, np.ndarray]], max_classes: int = 8) -> tuple[Agent, LabelMap]:
    params = {"dims": 128} if strategy == "ridge" else {}
    agent = Agent(None, AgentConfig(strategy=strategy, max_classes=max_classes, buffer_capacity=30,
                                    strategy_params=params),
                  embedding_size=D, embedding_mean=np.full(D, 0.25), embedding_std=np.full(D, 1.5))
    agent.enable_ledger()
    labels = LabelMap(max_classes)
    for name, rows in teaches:
        index = labels.index_for(name, create=True, used=agent.classes_seen().tolist())
        agent.teach_embeddings(rows, np.full(len(rows), index), source="test")
        labels.add_counts(index, len(rows))
    return agent, labels


@pytest.mark.parametrize("strategy", ["slda", "ncm", "ridge"])
def test_two_devices_merged_equal_one_device_taught_everything(strategy: str, tmp_path: Path) -> None:
    rows = _rows()
    a, la = _device(strategy, [("cup", rows["cup"]), ("ball", rows["ball"][:10])])
    b, lb = _device(strategy, [("ball", rows["ball"][10:]), ("key", rows["key"])])
    one, lo = _device(strategy, [("cup", rows["cup"]), ("ball", rows["ball"][:10]), ("ball", rows["ball"][10:]),
                                 ("key", rows["key"])])
    write_pack(tmp_path / "b.pack", b, lb, fingerprint=FP)
    merged, names, report = import_packs(a, la, [read_pack(tmp_path / "b.pack")], fingerprint=FP)
    assert report[0]["samples"] == 30 and names.names == lo.names
    for key, value in merged.stats.state_dict().items():
        np.testing.assert_allclose(value, one.stats.state_dict()[key], rtol=1e-12, atol=1e-9)
    for key, value in merged.strategy.state_dict().items():
        np.testing.assert_allclose(value, one.strategy.state_dict()[key], rtol=1e-6, atol=1e-6)
    queries = np.random.default_rng(5).normal(size=(200, D)).astype(np.float32) * 3
    got, want = merged.answer_embeddings(queries), one.answer_embeddings(queries)
    assert np.array_equal(got.index, want.index)
    np.testing.assert_allclose(got.probabilities, want.probabilities, atol=1e-5)
    assert len(a.knowledge) == 30 and a.stats.count_.sum() == 30        # the original is untouched


def test_a_buffer_strategy_merges_rows_under_its_capacity(tmp_path: Path) -> None:
    rows = _rows()
    a, la = _device("replay", [("cup", rows["cup"]), ("ball", rows["ball"])])
    b, lb = _device("replay", [("key", rows["key"])])
    write_pack(tmp_path / "b.pack", b, lb, fingerprint=FP)
    merged, names, _ = import_packs(a, la, [read_pack(tmp_path / "b.pack")], fingerprint=FP)
    assert len(merged.buffer) == merged.buffer.capacity == 30
    assert set(merged.buffer.contents()[1].tolist()) == {0, 1, 2}
    centres = np.stack([rows[n].mean(0) for n in NAMES])
    assert merged.evaluate_embeddings(centres, np.array([names.find(n) for n in NAMES])) == 1.0


def test_conflicts_rename_refuse_and_another_backbone(tmp_path: Path) -> None:
    rows = _rows()
    a, la = _device("ncm", [("cup", rows["cup"])])
    b, lb = _device("ncm", [("cup", rows["ball"])])
    write_pack(tmp_path / "b.pack", b, lb, fingerprint=FP)
    pack = read_pack(tmp_path / "b.pack")
    _, names, _ = import_packs(a, la, [pack], fingerprint=FP, on_conflict="rename")
    assert names.known() == ["cup", "cup-2"]
    with pytest.raises(PackError, match="existing class"):
        import_packs(a, la, [pack], fingerprint=FP, on_conflict="refuse")
    with pytest.raises(PackError, match=f"fingerprint expected {'0' * 64}, got {FP}"):
        import_packs(a, la, [pack], fingerprint="0" * 64)
    with pytest.raises(PackError, match="thumbnail for every sample"):
        import_packs(a, la, [pack], fingerprint="0" * 64, re_embed=True)


def _mutants(blob: bytes, rng: np.random.Generator, n: int):
    for i in range(n):
        data = bytearray(blob)
        kind = i % 4
        if kind == 0:      # flip bytes
            for _ in range(int(rng.integers(1, 8))):
                data[int(rng.integers(0, len(data)))] ^= int(rng.integers(1, 256))
        elif kind == 1:    # truncate
            data = data[: int(rng.integers(0, len(data)))]
        elif kind == 2:    # splice a chunk elsewhere
            a, b = sorted(rng.integers(0, len(data), 2).tolist())
            at = int(rng.integers(0, len(data)))
            data = data[:at] + data[a:b] + data[at:]
        else:              # overwrite a run with one value
            a = int(rng.integers(0, len(data)))
            data[a:a + int(rng.integers(1, 64))] = bytes([int(rng.integers(0, 256))]) * len(data[a:a + 64][:64])
        yield bytes(data)


@pytest.mark.slow
def test_fuzzed_packs_raise_only_pack_error_and_leave_the_state_intact(tmp_path: Path) -> None:
    rows = _rows()
    a, la = _device("slda", [("cup", rows["cup"])])
    b, lb = _device("slda", [("ball", rows["ball"]), ("key", rows["key"])])
    write_pack(tmp_path / "b.pack", b, lb, fingerprint=FP)
    blob = (tmp_path / "b.pack").read_bytes()
    state = a.state_dict()
    rng = np.random.default_rng(0)
    target = tmp_path / "m.pack"
    accepted = refused = 0
    for data in _mutants(blob, rng, 2000):
        target.write_bytes(data)
        try:
            pack = read_pack(target)
            import_packs(a, la, [pack], fingerprint=FP)
            accepted += 1                      # a mutation of zip padding can leave a valid pack
        except PackError:
            refused += 1
    assert refused > 1900
    after = a.state_dict()
    assert set(after) == set(state) and all(np.array_equal(after[k], state[k]) for k in state)


def test_hostile_packs_are_refused_before_allocating(tmp_path: Path) -> None:
    rows = _rows()
    b, lb = _device("ncm", [("ball", rows["ball"])])
    write_pack(tmp_path / "b.pack", b, lb, fingerprint=FP)
    with zipfile.ZipFile(tmp_path / "b.pack") as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    # a zip bomb: a member claiming 2 GB of zeros
    bomb = tmp_path / "bomb.pack"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        for n, data in members.items():
            if n == "rows.npy":
                buf = io.BytesIO()
                np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False,
                                                           "shape": (1 << 29, 1)})
                zf.writestr(n, buf.getvalue() + b"\0" * (1 << 22))
            else:
                zf.writestr(n, data)
    with pytest.raises(PackError, match="header claims|budget"):
        read_pack(bomb)
    # a path-like member name and a pickled (object) array
    for name, data in (("../../etc/passwd.npy", members["rows.npy"]), ("rows.npy", None)):
        evil = tmp_path / "evil.pack"
        with zipfile.ZipFile(evil, "w") as zf:
            for n, d in members.items():
                if n == "rows.npy" and data is None:
                    buf = io.BytesIO()
                    np.save(buf, np.array([{"x": 1}], dtype=object), allow_pickle=True)
                    d = buf.getvalue()
                zf.writestr(n, d)
            if data is not None:
                zf.writestr(name, data)
        with pytest.raises(PackError):
            read_pack(evil)
    # a header whose hash does not match
    hdr = json.loads(np.load(io.BytesIO(members["__pack__.npy"])).tobytes())
    hdr["classes"][0]["name"] = "bomb"
    changed = tmp_path / "changed.pack"
    with zipfile.ZipFile(changed, "w") as zf:
        for n, d in members.items():
            if n == "__pack__.npy":
                buf = io.BytesIO()
                np.save(buf, np.frombuffer(json.dumps(hdr).encode(), np.uint8))
                d = buf.getvalue()
            zf.writestr(n, d)
    with pytest.raises(PackError, match="header sha256"):
        read_pack(changed)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["slda", "ncm"])
def test_merging_100_packs_in_one_call_is_exact(strategy: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(20, D)) * 3
    packs, everything = [], []
    for device in range(100):
        classes = rng.choice(20, size=3, replace=False)
        teaches = [(f"c{c}", (centres[c] + rng.normal(size=(5, D))).astype(np.float32)) for c in classes]
        everything += teaches
        agent, labels = _device(strategy, teaches, max_classes=32)
        path = tmp_path / f"d{device}.pack"
        write_pack(path, agent, labels, fingerprint=FP)
        packs.append(path)
    target, names = _device(strategy, [], max_classes=32)
    tracemalloc.start()
    start = time.perf_counter()
    merged, names, report = import_packs(target, names, [read_pack(p) for p in packs], fingerprint=FP)
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    size = sum(p.stat().st_size for p in packs)
    print(f"merged 100 packs ({size / 1e6:.2f} MB, {sum(r['samples'] for r in report)} samples) in "
          f"{seconds:.2f} s, peak {peak / 1e6:.1f} MB traced")
    one, lo = _device(strategy, everything, max_classes=32)
    order = [lo.find(names.name_of(i)) for i in range(32) if i in names.names]
    mine = [i for i in range(32) if i in names.names]
    np.testing.assert_allclose(merged.stats.sum_[mine], one.stats.sum_[order], rtol=1e-10, atol=1e-8)
    assert np.array_equal(merged.stats.count_[mine], one.stats.count_[order])
    queries = rng.normal(size=(300, D)).astype(np.float32) * 3
    got = merged.answer_embeddings(queries).index
    want = one.answer_embeddings(queries).index
    assert [names.name_of(i) for i in got] == [lo.name_of(i) for i in want]


def test_cli_export_import_and_another_backbone_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from PIL import Image

    model = str(need_model())
    rng = np.random.default_rng(0)
    files = {}
    for name, colour in (("cup", (200, 30, 30)), ("ball", (30, 200, 30)), ("key", (30, 30, 200))):
        files[name] = []
        for i in range(4):
            p = tmp_path / f"{name}{i}.png"
            Image.fromarray((np.array(colour) + rng.normal(0, 25, (60, 60, 3))).clip(0, 255).astype(np.uint8)).save(p)
            files[name].append(str(p))

    def common(state: str) -> list[str]:
        return ["--model", model, "--state", str(tmp_path / state), "--strategy", "ncm"]

    assert main(["learn", *common("a"), "--label", "cup", *files["cup"]]) == 0
    assert main(["learn", *common("a"), "--label", "ball", *files["ball"]]) == 0
    assert main(["learn", *common("b"), "--label", "key", *files["key"]]) == 0
    for name in ("cup", "ball", "key"):
        assert main(["learn", *common("all"), "--label", name, *files[name]]) == 0
    assert main(["export", *common("b"), "-o", str(tmp_path / "b.pack")]) == 0
    assert main(["import", *common("a"), str(tmp_path / "b.pack")]) == 0
    capsys.readouterr()
    probes = files["cup"][:1] + files["key"][:2]
    assert main(["predict", *common("a"), "--json", *probes]) == 0
    merged = capsys.readouterr().out
    assert main(["predict", *common("all"), "--json", *probes]) == 0
    alone = capsys.readouterr().out
    for x, y in zip(merged.splitlines(), alone.splitlines(), strict=True):
        a, b = json.loads(x), json.loads(y)
        assert a["label"] == b["label"] and [t["label"] for t in a["top"]] == [t["label"] for t in b["top"]]
        assert [t["p"] for t in a["top"]] == pytest.approx([t["p"] for t in b["top"]], abs=1e-6)
    # a pack claiming another backbone: refused, naming expected and got; the state is unchanged
    agent = Agent(None, AgentConfig(strategy="ncm", max_classes=50), embedding_size=256)
    agent.enable_ledger()
    agent.teach_embeddings(np.ones((2, 256), np.float32), [0, 0])
    other = LabelMap(50)
    other.index_for("cup", create=True)
    write_pack(tmp_path / "other.pack", agent, other, fingerprint="0" * 64)
    before = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert main(["import", *common("a"), str(tmp_path / "other.pack")]) == 2
    err = capsys.readouterr().err
    assert "fingerprint expected dd0e9627" in err and f"got {'0' * 64}" in err and "--re-embed" in err
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == before
