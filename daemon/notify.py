"""Tell systemd what the daemon is doing, with the ``sd_notify`` protocol.

Stdlib only, modelled on nobodd's ``systemd.py``. The protocol is one
datagram of newline-separated ``KEY=value`` lines sent to the ``AF_UNIX``
socket named by ``$NOTIFY_SOCKET``; see sd_notify(3).

Create one :class:`SystemdNotifier` in ``main`` and pass it around: the
constructor *pops* ``NOTIFY_SOCKET`` from the environment so that child
processes do not inherit it, so a second notifier built from the environment
finds nothing. Without systemd (no ``NOTIFY_SOCKET``) every method is a
silent no-op, and no method ever raises because the socket went away.
"""

from __future__ import annotations

import os
import socket
import time

__all__ = ["SystemdNotifier"]


class SystemdNotifier:
    """Send state changes and watchdog pings to the service manager.

    Parameters
    ----------
    address : str, optional
        The notification socket: an absolute path, or ``@name`` for the Linux
        abstract namespace. If omitted, ``NOTIFY_SOCKET`` is popped from
        :data:`os.environ` (and so removed from it).

    Notes
    -----
    A fresh ``SOCK_DGRAM | SOCK_CLOEXEC`` socket is used for each message, as
    libsystemd does, so there is nothing to close and nothing leaks into
    children.
    """

    __slots__ = ("_address",)

    def __init__(self, address: str | None = None) -> None:
        if address is None:
            address = os.environ.pop("NOTIFY_SOCKET", None)
        if address and address.startswith("@"):
            address = "\0" + address[1:]
        self._address: str | None = address or None

    def __repr__(self) -> str:
        shown = None if self._address is None else self._address.replace("\0", "@", 1)
        return f"{type(self).__name__}(address={shown!r})"

    @property
    def enabled(self) -> bool:
        """True when there is a notification socket to talk to."""
        return self._address is not None

    def notify(self, state: str | None = None, /, **fields: object) -> bool:
        """Send a raw state string and/or ``KEY=value`` fields in one datagram.

        ``notify("READY=1")``, ``notify(ready=1, status="idle")`` and
        ``notify("READY=1", STATUS="idle")`` all work; field names are
        upper-cased. Returns True if the datagram was sent, False if systemd
        is absent or the send failed (the error is swallowed).

        Raises
        ------
        ValueError
            If a field value contains a newline, which would inject fields.
        """
        lines = [state] if state else []
        for key, value in fields.items():
            text = str(value)
            if "\n" in text:
                raise ValueError(
                    f"sd_notify field {key.upper()} must not contain a newline, got {text!r}"
                )
            lines.append(f"{key.upper()}={text}")
        if self._address is None or not lines:
            return False
        data = "\n".join(lines).encode("utf-8")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(data, self._address)
        except OSError:
            # Socket gone, refused, or the message was too big: the daemon
            # must keep running whatever happened to the service manager.
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """Send ``READY=1`` (and optionally a ``STATUS=`` line)."""
        if status is None:
            return self.notify("READY=1")
        return self.notify("READY=1", STATUS=_one_line(status))

    def status(self, text: str) -> bool:
        """Send ``STATUS=<text>``; newlines in *text* become spaces."""
        return self.notify(STATUS=_one_line(text))

    def stopping(self) -> bool:
        """Send ``STOPPING=1``: shutdown has begun."""
        return self.notify("STOPPING=1")

    def reloading(self) -> bool:
        """Send ``RELOADING=1`` with the ``MONOTONIC_USEC=`` stamp.

        ``Type=notify-reload`` requires the timestamp (CLOCK_MONOTONIC in
        microseconds). Send :meth:`ready` again when the reload is done.
        """
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", MONOTONIC_USEC=usec)

    def watchdog_ping(self) -> bool:
        """Send ``WATCHDOG=1``, resetting the ``WatchdogSec=`` timer."""
        return self.notify("WATCHDOG=1")

    def watchdog_period(self) -> float | None:
        """Return the watchdog timeout in seconds, or None if it is not armed.

        Reads ``WATCHDOG_USEC``; the value only applies to this process if
        ``WATCHDOG_PID`` is absent or equals :func:`os.getpid`. Returns None
        without a notification socket or when the variables are malformed.
        Ping at least twice per period.
        """
        if self._address is None:
            return None
        try:
            usec = int(os.environ["WATCHDOG_USEC"])
        except (KeyError, ValueError):
            return None
        pid = os.environ.get("WATCHDOG_PID")
        if pid is not None:
            try:
                if int(pid) != os.getpid():
                    return None
            except ValueError:
                return None
        if usec <= 0:
            return None
        return usec / 1_000_000


def _one_line(text: str) -> str:
    return " ".join(str(text).splitlines())
