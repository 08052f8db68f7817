"""The watch daemon with a real inotify observer on temporary folders."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np

from luckystack.daemon.cli import run_batch
from luckystack.daemon.config import load_settings
from daemon_helpers import DaemonThread
from daemon_helpers import csv_rows as _rows
from daemon_helpers import wait_for as _wait_for


Running = DaemonThread


def _png_bytes(frame):
    ok, buf = cv2.imencode(".png", frame)
    assert ok
    return buf.tobytes()


def _watching(**watch):
    """The default settings with these ``[watch]`` options."""
    settings = load_settings()
    return settings.model_copy(update={"watch": settings.watch.model_copy(update=watch)})


def test_slow_chunked_writes_are_read_once_and_complete(tmp_path, small_session, every_frame):
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    payloads = [_png_bytes(f) for f in small_session.frames]

    def writer(indices):
        for i in indices:
            data = payloads[i]
            with open(inp / f"frame_{i + 1}.png", "wb") as fh:
                fh.write(data[: len(data) // 2])
                fh.flush()
                time.sleep(0.1)  # half-written for ~100 ms
                fh.write(data[len(data) // 2 :])

    with Running(inp, out) as d:
        threads = [threading.Thread(target=writer, args=(range(k, 60, 6),)) for k in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert _wait_for(lambda: len(_rows(out / "crops.csv")) >= 60)
        assert _wait_for(lambda: not d.session.dirty)
    # frames were decoded as they arrived, while the worker processed the one before
    assert d.prefetcher.hits > 0
    rows = _rows(out / "crops.csv")
    assert len(rows) == 60
    assert len({r["file"] for r in rows}) == 60
    # Never half: every frame was read complete, so none was rejected as
    # unreadable (a seeing-blurred frame may still be rejected for quality).
    rejected = [r for r in rows if r["outcome"] != "accepted"]
    assert all(r["reason"].startswith("low quality") for r in rejected), rejected
    assert len(rejected) <= 3
    for name in ("stacked.png", "sharpened.png", "comparison.png"):
        assert (out / name).is_file()


def test_burst_of_500_all_in_order_bounded_queue_and_equal_to_run(tmp_path, small_session):
    frames = [small_session.frames[i % 60] for i in range(500)]
    payloads = [_png_bytes(f) for f in frames]
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    settings = load_settings()
    settings = settings.model_copy(update={"watch": settings.watch.model_copy(update={"queue_size": 32})})
    max_seen = 0
    with Running(inp, out, settings) as d:
        for i, data in enumerate(payloads, start=1):
            tmp = inp / f".frame_{i}.png.part"
            tmp.write_bytes(data)
            os.replace(tmp, inp / f"frame_{i}.png")
            max_seen = max(max_seen, d.queue.qsize())
        assert _wait_for(lambda: len(_rows(out / "crops.csv")) >= 500, timeout=120)
        assert _wait_for(lambda: not d.session.dirty)
        coalesced = d.coalesced
    rows = _rows(out / "crops.csv")
    assert [r["file"] for r in rows] == [f"frame_{i}.png" for i in range(1, 501)]
    assert max_seen <= 32  # the queue is bounded: memory stays bounded
    assert coalesced > 0
    batch = run_batch(inp, tmp_path / "batch", load_settings())
    assert batch.stats.processed == 500
    for name in ("stacked.png", "sharpened.png"):
        assert (out / name).read_bytes() == (tmp_path / "batch" / name).read_bytes()


def test_stop_and_restart_no_duplicates_and_stack_carries_on(tmp_path, small_session):
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    payloads = [_png_bytes(f) for f in small_session.frames]
    with Running(inp, out):
        for i in range(30):
            (inp / f"frame_{i + 1}.png").write_bytes(payloads[i])
        assert _wait_for(lambda: len(_rows(out / "crops.csv")) >= 30)
    # While stopped, more frames arrive; they are picked up at restart.
    for i in range(30, 40):
        (inp / f"frame_{i + 1}.png").write_bytes(payloads[i])
    with Running(inp, out) as d:
        # the stack's 20 frames and the 20 its reference was built from (30 accepted before)
        assert d.session.stats.resumed == min(40, sum(r['outcome'] == 'accepted' for r in _rows(out / 'crops.csv')[:30]))
        for i in range(40, 60):
            (inp / f"frame_{i + 1}.png").write_bytes(payloads[i])
        assert _wait_for(lambda: len(_rows(out / "crops.csv")) >= 60)
        assert _wait_for(lambda: not d.session.dirty)
    rows = _rows(out / "crops.csv")
    assert len(rows) == 60
    assert sorted(r["file"] for r in rows) == sorted(f"frame_{i}.png" for i in range(1, 61))
    assert [int(r["index"]) for r in rows] == list(range(60))
    batch = run_batch(inp, tmp_path / "batch", load_settings())
    a = cv2.imread(str(out / "stacked.png"), cv2.IMREAD_UNCHANGED).astype(int)
    b = cv2.imread(str(tmp_path / "batch" / "stacked.png"), cv2.IMREAD_UNCHANGED).astype(int)
    assert batch.stats.processed == 60
    assert np.abs(a - b).max() <= 1


def test_watch_and_run_give_identical_images(tmp_path, capture_copy):
    out = tmp_path / "watch_out"
    with Running(capture_copy, out) as d:  # existing = "all": the whole folder
        assert _wait_for(lambda: len(_rows(out / "crops.csv")) >= 60)
        assert _wait_for(lambda: not d.session.dirty)
    run_batch(capture_copy, tmp_path / "run_out", load_settings())
    for name in ("stacked.png", "sharpened.png", "comparison.png"):
        assert (out / name).read_bytes() == (tmp_path / "run_out" / name).read_bytes()


def test_frames_one_at_a_time_share_writes_and_the_pause_writes_the_last(tmp_path, small_session):
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    payloads = [_png_bytes(f) for f in small_session.frames[:30]]
    with Running(inp, out, min_write_interval_s=0.5) as d:
        for i, data in enumerate(payloads):
            (inp / f"frame_{i + 1}.png").write_bytes(data)
            time.sleep(0.02)  # one frame at a time, faster than the writes may follow
        assert _wait_for(lambda: len(_rows(out / "crops.csv")) >= 30)
        assert _wait_for(lambda: not d.session.dirty)
        writes = d.session.stats.writes
    # 30 frames in ~0.6 s: a write at most every 0.5 s, and the one after the pause
    assert 1 <= writes < 15
    run_batch(inp, tmp_path / "run_out", load_settings())
    for name in ("stacked.png", "sharpened.png", "comparison.png"):
        assert (out / name).read_bytes() == (tmp_path / "run_out" / name).read_bytes()


def test_a_growing_backlog_is_reported_and_every_frame_still_stacked(tmp_path, small_session,
                                                                      caplog):
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    payloads = [_png_bytes(f) for f in small_session.frames]
    for i in range(600):
        (inp / f"frame_{i + 1}.png").write_bytes(payloads[i % len(payloads)])
    runner = Running(inp, out)
    runner.daemon.BEHIND_FRAMES, runner.daemon.BEHIND_CHECK_S = 20, 0.02
    with runner as d:
        assert _wait_for(lambda: len(_rows(out / "crops.csv")) >= 600)
        assert _wait_for(lambda: not d.session.dirty)
    warnings = [r for r in caplog.records if "frames waiting, stacking" in r.getMessage()]
    assert len(warnings) == 1  # at most once a minute
    assert "alignment_points = false" in warnings[0].getMessage()
    assert len(_rows(out / "crops.csv")) == 600


def test_existing_none_ignores_frames_present_at_start(tmp_path, capture_copy):
    settings = load_settings()
    settings = settings.model_copy(update={"watch": settings.watch.model_copy(update={"existing": "none"})})
    out = tmp_path / "out"
    with Running(capture_copy, out, settings):
        (capture_copy / "frame_61.png").write_bytes((capture_copy / "frame_1.png").read_bytes())
        assert _wait_for(lambda: len(_rows(out / "crops.csv")) >= 1)
        time.sleep(0.3)
    assert [r["file"] for r in _rows(out / "crops.csv")] == ["frame_61.png"]


def _spawn(args, env=None):
    exe = Path(sys.executable).with_name("luckystack")
    return subprocess.Popen(
        [str(exe), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **(env or {})},
    )


def test_signals_sighup_bad_config_kept_then_sigterm_exits_zero(tmp_path, small_session):
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    cfg = tmp_path / "c.toml"
    cfg.write_text("[stack]\nbuffer_size = 10\n")
    proc = _spawn(["watch", str(inp), "--output", str(out), "--config", str(cfg)])
    try:
        assert _wait_for(lambda: (out / "crops.csv").exists(), timeout=30)
        time.sleep(0.5)
        (inp / "frame_1.png").write_bytes(_png_bytes(small_session.frames[0]))
        assert _wait_for(lambda: len(_rows(out / "crops.csv")) >= 1)
        cfg.write_text("[stack]\nbuffer_size = 0\nbogus = 1\n")
        proc.send_signal(signal.SIGHUP)
        time.sleep(1.0)
        assert proc.poll() is None, "daemon died on a bad reload"
        (inp / "frame_2.png").write_bytes(_png_bytes(small_session.frames[1]))
        assert _wait_for(lambda: len(_rows(out / "crops.csv")) >= 2)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = proc.stderr.read()
    assert code == 0
    assert "[stack] buffer_size" in err and "[stack] bogus" in err
    assert "keeping the previous configuration" in err
    assert "stopped: 2 frames processed" in err


def test_sd_notify_ready_status_stopping(tmp_path, small_session):
    import socket

    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(30)
    inp = tmp_path / "in"
    inp.mkdir()
    proc = _spawn(["watch", str(inp), "--output", str(tmp_path / "out")],
                  env={"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "600000"})
    messages = []
    try:
        while not any(b"READY=1" in m for m in messages):
            messages.append(sock.recv(4096))
        while not any(b"WATCHDOG=1" in m for m in messages):
            messages.append(sock.recv(4096))
        proc.send_signal(signal.SIGTERM)
        while not any(b"STOPPING=1" in m for m in messages):
            messages.append(sock.recv(4096))
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        sock.close()
    ready = next(m for m in messages if b"READY=1" in m)
    assert b"STATUS=0 frames" in ready


def test_behind_a_backlog_the_watcher_reads_ahead_only_the_next_frames(tmp_path, capture_copy):
    """A frame reported while more than ``depth`` wait is not decoded ahead by the
    watcher's callback (it would hold a place for seconds); the worker hints the
    frames it needs next itself. With room ahead of it, a frame is hinted at once."""
    from luckystack.daemon.service import Daemon

    d = Daemon(capture_copy, tmp_path / "out", load_settings())
    try:
        frames = sorted(capture_copy.glob("frame_*.png"), key=lambda p: int(p.stem.split("_")[1]))
        depth = d.prefetcher.depth
        d._on_frame(frames[0])  # nothing waits: read ahead at once
        assert str(frames[0]) in d.prefetcher._ahead
        for f in frames[1:depth]:
            d._on_frame(f)
        assert d.queue.qsize() == depth
        d._on_frame(frames[depth])  # depth frames before it: the worker will hint it
        assert d.queue.qsize() == depth + 1
        assert str(frames[depth]) not in d.prefetcher._ahead
        assert len(d.prefetcher._ahead) == depth
    finally:
        d.prefetcher.close()
        d.loader.close()


def test_opencv_threads_set_while_running_and_restored(tmp_path, monkeypatch):
    from luckystack.daemon.service import Daemon

    seen = []
    monkeypatch.setattr(Daemon, "_run", lambda self: seen.append(cv2.getNumThreads()) or 0)
    before = cv2.getNumThreads()
    assert Daemon(tmp_path, tmp_path / "out", load_settings()).run() == 0
    assert Daemon(tmp_path, tmp_path / "out", load_settings(), opencv_threads=None).run() == 0
    assert seen == [1, before]
    assert cv2.getNumThreads() == before


def test_a_burst_is_decoded_ahead_frame_by_frame_never_on_the_worker(tmp_path, small_session):
    """Behind a backlog every frame is still decoded on the decode thread: the
    worker hints the next ones from its batch and, near its end, from the head
    of the queue (the next batch's first frame), so none waits for a decode of
    its own on the worker."""
    from daemon_helpers import write_frames

    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    with Running(inp, out) as d:
        write_frames(inp, small_session.frames)
        assert _wait_for(lambda: len(_rows(out / "crops.csv")) >= 60)
    assert (d.prefetcher.hits, d.prefetcher.rereads) == (60, 0)


def test_compress_live_false_stores_live_pngs_and_compresses_them_at_the_pause(
    tmp_path, small_session
):
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    s = load_settings()
    s = s.model_copy(update={"output": s.output.model_copy(update={"compress_live": False})})
    with Running(inp, out, s) as d:
        assert _wait_for(lambda: d.session is not None)
        assert d.session.stored_live_png
        for i, frame in enumerate(small_session.frames[:12], start=1):
            (inp / f"frame_{i}.png").write_bytes(_png_bytes(frame))
        assert _wait_for(lambda: len(_rows(out / "crops.csv")) >= 12)
        assert _wait_for(lambda: not d.session.dirty)  # the pause: rewritten compressed
    batch = run_batch(inp, tmp_path / "batch", load_settings())
    assert batch.stats.processed == 12
    assert (out / "stacked.png").read_bytes() == (tmp_path / "batch" / "stacked.png").read_bytes()


def _drop_events_while(daemon, write):
    """Run ``write()`` while the watcher's handler drops every event (as the
    kernel does when its inotify queue overflows), then let the reader see
    the IN_Q_OVERFLOW record the kernel appends."""
    from luckystack.daemon.watcher import _EVENT_HEADER, _IN_Q_OVERFLOW

    handler = daemon.watcher.handler
    handler.closed = handler.moved_in = handler.created = lambda *a, **k: None
    try:
        write()
    finally:
        for name in ("closed", "moved_in", "created"):
            delattr(handler, name)  # the class's methods again
    record = _EVENT_HEADER.pack(-1, _IN_Q_OVERFLOW, 0, 0)
    daemon.watcher._reader._events(record, os.fsencode(daemon.watcher.folder))


def test_frames_whose_events_were_dropped_are_found_by_listing_the_folder_again(
    tmp_path, small_session
):
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    payloads = [_png_bytes(f) for f in small_session.frames]

    def write(first, last):
        for i in range(first, last + 1):
            tmp = inp / f".frame_{i}.png.part"
            tmp.write_bytes(payloads[i - 1])
            os.replace(tmp, inp / f"frame_{i}.png")

    def unseen():
        write(11, 30)
        old = time.time() - 60  # settled long ago: queued by the first listing
        for i in range(11, 21):
            os.utime(inp / f"frame_{i}.png", (old, old))
        # 21-30 were just written: left to a listing a second later

    with Running(inp, out) as d:
        write(1, 10)
        assert _wait_for(lambda: len(_rows(out / "crops.csv")) >= 10)
        _drop_events_while(d, unseen)
        write(31, 31)  # events flow again
        assert _wait_for(lambda: len(_rows(out / "crops.csv")) >= 31)
        assert _wait_for(lambda: not d.session.dirty)
        time.sleep(1.5)  # a further listing finds nothing more
    rows = _rows(out / "crops.csv")
    files = [r["file"] for r in rows]
    assert len(files) == 31
    assert sorted(files) == sorted(f"frame_{i}.png" for i in range(1, 32))
    assert files[:10] == [f"frame_{i}.png" for i in range(1, 11)]


def test_listing_again_keeps_ignoring_frames_present_at_start_with_existing_none(
    tmp_path, capture_copy
):
    settings = _watching(existing="none")
    out = tmp_path / "out"
    old = time.time() - 60
    for f in capture_copy.iterdir():
        os.utime(f, (old, old))  # there long before the watch
    data = (capture_copy / "frame_1.png").read_bytes()
    with Running(capture_copy, out, settings) as d:
        def unseen():
            (capture_copy / "frame_61.png").write_bytes(data)
            t = time.time() - 2  # settled, but written after the watch began
            os.utime(capture_copy / "frame_61.png", (t, t))
        time.sleep(2.5)
        _drop_events_while(d, unseen)
        assert _wait_for(lambda: len(_rows(out / "crops.csv")) >= 1)
        time.sleep(1.5)
    assert [r["file"] for r in _rows(out / "crops.csv")] == ["frame_61.png"]


def test_max_lag_frames_skips_the_oldest_waiting_frames_unread(tmp_path, capture_copy, monkeypatch):
    """60 frames wait at start and at most 10 may: the 50 oldest get a 'skipped'
    row without being read, the 10 newest are stacked as a run of them would be."""
    from luckystack.daemon import sources

    out = tmp_path / "out"
    read: list[str] = []
    real_load = sources.FrameLoader.load

    def counting_load(self, item):
        read.append(sources.as_ref(item).path.name)
        return real_load(self, item)

    monkeypatch.setattr(sources.FrameLoader, "load", counting_load)
    with Running(capture_copy, out, _watching(max_lag_frames=10)) as d:
        assert _wait_for(lambda: len(_rows(out / "crops.csv")) >= 60)
        assert _wait_for(lambda: not d.session.dirty)
        stats = d.totals()
    rows = _rows(out / "crops.csv")
    assert [r["file"] for r in rows] == [f"frame_{i}.png" for i in range(1, 61)]
    skipped = [r for r in rows if r["reason"].startswith("skipped to keep up")]
    assert [r["file"] for r in skipped] == [f"frame_{i}.png" for i in range(1, 51)]
    assert all(r["sharpness"] == "" and r["x"] == "" for r in skipped)
    assert not set(read) & {r["file"] for r in skipped}  # never decoded
    assert stats.skipped == 50 and stats.processed == 60
    with Running(capture_copy, out, _watching(max_lag_frames=10)) as d:  # a restart
        assert d.session.stats.resumed == 10  # the stacked frames, none of the skipped
        time.sleep(0.3)
    assert len(_rows(out / "crops.csv")) == 60  # skipped frames are final, not redone
    # The 10 stacked are those a run over the same 10 frames stacks.
    last10 = tmp_path / "last10"
    last10.mkdir()
    for i in range(51, 61):
        (last10 / f"frame_{i}.png").write_bytes((capture_copy / f"frame_{i}.png").read_bytes())
    run_batch(last10, tmp_path / "run_out", load_settings())
    assert (out / "stacked.png").read_bytes() == (tmp_path / "run_out" / "stacked.png").read_bytes()


def test_max_lag_frames_skips_nothing_while_the_worker_keeps_up(tmp_path, small_session):
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    payloads = [_png_bytes(f) for f in small_session.frames[:12]]
    with Running(inp, out, _watching(max_lag_frames=10)) as d:
        for i, data in enumerate(payloads, start=1):
            (inp / f"frame_{i}.png").write_bytes(data)
            assert _wait_for(lambda: len(_rows(out / "crops.csv")) >= i)  # one at a time
        assert d.totals().skipped == 0
    assert not any(r["reason"].startswith("skipped") for r in _rows(out / "crops.csv"))


def test_recursive_watch_of_a_capture_folder_given_as_a_symlink(tmp_path, small_session):
    real = tmp_path / "drive" / "capture"
    (real / "night1").mkdir(parents=True)
    link = tmp_path / "capture"
    link.symlink_to(real, target_is_directory=True)
    settings = _watching(recursive=True)
    out = tmp_path / "out"
    payloads = [_png_bytes(f) for f in small_session.frames[:5]]
    with Running(link, out, settings) as d:
        for i, data in enumerate(payloads, start=1):
            (real / "night1" / f"frame_{i}.png").write_bytes(data)
            assert _wait_for(lambda: len(_rows(out / "crops.csv")) >= 2 * i - 1, timeout=10)
            (real / f"top_{i}.png").write_bytes(data)  # in the folder itself: was missed
            assert _wait_for(lambda: len(_rows(out / "crops.csv")) >= 2 * i, timeout=10)
        assert _wait_for(lambda: not d.session.dirty)
    assert [r["file"] for r in _rows(out / "crops.csv")] == [
        name for i in range(1, 6) for name in (f"night1/frame_{i}.png", f"top_{i}.png")]
