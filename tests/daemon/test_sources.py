"""Prefetcher: frame files decoded ahead by path, never used stale."""

import os

import cv2
import numpy as np
import pytest

from luckystack.core.errors import FrameError
from luckystack.daemon.sources import FrameLoader, Prefetcher


def _frames(folder):
    return sorted(folder.glob("frame_*.png"), key=lambda p: int(p.stem.split("_")[1]))


@pytest.fixture
def loader():
    ld = FrameLoader()
    yield ld
    ld.close()


def test_a_hinted_frame_is_the_frame_load_returns(capture_copy, loader):
    paths = _frames(capture_copy)[:6]
    pf = Prefetcher(loader.load, depth=4)
    try:
        assert all(pf.hint(p) for p in paths[:4])
        assert not pf.hint(paths[4])  # depth 4: no room, decoded when taken
        for p in paths[:4]:
            pf._ahead[str(p)].result(timeout=60)
        for p in paths:
            got = pf.take(p)
            np.testing.assert_array_equal(got.frame.data, loader.load(p).frame.data)
        assert (pf.hits, pf.rereads) == (4, 0)
    finally:
        pf.close()


def test_a_frame_rewritten_after_it_was_read_ahead_is_read_again(capture_copy, loader):
    a, b = _frames(capture_copy)[:2]
    pf = Prefetcher(loader.load)
    try:
        assert pf.hint(a)
        pf.take(b)  # b was not hinted: loaded now
        assert pf.hits == 0
        pf._ahead[str(a)].result(timeout=60)  # a has been read ahead
        # a is decoded in the background; then the capture program replaces it
        # with other pixels (a new file: new inode, other size or time)
        new = np.full((120, 160), 7, np.uint8)
        new[40:80, 60:100] = 200
        tmp = a.with_suffix(".tmp")
        tmp.write_bytes(cv2.imencode(".png", new)[1].tobytes())
        os.replace(tmp, a)
        got = pf.take(a)
        assert pf.rereads == 1 and pf.hits == 0
        np.testing.assert_allclose(got.frame.data, new / np.float32(255), rtol=1e-6)
    finally:
        pf.close()


def test_errors_are_returned_not_raised(capture_copy, loader):
    bad = capture_copy / "frame_999.png"
    bad.write_bytes(b"not a png at all")
    gone = capture_copy / "frame_1000.png"
    pf = Prefetcher(loader.load)
    try:
        assert pf.hint(bad)
        err = pf.take(bad)
        assert isinstance(err, FrameError) and "cannot decode" in str(err)
        assert pf.hits == 1  # the same (unchanged) bad file is not decoded twice
        assert isinstance(pf.take(gone), FrameError)
    finally:
        pf.close()


def test_discard_frees_the_room_and_close_stops_hints(capture_copy, loader, tmp_path):
    paths = _frames(capture_copy)[:3]
    pf = Prefetcher(loader.load, depth=2)
    assert pf.hint(paths[0]) and pf.hint(paths[1]) and not pf.hint(paths[2])
    pf.discard(paths[0])
    assert pf.hint(paths[2])
    assert not pf.hint(tmp_path / "video.ser")  # SER frames are read on the worker
    pf.close()
    assert not pf.hint(paths[0])
    # what was ahead is dropped; taking still works, decoding on the caller's thread
    np.testing.assert_array_equal(pf.take(paths[1]).frame.data, loader.load(paths[1]).frame.data)
    assert pf.hits == 0


def test_a_frame_never_taken_gives_its_room_up_after_stale_s(capture_copy, loader):
    paths = _frames(capture_copy)[:3]
    pf = Prefetcher(loader.load, depth=1, stale_s=0.0)
    try:
        assert pf.hint(paths[0])
        assert pf.hint(paths[1])  # paths[0] was dropped without discard(): its room is reused
        assert list(pf._ahead) == [str(paths[1])]
        pf._ahead[str(paths[1])].result(timeout=60)
        assert pf.take(paths[1]).frame is not None and pf.hits == 1
    finally:
        pf.close()


@pytest.mark.parametrize("name", ["a.ser", "A.SER", "x/y.Ser", ".ser", "..ser", "a.", "a.ser/",
                                  "ser", "", "/", "a.b.ser", "j.ser#3", "a.png"])
def test_is_ser_is_the_path_suffix_test(name):
    from pathlib import Path, PurePath

    from luckystack.daemon.sources import is_ser

    want = Path(name).suffix.lower() == ".ser"
    assert is_ser(name) == want
    assert is_ser(Path(name)) == want
    assert is_ser(PurePath(name)) == want


def test_two_frames_are_decoded_at_once_and_taken_in_order(tmp_path):
    import threading

    barrier = threading.Barrier(2, timeout=10)

    def load(path):
        barrier.wait()  # passes only while two loads run at the same time
        return path.name

    paths = [tmp_path / f"f{i}.png" for i in range(2)]
    for p in paths:
        p.write_bytes(b"x")
    pf = Prefetcher(load, depth=4)
    try:
        for p in paths:
            assert pf.hint(p)
        assert [pf.take(p) for p in paths] == ["f0.png", "f1.png"]
    finally:
        pf.close()
    with pytest.raises(ValueError, match="workers"):
        Prefetcher(load, workers=0)
