"""SIGKILL at random moments, and a 10,000-frame soak: ``luckystack watch``
as a real process (issue 8). Helpers: ``tests/daemon/conftest.py``."""

from __future__ import annotations

import random
import threading
import time

import cv2
import numpy as np
import pytest

from luckystack.core.simulate import PlanetModel, SeeingModel, simulate_session
from luckystack.daemon.cli import run_batch
from luckystack.daemon.config import load_settings


@pytest.fixture(scope="module")
def payloads():
    s = simulate_session(60, shape=(64, 80), model=PlanetModel(radius_px=18),
                         seeing=SeeingModel(jitter_px=1.0), seed=21)
    out = []
    for f in s.frames:
        ok, buf = cv2.imencode(".png", f)
        assert ok
        out.append(buf.tobytes())
    return out


class _Sampler(threading.Thread):
    """Reads the output images over and over: each must decode completely."""

    def __init__(self, kit, out):
        super().__init__(daemon=True)
        self.kit, self.out = kit, out
        self.stop = threading.Event()
        self.bad: list[str] = []
        self.checked = 0

    def run(self):
        while not self.stop.is_set():
            for p in list(self.out.glob("*.png")):
                try:
                    if not self.kit.decodes(p):
                        self.bad.append(p.name)
                    self.checked += 1
                except FileNotFoundError:
                    pass
            time.sleep(0.005)


def test_sigkill_at_random_moments(tmp_path, kit, capture_folder, payloads, watch_process):
    """``kill -9`` seven times at seeded random moments while frames keep
    arriving (in bursts, some renamed into place), restarting each time."""
    rng = random.Random(8)  # seeded: the same kill schedule on every run
    burst = 20
    inp, out = capture_folder.root, tmp_path / "out"
    csv = out / "crops.csv"
    log = tmp_path / "log.txt"
    written = 0
    killing = threading.Event()
    killing.set()

    def writer():  # until the last kill: every process has frames to work on
        nonlocal written
        while killing.is_set():
            for i in range(written + 1, written + burst + 1):
                capture_folder.write(f"frame_{i}.png", payloads[i % len(payloads)],
                                     atomic=i % 2 == 0)
                written = i
            time.sleep(0.4)

    sampler = _Sampler(kit, out)
    sampler.start()
    w = threading.Thread(target=writer, daemon=True)
    kills = []
    starts = 0  # "watching" lines in the shared log before the current process
    try:
        d = watch_process(inp, out, log)
        w.start()
        for _ in range(7):
            if rng.random() < 0.3:  # anywhere: while importing, resuming or stacking
                time.sleep(rng.uniform(0.2, 1.8))
            else:  # while it works: frames waiting (a burst came), then a moment later
                assert kit.wait_for(lambda: d.log().count("watching ") > starts or not d.alive())
                kit.wait_for(lambda: len(kit.rows(csv)) < written, 5)
                time.sleep(rng.uniform(0.0, 0.1))
            before = len(kit.rows(csv))
            d.kill()
            kills.append((written, before))
            starts = d.log().count("watching ")
            d = watch_process(inp, out, log)
        killing.clear()
        w.join(60)
        n_frames = written
        assert kit.wait_for(lambda: d.log().count("watching ") > starts), d.log()
        assert kit.wait_for(lambda: len(kit.rows(csv)) >= n_frames, 60), d.log()
        assert kit.wait_for(lambda: (out / "stacked.png").exists())
        time.sleep(0.3)
        assert d.stop() == 0
    finally:
        sampler.stop.set()
        sampler.join()
    print(f"kills (frames written, rows in the CSV): {kills}")
    busy = [k for k in kills if k[1] < k[0]]  # frames were still waiting when it was killed
    assert len(busy) >= 3, f"too few kills landed mid-session: {kills}"
    assert not sampler.bad, f"half-written outputs seen: {sampler.bad}"
    assert sampler.checked > 50
    rows = kit.check_csv(csv)  # parses, no torn line, indices 0..n-1
    files = [r["file"] for r in rows]
    assert len(files) == len(set(files)), "a frame has two rows"
    assert sorted(files) == sorted(f"frame_{i}.png" for i in range(1, n_frames + 1))
    kit.check_outputs(out)
    # The stack carried on across the kills: the same as a batch run, to rounding.
    batch = run_batch(inp, tmp_path / "batch", load_settings())
    assert batch.stats.processed == n_frames
    a = cv2.imread(str(out / "stacked.png"), cv2.IMREAD_UNCHANGED).astype(int)
    b = cv2.imread(str(tmp_path / "batch" / "stacked.png"), cv2.IMREAD_UNCHANGED).astype(int)
    assert np.abs(a - b).max() <= 1


def test_soak_10000_frames_memory_flat(tmp_path, kit, capture_folder, payloads, watch_process):
    """10,000 tiny frames written as fast as possible: every one gets its row,
    in order, and the daemon's resident memory stays flat after warm-up.

    This soaks the daemon (watcher, queue, CSV, output writes), so it runs the
    cheap ``seed`` pipeline: the default one's cost per frame is its own
    benchmark's business, and would make this test minutes long.
    """
    n = 10_000
    inp, out = capture_folder.root, tmp_path / "out"
    csv = out / "crops.csv"
    d = watch_process(inp, out, tmp_path / "log.txt", env={"LUCKYSTACK_PRESET": "seed"})
    d.wait_ready()
    checkpoints = [1000, 2500, 5000, 7500, n]
    rss: dict[int, int] = {}

    def sample():
        for at in checkpoints:
            while d.alive():
                with open(csv, "rb") as fh:
                    count = fh.read().count(b"\n") - 1
                if count >= at:
                    break
                time.sleep(0.05)
            if d.alive():
                rss[at] = d.status("VmRSS")

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.monotonic()
    for i in range(1, n + 1):
        capture_folder.write(f"f_{i}.png", payloads[i % len(payloads)])
    write_s = time.monotonic() - start
    assert kit.wait_for(lambda: not sampler.is_alive(), 240)
    elapsed = time.monotonic() - start
    assert d.alive()
    assert d.stop() == 0
    rows = kit.check_csv(csv)
    assert [r["file"] for r in rows] == [f"f_{i}.png" for i in range(1, n + 1)]
    assert set(rss) == set(checkpoints), rss
    grew_mb = (max(rss.values()) - rss[1000]) / 1024
    print(f"soak: wrote {n} frames in {write_s:.1f} s ({n / write_s:.0f}/s), processed in "
          f"{elapsed:.1f} s; VmRSS (MB) {[round(v / 1024, 1) for v in rss.values()]}")
    assert grew_mb < 20, f"VmRSS grew by {grew_mb:.1f} MB after warm-up: {rss}"
    kit.check_outputs(out)
