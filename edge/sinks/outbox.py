"""A bounded, ordered, on-disk message queue (SQLite) between the daemon and the MQTT broker.

Every MQTT result (and heatmap) is appended here first, so a crash or an unreachable broker
loses nothing; the MQTT sender claims rows in id order, publishes them, and deletes a row only
when the broker acknowledged it (PUBACK). Rows that survive a restart are sent again, in order,
by the next process (at-least-once delivery: a row whose PUBACK was lost is sent twice).

Bounded twice: by rows (``max_messages``) and by payload bytes (``max_bytes``). An append that
goes over either bound deletes the OLDEST rows that are not currently claimed (in flight) and
counts them in ``dropped_overflow``; never silently.

Space comes back: new files use ``auto_vacuum=INCREMENTAL``, and once enough pages are free
(``RECLAIM_PAGES``, or the queue is empty) the sender's delete runs ``PRAGMA incremental_vacuum``
and a truncating WAL checkpoint, so the files shrink after an outage instead of staying at their
largest size. A file made without auto_vacuum is converted (``VACUUM``) the first time it is empty.
The WAL is kept to ``WAL_LIMIT_BYTES`` after each checkpoint (``journal_size_limit``).

Disk trouble: a write that fails (full disk, read-only remount, I/O error) raises
:class:`OutboxError` with ``disk=True`` and the condition in words (``disk full (ENOSPC): ...``,
see edge.sinks.disk), never a follow-up error such as "cannot rollback". A file that cannot be
opened because of the disk (for example a full disk at start-up: SQLite cannot map its WAL index)
leaves the outbox *unavailable* instead of failing the daemon: appends raise OutboxError
(disk=True) and retry the open at most every ``reopen_every_s``.

Durability: WAL journal. ``synchronous="normal"`` (default) survives a crash of the process; a
power cut may lose the last transactions. ``"full"`` fsyncs every append (survives power cuts,
costs an fsync per result on the eMMC/NVMe).

Thread-safe: one connection guarded by a lock; every method is short.
"""
from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .disk import describe_write_error, disk_condition, is_disk_error

log = logging.getLogger("edge.sinks.outbox")

SCHEMA_VERSION = 1
SYNCHRONOUS = ("normal", "full")
DEFAULT_MAX_BYTES = 256 << 20
RECLAIM_PAGES = 256          # free pages (1 MiB at 4 KiB pages) before space is given back
WAL_LIMIT_BYTES = 4 << 20    # the WAL file is truncated to this after a checkpoint

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,  -- AUTOINCREMENT: ids never reused, so id order = append order
    topic   TEXT    NOT NULL,
    payload BLOB    NOT NULL,
    kind    TEXT    NOT NULL DEFAULT 'result',
    created REAL    NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True)
class Row:
    id: int
    topic: str
    payload: bytes
    kind: str
    created: float  # unix seconds of the append


class OutboxError(RuntimeError):
    """The outbox could not be opened or written. ``disk``: the disk is at fault (full, read-only,
    I/O error), so it may come back by itself; ``condition``: that in a few words
    (``disk full (ENOSPC)``)."""

    def __init__(self, message: str, *, disk: bool = False, condition: str = ""):
        super().__init__(message)
        self.disk = disk
        self.condition = condition


