"""Logging for `rgbd-edge run`: one stderr handler on the root logger, journald-aware.

Under systemd (``JOURNAL_STREAM`` set) every line is prefixed with its syslog priority, so
``journalctl -p warning`` filters by level, and no time stamp is written (journald adds its own).
"""
from __future__ import annotations

import logging
import os
import sys

HANDLER_MARK = "_rgbd_edge"  # attribute on the handler we installed, so it can be replaced and removed


class _JournalFormatter(logging.Formatter):
    """Under journald (JOURNAL_STREAM set) prefix the syslog priority (<3> error ... <7> debug) so
    `journalctl -p warning` works; journald adds the time stamp itself."""

    PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        prio = self.PRIORITY.get(record.levelno, 6)
        return "\n".join(f"<{prio}>{line}" for line in text.splitlines())


def setup_logging(level: str = "INFO", stream=None) -> logging.Handler:
    """One stderr handler on the root logger, simple format; time stamps only outside journald."""
    stream = stream if stream is not None else sys.stderr
    handler = logging.StreamHandler(stream)
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(_JournalFormatter("%(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    remove_handlers(root)
    setattr(handler, HANDLER_MARK, True)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    return handler


def remove_handlers(root: logging.Logger) -> None:
    """Remove the handlers ``setup_logging`` installed on ``root`` (and only those)."""
    for h in list(root.handlers):
        if getattr(h, HANDLER_MARK, False):
            root.removeHandler(h)
