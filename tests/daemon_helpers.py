"""Helpers for the daemon tests: a watch Daemon on a thread, waiting, the CSV.

Importable from the test modules because pytest's ``pythonpath`` includes
``tests/`` (pyproject.toml); not collected (no ``test_`` prefix).
"""

from __future__ import annotations

import csv
import os
import threading
import time
from pathlib import Path

import cv2

from luckystack.daemon.config import load_settings
from luckystack.daemon.service import Daemon


def wait_for(cond, timeout: float = 60.0, interval: float = 0.05) -> bool:
    """Poll ``cond()`` until it is true or ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(interval)
    return bool(cond())


def write_frames(folder, frames, start: int = 1) -> None:
    """Write ``frames`` as ``frame_<start>.png``... the way capture programs do:
    a hidden partial file renamed into place (one complete frame each)."""
    for i, frame in enumerate(frames, start=start):
        ok, buf = cv2.imencode(".png", frame)
        assert ok
        tmp = Path(folder) / f".frame_{i}.png.part"
        tmp.write_bytes(buf.tobytes())
        os.replace(tmp, Path(folder) / f"frame_{i}.png")


def csv_rows(csv_path) -> list[dict[str, str]]:
    """The rows of a crop CSV as dicts; [] while the file does not exist."""
    if not Path(csv_path).exists():
        return []
    with open(csv_path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


class DaemonThread:
    """``with DaemonThread(inp, out) as daemon:`` runs ``Daemon.run()`` until the block ends.

    Entering waits for READY; leaving requests a stop and asserts a clean exit
    (thread ended, no exception, exit code 0).
    """

    def __init__(self, inp, out, settings=None, **kw):
        kw.setdefault("idle_tick_s", 0.05)
        self.daemon = Daemon(inp, out, settings or load_settings(), **kw)
        self.code: int | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.code = self.daemon.run()
        except BaseException as err:  # noqa: BLE001 - reported by __exit__
            self.error = err

    def start(self) -> None:
        self.thread.start()
        assert self.daemon.ready.wait(30), "daemon did not become ready"

    def alive(self) -> bool:
        return self.thread.is_alive()

    def __enter__(self) -> Daemon:
        self.start()
        return self.daemon

    def __exit__(self, *exc: object) -> None:
        self.daemon.request_stop()
        self.thread.join(30)
        assert not self.thread.is_alive()
        assert self.error is None, f"the daemon raised {self.error!r}"
        assert self.code == 0
