"""Exit codes of `rgbd-edge run`, the start-up error that carries one, and the one-line error text
the daemon writes into logs, status messages and result reasons.

The systemd unit relies on these numbers: ``RestartPreventExitStatus`` names the configuration
and bundle errors (a restart cannot fix them); every other non-zero code is restarted.
"""
from __future__ import annotations

EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_BUNDLE = 3
EXIT_ENGINE = 4
EXIT_SOURCE = 5
EXIT_FATAL = 6
EXIT_CODES = {
    EXIT_OK: "clean stop",
    EXIT_CONFIG: "configuration error",
    EXIT_BUNDLE: "bundle error",
    EXIT_ENGINE: "engine load error",
    EXIT_SOURCE: "source could not be opened",
    EXIT_FATAL: "internal fatal error",
}


class StartupError(Exception):
    """Start-up failed; ``code`` is the process exit code."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


def short_error(exc: BaseException, limit: int = 200) -> str:
    """``Type: message`` on one line, cut to ``limit`` characters (log lines and result reasons)."""
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."
