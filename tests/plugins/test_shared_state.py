"""State shared by every sender through the real Redis on loopback: msgids, sign-ins, rate limits."""

from __future__ import annotations

import json
import multiprocessing
import re
import socket
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

import pytest
from airflow.providers.redis.hooks.redis import RedisHook

from medins.hooks.gateway import GatewayError, MedicalInsuranceHook, OutcomeKind
from medins.sequence import FileMsgIdSequence
from medins.shared_state import (
    LocalRateLimiter,
    NoRateLimit,
    RedisMsgIdSequence,
    RedisRateLimiter,
    RedisSignInCache,
    shared_state_from_extras,
)
from medins.timeutil import SHANGHAI

ORG = "H44010600001"
MSGID = re.compile(rf"^{ORG}(\d{{14}})(\d{{4}})$")
REDIS_CONN_ID = "medins_redis_test"  # the shared_redis fixture's Connection, inherited by spawned processes
CHRONIC_QUERY = {"psn_no": "44010000000000000002"}


def _redis_client():
    return RedisHook(redis_conn_id=REDIS_CONN_ID).get_conn()


def _msgids(prefix: str, count: int) -> list[str]:
    sequence = RedisMsgIdSequence(_redis_client(), prefix=prefix)
    return [sequence.next_msgid(ORG) for _ in range(count)]


def _mixed_blocks(prefix: str, sizes: list[int]) -> list[str]:
    sequence = RedisMsgIdSequence(_redis_client(), prefix=prefix)
    ids = []
    for size in sizes:
        ids += sequence.next_msgids(ORG, size) if size > 1 else [sequence.next_msgid(ORG)]
    return ids


def _admissions(prefix: str, per_second: int, seconds: float, start, results) -> None:
    limiter = RedisRateLimiter(_redis_client(), per_second, prefix=prefix)
    admitted = []
    start.wait()
    end = time.time() + seconds
    while (left := end - time.time()) > 0:
        if limiter.acquire(ORG, timeout=left):
            admitted.append(time.time())
    results.put(admitted)


class TestRedisMsgIdSequence:
    def test_msgids_are_unique_across_processes(self, shared_redis):
        with multiprocessing.get_context("spawn").Pool(4) as pool:
            batches = pool.starmap(_msgids, [(shared_redis.prefix, 500)] * 4)

        ids = [msgid for batch in batches for msgid in batch]
        assert len(ids) == len(set(ids)) == 2000
        assert all(MSGID.match(msgid) for msgid in ids)

    def test_blocks_and_single_msgids_never_overlap_across_processes(self, shared_redis):
        plans = [[1, 64, 3, 128, 1, 7], [128, 1, 1, 64, 32], [5, 5, 5, 200], [1] * 50]
        with multiprocessing.get_context("spawn").Pool(4) as pool:
            batches = pool.starmap(_mixed_blocks, [(shared_redis.prefix, plan) for plan in plans])

        ids = [msgid for batch in batches for msgid in batch]
        assert len(ids) == len(set(ids)) == sum(map(sum, plans))
        assert all(MSGID.match(msgid) for msgid in ids)
        for batch in batches:  # each process gets its msgids in order
            assert batch == sorted(batch)

    def test_a_block_that_crosses_9999_continues_in_the_next_second(self, shared_redis):
        time.sleep(1.0 - time.time() % 1.0 + 0.01)
        stamp = datetime.now(SHANGHAI).strftime("%Y%m%d%H%M%S")
        shared_redis.client.set(f"{shared_redis.prefix}:msgid:{ORG}:{stamp}", 9996)
        shared_redis.client.set(f"{shared_redis.prefix}:msgid:kept-since", "20260101000000")
        sequence = RedisMsgIdSequence(shared_redis.client, prefix=shared_redis.prefix)

        ids = sequence.next_msgids(ORG, 5)

        following = f"{datetime.strptime(stamp, '%Y%m%d%H%M%S') + timedelta(seconds=1):%Y%m%d%H%M%S}"
        assert ids[:3] == [f"{ORG}{stamp}9997", f"{ORG}{stamp}9998", f"{ORG}{stamp}9999"]
        assert ids[3:] == [f"{ORG}{following}0001", f"{ORG}{following}0002"]

    def test_sequence_moves_to_the_next_second_when_9999_are_used(self, shared_redis):
        time.sleep(1.0 - time.time() % 1.0 + 0.01)  # start early in a second, so it does not end unseen
        stamp = datetime.now(SHANGHAI).strftime("%Y%m%d%H%M%S")
        shared_redis.client.set(f"{shared_redis.prefix}:msgid:{ORG}:{stamp}", 9997)
        shared_redis.client.set(f"{shared_redis.prefix}:msgid:kept-since", "20260101000000")
        sequence = RedisMsgIdSequence(shared_redis.client, prefix=shared_redis.prefix)

        ids = [sequence.next_msgid(ORG) for _ in range(3)]

        next_second = datetime.strptime(stamp, "%Y%m%d%H%M%S") + timedelta(seconds=1)
        assert ids == [f"{ORG}{stamp}9998", f"{ORG}{stamp}9999", f"{ORG}{next_second:%Y%m%d%H%M%S}0001"]

    def test_no_second_used_before_redis_lost_its_data_is_used_again(self, shared_redis):
        sequence = RedisMsgIdSequence(shared_redis.client, prefix=shared_redis.prefix)
        before = [sequence.next_msgid(ORG) for _ in range(50)]

        # What a Redis restart without persistence does to the sequence's keys.
        shared_redis.client.delete(*shared_redis.client.keys(f"{shared_redis.prefix}:*"))
        after = [sequence.next_msgid(ORG) for _ in range(50)]

        last_second_before = max(MSGID.match(msgid).group(1) for msgid in before)
        assert all(MSGID.match(msgid).group(1) > last_second_before for msgid in after)
        assert len(set(before + after)) == 100

    def test_a_new_redis_holds_back_only_the_second_it_was_found_empty_in(self, shared_redis):
        sequence = RedisMsgIdSequence(shared_redis.client, prefix=shared_redis.prefix)
        started = time.monotonic()

        first, second = sequence.next_msgid(ORG), sequence.next_msgid(ORG)

        assert time.monotonic() - started < 1.5
        assert int(MSGID.match(first).group(2)) == 1 and int(MSGID.match(second).group(2)) in (1, 2)

    def test_counter_of_a_second_expires(self, shared_redis):
        sequence = RedisMsgIdSequence(shared_redis.client, prefix=shared_redis.prefix)

        stamp = MSGID.match(sequence.next_msgid(ORG)).group(1)

        assert 0 < shared_redis.client.ttl(f"{shared_redis.prefix}:msgid:{ORG}:{stamp}") <= 600


