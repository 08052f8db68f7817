"""Reading FITS frames with astropy.io.fits.

:func:`read_fits` returns the image in luckystack's conventions: row 0 is the
top of the image, colour is ``(H, W, 3)`` RGB, sensor values are not
rescaled, and the white level says which value is white.

Row order
    The FITS standard *recommends* storing the bottom row first (ds9, fv and
    Siril display row 0 at the bottom), but capture programs write rows in
    sensor read-out order, top row first, and the ``ROWORDER`` keyword
    (``TOP-DOWN`` / ``BOTTOM-UP``, introduced by Siril and CCDCiel and written
    by SharpCap, N.I.N.A., INDI, KStars, MaxIm DL, PixInsight...) says which.
    luckystack reads capture frames, so: ``ROWORDER = 'BOTTOM-UP'`` is
    flipped vertically; ``TOP-DOWN`` or no ``ROWORDER`` is returned as stored
    (first stored row on top). That matches SER, whose first row is the top
    row, so a capture saved as SER or as FITS comes out the same way up.
    ``row_order=`` overrides it.

Bayer pattern
    ``BAYERPAT`` (or ``BAYER``, ``COLORTYP``) describes the mosaic from the
    first *stored* pixel, shifted by ``XBAYROFF``/``YBAYROFF`` if present (as
    Siril reads it). When the image is flipped, the returned pattern is
    adjusted to match (``RGGB`` becomes ``GBRG`` for an even height).

White level
    ``uint8`` 255, ``uint16`` (BITPIX 16 with BZERO 32768) 65535, ``int16``
    32767 (``int8``, BITPIX 8 with BZERO -128, 127). Other integers (int32, uint32, int64) holding values up to 65535
    are returned as ``uint16`` with white level 65535; larger ones as
    ``float32`` with the type's maximum as white. Integer data below zero is
    clipped to 0. Floating-point data is returned as ``float32``: white is 1
    if its maximum is at most 1 (normalised data, Siril's 32-bit), else
    65535 if the maximum is at most 65535 (ADU), else the ceiling of the
    maximum. NaN (blank) pixels are kept; :func:`luckystack.core.frame.normalise_frame`
    rejects them.

Time
    ``DATE-OBS`` (start of exposure, UTC by the FITS standard), combined with
    ``TIME-OBS``/``UT`` when ``DATE-OBS`` holds only a date; ``None`` if
    absent or unreadable.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np

from luckystack.core.bayer import BAYER_PATTERNS, pattern_at
from luckystack.core.errors import FrameError
from luckystack.daemon.frames import MAX_PIXELS

__all__ = ["FitsImage", "read_fits", "FITS_SUFFIXES"]

FITS_SUFFIXES = frozenset({".fits", ".fit", ".fts"})

RowOrder = Literal["auto", "top-down", "bottom-up"]
_NOT_BAYER = frozenset({"", "NONE", "MONO", "MONOCHROME", "RGB", "F", "FALSE", "N", "NO"})


class FitsImage(NamedTuple):
    """A decoded FITS frame; unpacks as ``image, white_level, bayer_pattern, time``."""

    image: np.ndarray
    white_level: int
    bayer_pattern: str | None
    time: datetime | None


def _find_image_hdu(hdus):
    for hdu in hdus:
        if getattr(hdu, "is_image", False) and hdu.header.get("NAXIS", 0) > 0:
            return hdu
    return None


def _declared_shape(header) -> tuple[int, ...]:
    naxis = int(header.get("NAXIS", 0))
    return tuple(int(header.get(f"NAXIS{i}", 0)) for i in range(1, naxis + 1))


def _to_hwc(data: np.ndarray) -> np.ndarray:
    """Squeeze length-1 axes and bring a 3-plane cube to (H, W, 3)."""
    shape = tuple(s for s in data.shape if s != 1)
    if len(shape) < 2:  # keep at least two axes (e.g. a 1 x W image)
        shape = data.shape[-2:]
    data = data.reshape(shape)
    if data.ndim == 2:
        return data
    if data.ndim == 3 and data.shape[0] == 3:  # FITS cube: NAXIS3 = 3 planes R, G, B
        return np.moveaxis(data, 0, -1)
    if data.ndim == 3 and data.shape[2] == 3:  # interleaved (NAXIS1 = 3), rare
        return data
    raise FrameError(
        f"expected a 2-D image or a 3-plane RGB cube, got FITS data of shape {data.shape} "
        "(numpy order: planes, rows, columns)"
    )


def _convert(data: np.ndarray) -> tuple[np.ndarray, int]:
    """Apply the white level rules of the module notes."""
    kind = data.dtype.kind
    if data.dtype == np.uint8:
        return data, 255
    if data.dtype == np.uint16:
        return data, 65535
    if kind in "iu":
        clipped = np.clip(data, 0, None) if kind == "i" else data
        top = int(clipped.max(initial=0))
        if data.dtype == np.int16:
            return clipped.astype(np.uint16), 32767
        if data.dtype == np.int8:
            return clipped.astype(np.uint8), 127
        if top <= 65535:
            return clipped.astype(np.uint16), 65535
        return clipped.astype(np.float32), int(np.iinfo(data.dtype).max)
    if kind == "f":
        out = data.astype(np.float32)
        finite = out[np.isfinite(out)]
        peak = float(finite.max()) if finite.size else 0.0
        if peak <= 1.0:
            return out, 1
        if peak <= 65535.0:
            return out, 65535
        return out, math.ceil(peak)
    raise FrameError(f"unsupported FITS pixel type {data.dtype}")


def _bayer_from_header(header) -> str | None:
    for key in ("BAYERPAT", "BAYER", "COLORTYP"):
        value = header.get(key)
        if value is None or isinstance(value, bool):
            continue
        text = str(value).strip().upper()
        if text in _NOT_BAYER:
            return None
        if text not in BAYER_PATTERNS:
            raise FrameError(
                f"unsupported Bayer pattern {key} = {value!r}: expected one of "
                f"{', '.join(BAYER_PATTERNS)}"
            )
        x_off = header.get("XBAYROFF", 0)
        y_off = header.get("YBAYROFF", 0)
        try:
            return pattern_at(text, int(y_off), int(x_off))
        except (TypeError, ValueError) as err:
            raise FrameError(
                f"bad Bayer offsets XBAYROFF = {x_off!r}, YBAYROFF = {y_off!r}"
            ) from err
    return None


def _parse_time(header) -> datetime | None:
    value = header.get("DATE-OBS")
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    if "T" not in text:
        clock = header.get("TIME-OBS") or header.get("UT")
        if isinstance(clock, str) and clock.strip():
            text = f"{text}T{clock.strip()}"
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    if when.tzinfo is None:
        return when.replace(tzinfo=timezone.utc)
    return when.astimezone(timezone.utc)


def read_fits(
    path: str | os.PathLike[str],
    *,
    row_order: RowOrder = "auto",
    max_pixels: int = MAX_PIXELS,
) -> FitsImage:
    """Read the first image HDU of a FITS file.

    Parameters
    ----------
    path : path-like
    row_order : {"auto", "top-down", "bottom-up"}
        How the file stores its rows; ``"auto"`` reads ``ROWORDER`` and
        assumes top-down without it. Bottom-up images are flipped.
    max_pixels : int
        Refuse larger images before decoding them.

    Returns
    -------
    FitsImage
        ``image`` is ``(H, W)`` or ``(H, W, 3)`` RGB, uint8/uint16/float32;
        ``bayer_pattern`` is for the returned (possibly flipped) 2-D image.

    Raises
    ------
    FrameError
        For a missing, empty, corrupt or truncated file, no image data, an
        unsupported shape or Bayer pattern, or an image above ``max_pixels``.
    """
    from astropy.io import fits  # heavy import; only when FITS is used

    if row_order not in ("auto", "top-down", "bottom-up"):
        raise ValueError(f"row_order must be 'auto', 'top-down' or 'bottom-up', got {row_order!r}")
    path = Path(path)
    try:
        data = path.read_bytes()
    except IsADirectoryError as err:
        raise FrameError(f"not a file: {path.name} is a directory") from err
    except FileNotFoundError as err:
        raise FrameError(f"file vanished before it could be read: {path.name}") from err
    except OSError as err:
        raise FrameError(f"cannot read {path.name}: {err.strerror or err}") from err
    if not data:
        raise FrameError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # astropy's header-fixing chatter
            with fits.open(io.BytesIO(data), memmap=False, lazy_load_hdus=False) as hdus:
                hdu = _find_image_hdu(hdus)
                if hdu is None:
                    raise FrameError(f"{path.name}: FITS file has no image data")
                header = hdu.header
                shape = _declared_shape(header)
                pixels = math.prod(shape[:2]) if shape else 0
                if pixels > max_pixels:
                    raise FrameError(
                        f"refused: FITS header declares {'x'.join(map(str, shape))} px, "
                        f"above the {max_pixels:,} px limit"
                    )
                if not isinstance(hdu, fits.CompImageHDU):
                    info = hdu.fileinfo()
                    need = abs(int(header["BITPIX"])) // 8 * math.prod(shape)
                    if info is not None and info["datLoc"] + need > len(data):
                        raise FrameError(
                            f"truncated FITS: {path.name} needs {info['datLoc'] + need} bytes "
                            f"for its {'x'.join(map(str, shape))} data, file has {len(data)}"
                        )
                raw = np.asarray(hdu.data)
    except FrameError:
        raise
    except (OSError, ValueError, TypeError, KeyError, IndexError) as err:
        raise FrameError(f"corrupt or unreadable FITS {path.name}: {err}") from err
    if raw.dtype.byteorder not in ("=", "|"):  # FITS is big-endian on disk
        raw = raw.astype(raw.dtype.newbyteorder("="))
    image, white = _convert(_to_hwc(raw))
    pattern = _bayer_from_header(header) if image.ndim == 2 else None
    stored = str(header.get("ROWORDER", "")).strip().upper()
    bottom_up = row_order == "bottom-up" or (row_order == "auto" and stored == "BOTTOM-UP")
    if bottom_up:
        image = image[::-1]
        if pattern is not None:
            pattern = pattern_at(pattern, image.shape[0] - 1, 0)
    image = np.ascontiguousarray(image)
    return FitsImage(
        image=image, white_level=white, bayer_pattern=pattern, time=_parse_time(header)
    )
