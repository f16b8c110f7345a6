"""Where the MQTT sink's queued messages live: the on-disk outbox, or memory while the outbox
cannot be written.

Normally every message is appended to the outbox (edge/sinks/outbox.py) and the sender publishes
outbox rows in id order. When an append fails because of the disk (full, read-only, I/O error):

* the message goes to a bounded :class:`MemoryQueue` (``memory_max_messages``,
  ``memory_max_bytes`` under ``sinks.mqtt.outbox``), counted in ``outbox_write_errors``;
* the sender publishes memory messages straight to the broker, QoS as configured, but only once
  every row still in the outbox has been handed to the client (:meth:`Spool.take_memory`), so the
  broker receives everything in order: memory messages are always newer than every outbox row
  (they enter memory only when the outbox refuses them, and while memory holds any, new messages
  join them there instead of the outbox);
* every later message first tries to move the memory queue back into the outbox, in order: the
  first success ends the fault (``outbox_ok``);
* when memory is full too (the broker is also down), the OLDEST messages are dropped, counted in
  ``lost`` / ``results_lost`` and reported as ``results_lost`` events (at most every
  ``LOST_EVENT_EVERY_S``);
* at close, memory messages (queued, or published and not yet acknowledged) are written to the
  outbox if it takes them, else counted lost. Written there, an unacknowledged one is sent again by
  the next process, after rows that were appended in the meantime (at-least-once; the only case
  where a consumer may see an older result after a newer one).

The problem is a health problem (``outbox: disk full (ENOSPC) ...``) from the first failure until
an append succeeds, with the events ``outbox_write_failed`` (the condition and SQLite's own error,
never a follow-up error) and ``outbox_ok``.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable

from .base import Counters, EventQueue, Fault, RateLimitedLog
from .outbox import Outbox, OutboxError

__all__ = ["Message", "MemoryQueue", "Spool", "LOST_EVENT_EVERY_S"]

log = logging.getLogger("edge.sinks.mqtt")

LOST_EVENT_EVERY_S = 10.0


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    kind: str    # result | heatmap
    seq: int | None


class MemoryQueue:
    """FIFO bounded by messages and bytes; :meth:`push` returns what it dropped (oldest first).
    Not thread-safe: the Spool's lock guards it."""

    def __init__(self, max_messages: int, max_bytes: int):
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self._q: collections.deque[Message] = collections.deque()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._q)

    def push(self, msg: Message) -> list[Message]:
        self._q.append(msg)
        self.bytes += len(msg.payload)
        dropped = []
        while len(self._q) > 1 and (len(self._q) > self.max_messages or self.bytes > self.max_bytes):
            dropped.append(self.popleft())
        return dropped

    def peek(self) -> Message | None:
        return self._q[0] if self._q else None

    def popleft(self) -> Message:
        m = self._q.popleft()
        self.bytes -= len(m.payload)
        return m

    def push_front(self, msg: Message) -> None:
        self._q.appendleft(msg)
        self.bytes += len(msg.payload)

    def clear(self) -> list[Message]:
        out = list(self._q)
        self._q.clear()
        self.bytes = 0
        return out