class TestRedisSignInCache:
    def test_put_then_get_returns_the_sign_no(self, shared_redis):
        cache = RedisSignInCache(shared_redis.client, prefix=shared_redis.prefix)

        cache.put("H44010600001:OP0001:20250101", "SIGN-1", 60)

        assert cache.get("H44010600001:OP0001:20250101") == "SIGN-1"
        assert cache.get("H44010400002:OP0002:20250101") is None

    def test_sign_no_expires_after_its_ttl(self, shared_redis):
        cache = RedisSignInCache(shared_redis.client, prefix=shared_redis.prefix)
        cache.put("key", "SIGN-1", 1)

        time.sleep(1.1)

        assert cache.get("key") is None

    def test_drop_forgets_only_the_sign_no_still_cached(self, shared_redis):
        cache = RedisSignInCache(shared_redis.client, prefix=shared_redis.prefix)
        cache.put("key", "SIGN-NEW", 60)

        cache.drop("key", "SIGN-OLD")
        kept = cache.get("key")
        cache.drop("key", "SIGN-NEW")

        assert kept == "SIGN-NEW"
        assert cache.get("key") is None

    def test_a_sign_no_read_once_is_reused_for_a_few_seconds_without_asking_redis(
        self, shared_redis, monkeypatch
    ):
        monkeypatch.setattr("medins.shared_state.SIGN_IN_REUSE_SECONDS", 0.3)
        cache = RedisSignInCache(shared_redis.client, prefix=shared_redis.prefix)
        cache.put("key", "SIGN-1", 60)
        shared_redis.client.delete(cache._key("key"))

        within = cache.get("key")
        time.sleep(0.35)

        assert within == "SIGN-1"
        assert cache.get("key") is None

    def test_drop_of_a_reused_sign_no_reads_the_one_another_worker_put(self, shared_redis):
        mine = RedisSignInCache(shared_redis.client, prefix=shared_redis.prefix)
        theirs = RedisSignInCache(_redis_client(), prefix=shared_redis.prefix)
        mine.put("key", "SIGN-OLD", 60)
        theirs.put("key", "SIGN-NEW", 60)

        reused = mine.get("key")
        mine.drop("key", "SIGN-OLD")

        assert reused == "SIGN-OLD"
        assert mine.get("key") == "SIGN-NEW"

    def test_lock_lets_one_holder_in_at_a_time(self, shared_redis):
        cache = RedisSignInCache(shared_redis.client, prefix=shared_redis.prefix)
        inside, most_inside, guard = [0], [0], threading.Lock()

        def hold() -> None:
            with cache.lock("key", timeout=5):
                with guard:
                    inside[0] += 1
                    most_inside[0] = max(most_inside[0], inside[0])
                time.sleep(0.02)
                with guard:
                    inside[0] -= 1

        with ThreadPoolExecutor(6) as pool:
            list(pool.map(lambda _: hold(), range(6)))

        assert most_inside[0] == 1

    def test_lock_held_too_long_by_another_fails_the_wait(self, shared_redis):
        cache = RedisSignInCache(shared_redis.client, prefix=shared_redis.prefix)

        held = cache.lock("key", timeout=5)

        with held, pytest.raises(GatewayError, match="signing in for key"), cache.lock("key", timeout=0.2):
            pass

    def test_lock_that_expired_under_its_holder_does_not_raise(self, shared_redis):
        cache = RedisSignInCache(shared_redis.client, prefix=shared_redis.prefix)

        with cache.lock("key", timeout=0.1):
            time.sleep(0.2)


