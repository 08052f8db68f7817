import os
import struct
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from luckystack.core.errors import FrameError
from luckystack.daemon.ser import (
    SER_HEADER_SIZE,
    SerColor,
    SerReader,
    SerWriter,
    datetime_to_ticks,
    read_ser_header,
    ticks_to_datetime,
    write_ser,
)

COLOUR_IDS = {
    "mono": SerColor.MONO,
    "rggb": SerColor.BAYER_RGGB,
    "grbg": SerColor.BAYER_GRBG,
    "gbrg": SerColor.BAYER_GBRG,
    "bggr": SerColor.BAYER_BGGR,
    "rgb": SerColor.RGB,
    "bgr": SerColor.BGR,
}
T0 = datetime(2024, 8, 14, 3, 21, 7, 123456, tzinfo=timezone.utc)


def _frames(n, color_id, dtype, shape_hw=(6, 10), seed=0, high=None):
    rng = np.random.default_rng(seed)
    shape = (*shape_hw, 3) if color_id in (SerColor.RGB, SerColor.BGR) else shape_hw
    top = high if high is not None else np.iinfo(dtype).max + 1
    return [rng.integers(0, top, shape, dtype=dtype) for _ in range(n)]


@pytest.mark.parametrize("name", list(COLOUR_IDS))
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("little_endian", [True, False])
@pytest.mark.parametrize("trailer", [True, False])
def test_round_trip_is_bit_exact(tmp_path, name, dtype, little_endian, trailer):
    color_id = COLOUR_IDS[name]
    frames = _frames(4, color_id, dtype)
    stamps = [T0 + timedelta(milliseconds=7 * i, microseconds=i) for i in range(4)]
    path = write_ser(
        tmp_path / "v.ser",
        frames,
        color_id=color_id,
        little_endian=little_endian,
        timestamps=stamps if trailer else None,
    )
    size = SER_HEADER_SIZE + sum(f.nbytes for f in frames) + (32 if trailer else 0)
    assert path.stat().st_size == size
    with SerReader(path) as ser:
        h = ser.header
        assert (h.width, h.height, h.color_id, h.frame_count) == (10, 6, color_id, 4)
        assert h.pixel_depth == (8 if dtype == np.uint8 else 16)
        assert h.data_little_endian is little_endian
        assert ser.frame_count_available() == 4
        assert ser.has_trailer is trailer and ser.truncated_bytes == 0
        assert ser.truncation_message() is None
        for i, want in enumerate(frames):
            got = ser.read_frame(i)
            assert got.dtype == dtype and got.dtype.byteorder in "=|"
            np.testing.assert_array_equal(got, want)
            assert ser.timestamp(i) == (stamps[i] if trailer else None)
        np.testing.assert_array_equal(ser.read_frame(-1), frames[-1])
        assert [f.sum() for f in ser.iter_frames(1)] == [f.sum() for f in frames[1:]]
        assert ser.bayer_pattern == (
            name.upper() if name in ("rggb", "grbg", "gbrg", "bggr") else None
        )
        assert ser.white_level == (255 if dtype == np.uint8 else 65535)


def test_bgr_files_are_stored_reversed_and_read_as_rgb(tmp_path):
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[..., 0] = 200  # red
    path = write_ser(tmp_path / "bgr.ser", [rgb], color_id=SerColor.BGR)
    first_pixel = path.read_bytes()[SER_HEADER_SIZE : SER_HEADER_SIZE + 3]
    assert first_pixel == bytes([0, 0, 200])  # B, G, R on disk
    with SerReader(path) as ser:
        np.testing.assert_array_equal(ser.read_frame(0), rgb)


