"""The fixed layout of the CORe50 benchmark: objects, sessions, scenarios, folder and file names.

Shared by the loaders (`firmware_sim.data.core50`) and the generator (`firmware_sim.data.generator`),
which writes the same layout; it imports nothing of the package, so neither depends on the other.

Example:
    >>> frame_path(3, 12, 41), parse_core50_path("s3/o12/C_03_12_041.png")
    ('s3/o12/C_03_12_041.png', (3, 12, 41))
"""

from __future__ import annotations

import re

__all__ = [
    "ARRAY_FILES",
    "N_BATCHES",
    "N_CATEGORIES",
    "N_OBJECTS",
    "N_SESSIONS",
    "OBJECTS_PER_CATEGORY",
    "OUTDOOR_SESSIONS",
    "REDUCED_TEST_STEP",
    "SCENARIOS",
    "SCENARIO_DIRS",
    "TEST_SESSIONS",
    "TRAIN_SESSIONS",
    "frame_path",
    "image_dir_name",
    "parse_core50_path",
]

SCENARIOS = ("ni", "nc", "nic", "nicv2_79", "nicv2_196", "nicv2_391")
N_BATCHES = {"ni": 8, "nc": 9, "nic": 79, "nicv2_79": 79, "nicv2_196": 196, "nicv2_391": 391}
N_OBJECTS = 50
N_CATEGORIES = 10
OBJECTS_PER_CATEGORY = 5
N_SESSIONS = 11
TEST_SESSIONS = (3, 7, 10)
OUTDOOR_SESSIONS = (9, 10, 11)
TRAIN_SESSIONS = tuple(s for s in range(1, N_SESSIONS + 1) if s not in TEST_SESSIONS)
REDUCED_TEST_STEP = 20
#: Official filelist folders (``batches_filelists.zip`` and ``batches_filelists_NICv2.zip``).
SCENARIO_DIRS = {
    "ni": "batches_filelists/NI_inc",
    "nc": "batches_filelists/NC_inc",
    "nic": "batches_filelists/NIC_inc",
    "nicv2_79": "NIC_v2_79",
    "nicv2_196": "NIC_v2_196",
    "nicv2_391": "NIC_v2_391",
}
ARRAY_FILES = ("core50_imgs.npz", "paths.pkl", "labels.pkl", "LUP.pkl")

_PATH_RE = re.compile(r"(?:^|/)s(\d+)/o(\d+)/C_(\d+)_(\d+)_(\d+)\.png$")


def image_dir_name(image_size: int) -> str:
    """Official folder name of the PNG tree at one resolution, e.g. ``core50_128x128``."""
    return f"core50_{image_size}x{image_size}"


def frame_path(session: int, obj: int, frame: int) -> str:
    """Relative path of one frame, as in ``paths.pkl`` and the filelists."""
    return f"s{session}/o{obj}/C_{session:02d}_{obj:02d}_{frame:03d}.png"


def parse_core50_path(path: str) -> tuple[int, int, int]:
    """``'s3/o12/C_03_12_041.png'`` -> ``(session, object_id, frame)``; ValueError if malformed."""
    m = _PATH_RE.search(path.replace("\\", "/"))
    if not m or int(m.group(1)) != int(m.group(3)) or int(m.group(2)) != int(m.group(4)):
        raise ValueError(f"not a CORe50 frame path (expected sX/oY/C_XX_YY_ZZZ.png): {path!r}")
    return int(m.group(1)), int(m.group(2)), int(m.group(5))
