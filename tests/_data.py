"""Where the real data lives, read in this one place.

The real data (MVTec 3D-AD cable_gland, a RealSense D435 recording) is never committed. Its folder,
holding ``mvtec3d/`` and ``realsense/``, is ``$RGBD_EDGE_DATA`` when set, else ``<repo>/../shared/data``.

A test that reads it is marked ``@pytest.mark.realdata("<path under that folder>")`` and takes the
``real_data`` fixture (tests/conftest.py), which returns that path, or skips with ``absent_reason``
when it is not there. Under strict skips (tests/conftest.py) that is the only skip a realdata test
may take: the hook recomputes the path from the marker and checks that it is really absent.
"""
from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "RGBD_EDGE_DATA"
# The one reason a full-disk test (tests/small_disk.py) may give for skipping in strict mode.
MOUNT_SKIP_REASON = "cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN)"
REPO = Path(__file__).resolve().parents[1]
MARK = "realdata"
FIXTURE = "real_data"


def data_root() -> Path:
    env = os.environ.get(DATA_ENV)
    return Path(env).expanduser() if env else REPO.parent / "shared" / "data"


def marked_path(node) -> Path | None:
    """The path a test's realdata marker names, under the data folder (None: no usable marker)."""
    mark = node.get_closest_marker(MARK)
    if mark is None or len(mark.args) != 1 or not isinstance(mark.args[0], str):
        return None
    return data_root() / mark.args[0]


def absent_reason(path: Path) -> str:
    return f"real data absent: {path} (set {DATA_ENV} to the folder holding mvtec3d/ and realsense/)"


def misuse(node) -> str | None:
    """Why a test's use of real data breaks the rule above, None when it keeps it."""
    marked = node.get_closest_marker(MARK) is not None
    uses = FIXTURE in getattr(node, "fixturenames", ())
    if marked and marked_path(node) is None:
        return f'@pytest.mark.{MARK} takes the path it needs under the data folder: {MARK}("mvtec3d/cable_gland")'
    if marked != uses:
        return f"a test marked {MARK} takes the {FIXTURE} fixture, and a test taking it is marked {MARK}"
    return None
