"""luckystack.daemon.logs: sinks, format, JSON file, stdlib interception."""

from __future__ import annotations

import io
import json
import logging
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from loguru import logger

from luckystack.daemon.logs import InterceptHandler, configure_logging


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """Put loguru and the stdlib root logger back as they were."""
    root = logging.getLogger()
    saved_level = root.level
    yield
    logger.remove()
    logger.add(sys.stderr)
    for handler in [h for h in root.handlers if isinstance(h, InterceptHandler)]:
        root.removeHandler(handler)
    root.setLevel(saved_level)


def _intercepts() -> list[logging.Handler]:
    return [h for h in logging.getLogger().handlers if isinstance(h, InterceptHandler)]


def test_stderr_format() -> None:
    stream = io.StringIO()
    configure_logging(stream=stream)
    logger.info("stacked {} frames", 12)
    logger.warning("slow")
    assert stream.getvalue().splitlines() == [
        f"INFO    {__name__}: stacked 12 frames",
        f"WARNING {__name__}: slow",
    ]


def test_level_filters_and_is_case_insensitive() -> None:
    stream = io.StringIO()
    configure_logging(level="warning", stream=stream)
    logger.info("hidden")
    logger.error("shown")
    assert "hidden" not in stream.getvalue()
    assert "ERROR   " in stream.getvalue()


def test_frame_context_is_shown() -> None:
    stream = io.StringIO()
    configure_logging(stream=stream)
    with logger.contextualize(frame="x.png"):
        logger.info("rejected")
    logger.info("idle")
    lines = stream.getvalue().splitlines()
    assert lines[0] == f"INFO    {__name__}: rejected [x.png]"
    assert lines[1] == f"INFO    {__name__}: idle"


def test_braces_in_message_are_not_formatted() -> None:
    stream = io.StringIO()
    configure_logging(stream=stream)
    logger.bind(frame="{extra}").info("{not a field}")
    assert stream.getvalue() == f"INFO    {__name__}: {{not a field}} [{{extra}}]\n"


def test_exception_has_no_locals() -> None:
    stream = io.StringIO()
    configure_logging(stream=stream)
    secret = "hunter2"  # noqa: F841 - would be printed by diagnose=True
    try:
        1 / 0
    except ZeroDivisionError:
        logger.exception("boom")
    text = stream.getvalue()
    assert text.startswith(f"ERROR   {__name__}: boom\n")
    assert "ZeroDivisionError" in text
    assert "hunter2" not in text


def test_json_file(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "luckystack.jsonl"
    configure_logging(json_file=path, stream=io.StringIO())
    with logger.contextualize(frame="a.png"):
        logger.info("accepted")
    logger.bind(count=3).warning("skipped stale frames")
    logger.remove()  # close the file

    records = [json.loads(line)["record"] for line in path.read_text().splitlines()]
    assert [r["message"] for r in records] == ["accepted", "skipped stale frames"]
    assert records[0]["extra"] == {"frame": "a.png"}
    assert records[1]["extra"] == {"count": 3}
    assert records[1]["level"]["name"] == "WARNING"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_stdlib_logging_is_routed() -> None:
    stream = io.StringIO()
    configure_logging(stream=stream)
    logging.getLogger("watchdog").warning("inotify watch limit reached: %d", 8192)
    logging.getLogger("watchdog").debug("below INFO, dropped")
    assert stream.getvalue().splitlines() == [
        f"WARNING {__name__}: inotify watch limit reached: 8192"
    ]


def test_idempotent() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging(stream=first)
    configure_logging(stream=second)
    assert len(_intercepts()) == 1
    logger.info("once")
    logging.getLogger("watchdog").warning("stdlib once")
    assert first.getvalue() == ""
    assert second.getvalue().count("once") == 2
    assert second.getvalue().count("stdlib once") == 1


def test_unknown_level_is_rejected_without_side_effects() -> None:
    stream = io.StringIO()
    configure_logging(stream=stream)
    for bad in ("LOUD", "", "  "):
        with pytest.raises(ValueError, match="log level"):
            configure_logging(level=bad, stream=io.StringIO())
    logger.info("still here")
    assert "still here" in stream.getvalue()


def test_caplog_sees_loguru(caplog: pytest.LogCaptureFixture) -> None:
    logger.warning("visible to caplog")
    assert "visible to caplog" in caplog.text
    assert caplog.records[-1].levelname == "WARNING"
