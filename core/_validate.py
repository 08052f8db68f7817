"""Argument validation shared by the core modules (private)."""

from __future__ import annotations

import math

__all__ = ["check_real"]


def check_real(
    name: str,
    value: object,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
) -> float:
    """Return ``value`` as a finite float within the bounds or raise ValueError."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a real number; got {value!r}")
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a real number; got {value!r}") from err
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite; got {value!r}")
    if low is not None and (number < low or (low_open and number == low)):
        bound = f"> {low}" if low_open else f">= {low}"
        raise ValueError(f"{name} must be {bound}; got {value!r}")
    if high is not None and number > high:
        raise ValueError(f"{name} must be <= {high}; got {value!r}")
    return number
