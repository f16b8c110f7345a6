"""Exit codes of `rgbd-edge run`, the start-up error that carries one, and the one-line error text
the daemon writes into logs, status messages and result reasons.

The systemd unit relies on these numbers: ``RestartPreventExitStatus`` names the configuration
and bundle errors (a restart cannot fix them); every other non-zero code is restarted. That
includes 7 (another instance holds this device's lock): the service keeps retrying every
``RestartSec`` and takes over once the other instance has stopped.
"""
from __future__ import annotations

EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_BUNDLE = 3
EXIT_ENGINE = 4
EXIT_SOURCE = 5
EXIT_FATAL = 6
EXIT_LOCKED = 7
EXIT_CODES = {
    EXIT_OK: "clean stop",
    EXIT_CONFIG: "configuration error",
    EXIT_BUNDLE: "bundle error",
    EXIT_ENGINE: "engine load error",
    EXIT_SOURCE: "source could not be opened",
    EXIT_FATAL: "internal fatal error",
    EXIT_LOCKED: "another instance is running for this device",
}


class StartupError(Exception):
    """Start-up failed; ``code`` is the process exit code."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


class StartupInterrupted(Exception):
    """A stop was requested (SIGTERM/SIGINT) while starting: raised between two start-up steps,
    never from inside one, so no step is left half done."""


def short_error(exc: BaseException, limit: int = 200) -> str:
    """``Type: message`` on one line, cut to ``limit`` characters (log lines and result reasons)."""
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."
