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


# --- every frame stacked ----------------------------------------------------------
@pytest.fixture
def every_frame(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings loaded in this test (and its child processes) stack every usable frame.

    The default lucky cut (``[quality] best_fraction``) leaves most frames of a
    session unstacked. Tests of reading, formats and faults assert that each
    frame was read and used, so they switch it off; the cut has its own tests.
    """
    monkeypatch.setenv("LUCKYSTACK_QUALITY__BEST_FRACTION", "1")


# --- synthetic capture sessions ------------------------------------------------
import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402

from luckystack.core.simulate import PlanetModel, SeeingModel, simulate_session  # noqa: E402

JUPITER = Path(__file__).resolve().parents[2] / "shared" / "data" / "jupiter_tensorez"


def write_frames(folder: Path, frames, *, prefix: str = "frame_", start: int = 1) -> list[Path]:
    """Write frames as PNG files named ``prefix<n>.png`` (no zero padding)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, frame in enumerate(frames, start=start):
        ok, buf = cv2.imencode(".png", frame)
        assert ok
        p = folder / f"{prefix}{i}.png"
        p.write_bytes(buf.tobytes())
        paths.append(p)
    return paths


@pytest.fixture(scope="session")
def small_session():
    """A seeded 60-frame 120x160 mono session with one black frame (index 7)."""
    return simulate_session(
        60,
        shape=(120, 160),
        model=PlanetModel(radius_px=30.0),
        seeing=SeeingModel(jitter_px=1.5, drift_px_per_frame=(0.02, 0.04)),
        bit_depth=8,
        seed=11,
    )


@pytest.fixture(scope="session")
def small_session_dir(tmp_path_factory, small_session):
    folder = tmp_path_factory.mktemp("capture_master") / "capture"
    write_frames(folder, small_session.frames)
    return folder


@pytest.fixture
def capture_copy(tmp_path, small_session_dir):
    """A private, writable copy of the 60-frame session folder."""
    dest = tmp_path / "capture"
    shutil.copytree(small_session_dir, dest)
    return dest


@pytest.fixture
def jupiter_dir():
    if not JUPITER.is_dir():
        pytest.skip("shared Jupiter frames not present")
    return JUPITER
