"""Fault injection: latency, dropped connections, 5xx, lost replies, refusals, rate limits, hangs.

Each message draws its faults from one seeded :class:`random.Random`, so a run with a given seed
and a given order of messages meets the same faults again.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, fields
from typing import Any

PROBABILITIES = ("error_5xx", "drop", "lost_reply", "business_error", "hang")
ERROR_STATUSES = (500, 502, 503)


@dataclass
class FaultSettings:
    """The fault settings of the gateway protocol; shares are between 0 and 1 (True means 1)."""

    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    error_5xx: float = 0.0
    drop: float = 0.0
    lost_reply: float = 0.0
    business_error: float = 0.0
    rate_limit: int = 0
    hang: float = 0.0
    seed: int | None = 0


@dataclass(frozen=True)
class FaultPlan:
    """The faults drawn for one message."""

    hang: bool
    drop: bool
    error_status: int | None
    business_error: bool
    lost_reply: bool
    delay_seconds: float


class FaultInjector:
    """Hold the fault settings, draw each message's faults and keep the per-institution rate limit."""

    def __init__(self, **settings: Any) -> None:
        self._lock = threading.Lock()
        self.settings = FaultSettings()
        self._rng = random.Random(self.settings.seed)
        self._windows: dict[str, deque[float]] = {}
        self.update(**settings)

    def update(self, **changes: Any) -> dict[str, Any]:
        """
        Change some settings and return them all; a ``seed`` restarts the random sequence.

        :raises ValueError: for an unknown setting or a value out of range; nothing changes then.
        """
        checked = {name: _checked(name, value) for name, value in changes.items()}
        with self._lock:
            for name, value in checked.items():
                setattr(self.settings, name, value)
            if "seed" in checked:
                self._rng = random.Random(checked["seed"])
            return asdict(self.settings)

    def reset(self) -> dict[str, Any]:
        """Return to no faults, restart the random sequence and forget the rate-limit windows."""
        with self._lock:
            self.settings = FaultSettings()
            self._rng = random.Random(self.settings.seed)
            self._windows.clear()
            return asdict(self.settings)

    def as_dict(self) -> dict[str, Any]:
        """Return the current settings."""
        with self._lock:
            return asdict(self.settings)

    def plan(self) -> FaultPlan:
        """Draw the faults of one message (always the same number of draws, so seeds replay)."""
        with self._lock:
            s, draws = self.settings, [self._rng.random() for _ in range(7)]
        jitter = (draws[6] * 2 - 1) * s.jitter_ms
        return FaultPlan(
            hang=draws[0] < s.hang,
            drop=draws[1] < s.drop,
            error_status=ERROR_STATUSES[int(draws[3] * len(ERROR_STATUSES))]
            if draws[2] < s.error_5xx
            else None,
            business_error=draws[4] < s.business_error,
            lost_reply=draws[5] < s.lost_reply,
            delay_seconds=max(0.0, s.latency_ms + jitter) / 1000,
        )

    def admit(self, fixmedins_code: str) -> bool:
        """Tell whether the institution is under its rate limit (messages in the last second)."""
        now = time.monotonic()
        with self._lock:
            limit = self.settings.rate_limit
            if not limit:
                return True
            window = self._windows.setdefault(fixmedins_code, deque())
            while window and now - window[0] >= 1.0:
                window.popleft()
            if len(window) >= limit:
                return False
            window.append(now)
            return True


def _checked(name: str, value: Any) -> Any:
    known = {f.name for f in fields(FaultSettings)}
    if name not in known:
        raise ValueError(f"unknown fault setting {name!r}; known: {', '.join(sorted(known))}")
    if name == "seed":
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError("seed must be an integer or null")
        return value
    if name in PROBABILITIES and isinstance(value, bool):
        return 1.0 if value else 0.0
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
    ):
        raise ValueError(f"{name} must be a non-negative number")
    if name == "rate_limit":
        if value != int(value):
            raise ValueError("rate_limit must be a whole number of messages per second")
        return int(value)
    if name in PROBABILITIES and value > 1:
        raise ValueError(f"{name} is a share of messages and must be between 0 and 1")
    return float(value)
