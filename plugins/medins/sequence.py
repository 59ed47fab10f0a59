"""Message ids (``msgid``) unique per institution across every process that sends.

A ``msgid`` is the institution code (12), the send time ``yyyyMMddHHmmss`` (14) and a 4-digit
sequence within that second: at most 9,999 messages per institution per second. The sequence has
to be shared by every process that sends for the institution, or two processes would reuse an id.
On one machine a locked file serves; across machines a Redis counter does.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Protocol

from medins.timeutil import SHANGHAI

MAX_PER_SECOND = 9999


class MsgIdSequence(Protocol):
    """Hands out the next ``msgid`` for an institution."""

    def next_msgid(self, org_code: str) -> str:
        """Return a ``msgid`` never handed out before for ``org_code``."""
        ...

    def next_msgids(self, org_code: str, count: int) -> list[str]:
        """Return ``count`` msgids never handed out before for ``org_code``, in order."""
        ...


class FileMsgIdSequence:
    """Share the per-second sequence between the processes of one machine through a locked file."""

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        self.directory = Path(directory or Path(tempfile.gettempdir()) / "medins-msgid")
        self.directory.mkdir(parents=True, exist_ok=True)

    def next_msgid(self, org_code: str) -> str:
        """Return the next ``msgid`` for ``org_code``; wait for the next second when one is used up."""
        return self.next_msgids(org_code, 1)[0]

    def next_msgids(self, org_code: str, count: int) -> list[str]:
        """Return the next ``count`` msgids for ``org_code``, taken under one lock per second used."""
        path = self.directory / f"{org_code}.seq"
        found: list[str] = []
        while len(found) < count:
            with open(path, "a+", encoding="ascii") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)
                # Read the clock under the lock, so no sender goes back to a second already left.
                stamp = datetime.now(SHANGHAI).strftime("%Y%m%d%H%M%S")
                handle.seek(0)
                last_stamp, _, last_seq = handle.read().partition(" ")
                if last_stamp > stamp:  # the clock stepped back: keep counting in the later second
                    stamp = last_stamp
                first = int(last_seq) + 1 if last_stamp == stamp and last_seq.strip().isdigit() else 1
                last = min(MAX_PER_SECOND, first + count - len(found) - 1)
                if first <= last:
                    handle.seek(0)
                    handle.truncate()
                    handle.write(f"{stamp} {last}")
                    handle.flush()
                    found += [f"{org_code}{stamp}{seq:04d}" for seq in range(first, last + 1)]
                    continue
            time.sleep(0.05)
        return found
