"""Progress reporting for library code, which never prints: the CLI supplies a renderer."""

from __future__ import annotations

from types import TracebackType
from typing import Protocol


class ProgressTask(Protocol):
    """One unit of work with a known total, advanced as parts of it finish."""

    def advance(self, amount: int = 1) -> None: ...

    def __enter__(self) -> ProgressTask: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None: ...


class Progress(Protocol):
    """Creates tasks; `robust.cli` renders them as rich progress bars."""

    def task(self, description: str, total: int) -> ProgressTask: ...


class _NullTask:
    def advance(self, amount: int = 1) -> None:
        return None

    def __enter__(self) -> _NullTask:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None


class NullProgress:
    """The default when nobody is watching: every report is dropped."""

    def task(self, description: str, total: int) -> ProgressTask:
        return _NullTask()


def ensure_progress(progress: Progress | None) -> Progress:
    """The given progress, or a silent one."""
    return NullProgress() if progress is None else progress