def test_endianness_flag_follows_the_de_facto_convention(tmp_path):
    frame = np.array([[0x0102, 0x0A0B], [0x1234, 0xFFEE]], np.uint16)
    le = write_ser(tmp_path / "le.ser", [frame], color_id=0, little_endian=True)
    be = write_ser(tmp_path / "be.ser", [frame], color_id=0, little_endian=False)
    # Flag 0 = little-endian data, 1 = big-endian (Siril, SER Player, ...).
    assert struct.unpack_from("<i", le.read_bytes(), 22)[0] == 0
    assert struct.unpack_from("<i", be.read_bytes(), 22)[0] == 1
    assert le.read_bytes()[SER_HEADER_SIZE : SER_HEADER_SIZE + 2] == b"\x02\x01"
    assert be.read_bytes()[SER_HEADER_SIZE : SER_HEADER_SIZE + 2] == b"\x01\x02"
    # A writer that follows the spec literally: read it with endianness="spec".
    spec = write_ser(
        tmp_path / "spec.ser", [frame], color_id=0, little_endian=True, flag_convention="spec"
    )
    assert struct.unpack_from("<i", spec.read_bytes(), 22)[0] == 1
    with SerReader(spec) as ser:  # the conventional reading swaps the bytes
        np.testing.assert_array_equal(ser.read_frame(0), frame.byteswap())
    for endianness in ("spec", "little"):
        with SerReader(spec, endianness=endianness) as ser:
            np.testing.assert_array_equal(ser.read_frame(0), frame)
    with SerReader(le, endianness="big") as ser:
        np.testing.assert_array_equal(ser.read_frame(0), frame.byteswap())


def test_header_fields_round_trip(tmp_path):
    local = datetime(2024, 8, 14, 5, 21, 7, 123456)
    path = write_ser(
        tmp_path / "h.ser",
        _frames(1, 0, np.uint8),
        color_id=0,
        observer="A. Observer",
        instrument="ASI462MC",
        telescope="C11 @ f/20",
        date_time=local,
        date_time_utc=T0,
    )
    h = read_ser_header(path)
    assert (h.observer, h.instrument, h.telescope) == ("A. Observer", "ASI462MC", "C11 @ f/20")
    assert h.date_time == local and h.date_time.tzinfo is None
    assert h.date_time_utc == T0
    assert read_ser_header(path.read_bytes()) == h


def test_trailer_ticks_round_trip_to_100_ns(tmp_path):
    ticks = [datetime_to_ticks(T0) + k for k in (0, 1, 9, 10, 12_345_677)]
    path = write_ser(tmp_path / "t.ser", _frames(5, 0, np.uint8), color_id=0, timestamps=ticks)
    with SerReader(path) as ser:
        assert [ser.timestamp_ticks(i) for i in range(5)] == ticks
        assert ser.timestamp(1) == T0  # 100 ns below µs resolution: truncated
        assert ser.timestamp(3) == T0 + timedelta(microseconds=1)


def test_ticks_conversion_known_values():
    # 2000-01-01T00:00:00Z is 630822816000000000 ticks (.NET DateTime.Ticks).
    y2k = datetime(2000, 1, 1, tzinfo=timezone.utc)
    assert datetime_to_ticks(y2k) == 630_822_816_000_000_000
    assert ticks_to_datetime(630_822_816_000_000_000) == y2k
    assert ticks_to_datetime(0) is None
    assert ticks_to_datetime(2**63 - 1) is None


def test_truncated_file_yields_complete_frames_and_says_so(tmp_path):
    frames = _frames(3, 0, np.uint16)
    path = write_ser(tmp_path / "cut.ser", frames, color_id=0)
    data = path.read_bytes()
    path.write_bytes(data[: SER_HEADER_SIZE + 2 * frames[0].nbytes + 50])
    with SerReader(path) as ser:
        assert ser.frame_count_available() == 2
        assert ser.truncated_bytes == 50
        msg = ser.truncation_message()
        assert "frame 2 is incomplete" in msg and "50 of 120 bytes" in msg
        assert len(list(ser.iter_frames())) == 2
        np.testing.assert_array_equal(ser.read_frame(1), frames[1])
        with pytest.raises(FrameError, match=r"frame index 2 .*2 complete.*50 of 120 bytes"):
            ser.read_frame(2)
        with pytest.raises(FrameError, match="frame index 7"):
            ser.read_frame(7)


