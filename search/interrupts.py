"""One behaviour for every interruption of a run: Ctrl-C (SIGINT), ``kill`` or a scheduler's
stop (SIGTERM), and Ray's job stop (SIGTERM to the driver, which Ray's own handler turns
into ``SystemExit``).

:class:`Interruptible` makes SIGTERM raise :class:`Terminated` in the main thread (as
SIGINT raises ``KeyboardInterrupt``), so the work unwinds through its ``finally`` blocks:
the coordinator records the run as ``interrupted``, releases its lease, closes its pool,
and raises :class:`RunInterrupted`, whose one-line message names the command that
continues the run; its exit status is 128 + the signal's number, as a shell reports it.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType


class Terminated(BaseException):
    """SIGTERM arrived (raised by :class:`Interruptible`'s handler)."""


class RunInterrupted(BaseException):
    """The run stopped on a signal, its state recorded; ``str()`` is the one line to show
    and ``exit_code`` the process's exit status."""

    def __init__(self, message: str, signal_number: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signal_number


def signal_of(exc: BaseException) -> int | None:
    """The signal behind an exception that means "stop": SIGINT for ``KeyboardInterrupt``,
    SIGTERM for :class:`Terminated` and for the ``SystemExit`` Ray's driver handler raises
    on SIGTERM; None for anything else."""
    if isinstance(exc, KeyboardInterrupt):
        return signal.SIGINT
    if isinstance(exc, Terminated):
        return signal.SIGTERM
    if isinstance(exc, SystemExit) and exc.code == signal.SIGTERM:
        return signal.SIGTERM
    if isinstance(exc, RunInterrupted):
        return exc.exit_code - 128
    return None


class Interruptible:
    """While entered (in the main thread), SIGTERM raises :class:`Terminated`; the previous
    handler comes back on exit. :meth:`install` again after code that replaced the handler
    (``ray.init`` installs its own). Elsewhere than in the main thread it does nothing."""

    def __init__(self) -> None:
        self._previous: object = None
        self._active = threading.current_thread() is threading.main_thread()

    def __enter__(self) -> Interruptible:
        if self._active:
            self._previous = signal.getsignal(signal.SIGTERM)
            self.install()
        return self

    def install(self) -> None:
        if self._active:
            signal.signal(signal.SIGTERM, _raise_terminated)

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        if self._active:
            signal.signal(signal.SIGTERM, self._previous)  # type: ignore[arg-type]


def _raise_terminated(_signum: int, _frame: FrameType | None) -> None:
    raise Terminated("SIGTERM")
