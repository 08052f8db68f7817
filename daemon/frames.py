"""Reading single-frame files into arrays (PNG, TIFF, JPEG, BMP 8/16-bit; FITS).

Frames are decoded from bytes read in one go, so a file replaced while we
read it is either the old or the new one, never a mix. Before anything is
decoded:

* the path must be a regular file (a directory, FIFO or device named like a
  frame is refused: a FIFO would block the reader, ``/dev/zero`` would never
  end), opened without blocking;
* at most ``max_bytes`` are read (a file growing without end cannot exhaust
  memory);
* the content must be a PNG, TIFF, JPEG or BMP by its signature, whatever the
  suffix says (OpenCV decodes by content: a WebP or PXM named ``.png`` would
  otherwise reach a decoder without a header check);
* the width and height declared in the header (PNG ``IHDR``, TIFF first IFD,
  JPEG ``SOF``, BMP info header) must be within ``max_pixels``, so a
  "decompression bomb" (a tiny file whose header claims a gigantic image) is
  refused without allocating it; a JPEG must end with its end-of-image marker
  (OpenCV 4 decodes a truncated JPEG into a grey-filled image).

As a second line of defence, ``OPENCV_IO_MAX_IMAGE_PIXELS`` defaults to
:data:`MAX_PIXELS` (OpenCV reads it once, when ``cv2`` is first imported; the
command line sets it before any import, a user's setting wins).

FITS files go through :func:`luckystack.daemon.fits.read_fits` (white level,
Bayer pattern, ``DATE-OBS``). SER videos hold many frames: see
:mod:`luckystack.daemon.sources`.
"""

from __future__ import annotations

import errno
import os
import stat as stat_mod
import struct
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

#: Largest frame accepted (width × height); 100 MP is far beyond any planetary camera.
MAX_PIXELS = 100_000_000
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(MAX_PIXELS))

import cv2  # noqa: E402  (after the environment default above)
import numpy as np  # noqa: E402

from luckystack.core.errors import FrameError  # noqa: E402

__all__ = [
    "FrameFile", "read_frame", "MAX_PIXELS", "MAX_FILE_BYTES", "READABLE_SUFFIXES",
    "RASTER_SUFFIXES", "FITS_SUFFIXES", "is_transient_reason", "declared_size",
]

#: Largest frame file read (bytes): an uncompressed 100 MP 16-bit RGB image, plus slack.
MAX_FILE_BYTES = MAX_PIXELS * 6 + (16 << 20)
RASTER_SUFFIXES = frozenset({".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp"})
FITS_SUFFIXES = frozenset({".fits", ".fit", ".fts"})
READABLE_SUFFIXES = RASTER_SUFFIXES | FITS_SUFFIXES

#: Rejection reasons that describe the file *now*, not the frame: a frame
#: rejected for one of them is processed again when a non-empty version of the
#: file appears (see :meth:`luckystack.daemon.session.Session.is_done`).
TRANSIENT_PREFIXES = ("empty file", "file vanished")


def is_transient_reason(reason: str) -> bool:
    return reason.startswith(TRANSIENT_PREFIXES)


@dataclass(frozen=True, slots=True)
class FrameFile:
    """A decoded frame file: ``image`` in RGB(A) or mono, and its time stamp.

    ``white_level`` is the value that means white (None: the dtype's maximum);
    ``bayer_pattern`` is the mosaic pattern the file declares (FITS
    ``BAYERPAT``), None for mono/colour data or when unknown. ``time`` is FITS
    ``DATE-OBS`` if present, else the file's mtime (UTC).
    """

    path: Path
    image: np.ndarray
    time: datetime
    white_level: int | None = None
    bayer_pattern: str | None = None


# ----------------------------------------------------------------- headers

_PNG_SIG = b"\x89PNG\r\n\x1a\n"
_TIFF_SIGS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_JPEG_SIG = b"\xff\xd8\xff"
# Start-of-frame markers (C4 = DHT, C8 = JPG reserved and CC = DAC are not frames).
_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB,
                       0xCD, 0xCE, 0xCF})


def _kind(data: bytes) -> str | None:
    if data.startswith(_PNG_SIG):
        return "PNG"
    if data[:4] in _TIFF_SIGS:
        return "TIFF"
    if data.startswith(_JPEG_SIG):
        return "JPEG"
    if data[:2] == b"BM":
        return "BMP"
    return None