def test_missing_frames_are_reported(tmp_path):
    frames = _frames(3, 0, np.uint8)
    path = write_ser(tmp_path / "short.ser", frames, color_id=0)
    path.write_bytes(path.read_bytes()[: SER_HEADER_SIZE + 2 * frames[0].nbytes])
    with SerReader(path) as ser:
        assert ser.frame_count_available() == 2 and ser.truncated_bytes == 0
        assert "declares 3 frames but only 2" in ser.truncation_message()


def test_growing_file_is_seen_without_reopening(tmp_path):
    frames = _frames(7, SerColor.BAYER_RGGB, np.uint16, seed=3)
    stamps = [T0 + timedelta(seconds=i) for i in range(7)]
    writer = SerWriter(tmp_path / "live.ser", color_id=SerColor.BAYER_RGGB, little_endian=False)
    for f, t in zip(frames[:2], stamps[:2]):
        writer.write_frame(f, t)
    with SerReader(writer.path) as ser:
        assert ser.header.frame_count == 0  # capture programs fix it on close
        assert ser.frame_count_available() == 2
        seen = list(ser.iter_frames())
        for f, t in zip(frames[2:5], stamps[2:5]):
            writer.write_frame(f, t)
        assert ser.frame_count_available() == 5
        seen += list(ser.iter_frames(len(seen)))
        size = writer.path.stat().st_size
        with writer.path.open("ab") as fh:  # a frame caught half-written
            fh.write(frames[5].tobytes()[:33])
        assert ser.frame_count_available() == 5 and ser.truncated_bytes == 33
        assert ser.timestamp(0) is None  # no trailer yet
        os.truncate(writer.path, size)
        for f, t in zip(frames[5:], stamps[5:]):
            writer.write_frame(f, t)
        writer.close()
        assert ser.frame_count_available() == 7
        assert ser.header.frame_count == 7 and ser.has_trailer
        seen += list(ser.iter_frames(len(seen)))
        assert ser.timestamp(6) == stamps[6]
    assert len(seen) == 7
    for got, want in zip(seen, frames):
        np.testing.assert_array_equal(got, want)


def test_stale_frame_count_is_overridden_by_the_file_size(tmp_path):
    path = write_ser(tmp_path / "s.ser", _frames(4, 0, np.uint8), color_id=0, frame_count=2)
    with SerReader(path) as ser:
        assert ser.header.frame_count == 2
        assert ser.frame_count_available() == 4


def test_twelve_bit_white_level(tmp_path):
    lsb = _frames(2, 0, np.uint16, high=4096, seed=5)
    msb = [f << 4 for f in lsb]
    dim_msb = [(f >> 2) << 4 for f in lsb]  # underexposed: all values < 4096
    with SerReader(write_ser(tmp_path / "l.ser", lsb, color_id=0, pixel_depth=12)) as ser:
        assert ser.white_level == 4095
        np.testing.assert_array_equal(ser.read_frame(0), lsb[0])  # values kept as is
    with SerReader(write_ser(tmp_path / "m.ser", msb, color_id=0, pixel_depth=12)) as ser:
        assert ser.white_level == 65535
        np.testing.assert_array_equal(ser.read_frame(1), msb[1])
    with SerReader(write_ser(tmp_path / "d.ser", dim_msb, color_id=0, pixel_depth=12)) as ser:
        assert ser.white_level == 65535
    path = write_ser(tmp_path / "o.ser", lsb, color_id=0, pixel_depth=12)
    with SerReader(path, white_level=16383) as ser:
        assert ser.white_level == 16383


def test_white_level_waits_for_data(tmp_path):
    writer = SerWriter(tmp_path / "z.ser", color_id=0, pixel_depth=12)
    writer.write_frame(np.zeros((4, 4), np.uint16))
    with SerReader(writer.path) as ser:
        assert ser.white_level == 4095  # undecided: the header's word
        writer.write_frame(np.full((4, 4), 4000 << 4, np.uint16))
        writer.close()
        ser.refresh()
        assert ser.white_level == 65535  # decided by frame 1: 64000 > 4095
        np.testing.assert_array_equal(ser.read_frame(1), 64000)


