"""Shared pytest fixtures for luckystack."""

import pytest
from loguru import logger


# --- loguru -> pytest caplog (loguru docs, migration.rst) ---------------------
# pytest's caplog only sees stdlib logging; add its handler as a loguru sink so
# tests can assert on loguru records. Note: if a test also calls
# luckystack.daemon.logs.configure_logging(), that calls logger.remove() and
# this sink goes with it.
@pytest.fixture
def caplog(caplog: pytest.LogCaptureFixture):
    handler_id = logger.add(
        caplog.handler,
        format="{message}",
        level=0,
        filter=lambda record: record["level"].no >= caplog.handler.level,
        enqueue=False,  # set True if a test spawns child processes
    )
    yield caplog
    try:
        logger.remove(handler_id)
    except ValueError:  # already removed, e.g. by configure_logging()
        pass