class TestRateLimiters:
    def test_redis_limit_holds_across_processes(self, shared_redis):
        per_second, seconds = 10, 3.0
        context = multiprocessing.get_context("spawn")
        start, results = context.Barrier(3), context.Queue()
        workers = [
            context.Process(
                target=_admissions, args=(shared_redis.prefix, per_second, seconds, start, results)
            )
            for _ in range(3)
        ]
        for worker in workers:
            worker.start()

        admitted = [moment for _ in workers for moment in results.get(timeout=60)]
        for worker in workers:
            worker.join(timeout=10)

        by_second = Counter(int(moment) for moment in admitted)
        # A message admitted at a second's end may be stamped early in the next: one of tolerance.
        assert max(by_second.values()) <= per_second + 1, sorted(by_second.items())
        assert per_second * (seconds - 1) <= len(admitted) <= per_second * (seconds + 1) + 1

    def test_redis_limit_gives_up_at_the_timeout(self, shared_redis):
        limiter = RedisRateLimiter(shared_redis.client, 2, prefix=shared_redis.prefix)
        assert limiter.acquire(ORG) and limiter.acquire(ORG)
        started = time.monotonic()

        admitted = limiter.acquire(ORG, timeout=0.2)

        assert not admitted
        assert time.monotonic() - started < 0.5
        assert limiter.acquire("H44010400002", timeout=0)  # another institution has its own limit

    def test_local_limit_holds_across_threads(self):
        limiter = LocalRateLimiter(5, window=0.5)
        started = time.monotonic()

        def admitted_after(_: int) -> float:
            assert limiter.acquire(ORG)
            return time.monotonic() - started

        with ThreadPoolExecutor(8) as pool:
            moments = sorted(pool.map(admitted_after, range(15)))

        assert moments[4] < 0.5 <= moments[5]
        assert moments[9] < 1.0 <= moments[10]
        assert not limiter.acquire(ORG, timeout=0.1)

    def test_no_rate_limit_admits_at_once(self):
        limiter = NoRateLimit()

        assert all(limiter.acquire(ORG, timeout=0) for _ in range(1000))


class TestSharedStateFromExtras:
    def test_without_redis_the_hook_keeps_its_defaults(self):
        assert shared_state_from_extras({})[:2] == (None, None)
        assert isinstance(shared_state_from_extras({})[2], NoRateLimit)
        assert isinstance(shared_state_from_extras({"rate_limit": 20})[2], LocalRateLimiter)

    def test_with_redis_all_three_are_shared(self, shared_redis):
        sequence, cache, limiter = shared_state_from_extras({**shared_redis.extra, "rate_limit": "20"})

        assert isinstance(sequence, RedisMsgIdSequence) and sequence.prefix == shared_redis.prefix
        assert isinstance(cache, RedisSignInCache)
        assert isinstance(limiter, RedisRateLimiter) and limiter.per_second == 20

    @pytest.mark.parametrize("value", [-1, 2.5, "ten", True], ids=["negative", "fraction", "word", "bool"])
    def test_rate_limit_that_is_not_a_whole_number_is_refused(self, value):
        with pytest.raises(GatewayError, match="rate_limit must be a whole number"):
            shared_state_from_extras({"rate_limit": value})

    def test_hook_takes_them_from_its_connection_and_injected_ones_win(self, make_hook, shared_redis):
        injected = make_hook(extra=shared_redis.extra)
        plain = MedicalInsuranceHook("medins_gateway_test")

        assert isinstance(injected.msgid_sequence, FileMsgIdSequence)
        assert isinstance(plain.msgid_sequence, RedisMsgIdSequence)
        assert isinstance(plain.sign_in_cache, RedisSignInCache)
        assert isinstance(plain.rate_limiter, NoRateLimit)


