"""Fit a camera frame to the model's input: ``squash``, ``crop`` or ``letterbox``.

The three policies of Edge Impulse's image block: ``squash`` stretches the whole frame to the input
size (aspect ratio lost), ``crop`` scales the shorter side to fit and cuts the centre (fit-shortest;
the edges are lost), ``letterbox`` scales the longer side to fit and pads with black (fit-longest;
nothing lost, some input wasted). Resizing is Pillow's bilinear filter on uint8 RGB.

Example:
    >>> import numpy as np
    >>> frame = np.zeros((48, 64, 3), np.uint8); frame[:, :8] = 255     # a white band on the left
    >>> [fit_frame(frame, (32, 32), p).shape for p in RESIZE_POLICIES]
    [(32, 32, 3), (32, 32, 3), (32, 32, 3)]
    >>> int(fit_frame(frame, (32, 32), "crop")[:, 0].max())         # the band was cut away
    0
    >>> int(fit_frame(frame, (32, 32), "letterbox")[0].max())       # black bar on top
    0
"""

from __future__ import annotations

import numpy as np

from edge.errors import InputError

RESIZE_POLICIES = ("squash", "crop", "letterbox")


def _resize(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    if frame.shape[:2] == (height, width):
        return frame
    from PIL import Image

    img = Image.fromarray(frame).resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(img)


def fit_frame(frame: np.ndarray, size: tuple[int, int], policy: str = "squash") -> np.ndarray:
    """One uint8 ``(H, W, 3)`` RGB frame -> uint8 ``(height, width, 3)`` by ``policy``."""
    if policy not in RESIZE_POLICIES:
        raise InputError(f"resize policy: expected one of {RESIZE_POLICIES}, got {policy!r}")
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8 or min(frame.shape[:2]) < 1:
        raise InputError(f"frame: expected uint8 (H, W, 3) RGB, got {frame.dtype}{frame.shape}")
    height, width = int(size[0]), int(size[1])
    h, w = frame.shape[:2]
    if policy == "squash" or (h, w) == (height, width):
        return _resize(np.ascontiguousarray(frame), height, width)
    if policy == "crop":
        scale = max(height / h, width / w)
        ch, cw = min(h, max(1, round(height / scale))), min(w, max(1, round(width / scale)))
        top, left = (h - ch) // 2, (w - cw) // 2
        return _resize(np.ascontiguousarray(frame[top:top + ch, left:left + cw]), height, width)
    scale = min(height / h, width / w)
    nh, nw = max(1, min(height, round(h * scale))), max(1, min(width, round(w * scale)))
    out = np.zeros((height, width, 3), np.uint8)
    top, left = (height - nh) // 2, (width - nw) // 2
    out[top:top + nh, left:left + nw] = _resize(np.ascontiguousarray(frame), nh, nw)
    return out
