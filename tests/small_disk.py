"""A real, small file system for full-disk tests: a tmpfs of a few MiB mounted on a test
directory (``mount -t tmpfs -o size=...``), filled to the last byte by a filler file and freed
again by deleting it. Mounting needs root (or CAP_SYS_ADMIN): without it the test is skipped and
the reason says so. ``remount(read_only=True)`` makes it read-only.

Fixture: ``small_disk`` (4 MiB, one per test, unmounted at teardown).
"""
from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from _data import MOUNT_SKIP_REASON


class SmallDisk:
    def __init__(self, path: Path, size_bytes: int):
        self.path = Path(path)
        self.size_bytes = size_bytes
        self.filler = self.path / "filler.bin"
        self.path.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes},mode=0755", "tmpfs", str(self.path)],
                           capture_output=True, text=True, timeout=30) if shutil.which("mount") else None
        if r is None or r.returncode != 0:
            pytest.skip(f"{MOUNT_SKIP_REASON}: {r.stderr.strip() if r else 'no mount command'}")

    def free_bytes(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def fill(self) -> int:
        """Append to the filler file until the disk refuses another byte; returns its size."""
        with open(self.filler, "ab", buffering=0) as f:
            for chunk in (1 << 16, 4096, 512, 1):
                while True:
                    try:
                        if f.write(b"\0" * chunk) < chunk:
                            break
                    except OSError as exc:
                        if exc.errno != errno.ENOSPC:
                            raise
                        break
        return self.filler.stat().st_size

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)

    def remount(self, read_only: bool) -> None:
        """Read-only like an eMMC after ``errors=remount-ro`` (only while no file is open for writing)."""
        subprocess.run(["mount", "-o", f"remount,{'ro' if read_only else 'rw'}", str(self.path)], check=True,
                       capture_output=True, timeout=30)

    def unmount(self) -> None:
        r = subprocess.run(["umount", str(self.path)], capture_output=True, timeout=30)
        if r.returncode != 0:  # a file still open (a failed test): detach it anyway
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True, timeout=30)


@pytest.fixture
def small_disk(tmp_path):
    disk = SmallDisk(tmp_path / "small-disk", 4 << 20)
    yield disk
    disk.unmount()
