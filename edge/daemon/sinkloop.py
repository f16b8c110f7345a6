"""The sink thread: results and status messages from the results queue to every sink, in order.

A sink that raises is counted (``sink_errors``) and logged; the others still get the item.
``busy_since`` tells the watchdog logic how long the current publish has been running, so a sink
stuck in one call stops the WATCHDOG=1 pings.

Sink events: a sink may offer ``drain_events() -> list[dict]`` (a late GPIO pulse it skipped, an
outbox it could not write, a disk that filled up or came back). After every item this thread
drains them and publishes each one to every sink as a status message
``{"state": "running", "device_id": ..., **event}`` (counted in ``sink_events``), so the line
hears about them on the same channels as the results.
"""
from __future__ import annotations

import logging
import queue
import time

from .control import RunControl, until_end
from .counters import Counters
from .exits import EXIT_FATAL, short_error

log = logging.getLogger("edge.daemon")


def sink_name(sink) -> str:
    return getattr(sink, "name", type(sink).__name__)


class SinkLoop:
    """``run()`` is the thread's body: until END, publish ``("result", InspectionResult, jpeg)`` and
    ``("status", dict, None)`` items to ``sinks``."""

    def __init__(self, sinks: list, results_q: queue.Queue, counters: Counters, control: RunControl,
                 device_id: str = ""):
        self.sinks = sinks
        self.q = results_q
        self.counters = counters
        self.control = control
        self.device_id = device_id
        self.busy_since: float | None = None  # monotonic start of the publish in progress

    def run(self) -> None:
        try:
            for item in until_end(self.q):
                self._publish(*item)
                self.busy_since = time.monotonic()
                publish_sink_events(self.sinks, self.device_id, self.counters)
                self.busy_since = None
        except Exception as exc:
            self.control.set_fatal(EXIT_FATAL, f"sink thread crashed: {short_error(exc, 500)}")
            self.control.abort.set()
        finally:
            self.busy_since = None

    def _publish(self, kind: str, payload, jpeg: bytes | None) -> None:
        self.busy_since = time.monotonic()
        for s in self.sinks:
            try:
                if kind == "result":
                    s.publish(payload, heatmap_jpeg=jpeg)
                else:
                    s.publish_status(payload)
            except Exception as exc:  # sinks should not raise; count it when one does
                self.counters.inc("sink_errors")
                log.error("sink %s: %s failed: %s", sink_name(s), kind, short_error(exc))
        if kind == "result":
            self.counters.inc("results_published")
        self.busy_since = None


def publish_status_direct(sinks, status: dict, counters: Counters) -> None:
    """``publish_status`` from the calling thread (only while no sink thread is running)."""
    for s in sinks or ():
        try:
            s.publish_status(status)
        except Exception as exc:
            counters.inc("sink_errors")
            log.error("sink %s: status failed: %s", sink_name(s), short_error(exc))


def drain_sink_events(sinks, device_id: str, counters: Counters) -> list[dict]:
    """The events every sink that offers ``drain_events()`` has queued, as status messages."""
    out = []
    for s in sinks or ():
        drain = getattr(s, "drain_events", None)
        if drain is None:
            continue
        try:
            events = list(drain() or ())
        except Exception as exc:
            counters.inc("sink_errors")
            log.error("sink %s: drain_events failed: %s", sink_name(s), short_error(exc))
            continue
        for e in events:
            if not isinstance(e, dict):
                log.error("sink %s: drain_events gave %r, not a dict: ignored", sink_name(s), type(e).__name__)
                continue
            e = {"sink": sink_name(s), **e}
            log.warning("sink %s: event %s: %s", e["sink"], e.get("event", "?"),
                        {k: v for k, v in e.items() if k not in ("sink", "event")})
            out.append({"state": "running", "device_id": device_id, **e})
    return out


def publish_sink_events(sinks, device_id: str, counters: Counters) -> int:
    """Drain the sinks' events and publish each as a status message to every sink (calling
    thread: the sink thread, or the main thread while it is not running). Returns how many."""
    events = drain_sink_events(sinks, device_id, counters)
    for e in events:
        publish_status_direct(sinks, e, counters)
        counters.inc("sink_events")
    return len(events)
