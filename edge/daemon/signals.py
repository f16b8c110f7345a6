"""Signal handling for `rgbd-edge run`, from the first line of start-up to the last of shutdown.

One set of handlers stays installed for the whole life of the process, so there is never a
moment where SIGTERM falls back to the default action (killed, exit -15) or raises into the
middle of a step. The handlers never raise and never log (logging from a handler can re-enter
a stream the main thread is writing to); they only record, and the main thread acts:

* SIGTERM / SIGINT: counted in ``stops`` (names in ``received``); the daemon's main thread
  polls them (``Daemon.poll_signals``, every 0.2 s at most) and stops: first signal, drain;
  second, skip the drain. While the sinks are being closed (``closing``) stop signals are
  recorded in ``ignored`` and do nothing: the MQTT outbox flush and the JSONL fsync finish,
  bounded by their own timeout.
* SIGHUP: ``reload`` is set (the daemon reloads the bundle); its default action would have
  ended the process.
"""
from __future__ import annotations

import signal
import threading
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class SignalRouter:
    def __init__(self) -> None:
        self.stops = 0  # stop signals received outside ``closing``
        self.received: list[str] = []  # every stop signal's name, in order (for the log)
        self.ignored: list[str] = []  # stop signals received while closing
        self.reload = threading.Event()  # SIGHUP received and not yet taken
        self.closing = False
        self._old: dict = {}

    def install(self) -> "SignalRouter":
        """Install the handlers (main thread only); ``restore()`` puts the previous ones back."""
        for s in (*STOP_SIGNALS, signal.SIGHUP):
            self._old[s] = signal.signal(s, self._handle)
        return self

    def restore(self) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old = {}

    def _handle(self, signum: int, _frame) -> None:
        name = signal.Signals(signum).name
        if signum == signal.SIGHUP:
            self.reload.set()
            return
        if self.closing:
            self.ignored.append(name)
            return
        self.received.append(name)  # before the count: received[stops - 1] always exists
        self.stops += 1

    def take_reload(self) -> bool:
        """True once per SIGHUP (several before it is taken count as one)."""
        if self.reload.is_set():
            self.reload.clear()
            return True
        return False
