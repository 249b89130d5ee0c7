"""Progress, cancel and log callbacks as one small object the engine passes around.

Engine functions take plain callables (``progress(percent)``, ``is_canceled()``, ``log(msg)``)
so they run the same under QgsFeedback, a CLI or a test.
"""

from __future__ import annotations

from typing import Callable

from .errors import CanceledError

ProgressFn = Callable[[float], None]
CancelFn = Callable[[], bool]
LogFn = Callable[[str], None]


class Reporter:
    """Maps work onto a percent range ``[start, end]`` of the caller's progress bar."""

    def __init__(
        self,
        progress: ProgressFn | None = None,
        is_canceled: CancelFn | None = None,
        log: LogFn | None = None,
        start: float = 0.0,
        end: float = 100.0,
        warn: LogFn | None = None,
    ) -> None:
        self._progress = progress
        self._is_canceled = is_canceled
        self._log = log
        self._warn = warn
        self.start = start
        self.end = end

    def sub(self, start_fraction: float, end_fraction: float) -> Reporter:
        """A reporter for a sub-step covering ``[start_fraction, end_fraction]`` of this one."""
        span = self.end - self.start
        return Reporter(
            self._progress,
            self._is_canceled,
            self._log,
            self.start + span * start_fraction,
            self.start + span * end_fraction,
            self._warn,
        )

    def fraction(self, done: float) -> None:
        """Report ``done`` in [0, 1] of this step and raise CanceledError if asked to stop."""
        if self._progress is not None:
            done = min(max(done, 0.0), 1.0)
            self._progress(self.start + (self.end - self.start) * done)
        self.check()

    def canceled(self) -> bool:
        return bool(self._is_canceled and self._is_canceled())

    def check(self) -> None:
        if self.canceled():
            raise CanceledError()

    def info(self, message: str) -> None:
        if self._log is not None:
            self._log(message)

    def warn(self, message: str) -> None:
        if self._warn is not None:
            self._warn(message)
        else:
            self.info("Warning: " + message)


def as_reporter(
    reporter: Reporter | None = None,
    progress: ProgressFn | None = None,
    is_canceled: CancelFn | None = None,
    log: LogFn | None = None,
) -> Reporter:
    return reporter if reporter is not None else Reporter(progress, is_canceled, log)
