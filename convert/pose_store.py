"""Training poses kept on disk, written once and read back a batch at a time.

Pose augmentation turns every training capture into rotations x flips poses, and a trainer
wants arrays per pose that cost far more than the capture (reverse distillation: the frozen
teacher's multi-scale features of both streams). Held in memory for every pose they grow with
the data set until a few hundred captures no longer fit a workstation; here they are encoded
pose by pose into one file and served by random access, so training memory holds one batch.

Layout (a directory): `poses.bin`, fixed-size records one per pose, each the concatenation of
the fields' raw bytes in a fixed order, and `manifest.json` (format, the key the arrays were
made under, fields with shape and dtype, pose names). A batch is read with one `os.preadv` per
pose straight into freshly allocated batch arrays: plain file reads, so the kernel's page cache
(not this process's resident memory) holds what is hot. A memory map of the whole file would
count every page a run ever touched as resident. Arrays are stored in the dtype the encoder
gives (float32 features read back bit-identical; exact 0/1 masks as uint8).

A store is written under a temporary name and renamed into place with its manifest, so a cache
directory either holds a complete store for its key or is rebuilt. numpy only.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Protocol

import numpy as np

FORMAT = 1
MANIFEST = "manifest.json"
DATA = "poses.bin"


@dataclass(frozen=True)
class Field:
    """One per-pose array: its shape (without the pose axis) and numpy dtype string."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


def fields_of(arrays: dict[str, np.ndarray]) -> tuple[Field, ...]:
    """The fields of encoded arrays (leading axis: poses), in the dict's order."""
    return tuple(Field(k, tuple(int(n) for n in a.shape[1:]), a.dtype.str) for k, a in arrays.items())


class PoseEncoder(Protocol):
    """What a trainer stores per pose (convert.trainers): made from preprocessed poses."""

    chunk: int  # poses encoded together (the batch a network computes the stored arrays in)

    def key(self) -> dict:
        """What the arrays depend on besides the poses (e.g. the teacher's weights), for the cache key."""

    def encode(self, poses) -> dict[str, np.ndarray]:
        """A calibrate.dataset.PreparedSplit of poses -> {field: array with one row per pose}."""


def cache_key(parts: dict) -> str:
    """sha256 of everything a store's contents depend on (JSON-serialisable)."""
    return hashlib.sha256(json.dumps({"format": FORMAT, **parts}, sort_keys=True).encode()).hexdigest()


class MemoryPoseStore:
    """Every pose's arrays in memory: for small splits (tests, step benchmarks) and for comparing
    with the disk store. Serves the same batches."""

    def __init__(self, arrays: dict[str, np.ndarray], names: list[str]):
        lengths = {len(a) for a in arrays.values()}
        if lengths != {len(names)}:
            raise ValueError(f"every field needs one row per pose ({len(names)}), got lengths {sorted(lengths)}")
        self.arrays, self.names, self.fields = arrays, list(names), fields_of(arrays)

    def __len__(self) -> int:
        return len(self.names)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays.values())

    def batch(self, idx) -> dict[str, np.ndarray]:
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        return {k: a[idx] for k, a in self.arrays.items()}

    def close(self) -> None:
        pass


def _views(arrays: dict[str, np.ndarray], fields, row: int) -> list[memoryview]:
    return [memoryview(arrays[f.name][row]).cast("B") for f in fields]


