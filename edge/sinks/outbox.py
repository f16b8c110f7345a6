"""A bounded, ordered, on-disk message queue (SQLite) between the daemon and the MQTT broker.

Every MQTT result (and heatmap) is appended here first, so a crash or an unreachable broker
loses nothing; the MQTT sender claims rows in id order, publishes them, and deletes a row only
when the broker acknowledged it (PUBACK). Rows that survive a restart are sent again, in order,
by the next process (at-least-once delivery: a row whose PUBACK was lost is sent twice).

Bounded: when an append would exceed ``max_messages`` the OLDEST rows that are not currently
claimed (in flight) are deleted and counted in ``dropped_overflow``; never silently.

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

log = logging.getLogger("edge.sinks.outbox")

SCHEMA_VERSION = 1
SYNCHRONOUS = ("normal", "full")

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
    """The outbox could not be opened or written."""


class Outbox:
    def __init__(self, path: str | os.PathLike, max_messages: int = 10000, synchronous: str = "normal"):
        if max_messages < 1:
            raise ValueError(f"outbox max_messages must be >= 1, got {max_messages}")
        if synchronous not in SYNCHRONOUS:
            raise ValueError(f"outbox synchronous must be one of {SYNCHRONOUS}, got {synchronous!r}")
        self.path = Path(path)
        self.max_messages = int(max_messages)
        self._sync = synchronous
        self._lock = threading.Lock()
        self._claimed: set[int] = set()
        self.dropped_overflow = 0
        self.dropped_by_kind: dict[str, int] = {}
        self._db = self._open()
        self._count = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
        if self._count:
            log.info("outbox %s: %d message(s) left from a previous run will be sent first", self.path, self._count)
        if self._count > self.max_messages:  # max_messages was lowered since
            with self._lock:
                self._trim_locked()

    # ------------------------------------------------------------------ open

    def _open(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutboxError(f"outbox {self.path}: cannot create directory: {exc}") from exc
        if not os.access(self.path.parent, os.W_OK | os.X_OK):
            raise OutboxError(f"outbox {self.path}: directory {self.path.parent} is not writable by this user "
                              f"(under systemd use the state directory /var/lib/rgbd-edge)")
        try:
            return self._connect()
        except sqlite3.OperationalError as exc:  # locked, read-only, I/O error: not a corrupt file
            raise OutboxError(f"outbox {self.path}: cannot open: {exc} (is it writable by the service user? "
                              f"under systemd use the state directory /var/lib/rgbd-edge)") from exc
        except sqlite3.DatabaseError as exc:
            # Corrupt (or not SQLite at all): keep it for inspection, start a fresh outbox.
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
                raise OutboxError(f"outbox {self.path}: unreadable and could not be replaced: {exc2}") from exc2

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(str(self.path), timeout=5.0, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
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

    # ------------------------------------------------------------------ API

    def append(self, topic: str, payload: bytes | str, kind: str = "result") -> tuple[int, int]:
        """Add one message at the end. Returns (row id, rows dropped to make room).

        Raises OutboxError when the database cannot be written (disk full, I/O error)."""
        if isinstance(payload, str):
            payload = payload.encode("utf-8")
        with self._lock:
            self._check_open()
            try:
                cur = self._db.execute("INSERT INTO outbox(topic, payload, kind, created) VALUES(?, ?, ?, ?)",
                                       (topic, sqlite3.Binary(payload), kind, time.time()))
            except sqlite3.Error as exc:
                raise OutboxError(f"outbox {self.path}: append failed: {exc}") from exc
            self._count += 1
            dropped = self._trim_locked() if self._count > self.max_messages else 0
            return int(cur.lastrowid), dropped

    def _trim_locked(self) -> int:
        excess = self._count - self.max_messages
        if excess <= 0:
            return 0
        claimed = sorted(self._claimed)
        q = "SELECT id, kind FROM outbox"
        if claimed:
            q += f" WHERE id NOT IN ({','.join('?' * len(claimed))})"
        rows = self._db.execute(q + " ORDER BY id LIMIT ?", (*claimed, excess)).fetchall()
        if not rows:
            return 0
        ids = [r[0] for r in rows]
        try:
            self._delete_locked(ids)
        except sqlite3.Error as exc:
            log.error("outbox %s: overflow trim failed: %s", self.path, exc)
            return 0
        self.dropped_overflow += len(ids)
        for _, kind in rows:
            self.dropped_by_kind[kind] = self.dropped_by_kind.get(kind, 0) + 1
        return len(ids)

    def claim(self, after_id: int, limit: int) -> list[Row]:
        """The next ``limit`` rows with id > after_id, in order, marked in flight (overflow skips
        them until they are deleted or released)."""
        if limit <= 0:
            return []
        with self._lock:
            self._check_open()
            rows = self._db.execute("SELECT id, topic, payload, kind, created FROM outbox WHERE id > ? "
                                    "ORDER BY id LIMIT ?", (after_id, limit)).fetchall()
            out = [Row(int(i), t, bytes(p), k, float(c)) for i, t, p, k, c in rows]
            self._claimed.update(r.id for r in out)
            return out

    def release(self, ids=None) -> None:
        """Un-claim rows (all when ids is None): they may be sent again, or dropped by overflow."""
        with self._lock:
            if ids is None:
                self._claimed.clear()
            else:
                self._claimed.difference_update(ids)

    def delete(self, ids) -> int:
        """Remove acknowledged rows. Returns how many existed."""
        ids = list(ids)
        if not ids:
            return 0
        with self._lock:
            self._check_open()
            try:
                return self._delete_locked(ids)
            except sqlite3.Error as exc:
                raise OutboxError(f"outbox {self.path}: delete failed: {exc}") from exc

    def _delete_locked(self, ids: list[int]) -> int:
        n = 0
        self._db.execute("BEGIN")
        try:
            for i in range(0, len(ids), 500):
                chunk = ids[i:i + 500]
                n += self._db.execute(f"DELETE FROM outbox WHERE id IN ({','.join('?' * len(chunk))})",
                                      chunk).rowcount
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._claimed.difference_update(ids)
        self._count -= n
        return n

    def __len__(self) -> int:
        return self._count

    @property
    def claimed(self) -> int:
        return len(self._claimed)

    def oldest_age_s(self) -> float | None:
        """Seconds since the oldest queued message was appended (None when empty)."""
        with self._lock:
            if self._db is None or not self._count:
                return None
            row = self._db.execute("SELECT created FROM outbox ORDER BY id LIMIT 1").fetchone()
        return None if row is None else max(0.0, time.time() - float(row[0]))

    def close(self) -> None:
        with self._lock:
            if self._db is None:
                return
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                pass
            self._db.close()
            self._db = None

    def _check_open(self) -> None:
        if self._db is None:
            raise OutboxError(f"outbox {self.path} is closed")
