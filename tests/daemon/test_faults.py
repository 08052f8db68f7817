"""Fault injection (issue 8): real files, real processes, real signals and mounts.

Every case ends the same way: the frame is skipped with a reason in the CSV
and in the log, the daemon is still running (or, for the capture folder lost
with ``on_folder_lost = "exit"``, exits 1 with a clear message), and nothing
is lost: every input file is byte-identical afterwards (the ``capture_folder``
fixture checks sha256 at teardown) and every output on disk decodes.

SIGKILL and the 10,000-frame soak are in ``test_kill.py``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
import threading
import time

import cv2
import numpy as np
import pytest

from luckystack.core.errors import FrameError
from luckystack.core.simulate import PlanetModel, simulate_session
from luckystack.daemon.frames import read_frame
from luckystack.daemon.outputs import CropLog, CropRecord
from luckystack.daemon.session import Session
from luckystack.daemon.config import load_settings, pipeline_params


# Every usable frame is stacked: these tests check that each one was read and used.
pytestmark = pytest.mark.usefixtures("every_frame")


@pytest.fixture(scope="module")
def frames():
    """30 simulated 64x80 mono frames (8-bit), all usable."""
    return simulate_session(30, shape=(64, 80), model=PlanetModel(radius_px=18), seed=5).frames


@pytest.fixture(scope="module")
def pngs(frames):
    return [np.asarray(f) for f in frames], [_png(f) for f in frames]


def _png(img):
    ok, buf = cv2.imencode(".png", img)
    assert ok
    return buf.tobytes()


def _rec(i, **kw):
    base = dict(index=i, file=f"f{i}.png", time="t", outcome="accepted", reason="", x=1, y=2,
                width=3, height=4, center_x=1.5, center_y=2.5, disc_x=1, disc_y=2, disc_width=3,
                disc_height=4, sharpness=0.5, shift_x=0.25, shift_y=-0.5, stacked=i)
    base.update(kw)
    return CropRecord(**base)


# ===================================================================== frames


def _bad_inputs(kit, frames):
    """name -> (bytes, expected reason pattern)."""
    good = frames[0]
    png = kit.encode(good, ".png")
    tif = kit.encode(good, ".tif")  # OpenCV writes the TIFF directory at the end
    tif_dir_first = kit.tiff_bytes(80, 64, good.tobytes())
    jpg = kit.encode(good, ".jpg")
    rng = np.random.default_rng(8)
    return {
        "zero.png": (b"", r"^empty file \(0 bytes\)$"),
        "trunc.png": (png[: len(png) // 2], r"cannot decode trunc\.png: corrupt or truncated PNG"),
        "trunc.tif": (tif[: len(tif) // 2], r"cannot decode trunc\.tif: corrupt or truncated TIFF"),
        "trunc2.tiff": (tif_dir_first[: len(tif_dir_first) - 999],
                        r"cannot decode trunc2\.tiff: corrupt or truncated TIFF"),
        "trunc.jpg": (jpg[: int(len(jpg) * 0.8)], r"truncated JPEG: no end-of-image marker"),
        "random.png": (rng.integers(0, 256, 5000, dtype=np.uint8).tobytes(),
                       r"not a PNG, TIFF, JPEG or BMP image"),
        "random_sig.png": (png[:8] + rng.integers(0, 256, 5000, dtype=np.uint8).tobytes(),
                           r"cannot decode random_sig\.png: corrupt"),
        "text.png": (b"this is a text file, not a frame\n" * 20, r"not a PNG, TIFF, JPEG or BMP"),
        "bomb.png": (kit.png_bomb(100_000, 100_000, complete=False),
                     r"refused: PNG header declares 100000x100000 px.*decompression bomb"),
        "bomb.tif": (kit.tiff_bomb(11_000, 11_000),
                     r"refused: TIFF header declares 11000x11000 px.*decompression bomb"),
        "bomb.jpg": (kit.jpeg_header_bomb(), r"refused: JPEG header declares 60000x60000 px"),
        "bomb.bmp": (kit.bmp_header_bomb(), r"refused: BMP header declares 100000x100000 px"),
    }


def test_read_frame_reasons_for_every_kind_of_bad_file(tmp_path, kit, frames):
    for name, (data, pattern) in _bad_inputs(kit, frames).items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(FrameError) as err:
            read_frame(tmp_path / name)
        assert re.search(pattern, str(err.value)), (name, str(err.value))
    os.mkfifo(tmp_path / "fifo.png")  # would block a plain open() forever
    with pytest.raises(FrameError, match="not a regular file"):
        read_frame(tmp_path / "fifo.png")
    (tmp_path / "dev.png").symlink_to("/dev/zero")  # would never end
    with pytest.raises(FrameError, match="not a regular file"):
        read_frame(tmp_path / "dev.png")
    (tmp_path / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    with pytest.raises(FrameError, match="broken symlink"):
        read_frame(tmp_path / "dangling.png")
    (tmp_path / "dir.fits").mkdir()
    with pytest.raises(FrameError, match="directory"):
        read_frame(tmp_path / "dir.fits")
    # the good ones still read: a TIFF with its directory first, a JPEG
    (tmp_path / "ok.tif").write_bytes(kit.tiff_bytes(80, 64, frames[0].tobytes()))
    np.testing.assert_array_equal(read_frame(tmp_path / "ok.tif").image, frames[0])
    (tmp_path / "ok.jpg").write_bytes(kit.encode(frames[0], ".jpg"))
    assert read_frame(tmp_path / "ok.jpg").image.shape == (64, 80)


_MEASURE = textwrap.dedent("""
    import json, os, resource, sys
    from luckystack.core.errors import FrameError
    from luckystack.daemon.frames import read_frame

    def status_mb(key):
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024

    def reset_peak():
        # "5" resets VmHWM to the current RSS (Linux >= 4.0)
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")

    read_frame(sys.argv[1])  # warm up: a normal frame, decoders loaded
    out = {}
    limit = int(sys.argv[2])
    for path in sys.argv[3:]:
        reset_peak()
        before = status_mb("VmRSS")
        try:
            read_frame(path, max_pixels=limit)
            reason = "decoded"
        except FrameError as err:
            reason = str(err)
        out[os.path.basename(path)] = [reason, status_mb("VmHWM") - before]
    print(json.dumps(out))