def _header(**over):
    fields = {"magic": b"LUCAM-RECORDER", "lu": 0, "color": 0, "le": 0}
    fields |= {"w": 8, "h": 6, "depth": 8, "count": 1}
    fields.update(over)
    return struct.pack(
        "<14s7i40s40s40sqq",
        fields["magic"], fields["lu"], fields["color"], fields["le"], fields["w"],
        fields["h"], fields["depth"], fields["count"], b"", b"", b"", 0, 0,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("data", "match"),
    [
        pytest.param(_header(magic=b"NOT-A-SER-FILE"), "not a SER file", id="magic"),
        pytest.param(b"RIFF" + bytes(200), "not a SER file", id="avi"),
        pytest.param(_header()[:100], "truncated SER header: 100 of 178", id="short"),
        pytest.param(b"", "truncated SER header: 0 of 178", id="empty"),
        pytest.param(_header(color=16), r"colour ID 16 \(BAYER_CYYM\)", id="cyym"),
        pytest.param(_header(color=19), r"colour ID 19 \(BAYER_MYYC\)", id="myyc"),
        pytest.param(_header(color=42), r"colour ID 42 \(unknown\)", id="colour42"),
        pytest.param(_header(w=0), "bad SER dimensions: 0x6", id="width0"),
        pytest.param(_header(h=-3), "bad SER dimensions: 8x-3", id="height-3"),
        pytest.param(_header(w=100_000, h=100_000), "limit", id="bomb"),
        pytest.param(_header(depth=0), "pixel depth 0", id="depth0"),
        pytest.param(_header(depth=17), "pixel depth 17", id="depth17"),
        pytest.param(_header(count=-1), "frame count -1", id="count-1"),
    ],
)
def test_corrupt_headers_are_frame_errors(tmp_path, data, match):
    path = tmp_path / "bad.ser"
    path.write_bytes(data + bytes(48))
    with pytest.raises(FrameError, match=match):
        read_ser_header(data)
    if len(data) >= SER_HEADER_SIZE:
        with pytest.raises(FrameError, match=match):
            SerReader(path)


def test_missing_file_and_directory_are_frame_errors(tmp_path):
    with pytest.raises(FrameError, match="cannot read"):
        SerReader(tmp_path / "nope.ser")
    with pytest.raises(FrameError, match="directory"):
        SerReader(tmp_path)


def test_header_only_file_has_no_frames(tmp_path):
    path = tmp_path / "empty.ser"
    path.write_bytes(_header(count=0))
    with SerReader(path) as ser:
        assert ser.frame_count_available() == 0
        assert list(ser.iter_frames()) == []
        with pytest.raises(FrameError, match="frame index 0 is beyond the 0"):
            ser.read_frame(0)


def test_header_rewritten_with_other_geometry_is_refused(tmp_path):
    path = write_ser(tmp_path / "x.ser", _frames(2, 0, np.uint8), color_id=0)
    with SerReader(path) as ser:
        write_ser(path, _frames(2, 0, np.uint8, shape_hw=(5, 5)), color_id=0)
        with pytest.raises(FrameError, match="header changed"):
            ser.frame_count_available()


def test_writer_validates_its_input(tmp_path):
    with pytest.raises(ValueError, match="uint16"):
        write_ser(tmp_path / "a.ser", [np.zeros((4, 4), np.uint8)], color_id=0, pixel_depth=12)
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        write_ser(tmp_path / "b.ser", [np.zeros((4, 4), np.uint8)], color_id=SerColor.RGB)
    with pytest.raises(ValueError, match="shape"):
        write_ser(
            tmp_path / "c.ser",
            [np.zeros((4, 4), np.uint8), np.zeros((4, 5), np.uint8)],
            color_id=0,
        )
    with pytest.raises(ValueError, match="time stamps"):
        write_ser(tmp_path / "d.ser", _frames(2, 0, np.uint8), color_id=0, timestamps=[T0])
    with pytest.raises(ValueError, match="colour ID"):
        SerWriter(tmp_path / "e.ser", color_id=16)
