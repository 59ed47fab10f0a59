"""State every sender for an institution shares, across processes and machines, kept in Redis.

Celery workers on several machines send for the same institutions at once. Three things have to
hold for all of them together, not per process:

* the ``msgid`` sequence: institution code, ``yyyyMMddHHmmss`` and a 4-digit sequence within that
  second, never handed out twice;
* the ``9001`` sign-in: one ``sign_no`` per institution, operator and day serves every worker until
  it expires, and workers starting together sign in once, not once each;
* the rate limit: at most N messages per second per institution, counted over every worker.

The gateway Connection's extra ``redis_conn_id`` names an Airflow Redis Connection, reached through
``RedisHook``. Without it the gateway hook keeps its machine-local defaults and limits the rate per
process only.
"""

from __future__ import annotations

import functools
import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential

from medins.hooks.gateway import GatewayError
from medins.sequence import MAX_PER_SECOND
from medins.timeutil import SHANGHAI

if TYPE_CHECKING:
    from redis import Redis

    from medins.hooks.gateway import SignInCache
    from medins.sequence import MsgIdSequence

log = logging.getLogger(__name__)

_T = TypeVar("_T")

DEFAULT_PREFIX = "medins"

# How long an admission holds its slot of the rate limit, in seconds: a little over the second the
# limit counts in. Messages admitted together reach the gateway some milliseconds apart, and the
# gateway counts them as they arrive; the margin keeps one delayed on the way from landing in the same
# gateway second as one admitted a second after it.
RATE_WINDOW_SECONDS = 1.1

# How long a process uses a sign_no it read from Redis before reading it again. A sign_no another worker
# replaced in the meantime is refused before processing (签到信息无效): the caller drops it and reads the
# new one, and the message is sent again under a new msgid.
SIGN_IN_REUSE_SECONDS = 5.0

# How long shared state waits out Redis being unreachable (a restart, a failover) before a call gives up.
REDIS_OUTAGE_SECONDS = 30.0

# How long a second's msgid counter is kept: a sender whose clock lags another's by less than this
# still continues that second's count instead of starting it again.
MSGID_COUNTER_TTL_SECONDS = 600

# The last of the next ARGV[3] sequences of one institution's second, or 0 when that second may not be
# used. KEYS[1]: the second's counter; KEYS[2]: the first second this Redis' counters cover, set when it
# is found missing (first use, or Redis lost its data). ARGV: the second (yyyyMMddHHmmss), the counter's
# TTL, how many sequences to take.
_NEXT_SEQUENCE = """
local since = redis.call('GET', KEYS[2])
if not since then
    redis.call('SET', KEYS[2], ARGV[1])
    return 0
end
if ARGV[1] <= since then
    return 0
end
local seq = redis.call('INCRBY', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return seq
"""

# Compare-and-delete: forget a sign_no only if it is still the one cached.
_DROP_IF_SAME = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""

# Sliding window over the Redis server's clock, so workers on machines with differing clocks agree.
# KEYS[1]: the institution's window (a sorted set of admission times in microseconds).
# ARGV: messages per window, window length in microseconds, a member unique to this admission.
# Returns 0 when admitted, else the microseconds until the oldest admission leaves the window.
# Times go through string.format: Lua would print a 16-digit number in %.14g and lose microseconds.
_SLIDING_WINDOW = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now - window))
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
    redis.call('ZADD', KEYS[1], string.format('%.0f', now), ARGV[3])
    redis.call('PEXPIRE', KEYS[1], math.ceil(window / 1000))
    return 0
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return math.max(1, tonumber(oldest[2]) + window - now)
"""


class RateLimiter(Protocol):
    """Admits an institution's messages at no more than ``per_second`` a second."""

    per_second: int

    def acquire(self, org_code: str, timeout: float | None = None) -> bool:
        """Wait for a free slot of ``org_code``; False when none came within ``timeout`` seconds."""
        ...


class RedisMsgIdSequence:
    """
    Hand out ``msgid`` sequences from one Redis counter per institution and second.

    :param client: Redis client, e.g. ``RedisHook(redis_conn_id=...).get_conn()``.
    :param prefix: Prefix of every key this sequence writes.
    """

    def __init__(self, client: Redis, prefix: str = DEFAULT_PREFIX) -> None:
        self.client = client
        self.prefix = prefix

    def next_msgid(self, org_code: str) -> str:
        """Return the next ``msgid`` for ``org_code``; wait for the next second when one is used up."""
        return self.next_msgids(org_code, 1)[0]

    def next_msgids(self, org_code: str, count: int) -> list[str]:
        """
        Return the next ``count`` msgids for ``org_code``, one round trip to Redis per second used.

        Redis that lost its data (restarted without persistence, flushed) no longer knows which
        sequences of the current second were handed out: no msgid is then given out for that second
        or an earlier one. Waiting out a Redis restart follows :func:`_with_redis`.
        """
        found: list[str] = []
        while len(found) < count:
            wanted = count - len(found)
            stamp = datetime.now(SHANGHAI).strftime("%Y%m%d%H%M%S")
            keys = [f"{self.prefix}:msgid:{org_code}:{stamp}", f"{self.prefix}:msgid:kept-since"]
            args = [stamp, MSGID_COUNTER_TTL_SECONDS, wanted]
            last = _with_redis("msgid sequence", functools.partial(self._next, keys=keys, args=args))
            first, last = last - wanted + 1, min(last, MAX_PER_SECOND)
            if 0 < first <= last:
                found += [f"{org_code}{stamp}{seq:04d}" for seq in range(first, last + 1)]
            else:
                time.sleep(1.0 - time.time() % 1.0 + 0.001)
        return found

    @functools.cached_property
    def _next(self) -> Any:
        return self.client.register_script(_NEXT_SEQUENCE)


