"""Small JPEG thumbnails of taught frames (Pillow), and back to frames for re-embedding.

A thumbnail keeps the frame's aspect ratio with its longer side at most ``size`` pixels (default
128) and is stored as a baseline JPEG (quality 80). Flash per 1,000 taught samples, measured on the
real photographs of tests/_real_photos.py (224-px frames): 2.7 MB at 96 px, 4.0 MB at 128 px, 5.7 MB
at 160 px. 128 px is the default because re-embedding for a backbone upgrade needs it: on that set,
an upgrade tiny -> efficientnet_lite0_224 reaches 82 % of a fresh teach's accuracy from 96-px
thumbnails, 92 % from 128 px, 96 % from 160 px (tests/test_upgrade.py).

Example:
    >>> import numpy as np
    >>> jpeg = encode_thumbnail(np.full((224, 224, 3), 128, np.uint8), size=96)
    >>> decode_thumbnail(jpeg).shape
    (96, 96, 3)
"""

from __future__ import annotations

import io
from typing import Sequence

import numpy as np

from edge.errors import InputError

THUMBNAIL_SIZE = 128
JPEG_QUALITY = 80
#: A decoded thumbnail larger than this many pixels per side is refused (untrusted packs).
MAX_DECODED_SIDE = 1024


def _as_uint8(frame: np.ndarray) -> np.ndarray:
    x = np.asarray(frame)
    if x.ndim != 3 or x.shape[2] not in (1, 3, 4):
        raise InputError(f"thumbnail frame: expected (H, W, 1|3|4), got shape {x.shape}")
    if x.dtype != np.uint8:
        # float frames in [0, 1] or [0, 255] (as_frame_batch accepts both)
        f = x.astype(np.float32)
        if f.size and float(f.max()) <= 1.0:
            f = f * 255.0
        x = np.clip(np.rint(f), 0, 255).astype(np.uint8)
    if x.shape[2] == 1:
        x = np.repeat(x, 3, axis=2)
    return x[..., :3]


def encode_thumbnail(frame: np.ndarray, size: int = THUMBNAIL_SIZE, quality: int = JPEG_QUALITY) -> bytes:
    """One frame ``(H, W, C)`` -> JPEG bytes with the longer side at most ``size`` pixels."""
    from PIL import Image

    if not 8 <= int(size) <= 1024:
        raise InputError(f"thumbnail size: expected 8..1024 pixels, got {size}")
    image = Image.fromarray(np.ascontiguousarray(_as_uint8(frame)), "RGB")
    image.thumbnail((int(size), int(size)), Image.Resampling.BILINEAR)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=int(quality))
    return out.getvalue()


def decode_thumbnail(data: bytes) -> np.ndarray:
    """JPEG (or PNG/WebP) bytes -> uint8 ``(H, W, 3)``; `InputError` for anything else or a
    picture larger than `MAX_DECODED_SIDE` per side (checked before decoding the pixels)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(bytes(data))) as image:
            if image.format not in ("JPEG", "PNG", "WEBP"):
                raise InputError(f"thumbnail: expected JPEG, PNG or WebP, got {image.format}")
            w, h = image.size
            if not (0 < w <= MAX_DECODED_SIDE and 0 < h <= MAX_DECODED_SIDE):
                raise InputError(f"thumbnail: expected at most {MAX_DECODED_SIDE} px per side, got {w}x{h}")
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - untrusted bytes: Pillow raises many classes
        raise InputError(f"thumbnail: expected a decodable image, got {type(exc).__name__}: {exc}") from exc


def pictures_for_thumbnails(paths: Sequence[str], size: int = THUMBNAIL_SIZE) -> list[np.ndarray]:
    """Image files -> uint8 pictures decoded near ``size`` (`edge.images.load_image`, the same safe
    decoder as the frames), the sources of their thumbnails (``Agent.teach(thumbnail_frames=...)``)."""
    from edge.images import load_image

    return [load_image(p, target_size=(int(size), int(size))) for p in paths]
