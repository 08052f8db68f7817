"""The demo: a simulated capture session written as PNG frames."""

from __future__ import annotations

from pathlib import Path

import cv2

from luckystack.core.simulate import PlanetModel, SeeingModel, simulate_session
from luckystack.daemon.outputs import atomic_write_bytes

__all__ = ["write_demo_session"]


def write_demo_session(folder: Path, *, n_frames: int = 100, seed: int = 1,
                       shape: tuple[int, int] = (240, 320)) -> list[Path]:
    """Write a seeded synthetic Jupiter session (8-bit mono PNG) into ``folder``.

    The session has per-frame seeing, jitter, drift, noise and one black
    frame, so the CSV shows a rejection too. Existing frames are overwritten
    (the demo folder belongs to the demo).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    session = simulate_session(
        n_frames,
        shape=shape,
        model=PlanetModel(radius_px=min(shape) * 0.25),
        seeing=SeeingModel(jitter_px=2.0, drift_px_per_frame=(0.02, 0.05)),
        bit_depth=8,
        bad_frames={"black": 1} if n_frames >= 10 else None,
        seed=seed,
    )
    paths = []
    for i, frame in enumerate(session.frames, start=1):
        ok, buf = cv2.imencode(".png", frame)
        if not ok:  # pragma: no cover - encoding an ndarray does not fail
            raise OSError("PNG encoding failed")
        path = folder / f"frame_{i:05d}.png"
        atomic_write_bytes(path, buf.tobytes())
        paths.append(path)
    return paths
