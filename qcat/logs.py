"""structlog set-up: JSON lines for machines (the worker), readable lines for people (the CLI).

Libraries that log through the standard library (Faust, mode, aiokafka, transformers) go through the same renderer,
so a worker's stderr is JSON lines only; their records below WARNING are left out (they are chatty, and qcat logs
what matters itself)."""

from __future__ import annotations

import logging
import sys

import structlog


def _stderr_logger(*_args: object) -> structlog.PrintLogger:
    """Look sys.stderr up per logger, so redirected or replaced streams (tests, daemons) are honoured."""
    return structlog.PrintLogger(file=sys.stderr)


def configure_logging(*, json: bool, level: str = "INFO") -> None:
    """Configure once per process, from main(); everything writes to stderr so stdout stays for results."""
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processor=renderer,
            foreign_pre_chain=[
                structlog.stdlib.add_logger_name,
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(logging.WARNING, logging.getLevelName(level.upper())))