def _png_size(data: bytes) -> tuple[int, int]:
    if len(data) < 24 or data[12:16] != b"IHDR":
        raise FrameError("corrupt PNG: missing IHDR header")
    return struct.unpack(">II", data[16:24])


def _tiff_size(data: bytes) -> tuple[int, int]:
    """Width and height from the first IFD of a classic or Big TIFF."""
    bo = "<" if data[:2] == b"II" else ">"
    big = data[2:4] in (b"+\x00", b"\x00+")
    try:
        if big:
            (offset,) = struct.unpack_from(bo + "Q", data, 8)
            (count,) = struct.unpack_from(bo + "Q", data, offset)
            entry, first, value_at = 20, offset + 8, 12
        else:
            (offset,) = struct.unpack_from(bo + "I", data, 4)
            (count,) = struct.unpack_from(bo + "H", data, offset)
            entry, first, value_at = 12, offset + 2, 8
    except struct.error:
        raise FrameError(
            "corrupt or truncated TIFF: image directory beyond the end of the file"
        ) from None
    size: dict[int, int] = {}
    formats = {3: "H", 4: "I", 16: "Q", 8: "h", 9: "i"}
    for i in range(min(count, 4096)):
        at = first + i * entry
        try:
            tag, typ = struct.unpack_from(bo + "HH", data, at)
            if tag in (256, 257) and typ in formats:
                (size[tag],) = struct.unpack_from(bo + formats[typ], data, at + value_at)
        except struct.error:
            raise FrameError("corrupt or truncated TIFF: image directory cut short") from None
        if len(size) == 2:
            break
    if len(size) != 2:
        raise FrameError("corrupt TIFF: no image width and height in its first directory")
    return abs(size[256]), abs(size[257])


def _jpeg_size(data: bytes) -> tuple[int, int]:
    """Width and height from the SOF segment; checks the end-of-image marker."""
    pos, n = 2, len(data)
    size = None
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            raise FrameError("corrupt JPEG: bad segment marker")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length field
            pos += 2
            continue
        (length,) = struct.unpack_from(">H", data, pos + 2)
        if marker in _JPEG_SOF:
            if pos + 9 > n:
                break
            h, w = struct.unpack_from(">HH", data, pos + 5)
            size = (w, h)
        if marker == 0xDA:  # start of scan: entropy-coded data follows
            if size is None:
                raise FrameError("corrupt JPEG: scan before the frame header")
            # Inside entropy-coded data 0xFF is always stuffed (FF 00) or a
            # restart marker, so FF D9 after the first scan is the real end.
            if data.find(b"\xff\xd9", pos + 2 + length) < 0:
                raise FrameError("truncated JPEG: no end-of-image marker")
            return size
        pos += 2 + length
    raise FrameError("corrupt or truncated JPEG: no image data")


def _bmp_size(data: bytes) -> tuple[int, int]:
    if len(data) < 26:
        raise FrameError("corrupt BMP: header cut short")
    (header_size,) = struct.unpack_from("<I", data, 14)
    if header_size == 12:  # OS/2 BITMAPCOREHEADER: 16-bit sizes
        return struct.unpack_from("<HH", data, 18)
    w, h = struct.unpack_from("<ii", data, 18)
    return abs(w), abs(h)


_SIZE = {"PNG": _png_size, "TIFF": _tiff_size, "JPEG": _jpeg_size, "BMP": _bmp_size}


def declared_size(data: bytes) -> tuple[str, tuple[int, int]]:
    """The format and ``(width, height)`` a raster file's header declares.

    Raises FrameError for content that is not a PNG, TIFF, JPEG or BMP, or
    whose header is corrupt or cut short.
    """
    kind = _kind(data)
    if kind is None:
        raise FrameError("not a PNG, TIFF, JPEG or BMP image (unrecognised content)")
    return kind, _SIZE[kind](data)


# -------------------------------------------------------------------- files