class Outbox:
    def __init__(self, path: str | os.PathLike, max_messages: int = 10000, synchronous: str = "normal",
                 max_bytes: int = DEFAULT_MAX_BYTES, reopen_every_s: float = 1.0):
        if max_messages < 1:
            raise ValueError(f"outbox max_messages must be >= 1, got {max_messages}")
        if max_bytes < 1:
            raise ValueError(f"outbox max_bytes must be >= 1, got {max_bytes}")
        if synchronous not in SYNCHRONOUS:
            raise ValueError(f"outbox synchronous must be one of {SYNCHRONOUS}, got {synchronous!r}")
        self.path = Path(path)
        self.max_messages = int(max_messages)
        self.max_bytes = int(max_bytes)
        self._sync = synchronous
        self._reopen_every_s = reopen_every_s
        self._lock = threading.Lock()
        self._claimed: set[int] = set()
        self.dropped_overflow = 0
        self.dropped_by_kind: dict[str, int] = {}
        self._db: sqlite3.Connection | None = None
        self._closed = False
        self._count = 0
        self._bytes = 0
        self.open_error: str | None = None  # why the outbox is unavailable (a disk problem at open)
        self.open_condition = ""  # that in a few words (disk full (ENOSPC))
        self._next_open = 0.0
        with self._lock:
            self._try_open_locked()

    # ------------------------------------------------------------------ open

    def _try_open_locked(self) -> bool:
        """Open the file; a disk problem leaves the outbox unavailable (retried later), anything
        else raises OutboxError."""
        try:
            db = self._open()
        except OutboxError as exc:
            if not exc.disk:
                raise
            first = self.open_error is None
            self.open_error = str(exc)
            self.open_condition = exc.condition
            self._next_open = time.monotonic() + self._reopen_every_s
            if first:
                log.error("%s; retrying every %.0f s", exc, self._reopen_every_s)
            return False
        self._db = db
        if self.open_error is not None:
            log.info("outbox %s: opened after the disk problem ended", self.path)
        self.open_error, self.open_condition = None, ""
        n, b = db.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM outbox").fetchone()
        self._count, self._bytes = int(n), int(b)
        if self._count:
            log.info("outbox %s: %d message(s) left from a previous run will be sent first", self.path, self._count)
        self._trim_locked()  # the bounds may have been lowered since
        return True

    def _disk_error(self, exc: BaseException, what: str) -> OutboxError:
        condition, detail = describe_write_error(exc, self.path)
        return OutboxError(f"outbox {self.path}: {what}: {condition}: {detail}", disk=True, condition=condition)

    def _open(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            if is_disk_error(exc):
                raise self._disk_error(exc, "cannot create directory") from exc
            raise OutboxError(f"outbox {self.path}: cannot create directory: {exc}") from exc
        if not os.access(self.path.parent, os.W_OK | os.X_OK):
            cond = disk_condition(self.path)
            if cond is not None and cond.startswith("read-only"):
                raise OutboxError(f"outbox {self.path}: cannot write: {cond}", disk=True, condition="read-only file "
                                  "system (EROFS)")
            raise OutboxError(f"outbox {self.path}: directory {self.path.parent} is not writable by this user "
                              f"(under systemd use the state directory /var/lib/rgbd-edge)")
        try:
            return self._connect()
        except sqlite3.OperationalError as exc:  # locked, read-only, I/O error: not a corrupt file
            if is_disk_error(exc):
                raise self._disk_error(exc, "cannot open") from exc
            raise OutboxError(f"outbox {self.path}: cannot open: {exc} (is it writable by the service user? "
                              f"under systemd use the state directory /var/lib/rgbd-edge)") from exc
        except sqlite3.DatabaseError as exc:
            return self._replace_corrupt(exc)

    def _replace_corrupt(self, exc: sqlite3.DatabaseError) -> sqlite3.Connection:
        """Corrupt (or not SQLite at all): keep it for inspection, start a fresh outbox."""
        aside = self.path.with_name(f"{self.path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
        log.error("outbox %s is unreadable (%s): moved aside to %s, starting an empty outbox; "
                  "messages in it were NOT sent", self.path, exc, aside)
        try:
            os.replace(self.path, aside)
            for suffix in ("-wal", "-shm"):
                side = Path(str(self.path) + suffix)
                if side.exists():
                    os.replace(side, Path(str(aside) + suffix))
            return self._connect()
        except (OSError, sqlite3.DatabaseError) as exc2:
            if is_disk_error(exc2):
                raise self._disk_error(exc2, "unreadable and could not be replaced") from exc2
            raise OutboxError(f"outbox {self.path}: unreadable and could not be replaced: {exc2}") from exc2

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(str(self.path), timeout=5.0, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA auto_vacuum=INCREMENTAL")  # takes effect only on a new (empty) file
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
            db.execute(f"PRAGMA synchronous={self._sync.upper()}")
            db.executescript(_SCHEMA)
            row = db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            if row is None:
                db.execute("INSERT INTO meta(key, value) VALUES('schema', ?)", (str(SCHEMA_VERSION),))
            elif int(row[0]) != SCHEMA_VERSION:
                raise sqlite3.DatabaseError(f"outbox schema {row[0]} is not {SCHEMA_VERSION}")
            db.execute("SELECT COUNT(*) FROM outbox").fetchone()  # touches the table: corrupt files fail here
        except BaseException:
            db.close()
            raise
        return db

    def _ensure_open_locked(self) -> bool:
        """True when the database is open; retries an open that failed for a disk problem."""
        if self._closed:
            raise OutboxError(f"outbox {self.path} is closed")
        if self._db is not None:
            return True
        if time.monotonic() < self._next_open:
            return False
        try:
            return self._try_open_locked()
        except OutboxError as exc:  # no longer a disk problem (e.g. locked): still unavailable, retried
            self.open_error = str(exc)
            self._next_open = time.monotonic() + self._reopen_every_s
            return False

    # ------------------------------------------------------------------ API

    @property
    def available(self) -> bool:
        return self._db is not None

    def append(self, topic: str, payload: bytes | str, kind: str = "result") -> tuple[int, int]:
        """Add one message at the end. Returns (row id, rows dropped to make room).

        Raises OutboxError when the database cannot be written (``disk=True`` for a full,
        read-only or failing disk) and ValueError for a message larger than ``max_bytes``."""
        if isinstance(payload, str):
            payload = payload.encode("utf-8")
        if len(payload) > self.max_bytes:
            raise ValueError(f"a {len(payload)}-byte message is larger than the outbox max_bytes {self.max_bytes}")
        with self._lock:
            if not self._ensure_open_locked():
                raise OutboxError(f"outbox {self.path} is unavailable: {self.open_error}", disk=True,
                                  condition=self.open_condition)
            try:
                cur = self._db.execute("INSERT INTO outbox(topic, payload, kind, created) VALUES(?, ?, ?, ?)",
                                       (topic, sqlite3.Binary(payload), kind, time.time()))
            except sqlite3.Error as exc:
                if is_disk_error(exc):
                    raise self._disk_error(exc, "append failed") from exc
                raise OutboxError(f"outbox {self.path}: append failed: {exc}") from exc
            self._count += 1
            self._bytes += len(payload)
            return int(cur.lastrowid), self._trim_locked()

    def _trim_locked(self) -> int:
        """Drop the oldest unclaimed rows until both bounds hold; returns how many."""
        excess_rows = self._count - self.max_messages
        excess_bytes = self._bytes - self.max_bytes
        if excess_rows <= 0 and excess_bytes <= 0:
            return 0
        claimed = sorted(self._claimed)
        q = "SELECT id, kind, LENGTH(payload) FROM outbox"
        if claimed:
            q += f" WHERE id NOT IN ({','.join('?' * len(claimed))})"
        cur = self._db.execute(q + " ORDER BY id", claimed)
        victims: list[tuple[int, str]] = []
        freed = 0
        while len(victims) < excess_rows or freed < excess_bytes:
            batch = cur.fetchmany(256)
            if not batch:
                break
            for i, kind, size in batch:
                if len(victims) >= excess_rows and freed >= excess_bytes:
                    break
                victims.append((i, kind))
                freed += int(size)
        cur.close()
        if not victims:
            return 0
        try:
            self._delete_locked([i for i, _ in victims])
        except sqlite3.Error as exc:
            log.error("outbox %s: overflow trim failed: %s", self.path, describe_write_error(exc, self.path)[1])
            return 0
        self.dropped_overflow += len(victims)
        for _, kind in victims:
            self.dropped_by_kind[kind] = self.dropped_by_kind.get(kind, 0) + 1
        return len(victims)

    def claim(self, after_id: int, limit: int) -> list[Row]:
        """The next ``limit`` rows with id > after_id, in order, marked in flight (overflow skips
        them until they are deleted or released). Empty while the outbox is unavailable."""
        if limit <= 0:
            return []
        with self._lock:
            if not self._ensure_open_locked():
                return []
            rows = self._db.execute("SELECT id, topic, payload, kind, created FROM outbox WHERE id > ? "
                                    "ORDER BY id LIMIT ?", (after_id, limit)).fetchall()
            out = [Row(int(i), t, bytes(p), k, float(c)) for i, t, p, k, c in rows]
            self._claimed.update(r.id for r in out)
            return out

    def get(self, ids) -> dict[int, Row]:
        """The rows with these ids that are still queued (to publish them again)."""
        ids = list(ids)
        out: dict[int, Row] = {}
        with self._lock:
            if not ids or not self._ensure_open_locked():
                return out
            for i in range(0, len(ids), 500):
                chunk = ids[i:i + 500]
                for r in self._db.execute(f"SELECT id, topic, payload, kind, created FROM outbox WHERE id IN "
                                          f"({','.join('?' * len(chunk))})", chunk):
                    out[int(r[0])] = Row(int(r[0]), r[1], bytes(r[2]), r[3], float(r[4]))
        return out

    def has_after(self, after_id: int) -> bool:
        """Is any row newer than ``after_id`` queued?"""
        with self._lock:
            if self._db is None:
                return False
            return self._db.execute("SELECT 1 FROM outbox WHERE id > ? LIMIT 1", (after_id,)).fetchone() is not None

    def release(self, ids=None) -> None:
        """Un-claim rows (all when ids is None): they may be sent again, or dropped by overflow."""
        with self._lock:
            if ids is None:
                self._claimed.clear()
            else:
                self._claimed.difference_update(ids)

    def delete(self, ids) -> int:
        """Remove acknowledged rows, then give free space back when enough has piled up. Returns
        how many existed. OutboxError (``disk=True`` on a full disk: SQLite needs space to delete)."""
        ids = list(ids)
        if not ids:
            return 0
        with self._lock:
            if not self._ensure_open_locked():
                raise OutboxError(f"outbox {self.path} is unavailable: {self.open_error}", disk=True,
                                  condition=self.open_condition)
            try:
                n = self._delete_locked(ids)
            except sqlite3.Error as exc:
                if is_disk_error(exc):
                    raise self._disk_error(exc, "delete failed") from exc
                raise OutboxError(f"outbox {self.path}: delete failed: {exc}") from exc
            self._reclaim_locked()
            return n

    def _delete_locked(self, ids: list[int]) -> int:
        n = freed = 0
        self._db.execute("BEGIN")
        try:
            for i in range(0, len(ids), 500):
                chunk = ids[i:i + 500]
                marks = ",".join("?" * len(chunk))
                freed += self._db.execute(f"SELECT COALESCE(SUM(LENGTH(payload)), 0) FROM outbox WHERE id IN ({marks})",
                                          chunk).fetchone()[0]
                n += self._db.execute(f"DELETE FROM outbox WHERE id IN ({marks})", chunk).rowcount
            self._db.execute("COMMIT")
        except BaseException:
            # SQLite has already rolled back after SQLITE_FULL/IOERR; a ROLLBACK then only adds
            # "cannot rollback - no transaction is active" on top of the error that matters.
            if self._db.in_transaction:
                try:
                    self._db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            raise
        self._claimed.difference_update(ids)
        self._count -= n
        self._bytes -= int(freed)
        return n

    def _reclaim_locked(self) -> None:
        """Give free pages back to the file system (see the module docstring). Failures are
        logged: the rows are gone either way, only the file stays larger."""
        try:
            if self._db.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:  # 2 = INCREMENTAL
                if self._count == 0:
                    self._db.execute("PRAGMA auto_vacuum=INCREMENTAL")
                    self._db.execute("VACUUM")  # converts a file made without auto_vacuum
                    self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                return
            free = self._db.execute("PRAGMA freelist_count").fetchone()[0]
            if free >= RECLAIM_PAGES or (self._count == 0 and free):
                # executescript steps the pragma to the end (execute() frees a single page)
                self._db.executescript("PRAGMA incremental_vacuum;")
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        except sqlite3.Error as exc:
            log.warning("outbox %s: could not give free space back: %s", self.path,
                        describe_write_error(exc, self.path)[1])

    def __len__(self) -> int:
        return self._count

    @property
    def bytes(self) -> int:
        """Payload bytes queued (the files are larger by SQLite's per-row and per-page overhead)."""
        return self._bytes

    @property
    def claimed(self) -> int:
        return len(self._claimed)

    def file_bytes(self) -> int:
        """Size of the database and its WAL on disk now."""
        total = 0
        for suffix in ("", "-wal"):
            try:
                total += os.path.getsize(str(self.path) + suffix)
            except OSError:
                pass
        return total

    def oldest_age_s(self) -> float | None:
        """Seconds since the oldest queued message was appended (None when empty)."""
        with self._lock:
            if self._db is None or not self._count:
                return None
            row = self._db.execute("SELECT created FROM outbox ORDER BY id LIMIT 1").fetchone()
        return None if row is None else max(0.0, time.time() - float(row[0]))

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._db is None:
                return
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                pass
            self._db.close()
            self._db = None

