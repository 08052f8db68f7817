"""Frame normalisation: integer camera data to float32 working data.

Working data is float32 in units of the camera's white level (0 = black,
1 = white), shaped ``(H, W)`` for mono or ``(H, W, 3)`` for colour in RGB
order. The white level is remembered so outputs can be scaled back.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from luckystack.core.errors import FrameError

__all__ = ["Frame", "normalise_frame", "luminance", "to_uint16", "LUMA_WEIGHTS_RGB"]

#: Rec. 709 luma weights for RGB data.
LUMA_WEIGHTS_RGB = (0.2126, 0.7152, 0.0722)


@dataclass(frozen=True, slots=True)
class Frame:
    """A normalised frame.

    Attributes
    ----------
    data : (H, W) or (H, W, 3) float32 ndarray
        Intensities in units of ``white_level`` (nominally within [0, 1]).
    white_level : int
        The integer value that maps to 1.0 (255 for 8-bit, 65535 for 16-bit).
    """

    data: np.ndarray
    white_level: int

    @property
    def is_colour(self) -> bool:
        return self.data.ndim == 3

    @property
    def shape_hw(self) -> tuple[int, int]:
        return self.data.shape[0], self.data.shape[1]


def normalise_frame(image: np.ndarray, *, white_level: int | None = None) -> Frame:
    """Convert a decoded frame to float32 working data.

    Parameters
    ----------
    image : (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) ndarray
        uint8, uint16 or floating-point data. Colour data must be in RGB(A)
        order; the alpha channel is dropped.
    white_level : int, optional
        Value that maps to 1.0. Defaults to the dtype's maximum (255, 65535);
        floating-point input is taken as already normalised (1.0).

    Returns
    -------
    Frame

    Raises
    ------
    FrameError
        For an empty array, an unsupported shape or dtype, or non-finite values.

    Examples
    --------
    >>> f = normalise_frame(np.full((4, 4), 255, np.uint8))
    >>> float(f.data.max()), f.white_level
    (1.0, 255)
    """
    image = np.asarray(image)
    if image.size == 0:
        raise FrameError(f"frame is empty (shape {image.shape})")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 3 and image.shape[2] == 4:
        image = image[:, :, :3]
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise FrameError(
            f"expected a mono (H, W) or colour (H, W, 3|4) frame, got shape {image.shape}"
        )
    if min(image.shape[:2]) < 8:
        raise FrameError(f"frame too small: {image.shape[1]}x{image.shape[0]} px")
    if image.dtype == np.uint8:
        level = 255 if white_level is None else white_level
    elif image.dtype == np.uint16:
        level = 65535 if white_level is None else white_level
    elif np.issubdtype(image.dtype, np.floating):
        level = 1 if white_level is None else white_level
        if not np.isfinite(image).all():
            raise FrameError("frame contains NaN or infinite values")
    else:
        raise FrameError(
            f"unsupported pixel type {image.dtype}; expected uint8, uint16 or float"
        )
    if level <= 0:
        raise FrameError(f"white level must be positive, got {level}")
    data = image.astype(np.float32)
    data *= np.float32(1.0 / level)
    return Frame(data=data, white_level=int(level))


def luminance(data: np.ndarray) -> np.ndarray:
    """Return the (H, W) float32 luminance of mono or RGB working data.

    Mono data is returned as is (no copy); RGB is weighted with Rec. 709.
    """
    if data.ndim == 2:
        return data.astype(np.float32, copy=False)
    r, g, b = LUMA_WEIGHTS_RGB
    return (r * data[..., 0] + g * data[..., 1] + b * data[..., 2]).astype(
        np.float32, copy=False
    )


def to_uint16(data: np.ndarray) -> np.ndarray:
    """Scale working data (1.0 = white) to uint16, clipping to [0, 65535]."""
    out = np.clip(data, 0.0, 1.0) * 65535.0 + 0.5
    return out.astype(np.uint16)
