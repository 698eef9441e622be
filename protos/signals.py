"""Stop a long-running command on SIGTERM or SIGINT (Ctrl-C): one helper for every server.

    with StopOnSignal() as stop:      # handlers installed here (main thread only)
        running = serve(...)          # a signal during start-up is not lost
        print("listening on ...", flush=True)
        stop.wait()                   # until SIGTERM/SIGINT, or stop.set() from anywhere
        running.stop()                # a second signal while cleaning up is ignored
    # the previous handlers are back

Polling while waiting (e.g. for a dead child): ``while not stop.wait(0.5): ...``.
``stop.signum`` says which signal ended the wait (None: ``set()`` was called).

The handler takes no lock: it writes one byte to a pipe that ``wait`` polls. (A handler
that calls ``threading.Event.set()`` can deadlock: Python runs it in the main thread, which may
hold that event's lock inside ``Event.wait()`` at that moment.)
"""

from __future__ import annotations

import contextlib
import math
import os
import select
import signal
from collections.abc import Iterable
from types import FrameType, TracebackType
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopOnSignal:
    """A flag set by any of ``signals`` while the ``with`` block runs (or by ``set()``); the
    handlers in place before the block are restored when it ends."""

    def __init__(self, signals: Iterable[signal.Signals] = STOP_SIGNALS) -> None:
        self.signals = tuple(signals)
        self.signum: int | None = None
        self._flag = False
        self._read, self._write = os.pipe()
        os.set_blocking(self._write, False)
        self._previous: dict[signal.Signals, Any] = {}

    def __enter__(self) -> StopOnSignal:
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        while self._previous:
            sig, handler = self._previous.popitem()
            signal.signal(sig, handler)

    def __del__(self) -> None:
        for name in ("_read", "_write"):
            with contextlib.suppress(OSError, AttributeError):
                os.close(getattr(self, name))

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if not self._flag:
            self.signum = signum
        self.set()

    def set(self) -> None:
        """Stop without a signal (e.g. a start-up step failed); safe from any thread."""
        self._flag = True
        with contextlib.suppress(BlockingIOError):  # the pipe is full: already readable
            os.write(self._write, b"x")

    def is_set(self) -> bool:
        """Whether a signal came or ``set()`` was called."""
        return self._flag

    def wait(self, timeout: float | None = None) -> bool:
        """Block until a signal or ``set()`` (True) or ``timeout`` seconds pass (False)."""
        if self._flag:
            return True
        poll = select.poll()  # not select(): no limit on the descriptor's number
        poll.register(self._read, select.POLLIN)
        ready = poll.poll(None if timeout is None else max(0, math.ceil(timeout * 1000)))
        return bool(ready) or self._flag
