"""The audit log's disk budget: free space on its file system against a reserve and an alarm level.

``free >= alarm``: fine. ``reserve <= free < alarm``: the alarm (logged, recorded, a gauge) while the log
takes records as usual. ``free < reserve``: low — the server takes no new calls, so what is left is kept
for the records of calls in flight, refusal records and the stop record. Leaving a level needs a margin
above its threshold (:func:`margin`), so a disk hovering at the line does not flap health.
"""

from __future__ import annotations

import enum
import errno
import os
from pathlib import Path

#: Errors that mean "no space" (the log suspends and recovers) rather than "broken" (the log fails for good).
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


class Level(enum.IntEnum):
    OK = 0
    ALARM = 1
    LOW = 2


def free_bytes(directory: Path) -> int:
    """Bytes an unprivileged writer may still use on ``directory``'s file system."""
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


def margin(threshold: int) -> int:
    """How far above ``threshold`` free space must rise to leave the level below it."""
    return max(threshold // 10, 64 * 1024) if threshold else 0


def level_for(free: int, previous: Level, *, reserve: int, alarm: int) -> Level:
    """The level for ``free`` bytes, given the ``previous`` one (leaving a level needs :func:`margin`)."""
    if free < reserve or (previous is Level.LOW and free < reserve + margin(reserve)):
        return Level.LOW
    if free < alarm or (previous >= Level.ALARM and free < alarm + margin(alarm)):
        return Level.ALARM
    return Level.OK


def is_no_space(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in NO_SPACE_ERRNOS
