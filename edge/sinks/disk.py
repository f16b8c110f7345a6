"""What a write error on a local file means, in words an operator can act on.

SQLite reports a full disk as ``database or disk is full`` (SQLITE_FULL) and a full disk while it
maps its shared-memory file as ``disk I/O error`` (SQLITE_IOERR_SHMSIZE): neither carries the OS
error. :func:`describe_write_error` adds what the file system says now (``os.statvfs``: read-only,
free bytes, free inodes), so the health status reads ``disk full (ENOSPC): ...`` instead of a
generic I/O error. Standard library only.
"""
from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path

__all__ = ["FULL_BELOW_BYTES", "disk_condition", "describe_write_error", "is_disk_error", "human_bytes"]

# Less free space than this when a write failed: the disk is the reason (SQLite grows its files by
# whole pages and checkpoints, so it can fail with some free space left).
FULL_BELOW_BYTES = 1 << 20

_DISK_ERRNOS = {errno.ENOSPC: "disk full (ENOSPC)", errno.EDQUOT: "disk quota exceeded (EDQUOT)",
                errno.EROFS: "read-only file system (EROFS)", errno.EIO: "I/O error (EIO)"}
_SQLITE_DISK = ("SQLITE_FULL", "SQLITE_IOERR", "SQLITE_READONLY", "SQLITE_CANTOPEN")


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024.0
    return f"{n:.1f} GiB"


def _existing_dir(path: Path) -> Path:
    p = path if path.is_dir() else path.parent
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def disk_condition(path: str | os.PathLike) -> str | None:
    """``read-only file system (EROFS) ...``, ``disk full (ENOSPC): 0 B free of 2.0 MiB on DIR``,
    ``no free inodes (ENOSPC) ...``, or None when the file system looks fine."""
    d = _existing_dir(Path(path))
    try:
        st = os.statvfs(d)
    except OSError:
        return None
    if st.f_flag & os.ST_RDONLY:
        return f"read-only file system (EROFS) at {d}"
    free = st.f_bavail * st.f_frsize
    if free < FULL_BELOW_BYTES:
        return f"disk full (ENOSPC): {human_bytes(free)} free of {human_bytes(st.f_blocks * st.f_frsize)} in {d}"
    if st.f_files and st.f_favail == 0:
        return f"no free inodes (ENOSPC) in {d}"
    return None


def is_disk_error(exc: BaseException) -> bool:
    """A full, read-only or failing disk (as opposed to a bug, a locked database, a corrupt file)."""
    if isinstance(exc, OSError):
        return exc.errno in _DISK_ERRNOS
    if isinstance(exc, sqlite3.Error):
        name = getattr(exc, "sqlite_errorname", "") or ""
        return name.startswith(_SQLITE_DISK) or "disk" in str(exc)
    return False


def _own_words(exc: BaseException) -> str:
    if isinstance(exc, sqlite3.Error):
        name = getattr(exc, "sqlite_errorname", None)
        return f"{exc} ({name})" if name else str(exc)
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"[Errno {exc.errno}] {exc.strerror}"  # never the file name twice
    return f"{type(exc).__name__}: {exc}"


def describe_write_error(exc: BaseException, path: str | os.PathLike) -> tuple[str, str]:
    """(condition, detail): condition like ``disk full (ENOSPC)`` (the first words of a health
    problem), detail the error in its own words plus what the file system says now."""
    cond_fs = disk_condition(path)
    if isinstance(exc, OSError) and exc.errno in _DISK_ERRNOS:
        condition = _DISK_ERRNOS[exc.errno]
    elif cond_fs is not None:
        condition = cond_fs.split(":")[0].split(" at ")[0].split(" in ")[0]
    elif isinstance(exc, sqlite3.Error) and (getattr(exc, "sqlite_errorname", "") or "").startswith("SQLITE_READONLY"):
        condition = "read-only (EROFS or permissions)"
    else:
        condition = "I/O error (EIO)" if is_disk_error(exc) else "write error"
    detail = _own_words(exc)
    if cond_fs is not None:
        detail = f"{detail}; {cond_fs}"
    return condition, detail
