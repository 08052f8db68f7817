"""Loguru configuration for the luckystack application.

Only the application configures sinks (``core`` never logs, libraries never
call ``logger.add``). :func:`configure_logging` runs once in ``main``: it
removes every loguru sink, adds a plain stderr sink for journald (which adds
its own timestamp), optionally a private JSON-lines file, and routes stdlib
:mod:`logging` (watchdog uses it) into loguru.

Per-frame context comes from ``logger.contextualize(frame=path.name)``; the
stderr line then ends with ``[frame]``.
"""

from __future__ import annotations

import inspect
import logging
import os
import sys
from pathlib import Path
from typing import TextIO

from loguru import logger

__all__ = ["InterceptHandler", "configure_logging"]

_STDERR_FORMAT = "{level: <7} {name}: {message}"


class InterceptHandler(logging.Handler):
    """Forward stdlib :mod:`logging` records to loguru (recipe from the loguru docs)."""

    def emit(self, record: logging.LogRecord) -> None:
        """Re-emit *record* through loguru at the matching level and call site."""
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno

        # Walk back past the logging module so {name}/{line} show the caller.
        frame, depth = inspect.currentframe(), 0
        while frame:
            filename = frame.f_code.co_filename
            is_logging = filename == logging.__file__
            is_frozen = "importlib" in filename and "_bootstrap" in filename
            if depth > 0 and not (is_logging or is_frozen):
                break
            frame = frame.f_back
            depth += 1

        logger.opt(depth=depth, exception=record.exc_info).log(level, record.getMessage())


def configure_logging(
    *,
    level: str = "INFO",
    json_file: Path | None = None,
    rotation: str = "10 MB",
    retention: int | str = 5,
    stream: TextIO | None = None,
) -> None:
    """Replace all loguru sinks with the luckystack ones.

    Parameters
    ----------
    level : str
        Minimum level name for every sink, case-insensitive (``"debug"``,
        ``"INFO"``, ``"WARNING"``...). Custom loguru levels are accepted.
    json_file : Path, optional
        If given, also write one JSON object per line here (``serialize=True``),
        created with mode 0o600 and rotated/retained as below.
    rotation, retention
        Passed to :meth:`loguru.Logger.add` for the JSON file.
    stream : text stream
        Where the human-readable sink writes; ``sys.stderr`` at call time
        (journald under systemd) by default.

    Raises
    ------
    ValueError
        If *level* is not a known level name. Nothing is changed in that case.

    Notes
    -----
    Idempotent: calling it again replaces the sinks and keeps exactly one
    :class:`InterceptHandler` on the root logger. Tracebacks never include
    local variable values (``diagnose=False``).
    """
    level_name = _validate_level(level)
    level_no = logger.level(level_name).no

    logger.remove()
    logger.add(
        stream if stream is not None else sys.stderr,
        level=level_name,
        format=_format_stderr,
        backtrace=False,
        diagnose=False,
        enqueue=False,
    )
    if json_file is not None:
        logger.add(
            Path(json_file),
            level=level_name,
            serialize=True,
            rotation=rotation,
            retention=retention,
            encoding="utf-8",
            opener=_private_opener,
            backtrace=False,
            diagnose=False,
            enqueue=False,
        )
    _install_intercept_handler(level_no)


def _validate_level(level: str) -> str:
    if not isinstance(level, str) or not level.strip():
        raise ValueError(f"log level must be a level name such as 'INFO', got {level!r}")
    name = level.strip().upper()
    try:
        logger.level(name)
    except ValueError:
        known = "TRACE, DEBUG, INFO, SUCCESS, WARNING, ERROR, CRITICAL"
        raise ValueError(f"unknown log level {level!r}; expected one of {known}") from None
    return name


def _format_stderr(record: dict) -> str:
    # A format *function* so `frame` is optional: "[x.png]" only when bound.
    suffix = " [{extra[frame]}]" if record["extra"].get("frame") else ""
    return _STDERR_FORMAT + suffix + "\n{exception}"


def _private_opener(path: str, flags: int) -> int:
    # The JSON log holds paths and error details; keep it owner-only.
    return os.open(path, flags, 0o600)


def _install_intercept_handler(level_no: int) -> None:
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, InterceptHandler)]:
        root.removeHandler(handler)
    root.addHandler(InterceptHandler())
    # Let stdlib drop what loguru would drop anyway, before formatting it.
    root.setLevel(level_no)