class DiskPoseStore:
    """A store directory opened for reading; `batch(idx)` reads the poses idx (any order)."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        manifest = json.loads((self.directory / MANIFEST).read_text())
        if manifest.get("format") != FORMAT:
            raise ValueError(f"{self.directory}: pose store format {manifest.get('format')}, expected {FORMAT}")
        self.key = manifest["key"]
        self.names = list(manifest["names"])
        self.fields = tuple(Field(f["name"], tuple(f["shape"]), f["dtype"]) for f in manifest["fields"])
        self.record_bytes = sum(f.nbytes for f in self.fields)
        self._fd = os.open(self.directory / DATA, os.O_RDONLY)
        size = os.fstat(self._fd).st_size
        if size != self.record_bytes * len(self.names):
            self.close()
            raise ValueError(f"{self.directory / DATA}: {size} bytes, expected {len(self.names)} poses x "
                             f"{self.record_bytes} bytes")

    def __len__(self) -> int:
        return len(self.names)

    @property
    def nbytes(self) -> int:
        return self.record_bytes * len(self.names)

    def batch(self, idx) -> dict[str, np.ndarray]:
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        out = {f.name: np.empty((len(idx), *f.shape), np.dtype(f.dtype)) for f in self.fields}
        for row, i in enumerate(idx.tolist()):
            if not 0 <= i < len(self.names):
                raise IndexError(f"pose {i} out of range for a store of {len(self.names)}")
            got = os.preadv(self._fd, _views(out, self.fields, row), i * self.record_bytes)
            if got != self.record_bytes:
                raise OSError(f"{self.directory / DATA}: short read of pose {i} ({got} of {self.record_bytes} bytes)")
        return out

    def close(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)
            self._fd = None

    __del__ = close

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_cached(directory: str | Path, key: str) -> DiskPoseStore | None:
    """The complete store in `directory` made under `key`, or None (absent, partial, other key)."""
    directory = Path(directory)
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("format") != FORMAT or manifest.get("key") != key:
        return None
    try:
        return DiskPoseStore(directory)
    except (OSError, ValueError, KeyError):
        return None


def _write_all(fd: int, views: list[memoryview]) -> None:
    """Write every byte of views (writev may write fewer, e.g. near a full disk)."""
    while views:
        n = os.writev(fd, views)
        while views and n >= len(views[0]):
            n -= len(views[0])
            views = views[1:]
        if views and n:
            views[0] = views[0][n:]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        pass
    return True


def _remove_abandoned(directory: Path) -> None:
    """Partial stores beside `directory` left by processes that died while writing them."""
    for p in directory.parent.glob(f"{directory.name}.partial-*"):
        pid = p.name.rsplit("-", 1)[1]
        if not pid.isdigit() or not _pid_alive(int(pid)):
            remove_store(p)


class PoseStoreWriter:
    """Appends encoded poses to a new store; `finish()` renames it into `directory`. The store
    is written as `<directory>.partial-<pid>` until then (so concurrent writers of one key do
    not mix their records), and partial stores of dead processes are removed."""

    def __init__(self, directory: str | Path, key: str):
        self.directory, self.key = Path(directory), key
        self.partial = self.directory.with_name(f"{self.directory.name}.partial-{os.getpid()}")
        self.directory.parent.mkdir(parents=True, exist_ok=True)
        _remove_abandoned(self.directory)
        remove_store(self.partial)
        self.partial.mkdir(parents=True)
        self._fd = os.open(self.partial / DATA, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self.fields: tuple[Field, ...] | None = None
        self.names: list[str] = []

    def append(self, arrays: dict[str, np.ndarray], names: list[str]) -> None:
        fields = fields_of(arrays)
        if self.fields is None:
            self.fields = fields
        elif fields != self.fields:
            raise ValueError(f"pose fields changed within a store: {fields} after {self.fields}")
        arrays = {k: np.ascontiguousarray(a) for k, a in arrays.items()}
        try:
            for row in range(len(names)):
                _write_all(self._fd, _views(arrays, fields, row))
        except OSError as e:
            per_pose = sum(f.nbytes for f in fields)
            raise OSError(e.errno, f"{self.partial / DATA}: cannot write the pose store ({e.strerror}); it takes "
                                   f"{per_pose / 2**20:.2f} MiB per pose: free space there or choose another "
                                   f"cache directory") from e
        self.names.extend(names)

    def finish(self) -> DiskPoseStore:
        os.close(self._fd)
        self._fd = None
        manifest = {"format": FORMAT, "key": self.key, "fields": [
            {"name": f.name, "shape": list(f.shape), "dtype": f.dtype} for f in self.fields or ()],
            "names": self.names}
        (self.partial / MANIFEST).write_text(json.dumps(manifest))
        remove_store(self.directory)
        os.rename(self.partial, self.directory)
        return DiskPoseStore(self.directory)

    def abort(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        remove_store(self.partial)


def build_store(directory: str | Path, key: str, chunks: Iterable[tuple[dict[str, np.ndarray], list[str]]]
                ) -> DiskPoseStore:
    """Write the (arrays, names) chunks as the store for `key` in `directory`; a failure leaves
    no partial store behind."""
    writer = PoseStoreWriter(directory, key)
    try:
        for arrays, names in chunks:
            writer.append(arrays, names)
        if not writer.names:
            raise ValueError("no poses to store")
        return writer.finish()
    except BaseException:
        writer.abort()
        raise


def memory_store(chunks: Iterable[tuple[dict[str, np.ndarray], list[str]]]) -> MemoryPoseStore:
    """The chunks gathered into one MemoryPoseStore."""
    parts: dict[str, list[np.ndarray]] = {}
    names: list[str] = []
    for arrays, chunk_names in chunks:
        for k, a in arrays.items():
            parts.setdefault(k, []).append(a)
        names.extend(chunk_names)
    if not names:
        raise ValueError("no poses to store")
    return MemoryPoseStore({k: np.concatenate(v) for k, v in parts.items()}, names)


def remove_store(directory: str | Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)


def as_store(train_set, encoder: PoseEncoder):
    """A trainer's input as a store: a store as it is; a calibrate.dataset.PreparedSplit (a
    small split held whole) encoded in memory."""
    if hasattr(train_set, "batch"):
        return train_set
    return MemoryPoseStore(encoder.encode(train_set), list(train_set.names))
