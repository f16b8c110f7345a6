"""The single-instance lock: one `rgbd-edge run` per device id on a host.

A second daemon for the same device would connect to the broker with the same MQTT client id
and kick the running one off (flipping its retained status to offline), and would fight over
the camera and the reject pin. So `rgbd-edge run` takes an exclusive ``fcntl.flock`` on
``<runtime dir>/device-<id>.lock`` before it creates any sink, and a second instance exits at
once with ``EXIT_LOCKED`` (7), never touching the broker. The kernel drops the lock when the
process ends, however it ends, so a crashed daemon never leaves a stale lock behind.

The runtime directory, first that applies:

1. ``$RUNTIME_DIRECTORY`` (systemd sets it for ``RuntimeDirectory=rgbd-edge``: ``/run/rgbd-edge``);
2. ``/run/rgbd-edge`` when it exists or can be created, and a lock file in it can be opened
   (a manual run as root or as the service user on the device meets the service's lock here);
3. ``$XDG_RUNTIME_DIR/rgbd-edge`` (a desktop session);
4. ``<tmp>/rgbd-edge-<uid>``.

Two instances exclude each other when they resolve the same directory. A lock file that exists
but is not writable for this user (the service created it) is locked read-only: ``flock`` needs
no write access.
"""
from __future__ import annotations

import errno
import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import Mapping

try:
    import fcntl
except ImportError:  # pragma: no cover - not Linux: no lock
    fcntl = None

SYSTEM_DIR = Path("/run/rgbd-edge")


class InstanceLocked(Exception):
    """Another process holds the lock for this device id."""


def runtime_dirs(environ: Mapping[str, str] | None = None) -> list[Path]:
    """Candidate lock directories, in the order they are tried."""
    env = os.environ if environ is None else environ
    out = []
    rd = env.get("RUNTIME_DIRECTORY", "")
    if rd:
        out.append(Path(rd.split(":")[0]))
    out.append(SYSTEM_DIR)
    if env.get("XDG_RUNTIME_DIR"):
        out.append(Path(env["XDG_RUNTIME_DIR"]) / "rgbd-edge")
    out.append(Path(tempfile.gettempdir()) / f"rgbd-edge-{os.getuid()}")
    return out


def lock_name(device_id: str) -> str:
    """``device-<id>.lock``; characters unsafe in a file name are replaced, and then a short
    digest of the id keeps two different ids from sharing a file."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", device_id)[:80]
    if safe != device_id:
        safe += "-" + hashlib.sha256(device_id.encode()).hexdigest()[:10]
    return f"device-{safe}.lock"


class InstanceLock:
    """The held lock (``release()`` or process exit frees it)."""

    def __init__(self, path: Path, fd: int):
        self.path = path
        self._fd = fd

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = -1

    def __enter__(self) -> "InstanceLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def acquire(device_id: str, environ: Mapping[str, str] | None = None) -> InstanceLock:
    """Take the lock for ``device_id`` in the first usable runtime directory. Raises
    InstanceLocked (naming the holder's pid when the file says it) or OSError when no directory
    can hold a lock file."""
    errors = []
    for d in runtime_dirs(environ):
        try:
            fd, writable = _open_lock_file(d, lock_name(device_id))
        except OSError as exc:
            errors.append(f"{d}: {exc.strerror or exc}")
            continue
        return _lock(d / lock_name(device_id), fd, writable, device_id)
    raise OSError(errno.EACCES, "no runtime directory can hold the instance lock: " + "; ".join(errors))


def _open_lock_file(d: Path, name: str) -> tuple[int, bool]:
    if not d.is_dir():
        d.mkdir(mode=0o755, parents=True, exist_ok=True)
    path = d / name
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644), True
    except PermissionError:
        if not path.exists():
            raise
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC), False  # flock works on a read-only descriptor


def _lock(path: Path, fd: int, writable: bool, device_id: str) -> InstanceLock:
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise InstanceLocked(f"another rgbd-edge run holds the lock for device '{device_id}' ({path}"
                                 f"{', pid ' + holder if holder else ''}): stop it first "
                                 f"(systemctl stop rgbd-edge) or give this one another device_id") from None
    if writable:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return InstanceLock(path, fd)


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return ""
    return text if text.isdigit() else ""
