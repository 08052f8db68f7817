"""Reading and writing SER videos, the planetary-imaging capture format.

A SER file is a 178-byte little-endian header, ``FrameCount`` raw frames of
``width * height * planes * bytes_per_sample`` bytes each, and an optional
trailer of ``FrameCount`` int64 UTC time stamps (SER v3 spec, G. Hahn 2014).
Frames start with the upper-left pixel (row 0 is the top of the image), the
same orientation luckystack uses everywhere.

The LittleEndian flag
    The spec says ``LittleEndian = 1`` means little-endian 16-bit samples.
    The first programs to write SER used the flag the other way round, and
    every reader followed them: Siril's ``ser.h`` ("several of the first
    programs to support SER disrespect the specification regarding the
    endianness flag ... with 0 for little-endian and 1 for big-endian ...
    Siril and GoQat have also decided to implement this header in opposite
    meaning to the specification", also on free-astro.org's SER page) and
    SER Player (cgarry/ser-player issue #8: "I found that EVERY other program
    did it the other way. So I simply fell into line"). The default here,
    ``endianness="convention"``, follows them: **flag 0 = little-endian,
    non-zero = big-endian**. ``"spec"`` reads the flag as written in the spec;
    ``"little"``/``"big"`` force the byte order. :func:`write_ser` writes the
    conventional flag by default. 8-bit data is unaffected.

Bit depth and white level
    Samples of 9 to 16 bits sit in 16-bit containers and are returned as they
    are (never rescaled, so a 12-bit camera keeps all 12 bits). Some writers
    put a 12-bit value in the low bits (0..4095), others shift it to the top
    (multiples of 16 up to 65520) while still writing ``PixelDepth = 12``.
    :attr:`SerReader.white_level` tells them apart from the first non-black
    frame (of the first 8): the data is taken as MSB-aligned, white level
    ``65535``, if any sample exceeds ``2**depth - 1`` or if every sample is a
    multiple of ``2**(16 - depth)`` (a noisy LSB-aligned frame is practically
    never all multiples of 16); otherwise the white level is
    ``2**depth - 1``. Depths 8 and 16 are always 255 / 65535. The level is
    only ever raised from what the header says, never lowered (SER Player's
    bit-depth guessing went wrong that way, cgarry/ser-player issue #14).
    Pass ``white_level=`` to override.

Live files
    Capture programs usually write ``FrameCount = 0`` (or a stale count) while
    recording and fix it when they close the file.
    :meth:`SerReader.frame_count_available` re-reads the file size and header on every call, so a reader opened on a
    file that is still growing sees new frames without reopening it.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

import numpy as np

from luckystack.core.errors import FrameError
from luckystack.daemon.frames import MAX_PIXELS

__all__ = [
    "SER_HEADER_SIZE",
    "SER_MAGIC",
    "SerColor",
    "SerHeader",
    "SerReader",
    "SerWriter",
    "read_ser_header",
    "write_ser",
    "datetime_to_ticks",
    "ticks_to_datetime",
]

SER_HEADER_SIZE = 178
SER_MAGIC = b"LUCAM-RECORDER"
_HEADER = struct.Struct("<14s7i40s40s40sqq")
_FRAME_COUNT_OFFSET = 38  # byte offset of FrameCount in the header

Endianness = Literal["convention", "spec", "little", "big"]
_ENDIANNESS = ("convention", "spec", "little", "big")

#: .NET ticks (100 ns) from 0001-01-01 to the Unix epoch.
_TICKS_PER_SECOND = 10_000_000
_TICKS_PER_DAY = 86_400 * _TICKS_PER_SECOND
_MAX_TICKS = (datetime.max - datetime.min) // timedelta(microseconds=1) * 10 + 9


class SerColor:
    """SER ``ColorID`` values (only these are supported; CMY Bayer 16-19 is not)."""

    MONO = 0
    BAYER_RGGB = 8
    BAYER_GRBG = 9
    BAYER_GBRG = 10
    BAYER_BGGR = 11
    RGB = 100
    BGR = 101


_BAYER_BY_ID = {8: "RGGB", 9: "GRBG", 10: "GBRG", 11: "BGGR"}
_SUPPORTED_IDS = (0, 8, 9, 10, 11, 100, 101)
_UNSUPPORTED_NAMES = {16: "BAYER_CYYM", 17: "BAYER_YCMY", 18: "BAYER_YMCY", 19: "BAYER_MYYC"}


def ticks_to_datetime(ticks: int, *, utc: bool = True) -> datetime | None:
    """Convert .NET ticks (100 ns since 0001-01-01) to a datetime.

    Returns ``None`` for 0 (the "not set" value) and for values outside the
    datetime range. The result has microsecond resolution (ticks are
    truncated); it is tz-aware UTC if ``utc`` else naive (local time).
    """
    if ticks <= 0 or ticks > _MAX_TICKS:
        return None
    when = datetime.min + timedelta(microseconds=ticks // 10)
    return when.replace(tzinfo=timezone.utc) if utc else when


def datetime_to_ticks(when: datetime) -> int:
    """Convert a datetime to .NET ticks; aware datetimes are converted to UTC first."""
    if when.tzinfo is not None:
        when = when.astimezone(timezone.utc).replace(tzinfo=None)
    delta = when - datetime.min
    return delta.days * _TICKS_PER_DAY + delta.seconds * _TICKS_PER_SECOND + delta.microseconds * 10


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("latin-1").strip()


@dataclass(frozen=True, slots=True)
class SerHeader:
    """The 178-byte SER header, decoded and checked.

    Attributes
    ----------
    color_id : int
        One of :class:`SerColor`'s values.
    little_endian_flag : int
        The raw ``LittleEndian`` field as stored.
    data_little_endian : bool
        The byte order of 16-bit samples as resolved (see the module notes).
    width, height : int
        Frame size in pixels.
    pixel_depth : int
        ``PixelDepthPerPlane``, 1..16 significant bits per sample.
    frame_count : int
        ``FrameCount`` as stored (0 or stale while a capture is running).
    date_time : datetime or None
        ``DateTime``: local start time, naive.
    date_time_utc : datetime or None
        ``DateTime_UTC``: start time, tz-aware UTC.
    """

    lu_id: int
    color_id: int
    little_endian_flag: int
    data_little_endian: bool
    width: int
    height: int
    pixel_depth: int
    frame_count: int
    observer: str
    instrument: str
    telescope: str
    date_time: datetime | None
    date_time_utc: datetime | None

    @property
    def planes(self) -> int:
        """3 for RGB/BGR, 1 for mono and Bayer."""
        return 3 if self.color_id in (SerColor.RGB, SerColor.BGR) else 1

    @property
    def bytes_per_sample(self) -> int:
        return 1 if self.pixel_depth <= 8 else 2

    @property
    def frame_bytes(self) -> int:
        """Size of one frame in bytes."""
        return self.width * self.height * self.planes * self.bytes_per_sample

    @property
    def dtype(self) -> np.dtype:
        """Dtype of the frames as returned (native byte order)."""
        return np.dtype(np.uint8 if self.bytes_per_sample == 1 else np.uint16)

    @property
    def bayer_pattern(self) -> str | None:
        """``"RGGB"``, ``"GRBG"``, ``"GBRG"``, ``"BGGR"`` or ``None``."""
        return _BAYER_BY_ID.get(self.color_id)

    @property
    def is_colour(self) -> bool:
        """True for RGB/BGR frames (Bayer mosaics are single-plane)."""
        return self.planes == 3

    @property
    def frame_shape(self) -> tuple[int, ...]:
        """``(H, W)`` or ``(H, W, 3)``."""
        hw = (self.height, self.width)
        return (*hw, 3) if self.planes == 3 else hw


def _resolve_little_endian(flag: int, endianness: str) -> bool:
    if endianness == "convention":
        return flag == 0
    if endianness == "spec":
        return flag != 0
    if endianness == "little":
        return True
    if endianness == "big":
        return False
    raise ValueError(f"endianness must be one of {', '.join(_ENDIANNESS)}, got {endianness!r}")


def _parse_header(
    data: bytes, *, endianness: str = "convention", max_pixels: int = MAX_PIXELS
) -> SerHeader:
    if endianness not in _ENDIANNESS:
        raise ValueError(f"endianness must be one of {', '.join(_ENDIANNESS)}, got {endianness!r}")
    if len(data) < SER_HEADER_SIZE:
        if len(data) >= 14 and data[:14] != SER_MAGIC:
            raise FrameError(f"not a SER file: expected {SER_MAGIC!r} magic, found {data[:14]!r}")
        raise FrameError(f"truncated SER header: {len(data)} of {SER_HEADER_SIZE} bytes")
    (magic, lu_id, color_id, le_flag, width, height, depth, count,
     observer, instrument, telescope, dt, dt_utc) = _HEADER.unpack_from(data)  # fmt: skip
    if magic != SER_MAGIC:
        raise FrameError(f"not a SER file: expected {SER_MAGIC!r} magic, found {magic!r}")
    if color_id not in _SUPPORTED_IDS:
        name = _UNSUPPORTED_NAMES.get(color_id, "unknown")
        raise FrameError(
            f"unsupported SER colour ID {color_id} ({name}): expected MONO (0), "
            "Bayer RGGB/GRBG/GBRG/BGGR (8-11), RGB (100) or BGR (101)"
        )
    if width <= 0 or height <= 0:
        raise FrameError(f"bad SER dimensions: {width}x{height} px (must be positive)")
    if width * height > max_pixels:
        raise FrameError(
            f"refused: SER header declares {width}x{height} px, above the {max_pixels:,} px limit"
        )
    if not 1 <= depth <= 16:
        raise FrameError(f"bad SER pixel depth {depth}: expected 1 to 16 bits per sample")
    if count < 0:
        raise FrameError(f"bad SER frame count {count}: must not be negative")
    return SerHeader(
        lu_id=lu_id,
        color_id=color_id,
        little_endian_flag=le_flag,
        data_little_endian=_resolve_little_endian(le_flag, endianness),
        width=width,
        height=height,
        pixel_depth=depth,
        frame_count=count,
        observer=_text(observer),
        instrument=_text(instrument),
        telescope=_text(telescope),
        date_time=ticks_to_datetime(dt, utc=False),
        date_time_utc=ticks_to_datetime(dt_utc, utc=True),
    )


def read_ser_header(
    source: str | os.PathLike[str] | bytes | bytearray | memoryview,
    *,
    endianness: Endianness = "convention",
) -> SerHeader:
    """Read and check a SER header from a file path or from the file's first bytes.

    Raises
    ------
    FrameError
        For a missing or unreadable file, bad magic, a truncated header, an
        unsupported colour ID, or bad dimensions / pixel depth.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _parse_header(bytes(source[:SER_HEADER_SIZE]), endianness=endianness)
    path = Path(source)
    try:
        with path.open("rb") as fh:
            data = fh.read(SER_HEADER_SIZE)
    except OSError as err:
        raise FrameError(f"cannot read {path.name}: {err.strerror or err}") from err
    return _parse_header(data, endianness=endianness)


