"""Exceptions raised by :mod:`luckystack.core`."""

__all__ = ["LuckystackError", "FrameError", "RegistrationError"]


class LuckystackError(Exception):
    """Base class of every error luckystack raises on purpose."""


class FrameError(LuckystackError, ValueError):
    """A frame cannot be used: wrong shape or dtype, blank, no planet, clipped...

    The message says what was expected and what was found; the daemon records
    it as the frame's rejection reason and carries on.
    """


class RegistrationError(LuckystackError):
    """A frame could not be registered against the reference."""
