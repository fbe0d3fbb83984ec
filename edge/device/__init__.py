"""The device runtime behind ``edge-agent run``: sources, the loop, events, labels, the HTTP API, the page.

* `edge.device.sources`: cameras, streams and video files (OpenCV), folders, picamera2; the
  latest-frame reader thread.
* `edge.device.loop`: `DeviceLoop` (predict, smooth, ``unknown``, teach, learner thread, checkpoints).
* `edge.device.events`: JSON-lines events.
* `edge.device.labels`: class names <-> indices, stored in the state.
* `edge.device.http`: the HTTP API (Starlette + uvicorn) and ``/metrics`` (prometheus_client).
* `edge.device.page`: the teach page (``GET /``; plain files in ``static/``).

OpenCV, Starlette, uvicorn, prometheus_client and picamera2 are imported only by the code that
uses them; ``import edge.device`` needs NumPy only.
"""

from edge.device.events import EventWriter
from edge.device.labels import LabelMap
from edge.device.loop import DeviceLoop, LoopOptions
from edge.device.sources import Frame, FrameGrabber, IterableSource, open_source

__all__ = ["DeviceLoop", "EventWriter", "Frame", "FrameGrabber", "IterableSource", "LabelMap", "LoopOptions",
           "open_source"]
