"""Backbone embedding: every runtime x precision x batch x threads, on the default model and on
MobileNetV2-0.35 @128 (random weights); and the raw baseline (bare interpreter/session invoke)."""

from __future__ import annotations

import numpy as np

from bench._raw import raw_runner
from bench.conftest import frames_for_model, model_dir_for, need_case, open_case


def _info(benchmark, **fields) -> None:
    benchmark.extra_info.update(fields)


def test_embed(benchmark, model, case_threads, batch):
    case, threads = case_threads
    bb = open_case(model, case, threads)
    frames = frames_for_model(model_dir_for(model), batch)
    try:
        out = benchmark(bb.embed, frames)
    finally:
        bb.close()
    _info(benchmark, kind="embed", model=model, case=case, threads=threads, batch=batch,
          providers=list(bb.info.providers))
    assert out.shape == (batch, bb.embedding_size)
    assert np.isfinite(out).all()


def test_raw(benchmark, model, case_threads, batch):
    case, threads = case_threads
    runtime, precision, providers = need_case(case)
    mdir = model_dir_for(model)
    frames = frames_for_model(mdir, batch)
    run = raw_runner(mdir, runtime, precision, providers, threads, frames)
    out = benchmark(run)
    _info(benchmark, kind="raw", model=model, case=case, threads=threads, batch=batch)
    assert out.shape[0] == batch and out.ndim == 2
    assert np.isfinite(out.astype(np.float32)).all()


def test_model_size(model, figures):
    """int8 vs fp32 file size per model (the speed side is in test_embed)."""
    from edge.manifest import load_manifest

    mdir = model_dir_for(model)
    manifest = load_manifest(mdir, verify=False)
    sizes = {f"{f.format}-{f.precision}": (mdir / f.path).stat().st_size for f in manifest.files}
    figures.setdefault("model_bytes", {})[model] = sizes
    figures.setdefault("model_info", {})[model] = {
        "architecture": manifest.architecture, "input_shape": list(manifest.input_shape),
        "embedding_size": manifest.embedding_size}
    assert sizes["tflite-int8"] < sizes["tflite-fp32"], sizes