def _white_level_from_samples(samples: np.ndarray, depth: int) -> int | None:
    """White level per the module notes, or None if the samples cannot decide."""
    container = 8 * samples.dtype.itemsize
    if depth >= container:
        return (1 << container) - 1
    nominal = (1 << depth) - 1
    top = int(samples.max(initial=0))
    if top > nominal:
        return (1 << container) - 1
    if top == 0:
        return None
    step = 1 << (container - depth)
    if not np.any(samples % step):
        return (1 << container) - 1
    return nominal


class SerReader:
    """Random access to the frames of a SER file, including one still being written.

    Use as a context manager (or call :meth:`close`). Frames are returned as
    native-endian ``uint8``/``uint16`` arrays: mono and Bayer ``(H, W)`` (the
    raw mosaic; the pattern is :attr:`bayer_pattern`), RGB and BGR files as
    ``(H, W, 3)`` in RGB order.

    Parameters
    ----------
    path : path-like
    endianness : {"convention", "spec", "little", "big"}
        How to read the LittleEndian flag (see the module notes).
    white_level : int, optional
        Override the white level heuristic.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        endianness: Endianness = "convention",
        white_level: int | None = None,
    ) -> None:
        self.path = Path(path)
        self._endianness = endianness
        try:
            self._fh = self.path.open("rb", buffering=0)  # unbuffered: the file may grow
        except IsADirectoryError as err:
            raise FrameError(f"not a file: {self.path.name} is a directory") from err
        except OSError as err:
            raise FrameError(f"cannot read {self.path.name}: {err.strerror or err}") from err
        try:
            self._header = _parse_header(self._pread(0, SER_HEADER_SIZE), endianness=endianness)
        except BaseException:
            self._fh.close()
            raise
        self._white_level_override = white_level
        self._white_level: int | None = None
        self._size = 0
        self._refresh_layout()

    # -- plumbing ------------------------------------------------------------
    def _pread(self, offset: int, n: int) -> bytes:
        self._fh.seek(offset)
        chunks = []
        while n > 0:
            chunk = self._fh.read(n)
            if not chunk:
                break
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    def _refresh_layout(self) -> None:
        self._size = os.fstat(self._fh.fileno()).st_size

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._fh.close()

    @property
    def closed(self) -> bool:
        return self._fh.closed

    # -- header and layout ---------------------------------------------------
    @property
    def header(self) -> SerHeader:
        return self._header

    @property
    def bayer_pattern(self) -> str | None:
        return self._header.bayer_pattern

    def refresh(self) -> None:
        """Re-read the file size and the header (a writer may have fixed FrameCount).

        Raises
        ------
        FrameError
            If the header now describes different frames (another file was
            written over this one).
        """
        self._refresh_layout()
        new = _parse_header(self._pread(0, SER_HEADER_SIZE), endianness=self._endianness)
        old = self._header
        if (new.color_id, new.width, new.height, new.pixel_depth) != (
            old.color_id,
            old.width,
            old.height,
            old.pixel_depth,
        ):
            raise FrameError(
                f"{self.path.name}: SER header changed while reading "
                f"({old.width}x{old.height} colour {old.color_id} depth {old.pixel_depth} -> "
                f"{new.width}x{new.height} colour {new.color_id} depth {new.pixel_depth})"
            )
        self._header = new

    def _data_bytes(self) -> int:
        return max(0, self._size - SER_HEADER_SIZE)

    def _complete_frames(self) -> int:
        """Frames readable given the current size; excludes a complete trailer."""
        h = self._header
        data = self._data_bytes()
        on_disk = data // h.frame_bytes
        if h.frame_count and data >= h.frame_count * h.frame_bytes:
            extra = data - h.frame_count * h.frame_bytes
            if extra <= 8 * h.frame_count:  # exactly the trailer, or part of it
                return h.frame_count
        return on_disk

    def frame_count_available(self) -> int:
        """Number of complete frames on disk now (re-checks the file each call)."""
        self.refresh()
        return self._complete_frames()

    @property
    def truncated_bytes(self) -> int:
        """Bytes of an incomplete last frame (0 if none), as of the last refresh."""
        h = self._header
        n = self._complete_frames()
        rest = self._data_bytes() - n * h.frame_bytes
        if self.has_trailer or (h.frame_count and n == h.frame_count):
            return 0
        return rest

    @property
    def has_trailer(self) -> bool:
        """True if the file ends with a complete trailer of FrameCount time stamps."""
        h = self._header
        return h.frame_count > 0 and self._data_bytes() == h.frame_count * (h.frame_bytes + 8)

    def truncation_message(self) -> str | None:
        """A sentence describing an incomplete last frame or missing frames, else None."""
        h = self._header
        n = self._complete_frames()
        part = self.truncated_bytes
        if part:
            return (
                f"{self.path.name}: frame {n} is incomplete ({part} of {h.frame_bytes} bytes "
                f"on disk; file truncated or still being written); {n} complete frame(s) readable"
            )
        if h.frame_count > n:
            return (
                f"{self.path.name}: header declares {h.frame_count} frames but only {n} are on disk"
            )
        return None

    # -- frames ----------------------------------------------------------------
    def read_frame(self, index: int) -> np.ndarray:
        """Read frame ``index`` (negative counts from the last complete frame).

        Raises
        ------
        FrameError
            If the frame is not (completely) on disk.
        """
        h = self._header
        n = self._complete_frames()
        if index < 0:
            index += n
        if not 0 <= index < n:
            self.refresh()  # the file may have grown since we last looked
            n = self._complete_frames()
            if not 0 <= index < n:
                msg = f"{self.path.name}: frame index {index} is beyond the {n} complete frame(s)"
                if index == n and self.truncated_bytes:
                    msg += f" ({self.truncation_message()})"
                raise FrameError(msg)
        buf = self._pread(SER_HEADER_SIZE + index * h.frame_bytes, h.frame_bytes)
        if len(buf) != h.frame_bytes:  # shrank under us
            raise FrameError(
                f"{self.path.name}: frame {index} is incomplete: {len(buf)} of "
                f"{h.frame_bytes} bytes could be read"
            )
        if h.bytes_per_sample == 1:
            frame = np.frombuffer(buf, dtype=np.uint8).copy()
        else:
            order = "<" if h.data_little_endian else ">"
            frame = np.frombuffer(buf, dtype=f"{order}u2").astype(np.uint16)
        frame = frame.reshape(h.frame_shape)
        if h.color_id == SerColor.BGR:
            frame = np.ascontiguousarray(frame[:, :, ::-1])
        return frame

    def iter_frames(self, start: int = 0) -> Iterator[np.ndarray]:
        """Yield frames from ``start`` on, including frames appended meanwhile."""
        i = start
        while i < self._complete_frames() or i < self.frame_count_available():
            yield self.read_frame(i)
            i += 1

    @property
    def white_level(self) -> int:
        """The value that means white (see the module notes for the heuristic)."""
        if self._white_level_override is not None:
            return self._white_level_override
        if self._white_level is not None:
            return self._white_level
        h = self._header
        container_max = 255 if h.bytes_per_sample == 1 else 65535
        if h.pixel_depth in (8, 16):
            self._white_level = container_max
            return container_max
        for i in range(min(self._complete_frames(), 8)):
            level = _white_level_from_samples(self.read_frame(i), h.pixel_depth)
            if level is not None:
                self._white_level = level
                return level
        return (1 << h.pixel_depth) - 1  # no data yet: the header's word, not cached

    # -- time stamps -----------------------------------------------------------
    def timestamp_ticks(self, index: int) -> int | None:
        """Raw trailer time stamp of frame ``index`` in .NET ticks, or None if no trailer."""
        h = self._header
        if not self.has_trailer:
            self.refresh()
            if not self.has_trailer:
                return None
        if not 0 <= index < h.frame_count:
            raise FrameError(
                f"{self.path.name}: frame index {index} is beyond the {h.frame_count} frame(s)"
            )
        offset = SER_HEADER_SIZE + h.frame_count * h.frame_bytes + 8 * index
        (ticks,) = struct.unpack("<q", self._pread(offset, 8))
        return ticks

    def timestamp(self, index: int) -> datetime | None:
        """UTC time stamp of frame ``index`` from the trailer (µs resolution), else None."""
        ticks = self.timestamp_ticks(index)
        return None if ticks is None else ticks_to_datetime(ticks, utc=True)


def _check_frame(frame: np.ndarray, color_id: int, depth: int) -> np.ndarray:
    frame = np.asarray(frame)
    want = np.uint8 if depth <= 8 else np.uint16
    if frame.dtype != want:
        raise ValueError(f"pixel depth {depth} needs {np.dtype(want)} frames, got {frame.dtype}")
    colour = color_id in (SerColor.RGB, SerColor.BGR)
    if colour and (frame.ndim != 3 or frame.shape[2] != 3):
        raise ValueError(f"colour ID {color_id} needs (H, W, 3) RGB frames, got {frame.shape}")
    if not colour and frame.ndim != 2:
        raise ValueError(f"colour ID {color_id} needs (H, W) frames, got {frame.shape}")
    return frame


class SerWriter:
    """Write a SER file frame by frame, as a capture program does.

    The header is written with the first frame, with ``FrameCount = 0``;
    every frame is flushed at once, so readers see it; :meth:`close` writes
    the trailer (if every frame had a time stamp) and the final FrameCount.

    Parameters
    ----------
    path : path-like
    color_id : int
        A :class:`SerColor` value. Frames are given as ``(H, W)`` for mono and
        Bayer, ``(H, W, 3)`` RGB for both RGB and BGR (BGR files are written
        with the channels reversed).
    little_endian : bool
        Byte order of 16-bit samples.
    pixel_depth : int, optional
        1..16; defaults to 8 for uint8 and 16 for uint16 frames.
    flag_convention : {"convention", "spec"}
        How to write the LittleEndian flag (see the module notes).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        color_id: int,
        little_endian: bool = True,
        pixel_depth: int | None = None,
        flag_convention: Literal["convention", "spec"] = "convention",
        observer: str = "",
        instrument: str = "",
        telescope: str = "",
        date_time: datetime | None = None,
        date_time_utc: datetime | None = None,
    ) -> None:
        if color_id not in _SUPPORTED_IDS:
            raise ValueError(f"unsupported SER colour ID {color_id}")
        if pixel_depth is not None and not 1 <= pixel_depth <= 16:
            raise ValueError(f"pixel depth must be 1..16, got {pixel_depth}")
        if flag_convention not in ("convention", "spec"):
            raise ValueError(
                f"flag_convention must be 'convention' or 'spec', got {flag_convention!r}"
            )
        self.path = Path(path)
        self.color_id = color_id
        self.little_endian = little_endian
        self.pixel_depth = pixel_depth
        self._flag = int(little_endian) if flag_convention == "spec" else int(not little_endian)
        self._texts = (observer, instrument, telescope)
        self._dates = (date_time, date_time_utc)
        self._fh = self.path.open("wb")
        self._shape: tuple[int, ...] | None = None
        self._count = 0
        self._stamps: list[int | None] = []

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:  # leave what was written, as a crashed capture program would
            self._fh.close()

    @property
    def frame_count(self) -> int:
        return self._count

    def _header_bytes(self, count: int) -> bytes:
        assert self._shape is not None and self.pixel_depth is not None
        h, w = self._shape[:2]
        enc = [t.encode("latin-1", "replace")[:40] for t in self._texts]
        dt, dt_utc = self._dates
        return _HEADER.pack(
            SER_MAGIC, 0, self.color_id, self._flag, w, h, self.pixel_depth, count,
            *enc,
            datetime_to_ticks(dt) if dt else 0,
            datetime_to_ticks(dt_utc) if dt_utc else 0,
        )  # fmt: skip

    def write_frame(self, frame: np.ndarray, timestamp: datetime | int | None = None) -> None:
        """Append one frame (and remember its UTC time stamp or .NET ticks for the trailer)."""
        frame = np.asarray(frame)
        if self.pixel_depth is None:
            if frame.dtype not in (np.uint8, np.uint16):
                raise ValueError(f"SER frames must be uint8 or uint16, got {frame.dtype}")
            self.pixel_depth = 8 if frame.dtype == np.uint8 else 16
        frame = _check_frame(frame, self.color_id, self.pixel_depth)
        if self._shape is None:
            self._shape = frame.shape
            if frame.shape[0] <= 0 or frame.shape[1] <= 0:
                raise ValueError(f"empty frame {frame.shape}")
            self._fh.write(self._header_bytes(0))
        elif frame.shape != self._shape:
            raise ValueError(f"frame {self._count} has shape {frame.shape}, expected {self._shape}")
        if self.color_id == SerColor.BGR:
            frame = frame[:, :, ::-1]
        if frame.dtype == np.uint16:
            frame = frame.astype("<u2" if self.little_endian else ">u2")
        self._fh.write(np.ascontiguousarray(frame).tobytes())
        self._fh.flush()
        if isinstance(timestamp, datetime):
            if timestamp.tzinfo is None:
                timestamp = timestamp.replace(tzinfo=timezone.utc)
            timestamp = datetime_to_ticks(timestamp)
        self._stamps.append(timestamp)
        self._count += 1

    def close(self, *, write_trailer: bool = True, frame_count: int | None = None) -> None:
        """Write the trailer (if all frames have time stamps) and the final FrameCount.

        ``frame_count`` overrides the count written (tests use it to mimic a
        writer that leaves 0 or a stale value).
        """
        if self._fh.closed:
            return
        try:
            if self._shape is None:
                raise ValueError("cannot finish a SER file without frames")
            stamps = self._stamps
            if write_trailer and stamps and all(s is not None for s in stamps):
                self._fh.write(np.asarray(stamps, dtype="<i8").tobytes())
            self._fh.seek(_FRAME_COUNT_OFFSET)
            count = self._count if frame_count is None else frame_count
            self._fh.write(struct.pack("<i", count))
        finally:
            self._fh.close()