class Spool:
    """The outbox plus the memory queue, the outbox fault and the loss accounting (see the module
    docstring). ``put`` runs on the daemon's sink thread, ``take_memory`` on the MQTT sender."""

    def __init__(self, cfg, counters: Counters, events: EventQueue, connected: Callable[[], bool]):
        self.cfg = cfg
        self._c = counters
        self._events = events
        self._connected = connected
        self._rl = RateLimitedLog(log, 30.0)
        self.lock = threading.Lock()
        self.outbox = Outbox(cfg.outbox_path, cfg.outbox_max_messages, cfg.outbox_synchronous, cfg.outbox_max_bytes)
        self.memory = MemoryQueue(cfg.memory_max_messages, cfg.memory_max_bytes)
        self.memory_inflight = 0  # memory messages handed to the client, not yet acknowledged
        self.fault = Fault(events, "outbox_write_failed", "outbox_ok", log)
        self.last_error: str | None = None
        self._lost_unreported = 0
        self._lost_reasons: set[str] = set()
        self._lost_next_event = 0.0
        if self.outbox.open_error is not None:
            self._write_failed(OutboxError(self.outbox.open_error, disk=True, condition=self.outbox.open_condition))

    # ------------------------------------------------------------------ daemon side

    def put(self, msgs: list[Message]) -> None:
        with self.lock:
            for m in msgs:
                self._put_locked(m)

    def _put_locked(self, m: Message) -> None:
        if len(self.memory) and not self._flush_memory_locked():
            self._spill_locked(m)  # behind the messages already waiting in memory
            return
        if self._append_locked(m):
            self._ok_locked()
        elif self.fault.active:
            self._spill_locked(m)

    def _append_locked(self, m: Message) -> bool:
        """Into the outbox: True when written; False when refused (fault recorded, or lost)."""
        try:
            _, dropped = self.outbox.append(m.topic, m.payload, m.kind)
        except ValueError as exc:  # larger than outbox.max_bytes: it could never be queued
            self.lose([m], str(exc))
            return False
        except OutboxError as exc:
            self._write_failed(exc)
            return False
        if dropped:
            self._rl("overflow", logging.ERROR,
                     "mqtt: outbox full (max_messages %d, max_bytes %d, broker %s): dropped the %d oldest message(s); "
                     "%d dropped in total", self.cfg.outbox_max_messages, self.cfg.outbox_max_bytes,
                     "connected" if self._connected() else "unreachable", dropped, self.outbox.dropped_overflow)
        return True

    def _flush_memory_locked(self) -> bool:
        """Memory back into the outbox, in order; True when memory is empty afterwards."""
        while len(self.memory):
            m = self.memory.peek()
            if not self._append_locked(m):
                if self.fault.active:
                    return False
                self.memory.popleft()  # refused for good (too large): already counted lost
                continue
            self.memory.popleft()
        self._ok_locked()
        return True

    def _spill_locked(self, m: Message) -> None:
        dropped = self.memory.push(m)
        if dropped:
            self.lose(dropped, "the outbox cannot be written and the memory queue is full "
                               f"({self.cfg.memory_max_messages} messages / {self.cfg.memory_max_bytes} bytes)")

    def _write_failed(self, exc: OutboxError) -> None:
        self._c.inc("outbox_write_errors")
        self._c.inc("outbox_errors")
        self.last_error = str(exc)
        problem = (f"outbox: {exc.condition or 'write error'}: {self.cfg.outbox_path} cannot be written; results go "
                   f"to the broker directly while it is connected, and wait in memory (at most "
                   f"{self.cfg.memory_max_messages}) while it is not")
        if not self.fault.fail(problem, error=str(exc), condition=exc.condition, path=self.cfg.outbox_path,
                               broker_connected=self._connected(), queued=len(self.outbox)):
            self._rl("outbox", logging.ERROR, "mqtt: outbox still cannot be written: %s", exc)

    def _ok_locked(self) -> None:
        self.fault.ok(f"mqtt: outbox {self.cfg.outbox_path} is writable again: results go through it again",
                      path=self.cfg.outbox_path, direct_publishes=self._c["direct_publishes"],
                      results_lost=self._c["results_lost"])

    def lose(self, msgs: list[Message], why: str) -> None:
        """Messages that will never be sent: counted, logged (rate-limited), reported as events."""
        results = sum(1 for m in msgs if m.kind == "result")
        self._c.inc("lost", len(msgs))
        self._c.inc("failed", len(msgs))
        self._c.inc("results_lost", results)
        self._c.inc("heatmaps_lost", len(msgs) - results)
        seqs = [m.seq for m in msgs if m.kind == "result"]
        self._rl("lost", logging.ERROR, "mqtt: %d result(s)%s and %d heatmap(s) LOST: %s", results,
                 f" (seq {seqs[0]}..{seqs[-1]})" if seqs else "", len(msgs) - results, why)
        if results:
            self._lost_unreported += results
            self._lost_reasons.add(why)
            self.flush_lost_event()

    def flush_lost_event(self, force: bool = False) -> None:
        """One ``results_lost`` event for the losses since the last one, at most every
        LOST_EVENT_EVERY_S (called on every loss and every drain)."""
        now = time.monotonic()
        if not self._lost_unreported or (now < self._lost_next_event and not force):
            return
        n, reasons = self._lost_unreported, sorted(self._lost_reasons)
        self._lost_unreported, self._lost_reasons = 0, set()
        self._lost_next_event = now + LOST_EVENT_EVERY_S
        self._events.emit("results_lost", count=n, total=self._c["results_lost"], reason="; ".join(reasons))

    # ------------------------------------------------------------------ sender side

    def take_memory(self, cursor: int, room: int, hand_over: Callable[[Message], str]) -> int:
        """Hand up to ``room`` memory messages to the client, oldest first, once no outbox row newer
        than ``cursor`` waits. ``hand_over(msg)`` returns ``sent``, ``later`` (the client cannot take
        it now: it keeps its place) or ``bad`` (never publishable: lost). Returns how many were sent."""
        sent = 0
        with self.lock:
            if not len(self.memory) or self.outbox.has_after(cursor):
                return 0
            while len(self.memory) and sent < room:
                m = self.memory.popleft()
                how = hand_over(m)
                if how == "later":
                    self.memory.push_front(m)
                    break
                if how == "bad":
                    self.lose([m], "the client refused it")
                    continue
                self.memory_inflight += 1
                sent += 1
        return sent

    def memory_acked(self, msg: Message, failed: bool) -> None:
        with self.lock:
            self.memory_inflight -= 1
        if not failed and msg.kind == "result":
            self._c.inc("direct_publishes")

    def close(self, unacked: list[Message]) -> tuple[int, int]:
        """Memory messages (``unacked``: handed over, not acknowledged; then the queue) into the
        outbox if it takes them, else lost. Closes the outbox. Returns (saved, lost)."""
        with self.lock:
            left = list(unacked) + self.memory.clear()
            saved = 0
            for i, m in enumerate(left):
                try:
                    self.outbox.append(m.topic, m.payload, m.kind)
                except (OutboxError, ValueError) as exc:
                    self.lose(left[i:], f"the daemon stopped while the outbox could not be written ({exc})")
                    self.flush_lost_event(force=True)
                    break
                saved += 1
            self.memory_inflight = 0
        self.outbox.close()
        return saved, len(left) - saved

    # ------------------------------------------------------------------ reporting

    def problem(self) -> str | None:
        p = self.fault.problem
        if p is None:
            return None
        return f"{p} ({len(self.memory)} in memory now, {self._c['results_lost']} result(s) lost so far)"

    def info(self) -> dict:
        """The ``outbox`` object of the status messages."""
        return {"queued": len(self.outbox), "dropped_overflow": self.outbox.dropped_overflow,
                "max_messages": self.cfg.outbox_max_messages, "bytes": self.outbox.bytes,
                "max_bytes": self.cfg.outbox_max_bytes, "writable": not self.fault.active,
                "memory_queued": len(self.memory)}

