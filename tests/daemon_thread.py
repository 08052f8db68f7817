"""A watch Daemon on a background thread, for tests (signals stay with pytest).

Importable from the test modules because pytest's ``pythonpath`` includes
``tests/`` (pyproject.toml); not collected (no ``test_`` prefix).
"""

from __future__ import annotations

import threading

from luckystack.daemon.config import load_settings
from luckystack.daemon.service import Daemon


class DaemonThread:
    """``with DaemonThread(inp, out) as daemon:`` runs ``Daemon.run()`` until the block ends.

    Entering waits for READY; leaving requests a stop and asserts a clean exit
    (thread ended, no exception, exit code 0).
    """

    def __init__(self, inp, out, settings=None, **kw):
        kw.setdefault("idle_tick_s", 0.05)
        self.daemon = Daemon(inp, out, settings or load_settings(), **kw)
        self.code: int | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.code = self.daemon.run()
        except BaseException as err:  # noqa: BLE001 - reported by __exit__
            self.error = err

    def start(self) -> None:
        self.thread.start()
        assert self.daemon.ready.wait(30), "daemon did not become ready"

    def alive(self) -> bool:
        return self.thread.is_alive()

    def __enter__(self) -> Daemon:
        self.start()
        return self.daemon

    def __exit__(self, *exc: object) -> None:
        self.daemon.request_stop()
        self.thread.join(30)
        assert not self.thread.is_alive()
        assert self.error is None, f"the daemon raised {self.error!r}"
        assert self.code == 0
