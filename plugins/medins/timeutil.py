"""Time as the national platform writes it: China Standard Time, in its fixed formats."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

SHANGHAI = ZoneInfo("Asia/Shanghai")


def now_cst() -> datetime:
    """Return the current time in China Standard Time."""
    return datetime.now(SHANGHAI)


def inf_time(moment: datetime | None = None) -> str:
    """Format a moment as the envelope's ``inf_time`` (``yyyy-MM-dd HH:mm:ss``)."""
    return (moment or now_cst()).strftime("%Y-%m-%d %H:%M:%S")