class RedisSignInCache:
    """
    Keep each institution and operator's ``sign_no`` in Redis, where every worker finds it.

    :param client: Redis client, e.g. ``RedisHook(redis_conn_id=...).get_conn()``.
    :param prefix: Prefix of every key this cache writes.
    """

    def __init__(self, client: Redis, prefix: str = DEFAULT_PREFIX) -> None:
        self.client = client
        self.prefix = prefix
        self._drop_if_same = client.register_script(_DROP_IF_SAME)
        # key -> (sign_no, monotonic time until which it is used without asking Redis)
        self._recent: dict[str, tuple[str, float]] = {}

    def get(self, key: str) -> str | None:
        """Return the cached ``sign_no`` for ``key``, or None; Redis is asked at most every few seconds."""
        recent = self._recent.get(key)
        if recent is not None and recent[1] > time.monotonic():
            return recent[0]
        value = _with_redis("sign-in cache", lambda: self.client.get(self._key(key)))
        sign_no = value.decode() if isinstance(value, bytes) else value
        if sign_no:
            self._recent[key] = (sign_no, time.monotonic() + SIGN_IN_REUSE_SECONDS)
        return sign_no

    def put(self, key: str, sign_no: str, ttl_seconds: int) -> None:
        """Keep ``sign_no`` for ``key`` for ``ttl_seconds``."""
        _with_redis(
            "sign-in cache", lambda: self.client.set(self._key(key), sign_no, ex=max(1, int(ttl_seconds)))
        )
        self._recent[key] = (sign_no, time.monotonic() + min(SIGN_IN_REUSE_SECONDS, ttl_seconds))

    def drop(self, key: str, sign_no: str) -> None:
        """Forget ``sign_no`` for ``key`` if it is still the cached one; a newer one stays."""
        recent = self._recent.get(key)
        if recent is not None and recent[0] == sign_no:
            self._recent.pop(key, None)
        try:
            self._drop_if_same(keys=[self._key(key)], args=[sign_no])
        except RedisError as err:  # the sign-in that follows a drop replaces the sign_no anyway
            log.warning("Could not drop the sign-in of %s from Redis: %s", key, type(err).__name__)

    @contextmanager
    def lock(self, key: str, timeout: float) -> Iterator[None]:
        """
        Let one worker at a time sign in for ``key``; the others wait, then find its ``sign_no``.

        :param key: The sign-in's cache key.
        :param timeout: Seconds to wait for the lock, and how long it outlives a holder that died.
        """
        name = f"{self.prefix}:signin-lock:{key}"
        lock = self.client.lock(name, timeout=timeout, sleep=0.05, blocking_timeout=timeout)
        acquired = _with_redis("sign-in lock", lock.acquire)
        if not acquired:
            raise GatewayError(f"another worker has been signing in for {key} for more than {timeout:g} s")
        try:
            yield
        finally:
            try:
                lock.release()
            except RedisError:  # LockError when it expired; it expires anyway when Redis is gone
                log.warning("Sign-in lock %s expired before the sign-in ended; others may sign in too", name)

    def _key(self, key: str) -> str:
        return f"{self.prefix}:signin:{key}"


class RedisRateLimiter:
    """
    Admit at most ``per_second`` messages per institution in any second, over every process that shares Redis.

    The window slides: a message is admitted when fewer than ``per_second`` were admitted in the
    ``window`` seconds before it, so no two bursts at either side of a clock second add up to twice the
    limit. Time is the Redis server's, the one clock every worker sees.

    :param client: Redis client, e.g. ``RedisHook(redis_conn_id=...).get_conn()``.
    :param per_second: Messages per second per institution, at least 1.
    :param prefix: Prefix of every key this limiter writes.
    :param window: Seconds an admission holds its slot; a little over 1 to absorb delays on the way.
    """

    def __init__(
        self,
        client: Redis,
        per_second: int,
        prefix: str = DEFAULT_PREFIX,
        window: float = RATE_WINDOW_SECONDS,
    ) -> None:
        if per_second < 1:
            raise ValueError(f"per_second must be at least 1, not {per_second!r}")
        self.client = client
        self.per_second = per_second
        self.prefix = prefix
        self.window = window
        self._admit = client.register_script(_SLIDING_WINDOW)

    def acquire(self, org_code: str, timeout: float | None = None) -> bool:
        """
        Wait until ``org_code`` has a free slot and take it.

        :param org_code: Institution code.
        :param timeout: Seconds to wait at most; None waits as long as it takes.
        :return: True when a slot was taken, False when none would be free within ``timeout``.
        """
        key = f"{self.prefix}:rate:{org_code}"
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            args = [self.per_second, round(self.window * 1_000_000), secrets.token_hex(8)]
            wait_us = _with_redis("rate limit", functools.partial(self._admit, keys=[key], args=args))
            if not wait_us:
                return True
            wait = wait_us / 1_000_000
            if deadline is not None and time.monotonic() + wait > deadline:
                return False
            time.sleep(wait)