class TestHookOnSharedState:
    def test_workers_starting_together_sign_in_once(self, make_hook, shared_redis, sandbox):
        hooks = [make_hook(extra=shared_redis.extra) for _ in range(8)]
        start = threading.Barrier(len(hooks))

        def call(hook: MedicalInsuranceHook):
            start.wait()
            return hook.call("5301", CHRONIC_QUERY, org_code=ORG)

        with ThreadPoolExecutor(len(hooks)) as pool:
            outcomes = list(pool.map(call, hooks))

        assert all(outcome.kind is OutcomeKind.SUCCESS for outcome in outcomes), [o.reason for o in outcomes]
        assert sandbox.stats()["by_infno"].get("9001") == 1

    def test_a_sign_in_renewed_by_another_worker_costs_one_refusal_and_no_sign_in(
        self, make_hook, shared_redis, sandbox
    ):
        first, second = make_hook(extra=shared_redis.extra), make_hook(extra=shared_redis.extra)
        assert first.call("5301", CHRONIC_QUERY, org_code=ORG).kind is OutcomeKind.SUCCESS
        old = first.sign_in(first.institution(ORG))  # read back from this worker's few seconds of reuse
        signed_out = second.call(
            "9002", {"sign_no": old, "opter_no": second.institution(ORG).opter}, org_code=ORG
        )
        renewed = second.sign_in(second.institution(ORG))  # 9002 took the old one out of Redis

        outcome = first.call("5301", CHRONIC_QUERY, org_code=ORG)

        assert signed_out.kind is OutcomeKind.SUCCESS and renewed != old
        assert outcome.kind is OutcomeKind.SUCCESS, outcome.reason
        assert sandbox.stats()["by_infno"]["9001"] == 2  # the first sign-in and the other worker's
        assert sandbox.stats()["by_infno"]["5301"] == 3  # one refused with the old sign_no, then sent again

    def test_hook_within_the_rate_limit_is_never_refused_with_429(self, make_hook, shared_redis, sandbox):
        per_second = 5
        sandbox.set_faults(rate_limit=per_second)
        hook = make_hook(extra={**shared_redis.extra, "rate_limit": per_second})
        started = time.monotonic()

        with ThreadPoolExecutor(8) as pool:
            outcomes = list(
                pool.map(lambda _: hook.call("5301", CHRONIC_QUERY, org_code=ORG), range(3 * per_second))
            )

        assert [o.http_status for o in outcomes if o.http_status != 200] == []
        assert all(outcome.kind is OutcomeKind.SUCCESS for outcome in outcomes), [o.reason for o in outcomes]
        assert "rate_limited" not in sandbox.stats()["by_outcome"]
        assert time.monotonic() - started >= 2.9  # the sign-in and 15 messages at 5 a second

    @pytest.mark.parametrize("shared", [True, False], ids=["redis", "per-process"])
    def test_call_kept_waiting_too_long_is_transient_and_not_sent(
        self, make_hook, shared_redis, sandbox, shared
    ):
        extra = {**(shared_redis.extra if shared else {}), "rate_limit": 1, "rate_limit_wait": 0.2}
        hook = make_hook(extra=extra)
        hook.sign_in(hook.institution(ORG))  # takes this second's only slot

        outcome = hook.call("5301", CHRONIC_QUERY, org_code=ORG)

        assert outcome.kind is OutcomeKind.TRANSIENT
        assert f"rate limit of 1/s for institution {ORG} kept the call waiting too long" in outcome.err_msg
        assert "5301" not in sandbox.stats()["by_infno"]

    @pytest.mark.parametrize("step", ["sign-in", "rate-limit"])
    def test_redis_that_fails_ends_the_call_transient_before_anything_is_sent(
        self, make_hook, sandbox, monkeypatch, step
    ):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            closed_port = probe.getsockname()[1]
        down = {"conn_type": "redis", "host": "127.0.0.1", "port": closed_port}
        monkeypatch.setenv("AIRFLOW_CONN_MEDINS_REDIS_DOWN", json.dumps(down))
        hook = make_hook(extra={"redis_conn_id": "medins_redis_down", "rate_limit": 10})
        if step == "rate-limit":
            hook.sign_in = lambda institution, force=False: "x"

        outcome = hook.call("2207", {"psn_no": "44010000000000000001"}, org_code=ORG)

        assert outcome.kind is OutcomeKind.TRANSIENT
        assert "in Redis could not be used (ConnectionError" in outcome.err_msg
        assert sandbox.stats()["received"] == 0