def _open_regular(path: Path) -> int:
    """Open ``path`` for reading without blocking; must be a regular file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError as err:
        if os.path.islink(path):
            raise FrameError(f"broken symlink: {path.name} points to "
                             f"{os.readlink(path)}, which does not exist") from err
        raise FrameError(f"file vanished before it could be read: {path.name}") from err
    except IsADirectoryError as err:
        raise FrameError(f"not a file: {path.name} is a directory") from err
    except OSError as err:
        if err.errno == errno.ENXIO:  # a socket
            raise FrameError(f"not a regular file: {path.name}") from err
        raise FrameError(f"cannot read {path.name}: {err.strerror or err}") from err
    try:
        mode = os.fstat(fd).st_mode
    except OSError as err:
        os.close(fd)
        raise FrameError(f"cannot read {path.name}: {err.strerror or err}") from err
    if stat_mod.S_ISDIR(mode):
        os.close(fd)
        raise FrameError(f"not a file: {path.name} is a directory")
    if not stat_mod.S_ISREG(mode):
        os.close(fd)
        raise FrameError(f"not a regular file: {path.name} is a FIFO, socket or device")
    return fd


def _read_bytes(path: Path, max_bytes: int) -> tuple[bytes, os.stat_result]:
    fd = _open_regular(path)
    try:
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fh.fileno())
            if st.st_size > max_bytes:
                raise FrameError(f"refused: {path.name} is {st.st_size:,} bytes, above the "
                                 f"{max_bytes:,} byte limit")
            # What fstat saw and one byte more (a read of max_bytes + 1 would
            # allocate that much first: ~0.1 ms of the GIL per frame), then,
            # only if the file grew since, on up to the limit.
            data = fh.read(st.st_size + 1)
            if len(data) > st.st_size:
                data += fh.read(max_bytes + 1 - len(data))
    except OSError as err:
        raise FrameError(f"cannot read {path.name}: {err.strerror or err}") from err
    if len(data) > max_bytes:
        raise FrameError(f"refused: {path.name} grew beyond the {max_bytes:,} byte limit")
    return data, st


def read_frame(
    path: Path, *, max_pixels: int = MAX_PIXELS, max_bytes: int = MAX_FILE_BYTES
) -> FrameFile:
    """Read and decode one frame file.

    Raises
    ------
    FrameError
        For a missing, empty, unreadable, truncated or corrupt file, a
        directory or other non-regular file, content that is not a supported
        image, a file above ``max_bytes`` or a declared size above
        ``max_pixels``.
    """
    path = Path(path)
    if path.suffix.lower() in FITS_SUFFIXES:
        os.close(_open_regular(path))  # never hand a FIFO or directory to astropy
        return _read_fits_frame(path, max_pixels=max_pixels)
    data, st = _read_bytes(path, max_bytes)
    if not data:
        raise FrameError("empty file (0 bytes)")
    try:
        kind, (w, h) = declared_size(data)
    except FrameError as err:
        raise FrameError(f"cannot decode {path.name}: {err}") from None
    if w == 0 or h == 0:
        raise FrameError(f"cannot decode {path.name}: {kind} header declares {w}x{h} px")
    if w * h > max_pixels:
        raise FrameError(
            f"refused: {kind} header declares {w}x{h} px, above the "
            f"{max_pixels:,} px limit (decompression bomb?)"
        )
    buf = np.frombuffer(data, dtype=np.uint8)
    try:
        image = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    except cv2.error as err:
        raise FrameError(f"cannot decode {path.name}: {str(err).strip().splitlines()[-1]}") from err
    if image is None:
        raise FrameError(f"cannot decode {path.name}: corrupt or truncated {kind}")
    if image.ndim == 3 and image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA)
    when = datetime.fromtimestamp(st.st_mtime, tz=timezone.utc)
    return FrameFile(path=path, image=image, time=when)


def _read_fits_frame(path: Path, *, max_pixels: int) -> FrameFile:
    from luckystack.daemon.fits import read_fits  # imports astropy: only when needed

    fi = read_fits(path, max_pixels=max_pixels)
    when = fi.time
    if when is None:
        try:
            when = datetime.fromtimestamp(path.stat().st_mtime, tz=timezone.utc)
        except OSError:
            when = datetime.now(timezone.utc)
    return FrameFile(path=path, image=fi.image, time=when, white_level=fi.white_level,
                     bayer_pattern=fi.bayer_pattern)