def write_ser(
    path: str | os.PathLike[str],
    frames: Iterable[np.ndarray],
    *,
    color_id: int,
    little_endian: bool = True,
    pixel_depth: int | None = None,
    timestamps: Iterable[datetime | int] | None = None,
    flag_convention: Literal["convention", "spec"] = "convention",
    frame_count: int | None = None,
    **header: str | datetime | None,
) -> Path:
    """Write ``frames`` to a SER file (header, frames, optional trailer).

    ``timestamps`` are UTC datetimes (naive ones are taken as UTC) or .NET
    ticks, one per frame; ``header`` takes ``observer``, ``instrument``,
    ``telescope``, ``date_time`` and ``date_time_utc``. See :class:`SerWriter`
    for the other parameters. Returns the path.
    """
    stamps = None if timestamps is None else list(timestamps)
    with SerWriter(
        path,
        color_id=color_id,
        little_endian=little_endian,
        pixel_depth=pixel_depth,
        flag_convention=flag_convention,
        **header,  # type: ignore[arg-type]
    ) as writer:
        for i, frame in enumerate(frames):
            if stamps is not None and i >= len(stamps):
                raise ValueError(f"only {len(stamps)} time stamps for more frames")
            writer.write_frame(frame, None if stamps is None else stamps[i])
        if stamps is not None and len(stamps) != writer.frame_count:
            raise ValueError(f"{len(stamps)} time stamps for {writer.frame_count} frames")
        writer.close(frame_count=frame_count)
    return Path(path)
