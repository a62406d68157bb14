"""structlog setup: the one place logging is configured (called once by the CLI). Logs go to
stderr so command output on stdout stays clean; `json=True` renders one JSON object per line.
The choice is also left in the environment (QNEXT_LOG) so processes spawned later (TP ranks)
log the same way: `configure_like_parent`."""

from __future__ import annotations

import logging
import os
import sys

import structlog


ENV = "QNEXT_LOG"


def configure_like_parent() -> None:
    """The configuration the parent process chose (info, console when it chose none)."""
    level, _, style = os.environ.get(ENV, "info:console").partition(":")
    configure_logging(level, style == "json")


def configure_logging(level: str = "info", json: bool = False) -> None:
    os.environ[ENV] = f"{level}:{'json' if json else 'console'}"
    renderer = (structlog.processors.JSONRenderer() if json
                else structlog.dev.ConsoleRenderer(colors=False))
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, structlog.processors.add_log_level,
                    structlog.processors.TimeStamper(fmt="iso"), renderer],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False)
