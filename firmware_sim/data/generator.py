"""Synthetic CORe50: 50 objects x 11 sessions of short, smooth "videos", written in the official formats.

The real CORe50 (164,866 images, 8 GB as an array) cannot ship with tests, so this module renders a
small stand-in with the same structure: 50 objects in 10 categories (a category shares a shape
family, objects differ in colours and texture), 11 sessions that change background, lighting and
object scale (s3, s7, s10 are test sessions; s9-s11 are outdoor), and temporally correlated frames.
It writes every official form: the PNG tree, ``core50_imgs.npz`` + ``paths.pkl`` + ``labels.pkl`` +
``LUP.pkl``, and the batch filelists, for the six official scenarios.

Example:
    >>> import tempfile
    >>> cfg = GeneratorConfig(frames=2, runs=1, forms=("arrays",))
    >>> summary = generate_core50(tempfile.mkdtemp(), cfg, progress=False)
    >>> summary["n_images"]
    1100
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pickle
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from PIL import Image
from tqdm import tqdm

from edge.atomic import atomic_write
from firmware_sim.data.core50_layout import (
    N_BATCHES,
    N_CATEGORIES,
    N_OBJECTS,
    N_SESSIONS,
    OBJECTS_PER_CATEGORY,
    OUTDOOR_SESSIONS,
    SCENARIO_DIRS,
    SCENARIOS,
    TEST_SESSIONS,
    TRAIN_SESSIONS,
    frame_path,
    image_dir_name,
)

logger = logging.getLogger(__name__)

__all__ = [
    "FORMS",
    "GeneratorConfig",
    "ObjectStyle",
    "SessionStyle",
    "build_scenarios",
    "core50_object_style",
    "generate_core50",
    "make_pretraining_set",
    "pretraining_object_styles",
    "render_object_session",
    "session_style",
]

FORMS = ("png", "arrays", "filelists")
SUPPORTED_SIZES = (32, 64, 128)
MARKER_FILE = "generator.json"
N_SHAPES = 10
N_PATTERNS = 5
SHAPE_NAMES = ("disc", "square", "triangle", "ring", "cross", "star", "hexagon", "bar", "arrow", "crescent")
PATTERN_NAMES = ("two-tone", "stripes", "dots", "inner-mark", "checker")

# Domain tags keep the random streams of the different parts independent of each other.
_TAG_OBJECT, _TAG_PRETRAIN_OBJECT, _TAG_SESSION, _TAG_PRETRAIN_SESSION = 101, 202, 303, 313
_TAG_FRAMES, _TAG_RUNS, _TAG_PRETRAIN_FRAMES = 404, 505, 606


# --------------------------------------------------------------------------- styles


@dataclass(frozen=True)
class ObjectStyle:
    """Generating parameters of one object: shape family, texture and colours (all in [0, 1])."""

    shape: int
    pattern: int
    color_a: tuple[float, float, float]
    color_b: tuple[float, float, float]
    pattern_freq: float
    pattern_angle: float
    aspect: float
    mark_radius: float

    def vector(self) -> np.ndarray:
        """The continuous parameters as one float vector (used to check two sets are disjoint)."""
        return np.array([*self.color_a, *self.color_b, self.pattern_freq / 10.0,
                         self.pattern_angle / np.pi, self.aspect, self.mark_radius])


@dataclass(frozen=True)
class SessionStyle:
    """Background, lighting and scale of one acquisition session."""

    outdoor: bool
    bg_color: tuple[float, float, float]
    bg_kind: int
    bg_amplitude: float
    bg_cells: int
    stripe_freq: float
    gain: float
    contrast: float
    cast: tuple[float, float, float]
    scale: float
    noise_sigma: float
    light_dir: float


def _hsv_to_rgb(h: float, s: float, v: float) -> tuple[float, float, float]:
    i = int(h * 6.0) % 6
    f = h * 6.0 - int(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return (float(rgb[0]), float(rgb[1]), float(rgb[2]))


def _random_object_style(rng: np.random.Generator, shape: int, pattern: int) -> ObjectStyle:
    hue_a = float(rng.random())
    hue_b = (hue_a + float(rng.uniform(0.25, 0.75))) % 1.0
    color_a = _hsv_to_rgb(hue_a, float(rng.uniform(0.45, 0.95)), float(rng.uniform(0.55, 0.95)))
    color_b = _hsv_to_rgb(hue_b, float(rng.uniform(0.2, 0.9)), float(rng.uniform(0.25, 0.95)))
    return ObjectStyle(
        shape=shape,
        pattern=pattern,
        color_a=color_a,
        color_b=color_b,
        pattern_freq=float(rng.uniform(4.0, 9.0)),
        pattern_angle=float(rng.uniform(0.0, np.pi)),
        aspect=float(rng.uniform(0.85, 1.15)),
        mark_radius=float(rng.uniform(0.25, 0.5)),
    )


def core50_object_style(object_id: int, seed: int = 0) -> ObjectStyle:
    """Style of CORe50 object ``object_id`` (1..50): category (object_id-1)//5 picks the shape."""
    if not 1 <= object_id <= N_OBJECTS:
        raise ValueError(f"object_id must be in 1..{N_OBJECTS}, got {object_id}")
    label = object_id - 1
    rng = np.random.default_rng([seed, _TAG_OBJECT, object_id])
    return _random_object_style(rng, shape=label // OBJECTS_PER_CATEGORY, pattern=label % OBJECTS_PER_CATEGORY)


def pretraining_object_styles(n_objects: int, seed: int = 0) -> list[ObjectStyle]:
    """Styles of the pretraining objects: same shape families, parameters disjoint from the 50.

    A candidate whose shape and pattern match a CORe50 object and whose parameter vector lies within
    0.35 of it is redrawn, so no pretraining object is a near copy of an evaluation object.
    """
    core = [core50_object_style(o, seed) for o in range(1, N_OBJECTS + 1)]
    styles: list[ObjectStyle] = []
    for i in range(n_objects):
        rng = np.random.default_rng([seed, _TAG_PRETRAIN_OBJECT, i])
        shape, pattern = i % N_SHAPES, int(rng.integers(N_PATTERNS))
        while True:
            cand = _random_object_style(rng, shape, pattern)
            v = cand.vector()
            if all(c.shape != shape or c.pattern != pattern or np.linalg.norm(c.vector() - v) > 0.35 for c in core):
                break
        styles.append(cand)
    return styles


def _random_session_style(rng: np.random.Generator, outdoor: bool) -> SessionStyle:
    if outdoor:
        hue = float(rng.choice([0.25, 0.3, 0.55, 0.6, 0.1]) + rng.uniform(-0.04, 0.04)) % 1.0
        bg = _hsv_to_rgb(hue, float(rng.uniform(0.3, 0.7)), float(rng.uniform(0.45, 0.8)))
        gain, amp, cells = float(rng.uniform(1.0, 1.3)), float(rng.uniform(0.2, 0.35)), int(rng.integers(6, 12))
        kind = 2
    else:
        hue = float(rng.uniform(0.0, 1.0))
        bg = _hsv_to_rgb(hue, float(rng.uniform(0.05, 0.35)), float(rng.uniform(0.3, 0.85)))
        gain, amp, cells = float(rng.uniform(0.7, 1.1)), float(rng.uniform(0.08, 0.2)), int(rng.integers(2, 6))
        kind = int(rng.integers(0, 2))
    return SessionStyle(
        outdoor=outdoor,
        bg_color=bg,
        bg_kind=kind,
        bg_amplitude=amp,
        bg_cells=cells,
        stripe_freq=float(rng.uniform(6.0, 18.0)),
        gain=gain,
        contrast=float(rng.uniform(0.75, 1.15)),
        cast=tuple(float(c) for c in rng.uniform(0.85, 1.15, size=3)),  # type: ignore[arg-type]
        scale=float(rng.uniform(0.7, 1.1)),
        noise_sigma=float(rng.uniform(2.0, 6.0)),
        light_dir=float(rng.uniform(0.0, 2 * np.pi)),
    )


def session_style(session: int, seed: int = 0) -> SessionStyle:
    """Deterministic style of CORe50 session ``session`` (1..11); s9-s11 are outdoor."""
    if not 1 <= session <= N_SESSIONS:
        raise ValueError(f"session must be in 1..{N_SESSIONS}, got {session}")
    rng = np.random.default_rng([seed, _TAG_SESSION, session])
    return _random_session_style(rng, outdoor=session in OUTDOOR_SESSIONS)


# --------------------------------------------------------------------------- rendering


def _smooth_noise(rng: np.random.Generator, size: int, cells: int, channels: int = 3) -> np.ndarray:
    """Bilinearly interpolated value noise in [-1, 1], shape (size, size, channels)."""
    grid = rng.uniform(-1.0, 1.0, size=(cells + 1, cells + 1, channels)).astype(np.float32)
    pos = np.linspace(0.0, cells, size, endpoint=False, dtype=np.float32)
    i0 = np.minimum(pos.astype(np.int64), cells - 1)
    w = (pos - i0)[:, None]
    rows = grid[i0] * (1 - w)[:, :, None] + grid[i0 + 1] * w[:, :, None]  # (size, cells+1, C)
    cols = rows[:, i0] * (1 - w)[None, :, :] + rows[:, i0 + 1] * w[None, :, :]
    return cols


def _background_texture(style: SessionStyle, size: int, rng: np.random.Generator) -> np.ndarray:
    """A (2*size, 2*size, 3) float32 texture the camera pans over."""
    big = 2 * size
    base = np.asarray(style.bg_color, dtype=np.float32)
    tex = base + style.bg_amplitude * _smooth_noise(rng, big, style.bg_cells, 1)
    tex = tex + 0.04 * _smooth_noise(rng, big, style.bg_cells * 4, 3)
    yy, xx = np.mgrid[0:big, 0:big].astype(np.float32) / big
    if style.bg_kind == 1:  # table planks / stripes
        tex = tex + 0.06 * np.sin(2 * np.pi * style.stripe_freq * (0.8 * xx + 0.2 * yy))[:, :, None]
    elif style.bg_kind == 2:  # outdoor: foliage-like fine detail and a sky/ground gradient
        tex = tex + 0.12 * _smooth_noise(rng, big, max(8, big // 4), 3)
        tex = tex * (0.85 + 0.3 * yy[:, :, None])
    return np.clip(tex, 0.0, 1.0).astype(np.float32)


def _shape_sdf(shape: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Approximate signed distance (negative inside) of a unit-sized shape family."""
    r = np.sqrt(u * u + v * v)
    if shape == 0:  # disc
        return r - 0.9
    if shape == 1:  # square
        return np.maximum(np.abs(u), np.abs(v)) - 0.75
    if shape == 2:  # triangle, pointing up (v grows downwards)
        return np.maximum.reduce([v - 0.5, 0.866 * u - 0.5 * v - 0.5, -0.866 * u - 0.5 * v - 0.5]) / 1.0
    if shape == 3:  # ring
        return np.abs(r - 0.68) - 0.24
    if shape == 4:  # cross
        return np.minimum(np.maximum(np.abs(u) - 0.3, np.abs(v) - 0.92),
                          np.maximum(np.abs(u) - 0.92, np.abs(v) - 0.3))
    if shape == 5:  # five-pointed star
        phi = np.arctan2(v, u)
        return (r - (0.62 + 0.32 * np.cos(5 * phi))) * 0.7
    if shape == 6:  # hexagon
        d = np.abs(u) * 0.866 + np.abs(v) * 0.5
        return np.maximum(d, np.abs(v)) - 0.8
    if shape == 7:  # elongated bar with round ends (a "marker")
        return np.sqrt(np.maximum(np.abs(u) - 0.65, 0.0) ** 2 + v * v) - 0.3
    if shape == 8:  # arrow: shaft plus head
        shaft = np.maximum(np.abs(v) - 0.18, np.maximum(u - 0.2, -u - 0.9))
        head = np.maximum.reduce([-(u - 0.1), (u - 0.95) * 0.6 + np.abs(v) * 0.9 - 0.05, np.abs(v) - 0.7])
        return np.minimum(shaft, head)
    if shape == 9:  # crescent: a disc minus a shifted disc
        return np.maximum(r - 0.9, 0.62 - np.sqrt((u - 0.38) ** 2 + (v + 0.12) ** 2))
    raise ValueError(f"shape must be in 0..{N_SHAPES - 1}, got {shape}")


def _pattern(style: ObjectStyle, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Mixing weight in [0, 1] between colour a and colour b, in object coordinates."""
    ca, sa = np.cos(style.pattern_angle), np.sin(style.pattern_angle)
    along = u * ca + v * sa
    f = style.pattern_freq
    if style.pattern == 0:  # two-tone halves
        return np.clip(along * 8.0 + 0.5, 0.0, 1.0)
    if style.pattern == 1:  # stripes
        return np.clip(np.sin(f * along) * 2.0 + 0.5, 0.0, 1.0)
    if style.pattern == 2:  # dots
        across = -u * sa + v * ca
        return np.clip((np.cos(f * along) * np.cos(f * across) - 0.45) * 4.0, 0.0, 1.0)
    if style.pattern == 3:  # inner mark (a disc off centre)
        d = np.sqrt((u - 0.2 * ca) ** 2 + (v - 0.2 * sa) ** 2)
        return np.clip((style.mark_radius - d) * 10.0 + 0.5, 0.0, 1.0)
    if style.pattern == 4:  # checker
        across = -u * sa + v * ca
        return np.clip(np.sin(0.7 * f * along) * np.sin(0.7 * f * across) * 4.0 + 0.5, 0.0, 1.0)
    raise ValueError(f"pattern must be in 0..{N_PATTERNS - 1}, got {style.pattern}")


def _render(obj: ObjectStyle, ses: SessionStyle, background: np.ndarray, n_frames: int,
            size: int, rng: np.random.Generator) -> np.ndarray:
    """Render ``n_frames`` consecutive frames of one object in one session, uint8 (F, S, S, 3)."""
    t = np.linspace(0.0, 1.0, n_frames, dtype=np.float32)[:, None, None]
    ph = rng.uniform(0, 2 * np.pi, size=6).astype(np.float32)
    fr = rng.uniform(0.3, 1.0, size=4).astype(np.float32)
    # Smooth trajectory over the whole (virtual 15 s) video: position, rotation, scale drift.
    cx = 0.18 * np.sin(2 * np.pi * fr[0] * t + ph[0])
    cy = 0.14 * np.sin(2 * np.pi * fr[1] * t + ph[1])
    theta = ph[2] + float(rng.uniform(-1.5, 1.5)) * np.pi * t + 0.3 * np.sin(2 * np.pi * fr[2] * t + ph[3])
    radius = 0.62 * ses.scale * (1.0 + 0.1 * np.sin(2 * np.pi * fr[3] * t + ph[4]))
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0
    xx, yy = coords[None, None, :], coords[None, :, None]
    dx, dy = xx - cx, yy - cy
    c, s = np.cos(theta), np.sin(theta)
    u = (c * dx + s * dy) / radius / obj.aspect
    v = (-s * dx + c * dy) / radius
    pix = (2.0 / size) / radius
    alpha = np.clip(0.5 - _shape_sdf(obj.shape, u, v) / pix, 0.0, 1.0)
    m = _pattern(obj, u, v)[..., None]
    color = np.asarray(obj.color_a, np.float32) * (1 - m) + np.asarray(obj.color_b, np.float32) * m
    shade = 1.0 - 0.18 * (u * np.cos(ses.light_dir) + v * np.sin(ses.light_dir))
    color = color * np.clip(shade, 0.6, 1.3)[..., None]
    # A hand-like occluder holding the object from below, moving with it.
    hx, hy = cx + 0.3 * radius, cy + 0.8 * radius
    hand = np.clip((1.0 - np.sqrt(((xx - hx) / (0.45 * radius)) ** 2 + ((yy - hy) / (0.3 * radius)) ** 2)) * size * 0.3, 0, 1)
    # The camera pans over the session background.
    pan = (size // 2) * (0.5 + 0.45 * np.sin(2 * np.pi * 0.4 * t[:, 0, 0] + ph[5] + np.array([[0.0], [1.7]])))
    ox, oy = np.round(pan).astype(np.int64)
    rows = oy[:, None] + np.arange(size)[None, :]
    cols = ox[:, None] + np.arange(size)[None, :]
    img = background[rows[:, :, None], cols[:, None, :]]
    a = alpha[..., None]
    img = img * (1 - a) + color * a
    h = hand[..., None]
    img = img * (1 - h) + np.asarray([0.85, 0.62, 0.5], np.float32) * h
    # Lighting: contrast, gain, colour cast, slow flicker; then sensor noise.
    flicker = 1.0 + 0.04 * np.sin(2 * np.pi * 1.3 * t + ph[0])[..., None]
    img = ((img - 0.5) * ses.contrast + 0.5) * ses.gain * np.asarray(ses.cast, np.float32) * flicker
    img = img * 255.0 + rng.normal(0.0, ses.noise_sigma, size=img.shape).astype(np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _check_size(image_size: int) -> None:
    if image_size not in SUPPORTED_SIZES:
        raise ValueError(f"image_size must be one of {SUPPORTED_SIZES}, got {image_size}")


def _session_background(session: int, image_size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, _TAG_SESSION, session, image_size])
    return _background_texture(session_style(session, seed), image_size, rng)


def render_object_session(object_id: int, session: int, n_frames: int = 30, image_size: int = 32,
                          seed: int = 0, *, _background: np.ndarray | None = None) -> np.ndarray:
    """Render the frames of CORe50 object ``object_id`` (1..50) in session ``session`` (1..11).

    Returns uint8 (n_frames, image_size, image_size, 3); the same arguments give the same bytes.
    """
    _check_size(image_size)
    if n_frames < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    obj = core50_object_style(object_id, seed)
    ses = session_style(session, seed)
    bg = _background if _background is not None else _session_background(session, image_size, seed)
    rng = np.random.default_rng([seed, _TAG_FRAMES, object_id, session, image_size])
    return _render(obj, ses, bg, n_frames, image_size, rng)


def make_pretraining_set(n_objects: int = 100, frames: int = 8, sessions: int = 4, image_size: int = 32,
                         seed: int = 0, *, variant: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """In-memory pretraining images of objects disjoint from the 50 CORe50 objects.

    Each object is rendered in ``sessions`` sessions drawn from a pool of 16 pretraining-only
    sessions (8 indoor-like and 8 outdoor-like backgrounds), ``frames`` frames each, so the set is
    balanced: every label has ``sessions * frames`` images. Labels are 0..n_objects-1.
    ``variant`` changes the sessions and trajectories but not the objects (use 1 for a held-out split).

    Example:
        >>> x, y = make_pretraining_set(n_objects=10, frames=2, sessions=2)
        >>> x.shape, x.dtype, y.dtype, int(y.max())
        ((40, 32, 32, 3), dtype('uint8'), dtype('int64'), 9)
    """
    _check_size(image_size)
    if n_objects < 1 or frames < 1 or sessions < 1:
        raise ValueError(f"n_objects, frames and sessions must be >= 1, got {n_objects}, {frames}, {sessions}")
    n_pool = 16
    if sessions > n_pool:
        raise ValueError(f"sessions must be <= {n_pool}, got {sessions}")
    styles = pretraining_object_styles(n_objects, seed)
    pool = []
    for k in range(n_pool):
        rng = np.random.default_rng([seed, _TAG_PRETRAIN_SESSION, k])
        style = _random_session_style(rng, outdoor=k >= n_pool // 2)
        pool.append((style, _background_texture(style, image_size, rng)))
    x = np.empty((n_objects * sessions * frames, image_size, image_size, 3), np.uint8)
    y = np.repeat(np.arange(n_objects, dtype=np.int64), sessions * frames)
    pos = 0
    for i, obj in enumerate(styles):
        rng = np.random.default_rng([seed, _TAG_PRETRAIN_FRAMES, i, image_size, variant])
        for k in rng.choice(n_pool, size=sessions, replace=False):
            ses, bg = pool[int(k)]
            x[pos:pos + frames] = _render(obj, ses, bg, frames, image_size, rng)
            pos += frames
    return x, y


# --------------------------------------------------------------------------- scenarios


def _index(session: int, obj: int, frames: int) -> int:
    """Index of frame 0 of (session, object) in the generator's x order (session, object, frame)."""
    return ((session - 1) * N_OBJECTS + (obj - 1)) * frames


def _unit(session: int, obj: int, frames: int) -> list[int]:
    start = _index(session, obj, frames)
    return list(range(start, start + frames))


def _first_objects(rng: np.random.Generator) -> list[int]:
    """One object per category (object ids, category order)."""
    return [c * OBJECTS_PER_CATEGORY + int(rng.integers(OBJECTS_PER_CATEGORY)) + 1 for c in range(N_CATEGORIES)]


def build_scenarios(frames: int, runs: int, seed: int = 0) -> tuple[dict[str, list[list[list[int]]]], dict[str, list[list[list[int]]]]]:
    """Build ``LUP`` and ``labels`` as ``{scenario: [run][batch] -> list[int]}``; the last batch is the test set.

    Indices refer to the generator's image order (session, object, frame). Labels are object labels
    (object id - 1), except NC, which relabels classes per run in order of first appearance.
    """
    if frames < 1 or runs < 1:
        raise ValueError(f"frames and runs must be >= 1, got {frames}, {runs}")
    test = [i for s in TEST_SESSIONS for o in range(1, N_OBJECTS + 1) for i in _unit(s, o, frames)]
    all_objects = list(range(1, N_OBJECTS + 1))
    lup: dict[str, list[list[list[int]]]] = {s: [] for s in SCENARIOS}
    labels: dict[str, list[list[list[int]]]] = {s: [] for s in SCENARIOS}

    def obj_label(i: int) -> int:
        return (i // frames) % N_OBJECTS

    for run in range(runs):
        for si, scen in enumerate(SCENARIOS):
            rng = np.random.default_rng([seed, _TAG_RUNS, run, si])
            batches: list[list[int]] = []
            if scen == "ni":
                for s in rng.permutation(TRAIN_SESSIONS):
                    batches.append([i for o in all_objects for i in _unit(int(s), o, frames)])
            elif scen == "nc":
                first = _first_objects(rng)
                rest = [int(o) for o in rng.permutation([o for o in all_objects if o not in first])]
                groups = [sorted(first)] + [sorted(rest[k:k + 5]) for k in range(0, len(rest), 5)]
                for g in groups:
                    batches.append([i for s in TRAIN_SESSIONS for o in g for i in _unit(s, o, frames)])
            else:
                first = sorted(_first_objects(rng))
                batches.append([i for o in first for i in _unit(TRAIN_SESSIONS[0], o, frames)])
                if scen == "nic":
                    units: list[list[tuple[int, int]]] = []
                    for s in TRAIN_SESSIONS:
                        objs = [o for o in all_objects if not (s == TRAIN_SESSIONS[0] and o in first)]
                        objs = [int(o) for o in rng.permutation(objs)]
                        units += [[(s, o) for o in sorted(objs[k:k + 5])] for k in range(0, len(objs), 5)]
                    order = rng.permutation(len(units))
                    chunks = [units[int(k)] for k in order]
                else:
                    per = {"nicv2_79": 5, "nicv2_196": 2, "nicv2_391": 1}[scen]
                    pairs = [(s, o) for s in TRAIN_SESSIONS for o in all_objects
                             if not (s == TRAIN_SESSIONS[0] and o in first)]
                    pairs = [pairs[int(k)] for k in rng.permutation(len(pairs))]
                    chunks = [pairs[k:k + per] for k in range(0, len(pairs), per)]
                for chunk in chunks:
                    batches.append([i for s, o in chunk for i in _unit(s, o, frames)])
            if len(batches) != N_BATCHES[scen]:  # pragma: no cover - a construction bug
                raise RuntimeError(f"{scen}: built {len(batches)} batches, expected {N_BATCHES[scen]}")
            batches.append(list(test))
            if scen == "nc":
                mapping: dict[int, int] = {}
                for b in batches[:-1]:
                    for i in b:
                        mapping.setdefault(obj_label(i), len(mapping))
                labs = [[mapping[obj_label(i)] for i in b] for b in batches]
            else:
                labs = [[obj_label(i) for i in b] for b in batches]
            lup[scen].append(batches)
            labels[scen].append(labs)
    return lup, labels


# --------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class GeneratorConfig:
    """What :func:`generate_core50` writes.

    Example:
        >>> GeneratorConfig(image_size=64, frames=10).n_images
        5500
    """

    image_size: int = 32
    frames: int = 30
    runs: int = 10
    seed: int = 0
    forms: tuple[str, ...] = FORMS
    overwrite: bool = False
    pretrain_objects: int = 100
    pretrain_frames: int = 8
    pretrain_sessions: int = 4

    def __post_init__(self) -> None:
        _check_size(self.image_size)
        if self.frames < 1:
            raise ValueError(f"frames must be >= 1, got {self.frames}")
        if not 1 <= self.frames <= 1000:
            raise ValueError(f"frames must be <= 1000 (3-digit file names), got {self.frames}")
        if self.runs < 1:
            raise ValueError(f"runs must be >= 1, got {self.runs}")
        unknown = [f for f in self.forms if f not in FORMS]
        if unknown or not self.forms:
            raise ValueError(f"forms must be a non-empty subset of {FORMS}, got {list(self.forms)}")

    @property
    def n_images(self) -> int:
        return N_OBJECTS * N_SESSIONS * self.frames


def _iter_units(frames: int) -> Iterator[tuple[int, int, int]]:
    for s in range(1, N_SESSIONS + 1):
        for o in range(1, N_OBJECTS + 1):
            yield s, o, _index(s, o, frames)


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda handle: handle.write(data))


def _atomic_savez(path: Path, **arrays: np.ndarray) -> None:
    # uncompressed, like the official file, so x.npy can be memory-mapped
    atomic_write(path, lambda handle: np.savez(handle, **arrays))  # type: ignore[arg-type]  # numpy stubs: **kwds


def _generated_names(out: Path) -> list[Path]:
    names = [MARKER_FILE, "core50_imgs.npz", "paths.pkl", "labels.pkl", "LUP.pkl", "pretrain.npz", "batches_filelists"]
    names += [d for d in SCENARIO_DIRS.values() if "/" not in d]
    found = [out / n for n in names]
    found += [p for p in out.glob("core50_*x*") if p.is_dir()]
    return [p for p in found if p.exists()]


def _prepare_out_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"output path exists and is not a directory: {out}")
    out.mkdir(parents=True, exist_ok=True)
    if not any(out.iterdir()):
        return
    previous = (out / MARKER_FILE).is_file()
    if not (previous or overwrite):
        raise FileExistsError(
            f"output directory {out} is not empty and holds no previous generator output "
            f"(no {MARKER_FILE}); pass overwrite=True (--overwrite) to write into it anyway"
        )
    if not previous:  # overwrite=True on a foreign folder: write into it, delete nothing
        logger.warning("writing into non-empty directory %s (overwrite=True)", out)
        return
    for p in _generated_names(out):  # a previous output: remove it so no stale frames remain
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()


def _dir_bytes(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return total


def generate_core50(out_dir: str | os.PathLike[str], config: GeneratorConfig | None = None,
                    progress: bool = True) -> dict[str, Any]:
    """Render the synthetic CORe50 and write the forms in ``config.forms`` under ``out_dir``.

    Returns a summary dict (counts, bytes per form, seconds). A non-empty ``out_dir`` that is not a
    previous generator output (no ``generator.json``) is refused unless ``config.overwrite``.
    """
    config = config or GeneratorConfig()
    out = Path(out_dir)
    _prepare_out_dir(out, config.overwrite)
    t0 = time.perf_counter()
    S, F = config.image_size, config.frames
    paths = [frame_path(s, o, f) for s, o, _ in _iter_units(F) for f in range(F)]
    x = np.empty((config.n_images, S, S, 3), np.uint8)
    png_root = out / image_dir_name(S)
    backgrounds = {s: _session_background(s, S, config.seed) for s in range(1, N_SESSIONS + 1)}
    bar = tqdm(total=N_OBJECTS * N_SESSIONS, desc="rendering", unit="obj-session", disable=not progress)
    for s, o, start in _iter_units(F):
        frames = render_object_session(o, s, F, S, config.seed, _background=backgrounds[s])
        x[start:start + F] = frames
        if "png" in config.forms:
            folder = png_root / f"s{s}" / f"o{o}"
            folder.mkdir(parents=True, exist_ok=True)
            for f in range(F):
                Image.fromarray(frames[f]).save(folder / f"C_{s:02d}_{o:02d}_{f:03d}.png", compress_level=1)
        bar.update(1)
    bar.close()
    t_render = time.perf_counter() - t0

    lup, labels = build_scenarios(F, config.runs, config.seed)
    sizes: dict[str, int] = {}
    if "arrays" in config.forms:
        _atomic_savez(out / "core50_imgs.npz", x=x)
        for name, obj in (("paths.pkl", paths), ("labels.pkl", labels), ("LUP.pkl", lup)):
            _atomic_write_bytes(out / name, pickle.dumps(obj, protocol=2))
        sizes["arrays"] = sum(os.path.getsize(out / n) for n in ("core50_imgs.npz", "paths.pkl", "labels.pkl", "LUP.pkl"))
    if "filelists" in config.forms:
        sizes["filelists"] = _write_filelists(out, paths, lup, labels)
    if "png" in config.forms:
        sizes["png"] = _dir_bytes(png_root)

    px, py = make_pretraining_set(config.pretrain_objects, config.pretrain_frames, config.pretrain_sessions, S, config.seed)
    _atomic_savez(out / "pretrain.npz", x=px, y=py)
    sizes["pretrain"] = os.path.getsize(out / "pretrain.npz")

    summary: dict[str, Any] = {
        "generator": "firmware_sim.data.generator",
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(config).items()},
        "n_images": config.n_images,
        "n_train_images": len(TRAIN_SESSIONS) * N_OBJECTS * F,
        "n_test_images": len(TEST_SESSIONS) * N_OBJECTS * F,
        "n_pretrain_images": int(px.shape[0]),
        "image_shape": [S, S, 3],
        "scenarios": {s: N_BATCHES[s] for s in SCENARIOS},
        "runs": config.runs,
        "bytes": sizes,
        "seconds_render": round(t_render, 3),
        "seconds_total": round(time.perf_counter() - t0, 3),
    }
    # The marker holds no timings, so two generations with one seed are byte-identical file by file.
    marker = {k: v for k, v in summary.items() if not k.startswith("seconds")}
    _atomic_write_bytes(out / MARKER_FILE, json.dumps(marker, indent=2, sort_keys=True).encode())
    logger.info("generated %d images under %s in %.1f s", config.n_images, out, summary["seconds_total"])
    return summary


def _write_filelists(out: Path, paths: list[str], lup: dict[str, list[list[list[int]]]],
                     labels: dict[str, list[list[list[int]]]]) -> int:
    """Write ``<scenario dir>/runN/train_batch_XX_filelist.txt`` and ``test_filelist.txt``."""
    total = 0
    for scen in SCENARIOS:
        for run, (batches, labs) in enumerate(zip(lup[scen], labels[scen])):
            folder = out / SCENARIO_DIRS[scen] / f"run{run}"
            folder.mkdir(parents=True, exist_ok=True)
            for b, (idx, lab) in enumerate(zip(batches, labs)):
                name = "test_filelist.txt" if b == len(batches) - 1 else f"train_batch_{b:02d}_filelist.txt"
                text = "".join(f"{paths[i]} {l}\n" for i, l in zip(idx, lab)).encode()
                (folder / name).write_bytes(text)
                total += len(text)
    return total
