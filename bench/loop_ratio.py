"""One-off: `edge-agent run` loop vs bare `Backbone.embed` at batch 1 per model (5 alternating reps).

    python -m bench.loop_ratio default mobilenet efficientnet lite0_224   # default = the tiny model
"""
import sys
import time

import numpy as np
from bench.conftest import frames_for_model, model_dir_for
from bench import _common as C
from edge.agent import Agent
from edge.model_store import default_precision
from edge.runtimes import open_backbone
from edge.device.events import EventWriter
from edge.device.loop import DeviceLoop, LoopOptions
from edge.device.sources import IterableSource
for name in sys.argv[1:]:
    mdir = C.ROOT / "models" / "tiny" if name == "default" else model_dir_for(name)
    agent = Agent(open_backbone(mdir, runtime="litert", precision=default_precision(mdir, "litert"),
                                num_threads=C.THREADS))
    n = 300 if name != "default" else 1000
    frames = frames_for_model(mdir, n, seed=3)
    agent.learn_many(frames[:20], np.zeros(20, np.int64)); agent.learn_many(frames[20:40], np.ones(20, np.int64))
    stream = [(f, i / 30) for i, f in enumerate(frames)]
    opts = LoopOptions(exit_at_end=True, checkpoint=False)
    def loop_once():
        DeviceLoop(agent, IterableSource(stream), options=opts, events=EventWriter(None)).run()
    def bare():
        for f in frames: agent.backbone.embed(f[None])
    loop_once(); bare()
    r = []
    for _ in range(5):
        t=time.perf_counter(); loop_once(); a=time.perf_counter()-t
        t=time.perf_counter(); bare(); b=time.perf_counter()-t
        r.append((a, b))
    a, b = np.median([x[0] for x in r]), np.median([x[1] for x in r])
    print(f"{name}: loop {a/n*1e6:.0f} us/frame, bare embed {b/n*1e6:.0f} us, ratio {b/a:.2f} (per-rep {[round(y/x,2) for x,y in r]})", flush=True)