class LocalRateLimiter:
    """
    Admit at most ``per_second`` messages per institution in any second, within this process.

    :param per_second: Messages per second per institution, at least 1.
    :param window: Seconds an admission holds its slot; a little over 1 to absorb delays on the way.
    """

    def __init__(self, per_second: int, window: float = RATE_WINDOW_SECONDS) -> None:
        if per_second < 1:
            raise ValueError(f"per_second must be at least 1, not {per_second!r}")
        self.per_second = per_second
        self.window = window
        self._windows: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def acquire(self, org_code: str, timeout: float | None = None) -> bool:
        """
        Wait until ``org_code`` has a free slot and take it.

        :param org_code: Institution code.
        :param timeout: Seconds to wait at most; None waits as long as it takes.
        :return: True when a slot was taken, False when none would be free within ``timeout``.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                now = time.monotonic()
                window = self._windows.setdefault(org_code, deque())
                while window and now - window[0] >= self.window:
                    window.popleft()
                if len(window) < self.per_second:
                    window.append(now)
                    return True
                wait = window[0] + self.window - now
            if deadline is not None and now + wait > deadline:
                return False
            time.sleep(wait)


class NoRateLimit:
    """Admit every message at once."""

    per_second = 0

    def acquire(self, org_code: str, timeout: float | None = None) -> bool:
        """Return True: there is no limit to wait for."""
        return True


def shared_state_from_extras(
    extras: dict[str, Any],
) -> tuple[MsgIdSequence | None, SignInCache | None, RateLimiter]:
    """
    Build the ``msgid`` sequence, sign-in cache and rate limiter a gateway Connection's extras ask for.

    With ``redis_conn_id`` all three live in that Redis, under ``redis_key_prefix`` (``medins`` by
    default). Without it the sequence and the cache are None, for the hook to keep its machine-local
    defaults, and the rate limit holds per process only.

    :param extras: The gateway Connection's extras: ``redis_conn_id``, ``redis_key_prefix``,
        ``rate_limit`` (messages per second per institution; 0 or absent for none).
    """
    per_second = _rate_limit(extras.get("rate_limit"))
    conn_id = extras.get("redis_conn_id")
    if not conn_id:
        return None, None, LocalRateLimiter(per_second) if per_second else NoRateLimit()

    from airflow.providers.redis.hooks.redis import RedisHook

    client = RedisHook(redis_conn_id=conn_id).get_conn()
    prefix = str(extras.get("redis_key_prefix") or DEFAULT_PREFIX)
    limiter = RedisRateLimiter(client, per_second, prefix=prefix) if per_second else NoRateLimit()
    return RedisMsgIdSequence(client, prefix=prefix), RedisSignInCache(client, prefix=prefix), limiter


def _with_redis(what: str, call: Callable[[], _T]) -> _T:
    """
    Run ``call`` against Redis, waiting out a Redis that cannot be reached for a while.

    Connection failures and timeouts are tried again with backoff for :data:`REDIS_OUTAGE_SECONDS`;
    any Redis failure left is raised as a GatewayError, which the hook reports as a call not sent.
    """
    retrying = Retrying(
        retry=retry_if_exception_type((RedisConnectionError, RedisTimeoutError)),
        stop=stop_after_delay(REDIS_OUTAGE_SECONDS),
        wait=wait_exponential(multiplier=0.2, max=3.0),
        before_sleep=lambda state: log.warning(
            "[Try %d] Redis (%s) unreachable: %s; trying again for up to %.0f s",
            state.attempt_number,
            what,
            type(state.outcome.exception()).__name__ if state.outcome else "?",
            REDIS_OUTAGE_SECONDS,
        ),
        reraise=True,
    )
    try:
        return retrying(call)
    except RedisError as err:
        raise GatewayError(f"the {what} in Redis could not be used ({type(err).__name__}: {err})") from err


def _rate_limit(value: Any) -> int:
    if value in (None, ""):
        return 0
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).isdigit():
        raise GatewayError(
            f"the gateway Connection's extra rate_limit must be a whole number of messages per second, "
            f"not {value!r}"
        )
    return int(value)
