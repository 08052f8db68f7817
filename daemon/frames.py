"""Reading single-frame files into arrays (PNG, TIFF, JPEG, BMP 8/16-bit; FITS).

Frames are decoded from bytes read in one go, so a file replaced while we
read it is either the old or the new one, never a mix. Image headers are
checked before decoding, so a "decompression bomb" (a tiny file whose header
claims a gigantic image) is refused without allocating it. FITS files go
through :func:`luckystack.daemon.fits.read_fits` (white level, Bayer pattern,
``DATE-OBS``). SER videos hold many frames: see :mod:`luckystack.daemon.sources`.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np

from luckystack.core.errors import FrameError

__all__ = [
    "FrameFile", "read_frame", "MAX_PIXELS", "READABLE_SUFFIXES", "RASTER_SUFFIXES",
    "FITS_SUFFIXES",
]

#: Largest frame accepted (width × height); 100 MP is far beyond any planetary camera.
MAX_PIXELS = 100_000_000
RASTER_SUFFIXES = frozenset({".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp"})
FITS_SUFFIXES = frozenset({".fits", ".fit", ".fts"})
READABLE_SUFFIXES = RASTER_SUFFIXES | FITS_SUFFIXES


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


def _png_size(head: bytes) -> tuple[int, int] | None:
    if head[:8] != b"\x89PNG\r\n\x1a\n" or len(head) < 24 or head[12:16] != b"IHDR":
        return None
    w, h = struct.unpack(">II", head[16:24])
    return w, h


def _declared_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from the header, for formats where it is cheap."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        size = _png_size(data[:24])
        if size is None:
            raise FrameError("corrupt PNG: missing IHDR header")
        return size
    if data[:2] == b"BM" and len(data) >= 26:
        w, h = struct.unpack("<ii", data[18:26])
        return abs(w), abs(h)
    return None


def read_frame(path: Path, *, max_pixels: int = MAX_PIXELS) -> FrameFile:
    """Read and decode one frame file.

    Raises
    ------
    FrameError
        For an empty, unreadable, truncated or corrupt file, an unsupported
        format, or a declared size above ``max_pixels``.
    """
    path = Path(path)
    if path.suffix.lower() in FITS_SUFFIXES:
        return _read_fits_frame(path, max_pixels=max_pixels)
    try:
        with path.open("rb") as fh:
            st = os.fstat(fh.fileno())
            data = fh.read()
    except IsADirectoryError as err:
        raise FrameError(f"not a file: {path.name} is a directory") from err
    except FileNotFoundError as err:
        raise FrameError(f"file vanished before it could be read: {path.name}") from err
    except OSError as err:
        raise FrameError(f"cannot read {path.name}: {err.strerror or err}") from err
    if not data:
        raise FrameError("empty file (0 bytes)")
    size = _declared_size(data)
    if size is not None and size[0] * size[1] > max_pixels:
        raise FrameError(
            f"refused: header declares {size[0]}x{size[1]} px, above the "
            f"{max_pixels:,} px limit (decompression bomb?)"
        )
    buf = np.frombuffer(data, dtype=np.uint8)
    try:
        image = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    except cv2.error as err:
        raise FrameError(f"cannot decode {path.name}: {err}") from err
    if image is None:
        raise FrameError(f"cannot decode {path.name}: corrupt, truncated or not an image")
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