""")


def _measure(paths, good, limit, env_limit):
    env = {**os.environ, "OPENCV_IO_MAX_IMAGE_PIXELS": str(env_limit)}
    res = subprocess.run([sys.executable, "-c", _MEASURE, str(good), str(limit), *map(str, paths)],
                         capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    import json

    return json.loads(res.stdout.strip().splitlines()[-1])


def test_decompression_bombs_refused_before_decoding_memory_bounded(tmp_path, kit, frames):
    """Peak RSS (VmHWM, reset before each file) of a fresh process around each bomb.

    OpenCV's own limit is raised out of the way, so only read_frame's header
    check stands between the bomb and the decoder; a control run with the
    check off shows the TIFF and PNG bombs are real (hundreds of MB).
    """
    good = tmp_path / "good.png"
    good.write_bytes(kit.png_bytes(frames[0]))
    bombs = {
        "hdr.png": kit.png_bomb(100_000, 100_000, complete=False),  # the header alone claims it
        "real.png": kit.png_bomb(11_000, 11_000),   # a complete 121 MP image in ~120 kB
        "real.tif": kit.tiff_bomb(11_000, 11_000),  # the same as a deflate TIFF
        "hdr.jpg": kit.jpeg_header_bomb(),
        "hdr.bmp": kit.bmp_header_bomb(),
    }
    paths = []
    for name, data in bombs.items():
        assert len(data) < 200_000
        (tmp_path / name).write_bytes(data)
        paths.append(tmp_path / name)
    result = _measure(paths, good, limit=100_000_000, env_limit=10**12)
    print("bombs:", result)
    for name, (reason, grew_mb) in result.items():
        assert reason.startswith("refused:") and "header declares" in reason, (name, reason)
        assert grew_mb < 10, f"{name}: peak RSS grew by {grew_mb:.0f} MB"
    control = _measure([tmp_path / "real.png", tmp_path / "real.tif"], good, limit=10**12,
                       env_limit=10**12)
    print("control:", control)
    for name, (reason, grew_mb) in control.items():
        assert reason == "decoded" and grew_mb > 100, (name, reason, grew_mb)


# ------------------------------------------------------------ the daemon (thread)


@pytest.mark.parametrize("name", [
    "zero.png", "trunc.png", "trunc.tif", "trunc2.tiff", "trunc.jpg", "random.png",
    "random_sig.png", "text.png", "bomb.png", "bomb.tif", "bomb.jpg", "bomb.bmp",
])
def test_corrupt_frame_arriving_is_rejected_and_daemon_carries_on(
        tmp_path, kit, capture_folder, frames, caplog, name):
    data, pattern = _bad_inputs(kit, frames)[name]
    out = tmp_path / "out"
    csv = out / "crops.csv"
    with kit.Running(capture_folder.root, out) as r:
        for i in range(1, 4):
            capture_folder.write(f"frame_{i}.png", kit.png_bytes(frames[i]))
        assert kit.wait_for(lambda: len(kit.rows(csv)) >= 3)
        capture_folder.write(name, data)
        assert kit.wait_for(lambda: kit.row_for(csv, name) is not None), kit.rows(csv)
        for i in range(4, 6):
            capture_folder.write(f"frame_{i}.png", kit.png_bytes(frames[i]))
        assert kit.wait_for(lambda: len(kit.rows(csv)) >= 6)
        assert kit.wait_for(lambda: not r.daemon.session.dirty)
        assert r.alive()
    row = kit.row_for(csv, name)
    assert row["outcome"] == "rejected" and re.search(pattern, row["reason"]), row
    assert all(r_["outcome"] == "accepted" for r_ in kit.rows(csv) if r_["file"] != name)
    assert any(f"frame rejected: {row['reason']}" in m for m in caplog.messages)
    rows = kit.check_csv(csv)
    expected = [name] + [f"frame_{i}.png" for i in range(1, 6)]
    assert sorted(r_["file"] for r_ in rows) == sorted(expected)
    kit.check_outputs(out)


def test_frame_of_another_kind_or_size_mid_session(tmp_path, kit, capture_folder, frames):
    out = tmp_path / "out"
    csv = out / "crops.csv"
    mono = frames[1]
    odd = {
        "frame_04.png": (np.dstack([mono] * 3), "frame is colour but the session is mono"),
        "frame_05.png": (cv2.resize(mono, (160, 128)), "size jump: disc"),
        "frame_06.png": (mono[:8, :8], "no planet found"),
        "frame_07.tif": (mono[4:60, 6:76], None),  # another frame size, same planet: stacked
        "frame_08.png": (mono.astype(np.uint16) * 257, None),  # 16-bit after 8-bit: stacked
    }
    with kit.Running(capture_folder.root, out) as r:
        for i in range(1, 4):
            capture_folder.write(f"frame_0{i}.png", kit.png_bytes(frames[i]))
        assert kit.wait_for(lambda: len(kit.rows(csv)) >= 3)
        for name, (img, _) in odd.items():
            capture_folder.write(name, kit.encode(img, os.path.splitext(name)[1]))
        capture_folder.write("frame_09.png", kit.png_bytes(frames[9]))
        assert kit.wait_for(lambda: len(kit.rows(csv)) >= 9)
        assert kit.wait_for(lambda: not r.daemon.session.dirty)
        assert r.alive()
    for name, (_, reason) in odd.items():
        row = kit.row_for(csv, name)
        if reason is None:
            assert row["outcome"] == "accepted", row
        else:
            assert row["outcome"] == "rejected" and reason in row["reason"], row
    assert kit.row_for(csv, "frame_09.png")["outcome"] == "accepted"
    kit.check_csv(csv)
    kit.check_outputs(out)


def test_file_deleted_or_replaced_between_event_and_read(tmp_path, kit, capture_folder, frames):
    """A backlog keeps the worker busy, so the files change after their event."""
    out = tmp_path / "out"
    csv = out / "crops.csv"
    payloads = [kit.png_bytes(f) for f in frames]
    with kit.Running(capture_folder.root, out) as r:
        for i in range(200):
            capture_folder.write(f"a_{i}.png", payloads[i % 30])
        # deleted right after it was closed
        capture_folder.write("gone.png", payloads[3])
        capture_folder.remove("gone.png")
        # closed as garbage, then replaced by a good frame (atomic rename)
        capture_folder.write("swap.png", b"garbage, not a frame" * 10)
        capture_folder.write("swap.png", payloads[4], atomic=True)
        # gone.png and swap.png sort after a_*: they are read after a_197 at the earliest
        assert len(kit.rows(csv)) < 190, "the worker was not busy: the test proves nothing"
        assert kit.wait_for(lambda: kit.row_for(csv, "swap.png") is not None)
        assert kit.wait_for(lambda: kit.row_for(csv, "gone.png") is not None)
        gone = kit.row_for(csv, "gone.png")
        assert gone["outcome"] == "rejected"
        assert gone["reason"] == "file vanished before it could be read: gone.png"
        # it comes back later: a new frame, processed (nothing lost)
        capture_folder.write("gone.png", payloads[5])
        assert kit.wait_for(lambda: kit.row_for(csv, "gone.png")["outcome"] == "accepted")
        assert kit.wait_for(lambda: len(kit.rows(csv)) >= 203)
        assert kit.wait_for(lambda: not r.daemon.session.dirty)
        assert r.alive()
    rows = kit.check_csv(csv)
    swaps = [x for x in rows if x["file"] == "swap.png"]
    assert len(swaps) == 1 and swaps[0]["outcome"] == "accepted", swaps  # read whole, once
    assert [x["outcome"] for x in rows if x["file"] == "gone.png"] == ["rejected", "accepted"]
    assert len(rows) == 203
    kit.check_outputs(out)


def test_entries_named_like_frames_that_are_not_files(tmp_path, kit, capture_folder, frames):
    """A folder ``x.png/``, a FIFO ``pipe.png`` (would block a reader), at start and live."""
    out = tmp_path / "out"
    csv = out / "crops.csv"
    capture_folder.mkdir("early.png")
    capture_folder.write("frame_1.png", kit.png_bytes(frames[1]))
    with kit.Running(capture_folder.root, out) as r:
        assert kit.wait_for(lambda: len(kit.rows(csv)) >= 2)
        capture_folder.mkdir("x.png")
        capture_folder.write("x.png/inner.png", kit.png_bytes(frames[2]))  # not descended into
        capture_folder.mkfifo("pipe.png")
        capture_folder.write("frame_2.png", kit.png_bytes(frames[3]))
        assert kit.wait_for(lambda: len(kit.rows(csv)) >= 5), kit.rows(csv)
        assert kit.wait_for(lambda: not r.daemon.session.dirty)
        assert r.alive()
    rows = {x["file"]: x for x in kit.check_csv(csv)}
    assert set(rows) == {"early.png", "frame_1.png", "x.png", "pipe.png", "frame_2.png"}
    assert rows["early.png"]["reason"] == "not a file: early.png is a directory"
    assert rows["x.png"]["reason"] == "not a file: x.png is a directory"
    assert rows["pipe.png"]["reason"].startswith("not a regular file: pipe.png")
    assert rows["frame_2.png"]["outcome"] == "accepted"
    # a restart does not record them twice
    with kit.Running(capture_folder.root, out):
        time.sleep(0.3)
    assert len(kit.rows(csv)) == 5


def test_more_frames_waiting_at_start_than_the_queue_holds(tmp_path, kit, capture_folder,
                                                           frames):
    """A night's folder holds far more frames than ``[watch] queue_size``: the
    worker must not wait for room in its own queue (it used to hang at start)."""
    out = tmp_path / "out"
    for i in range(1, 41):
        capture_folder.write(f"frame_{i}.png", kit.png_bytes(frames[i % 30]))
    cfg = kit.settings(watch={"queue_size": 8})
    with kit.Running(capture_folder.root, out, cfg) as r:
        capture_folder.write("frame_41.png", kit.png_bytes(frames[11]))  # and one live
        assert kit.wait_for(lambda: len(kit.rows(out / "crops.csv")) >= 41), len(
            kit.rows(out / "crops.csv"))
        assert kit.wait_for(lambda: not r.daemon.session.dirty)
    rows = kit.check_csv(out / "crops.csv")
    assert [x["file"] for x in rows] == [f"frame_{i}.png" for i in range(1, 42)]


def test_unexpected_error_on_one_frame_is_a_row_not_a_crash(tmp_path, kit, capture_folder,
                                                            frames, caplog):
    """A bug cannot be made to happen for real: a loader that runs out of
    memory on one file stands in for one."""
    from luckystack.daemon.service import Daemon
    from luckystack.daemon.sources import FrameLoader

    class Flaky(FrameLoader):
        def load(self, item):
            if str(item).endswith("frame_2.png"):
                raise MemoryError("pretend the machine ran out of memory")
            return super().load(item)

    class FlakyDaemon(Daemon):
        def _make_loader(self, settings):
            return Flaky(confine_to=self._abs(self.input_dir))

    out = tmp_path / "out"
    r = kit.Running(capture_folder.root, out)
    r.daemon = FlakyDaemon(capture_folder.root, out, kit.settings(), idle_tick_s=0.05)
    with r:
        for i in range(1, 4):
            capture_folder.write(f"frame_{i}.png", kit.png_bytes(frames[i]))
        assert kit.wait_for(lambda: len(kit.rows(out / "crops.csv")) >= 3)
        assert r.alive()
    rows = {x["file"]: x for x in kit.check_csv(out / "crops.csv")}
    assert rows["frame_2.png"]["reason"] == (
        "internal error: MemoryError: pretend the machine ran out of memory")
    assert rows["frame_3.png"]["outcome"] == "accepted"
    assert any("unexpected error on this frame" in m for m in caplog.messages)


@pytest.mark.parametrize("follow", [False, True])
def test_symlink_pointing_outside_the_capture_folder(tmp_path, kit, capture_folder, frames,
                                                     caplog, follow):
    out = tmp_path / "out"
    csv = out / "crops.csv"
    target = capture_folder.write_outside(tmp_path / "elsewhere" / "t.png",
                                          kit.png_bytes(frames[2]))
    capture_folder.symlink("early_link.png", target)  # there at start
    cfg = kit.settings(watch={"follow_symlinks": follow})
    with kit.Running(capture_folder.root, out, cfg) as r:
        capture_folder.write("frame_1.png", kit.png_bytes(frames[1]))
        capture_folder.symlink("link.png", target)  # made live: an IN_CREATE, never "closed"
        assert kit.wait_for(lambda: len(kit.rows(csv)) >= 3), kit.rows(csv)
        assert kit.wait_for(lambda: not r.daemon.session.dirty)
    rows = {x["file"]: x for x in kit.check_csv(csv)}
    assert set(rows) == {"early_link.png", "frame_1.png", "link.png"}  # the link's own name
    for name in ("early_link.png", "link.png"):
        if follow:
            assert rows[name]["outcome"] == "accepted", rows[name]
        else:
            assert rows[name]["outcome"] == "rejected"
            assert rows[name]["reason"] == (
                f"symlink to {target}, outside the capture folder: not followed "
                "([watch] follow_symlinks = false)")
            assert any(f"frame rejected: {rows[name]['reason']}" in m for m in caplog.messages)


# ------------------------------------------------------------- output faults


def test_crop_log_keeps_rows_while_the_disk_is_full(tmp_path, mounts, kit):
    disk = mounts.tmpfs(tmp_path / "disk", "256k")
    log = CropLog(disk / "crops.csv")
    log.open()
    log.append(_rec(0))
    filler = kit.fill_up(disk)
    i = 1
    while log.pending == 0 and i < 200:  # the CSV's last page fills up, then appends fail
        assert log.append(_rec(i)) == (log.pending == 0)
        i += 1
    assert log.pending > 0 and log.last_error.errno == 28  # ENOSPC
    for j in range(i, i + 5):
        assert not log.append(_rec(j))
    with pytest.raises(OSError):
        log.sync()
    data = (disk / "crops.csv").read_bytes()
    assert data.endswith(b"\n")  # no torn row on disk meanwhile
    filler.unlink()
    assert log.flush_pending() and log.pending == 0
    log.close()
    back = CropLog(disk / "crops.csv")
    assert [r.index for r in back.open()] == list(range(i + 5))  # each row once, in order
    back.close()


def test_crop_log_with_a_torn_header_is_started_again(tmp_path):
    path = tmp_path / "crops.csv"
    path.write_bytes(b"index,file,ti")  # killed while the header was written
    log = CropLog(path)
    assert log.open() == []
    log.append(_rec(0))
    log.close()
    assert [r.index for r in CropLog(path).open()] == [0]


def test_temporary_outputs_left_by_a_kill_are_removed_on_open(tmp_path, frames):
    out = tmp_path / "out"
    out.mkdir()
    (out / ".stacked.png.abc123.tmp").write_bytes(b"half")
    (out / ".mine.tmp").write_bytes(b"not ours")
    s = Session(pipeline_params(load_settings()), tmp_path / "in", out)
    s.open()
    s.close()
    assert sorted(os.listdir(out)) == [".mine.tmp", "crops.csv"]


def test_output_folder_unusable_at_start_is_waited_for(tmp_path, kit, capture_folder, frames,
                                                        watch_process):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the output folder's parent should be")
    out = blocker / "out"
    for i in range(1, 6):
        capture_folder.write(f"frame_{i}.png", kit.png_bytes(frames[i]))
    d = watch_process(capture_folder.root, out, tmp_path / "log.txt")
    assert kit.wait_for(lambda: "cannot open the output folder" in d.log(), 30), d.log()
    time.sleep(1.0)
    assert d.alive()
    for i in range(6, 9):  # frames keep arriving meanwhile
        capture_folder.write(f"frame_{i}.png", kit.png_bytes(frames[i]))
    blocker.unlink()
    blocker.mkdir()
    assert kit.wait_for(lambda: len(kit.rows(out / "crops.csv")) >= 8, 30), d.log()
    assert kit.wait_for(lambda: (out / "sharpened.png").exists())
    assert d.stop() == 0
    log = d.log()
    assert "is usable again" in log
    assert log.count("cannot open the output folder") == 1  # logged once, retried quietly
    rows = kit.check_csv(out / "crops.csv")
    assert sorted(r["file"] for r in rows) == sorted(f"frame_{i}.png" for i in range(1, 9))
    kit.check_outputs(out)


def _sample_outputs(kit, out, stop, bad):
    """Meanwhile, every output PNG on disk must always decode completely."""
    while not stop.is_set():
        for p in out.glob("*.png"):
            try:
                if not kit.decodes(p):
                    bad.append(p.name)
            except FileNotFoundError:
                pass
        time.sleep(0.01)


def test_output_folder_read_only_mid_session(tmp_path, kit, capture_folder, frames, mounts,
                                             watch_process):
    out = tmp_path / "out"
    csv = out / "crops.csv"
    d = watch_process(capture_folder.root, out, tmp_path / "log.txt")
    d.wait_ready()
    for i in range(1, 6):
        capture_folder.write(f"frame_{i:02}.png", kit.png_bytes(frames[i]))
    assert kit.wait_for(lambda: len(kit.rows(csv)) >= 5 and (out / "stacked.png").exists())
    stop, bad = threading.Event(), []
    sampler = threading.Thread(target=_sample_outputs, args=(kit, out, stop, bad))
    sampler.start()
    try:
        mounts.read_only_bind(out, pause_pid=d.pid)  # new files fail; the open CSV still appends
        for i in range(6, 16):
            capture_folder.write(f"frame_{i:02}.png", kit.png_bytes(frames[i]))
        assert kit.wait_for(lambda: len(kit.rows(csv)) >= 15)
        assert kit.wait_for(lambda: "cannot write outputs" in d.log())
        time.sleep(1.0)
        assert d.alive()
        mounts.umount(out)
        assert kit.wait_for(lambda: "outputs written again" in d.log(), 20), d.log()
    finally:
        stop.set()
        sampler.join()
    assert d.stop() == 0
    assert not bad, f"half-written outputs seen: {bad}"
    log = d.log()
    assert "Read-only file system" in log
    assert log.count("cannot write outputs") == 1
    rows = kit.check_csv(csv)
    assert sorted(r["file"] for r in rows) == [f"frame_{i:02}.png" for i in range(1, 16)]
    kit.check_outputs(out)


def test_disk_full_mid_session(tmp_path, kit, capture_folder, frames, mounts, watch_process):
    disk = mounts.tmpfs(tmp_path / "disk", "1m")
    out = disk / "out"
    csv = out / "crops.csv"
    d = watch_process(capture_folder.root, out, tmp_path / "log.txt")
    d.wait_ready()
    payloads = [kit.png_bytes(f) for f in frames]
    for i in range(1, 11):
        capture_folder.write(f"frame_{i:03}.png", payloads[i % 30])
    assert kit.wait_for(lambda: len(kit.rows(csv)) >= 10 and (out / "comparison.png").exists())
    stop, bad = threading.Event(), []
    sampler = threading.Thread(target=_sample_outputs, args=(kit, out, stop, bad))
    sampler.start()
    try:
        filler = kit.fill_up(disk)
        for i in range(11, 111):
            capture_folder.write(f"frame_{i:03}.png", payloads[i % 30])
        assert kit.wait_for(lambda: "cannot append to" in d.log(), 30), d.log()
        assert kit.wait_for(lambda: "cannot write outputs" in d.log(), 30), d.log()
        time.sleep(1.0)
        assert d.alive()
        n_full = len(kit.rows(csv))
        assert n_full < 110  # rows are waiting in memory, not torn on disk
        kit.check_csv(csv)
        filler.unlink()  # space returns
        assert kit.wait_for(lambda: len(kit.rows(csv)) >= 110, 30), d.log()
        assert kit.wait_for(lambda: "outputs written again" in d.log(), 30), d.log()
    finally:
        stop.set()
        sampler.join()
    assert d.stop() == 0
    assert not bad, f"half-written outputs seen: {bad}"
    log = d.log()
    assert "No space left on device" in log
    assert "crop CSV appends work again" in log
    rows = kit.check_csv(csv)
    assert [r["file"] for r in rows] == [f"frame_{i:03}.png" for i in range(1, 111)]
    assert rows[-1]["stacked"] == "20"
    kit.check_outputs(out)


# ------------------------------------------------------------ capture folder lost


@pytest.mark.parametrize("how", ["deleted", "renamed away"])
def test_capture_folder_lost_and_recreated_wait(tmp_path, kit, capture_folder, frames,
                                                watch_process, how):
    inp, out = capture_folder.root, tmp_path / "out"
    csv = out / "crops.csv"
    d = watch_process(inp, out, tmp_path / "log.txt")
    d.wait_ready()
    for i in range(1, 4):
        capture_folder.write(f"frame_{i}.png", kit.png_bytes(frames[i]))
    assert kit.wait_for(lambda: len(kit.rows(csv)) >= 3)
    if how == "deleted":
        shutil.rmtree(inp)
        capture_folder.forget_tree(inp)
        assert kit.wait_for(lambda: "is gone; waiting for it to return" in d.log()), d.log()
        inp.mkdir()
    else:  # renamed and re-created at once: inotify would follow the old folder
        old = tmp_path / "capture.old"
        os.rename(inp, old)
        capture_folder.moved_tree(inp, old)
        inp.mkdir()
    for i in range(4, 7):
        capture_folder.write(f"frame_{i}.png", kit.png_bytes(frames[i]))
    assert kit.wait_for(lambda: len(kit.rows(csv)) >= 6, 30), d.log()
    assert d.alive()
    assert d.stop() == 0
    assert "capture folder is back" in d.log()
    rows = kit.check_csv(csv)
    assert [r["file"] for r in rows] == [f"frame_{i}.png" for i in range(1, 7)]
    kit.check_outputs(out)
    if how == "renamed away":
        kit.Capture.check(capture_folder)  # the old folder's files are intact too


def test_capture_folder_lost_exit(tmp_path, kit, capture_folder, frames, watch_process):
    inp, out = capture_folder.root, tmp_path / "out"
    cfg = tmp_path / "c.toml"
    cfg.write_text('[watch]\non_folder_lost = "exit"\n')
    d = watch_process(inp, out, tmp_path / "log.txt", config=cfg)
    d.wait_ready()
    capture_folder.write("frame_1.png", kit.png_bytes(frames[1]))
    assert kit.wait_for(lambda: len(kit.rows(out / "crops.csv")) >= 1)
    shutil.rmtree(inp)
    capture_folder.forget_tree(inp)
    code = d.proc.wait(30)
    d.close()
    assert code == 1
    assert re.search(r"ERROR .*capture folder .*capture is gone; exiting "
                     r"\(\[watch\] on_folder_lost = \"exit\"\)", d.log()), d.log()
    kit.check_csv(out / "crops.csv")
    kit.check_outputs(out)


# ------------------------------------------------------ everything, one real process


def test_all_faults_in_one_real_process(tmp_path, kit, capture_folder, frames, watch_process):
    """The CLI daemon gets every bad input of this module in one session:
    a row and a log line each, it stays up, memory stays bounded, exit 0."""
    out = tmp_path / "out"
    csv = out / "crops.csv"
    d = watch_process(capture_folder.root, out, tmp_path / "log.txt")
    d.wait_ready()
    payloads = [kit.png_bytes(f) for f in frames]
    for i in range(1, 6):
        capture_folder.write(f"frame_{i}.png", payloads[i])
    assert kit.wait_for(lambda: len(kit.rows(csv)) >= 5)
    hwm_before = d.status("VmHWM")
    bad = _bad_inputs(kit, frames)
    for name, (data, _) in bad.items():
        capture_folder.write(name, data)
    capture_folder.mkdir("dir.png")
    capture_folder.mkfifo("pipe.png")
    target = capture_folder.write_outside(tmp_path / "elsewhere.png", payloads[7])
    capture_folder.symlink("link.png", target)
    capture_folder.write("colour.png", kit.png_bytes(np.dstack([frames[8]] * 3)))
    for i in range(6, 9):
        capture_folder.write(f"frame_{i}.png", payloads[i])
    n = 8 + len(bad) + 4
    assert kit.wait_for(lambda: len(kit.rows(csv)) >= n, 30), kit.rows(csv)
    hwm_grew_mb = (d.status("VmHWM") - hwm_before) / 1024
    assert d.alive()
    assert d.stop() == 0
    log = d.log()
    rows = {r["file"]: r for r in kit.check_csv(csv)}
    assert len(rows) == n
    for name, (_, pattern) in bad.items():
        assert rows[name]["outcome"] == "rejected" and re.search(pattern, rows[name]["reason"])
        assert f"frame rejected: {rows[name]['reason']} [{name}]" in log
    for name in ("dir.png", "pipe.png", "link.png", "colour.png"):
        assert rows[name]["outcome"] == "rejected"
        assert f"frame rejected: {rows[name]['reason']} [{name}]" in log
    assert all(rows[f"frame_{i}.png"]["outcome"] == "accepted" for i in range(1, 9))
    assert hwm_grew_mb < 30, f"peak RSS grew by {hwm_grew_mb:.0f} MB around the bombs"
    assert "Traceback" not in log
    kit.check_outputs(out)
