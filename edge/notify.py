"""sd_notify(3) without dependencies: readiness, status and watchdog pings to systemd.

systemd passes ``NOTIFY_SOCKET`` (a filesystem path, or ``@name`` for an abstract socket) to a
``Type=notify`` service; each notification is one datagram of ``KEY=value`` lines on that
``AF_UNIX`` / ``SOCK_DGRAM`` socket. With ``WatchdogSec=`` systemd also sets ``WATCHDOG_USEC`` (and
``WATCHDOG_PID``, the process it is meant for): the service must send ``WATCHDOG=1`` more often
than that, or systemd kills and (with ``Restart=on-failure``) restarts it. The usual advice is
to ping at half the interval, which :meth:`Notifier.watchdog_interval` returns.

Outside systemd (no ``NOTIFY_SOCKET``) every method is a cheap no-op, so the daemon runs the same
way from a terminal or a test. Sending never raises: a failed notification is logged once and
counted, because losing a STATUS line must not stop inspection.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Mapping

log = logging.getLogger("rgbd_edge.notify")


class Notifier:
    def __init__(self, address: str | None = None, watchdog_usec: int | None = None):
        """``address``: the NOTIFY_SOCKET value (path or ``@abstract``); None disables notifications.
        ``watchdog_usec``: the watchdog timeout systemd enforces, None when there is none."""
        self.address = address or None
        self.watchdog_usec = watchdog_usec if watchdog_usec and watchdog_usec > 0 else None
        self.sent = 0
        self.errors = 0
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._warned = False

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, pid: int | None = None) -> "Notifier":
        """Read NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID (as sd_notify and sd_watchdog_enabled do).

        The watchdog applies only when WATCHDOG_PID is unset or names this process (a child started
        by the service must not ping on its parent's behalf).
        """
        env = os.environ if environ is None else environ
        pid = os.getpid() if pid is None else pid
        address = env.get("NOTIFY_SOCKET") or None
        usec = None
        raw = env.get("WATCHDOG_USEC")
        if raw:
            try:
                usec = int(raw)
            except ValueError:
                log.warning("ignoring WATCHDOG_USEC=%r: not an integer", raw)
                usec = None
            wpid = env.get("WATCHDOG_PID")
            if usec is not None and wpid:
                try:
                    if int(wpid) != pid:
                        usec = None  # meant for another process
                except ValueError:
                    log.warning("ignoring WATCHDOG_PID=%r: not an integer", wpid)
                    usec = None
        return cls(address, usec)

    # ------------------------------------------------------------------ queries

    @property
    def enabled(self) -> bool:
        """True when running under systemd with a notification socket."""
        return self.address is not None

    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), or None without a watchdog."""
        if self.watchdog_usec is None:
            return None
        return self.watchdog_usec / 2e6

    # ------------------------------------------------------------------ sending

    def notify(self, *lines: str, **fields: object) -> bool:
        """Send one datagram; ``notify("READY=1", STATUS="ok")``. Returns False when not sent."""
        if self.address is None:
            return False
        parts = list(lines) + [f"{k}={v}" for k, v in fields.items()]
        # STATUS is a single line: a newline would start a new (bogus) assignment.
        parts = [p.replace("\n", " ") for p in parts]
        data = "\n".join(parts).encode("utf-8", "replace")
        addr = self.address
        if addr.startswith("@"):
            addr = "\0" + addr[1:]  # Linux abstract namespace
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.sendto(data, addr)
            except OSError as exc:
                self.errors += 1
                if not self._warned:
                    log.warning("sd_notify to %s failed: %s (further failures are only counted)", self.address, exc)
                    self._warned = True
                return False
            self.sent += 1
            return True

    def ready(self, status: str | None = None) -> bool:
        return self.notify("READY=1", **({"STATUS": status} if status else {}))

    def status(self, text: str) -> bool:
        return self.notify(STATUS=text)

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def extend_timeout(self, seconds: float, status: str | None = None) -> bool:
        """Ask for ``seconds`` more before systemd's start (or stop) timeout fires (EXTEND_TIMEOUT_USEC):
        for long, visibly progressing work such as a first-start TensorRT build."""
        fields = {"EXTEND_TIMEOUT_USEC": int(seconds * 1e6)}
        if status:
            fields["STATUS"] = status
        return self.notify(**fields)

    def stopping(self, status: str | None = None) -> bool:
        return self.notify("STOPPING=1", **({"STATUS": status} if status else {}))

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None
