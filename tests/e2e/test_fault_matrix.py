"""The fault matrix: each fault injected into a running batch on the native CeleryExecutor topology.

Every scenario triggers ``medins_batch`` over the REST API with a few thousand requests (queries and
writes, the sample batch's invalid requests among them), injects its fault while chunks run, waits
for the DAG run, then checks from the status table and the sandbox's per-``msgid`` record that:

* every request has a row and the row is final: none lost, none left open;
* no ``msgid`` reached the gateway twice and no settlement was applied twice;
* a request the table shows ``SUCCESS`` was answered ``ok`` exactly once among its recorded msgids;
* nothing was applied a second time (a re-send), except queries sent again after a worker was
  killed before it wrote their replies back (queries may be repeated; writes never are).

Each scenario adds one line to the report printed at the end of the session (and written to
``.airflow-cluster/fault-matrix.txt``): requests, final states, re-sends, duplicates and time.

The Redis and MariaDB scenarios stop the machine's own services for a while: run this module alone
(``./run test -m faults``) or as part of the whole suite, never beside another test session.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import requests

from medins.states import FINAL
from tests.conftest import ROOT
from tests.e2e.conftest import API, CLUSTER, FAULT_REPORT
from tests.e2e.test_distributed import NO_FAULTS, SANDBOX, batch_of, trigger, wait

pytestmark = [pytest.mark.distributed, pytest.mark.faults]

SIZE = 2000
CHUNK_SIZE = 100
BASE_FAULTS = {"latency_ms": 20, "jitter_ms": 10}
APPLIED = ("ok", "ok_reply_lost")  # the gateway acted on the message
STATE_FILE = ROOT / ".airflow-cluster/cluster.json"
SERVICES = ROOT / "scripts/services.sh"


@dataclass
class Scenario:
    """What one scenario found; one line of the report."""

    name: str
    requests: int = 0
    rows: int = 0
    states: Counter[str] = field(default_factory=Counter)
    left_open: int = 0
    messages: int = 0
    resent_queries: int = 0
    resent_writes: int = 0
    duplicate_msgids: int = 0
    double_settlements: int = 0
    success_not_ok_once: int = 0
    run_state: str = ""
    seconds: float = 0.0
    note: str = ""

    @property
    def lost(self) -> int:
        return self.requests - self.rows

    def line(self) -> str:
        states = " ".join(f"{state}={count}" for state, count in sorted(self.states.items()))
        return (
            f"{self.name:<22} requests={self.requests} lost={self.lost} open={self.left_open} [{states}] "
            f"messages={self.messages} resent_queries={self.resent_queries} "
            f"resent_writes={self.resent_writes} "
            f"duplicate_msgids={self.duplicate_msgids} double_settlements={self.double_settlements} "
            f"run={self.run_state} {self.seconds:.0f}s{f' ({self.note})' if self.note else ''}"
        )


@pytest.fixture(scope="module")
def store(cluster):
    from medins.store import StatusStore

    os.environ["AIRFLOW_CONN_MEDINS_STATUS_CLUSTER"] = json.dumps(
        {"conn_type": "mysql", "host": "127.0.0.1", "port": 3306, "login": "root", "schema": "medins",
         "extra": {"charset": "utf8mb4"}}
    )  # fmt: skip
    # Waits out the MariaDB outage scenario like the tasks do.
    with StatusStore.from_conn_id("medins_status_cluster", outage_seconds=300) as store:
        yield store


@pytest.fixture
def sandbox(cluster):
    """Reset the sandbox's record and faults; leave it without faults but its latency afterwards."""

    def set_faults(**faults) -> None:
        requests.post(f"{SANDBOX}/_sandbox/faults", json=faults, timeout=10).raise_for_status()

    requests.post(f"{SANDBOX}/_sandbox/reset", json={}, timeout=10).raise_for_status()
    set_faults(**{**NO_FAULTS, **BASE_FAULTS, "hang": 0, "rate_limit": 0})
    yield set_faults
    set_faults(**{**NO_FAULTS, **BASE_FAULTS, "hang": 0, "rate_limit": 0})


@pytest.fixture(scope="module", autouse=True)
def healthy_afterwards(cluster):
    """Leave every component and service running for the tests that follow, whatever happened."""
    yield
    subprocess.run(["bash", str(SERVICES), "mariadb", "redis"], check=False)
    subprocess.run([*CLUSTER, "up", "--timeout", "300"], check=False, capture_output=True)


# -- running a scenario ------------------------------------------------------------------------


def run_scenario(
    name: str,
    api: requests.Session,
    store,
    inject: Callable[[str], str | None] | None = None,
    *,
    size: int = SIZE,
    timeout: float = 1200,
) -> Scenario:
    """Trigger a batch of ``size`` requests, call ``inject(run_id)`` while it runs, wait, and check it."""
    run_id = f"fault-{name}-{time.strftime('%H%M%S')}"
    batch = batch_of(size, run_id)
    started = time.monotonic()
    reply = trigger(api, "medins_batch", {"requests": batch, "chunk_size": CHUNK_SIZE}, run_id)
    assert reply.status_code == 200, reply.text[:500]
    note = inject(run_id) if inject else None
    run_state = wait_through_outages(api, run_id, timeout)
    scenario = inspect(name, run_id, store, requests_sent=len(batch))
    scenario.run_state = run_state
    scenario.seconds = time.monotonic() - started
    scenario.note = note or ""
    FAULT_REPORT.append(scenario.line())
    return scenario


def wait_through_outages(api: requests.Session, run_id: str, timeout: float) -> str:
    """Wait for the DAG run like ``wait``, riding out an api-server that is briefly unreachable."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return wait(api, "medins_batch", run_id, timeout=max(1, deadline - time.monotonic()))
        except (requests.RequestException, KeyError):
            if time.monotonic() > deadline:
                raise
            time.sleep(3)


def inspect(name: str, run_id: str, store, *, requests_sent: int) -> Scenario:
    """Count what the table and the sandbox say about the batch."""
    rows = store.rows(run_id)
    stats = requests.get(f"{SANDBOX}/_sandbox/stats", timeout=30).json()
    messages = requests.get(f"{SANDBOX}/_sandbox/messages", timeout=120).json()["messages"]
    applied = {m["msgid"]: sum(o in APPLIED for o in m["outcomes"]) for m in messages if m["infno"] != "9001"}
    outcomes = {m["msgid"]: m["outcomes"] for m in messages}

    scenario = Scenario(name, requests=requests_sent, rows=len(rows))
    scenario.states = Counter(row.status for row in rows)
    scenario.left_open = sum(row.status not in FINAL for row in rows)
    scenario.messages = sum(m["count"] for m in messages if m["infno"] != "9001")
    scenario.duplicate_msgids = len(stats["duplicate_msgids"])
    scenario.double_settlements = stats["double_settlements"]

    recorded: set[str] = set()
    for row in rows:
        msgids = set(row.data.get("msgids", [])) | ({row.msgid} if row.msgid else set())
        recorded |= msgids
        times_applied = sum(applied.get(msgid, 0) for msgid in msgids)
        if row.kind == "write":
            scenario.resent_writes += max(0, times_applied - 1)
        else:
            scenario.resent_queries += max(0, times_applied - 1)
        if row.status == "SUCCESS":
            oks = sum(outcomes.get(msgid, []).count("ok") for msgid in msgids)
            scenario.success_not_ok_once += oks != 1
    # Applied under a msgid no row records: sent by a try that died before writing its outcome back.
    unrecorded = sum(count for msgid, count in applied.items() if count and msgid not in recorded)
    scenario.resent_queries += unrecorded
    return scenario


def assert_sound(scenario: Scenario, *, resent_queries_allowed: int = 0) -> None:
    """Nothing lost, nothing open, nothing sent twice, no settlement applied twice."""
    assert scenario.lost == 0, scenario.line()
    assert scenario.left_open == 0, scenario.line()
    assert scenario.duplicate_msgids == 0, scenario.line()
    assert scenario.double_settlements == 0, scenario.line()
    assert scenario.resent_writes == 0, scenario.line()
    assert scenario.success_not_ok_once == 0, scenario.line()
    assert scenario.resent_queries <= resent_queries_allowed, scenario.line()
    assert scenario.states["REJECTED"] == 8, scenario.line()
    assert scenario.run_state == "success", scenario.line()


# -- injecting faults --------------------------------------------------------------------------


def until_sending(
    store, run_id: str, final_at_least: int = 200, *, processing: bool = False, timeout: float = 300
) -> None:
    """
    Wait until the batch is registered, chunks are sending and ``final_at_least`` rows are final.

    :param processing: wait for a moment when messages are in flight (rows ``PROCESSING``).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        counts = store.counts(run_id)
        final = sum(count for state, count in counts.items() if state in FINAL)
        sending = (
            counts.get("PROCESSING", 0)
            if processing
            else counts.get("PROCESSING", 0) + counts.get("PENDING", 0)
        )
        if final >= final_at_least and sending > 0:
            return
        time.sleep(0.05)
    raise AssertionError(f"batch {run_id} did not start sending within {timeout:.0f} s: {counts}")


def component_pid(name: str) -> int:
    return json.loads(STATE_FILE.read_text())[name]


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


def start_missing_components() -> None:
    """What a supervisor (systemd, the compose restart policy) does: start what is not running."""
    subprocess.run([*CLUSTER, "up", "--timeout", "300"], check=True, capture_output=True)


def redis_up() -> bool:
    result = subprocess.run(["redis-cli", "-h", "127.0.0.1", "ping"], capture_output=True, text=True)
    return "PONG" in result.stdout


# -- the scenarios -----------------------------------------------------------------------------


def test_no_fault_baseline(api, store, sandbox):
    scenario = run_scenario("baseline", api, store)

    assert_sound(scenario)
    # Without faults, only the sample's people whose ID number fails its check digit are refused.
    assert scenario.states["UNKNOWN"] == 0 and scenario.states["FAILURE"] <= 10, scenario.line()


def test_worker_killed_with_sigkill_in_the_middle_of_chunks(api, store, sandbox):
    sandbox(latency_ms=200, jitter_ms=50)  # chunks take seconds, so the kill lands inside them

    def kill(run_id: str) -> str:
        until_sending(store, run_id, final_at_least=300, processing=True)
        pid = component_pid("worker-medical_batch")
        in_flight = store.counts(run_id).get("PROCESSING", 0)
        os.killpg(pid, signal.SIGKILL)  # the worker, its pool and every task process it ran
        assert wait_gone(pid, 30)
        time.sleep(2)
        start_missing_components()
        return f"killed with {in_flight} requests PROCESSING"

    scenario = run_scenario("worker-sigkill", api, store, kill)

    # Writes in flight became UNKNOWN (never sent again); queries in flight may have been sent again:
    # at most what one worker can have had in flight or waiting to be written back.
    assert_sound(scenario, resent_queries_allowed=4 * (2 * 16 + 200))


def test_worker_stopped_gracefully(api, store, sandbox):
    sandbox(latency_ms=200, jitter_ms=50)

    def stop(run_id: str) -> str:
        until_sending(store, run_id, final_at_least=300, processing=True)
        pid = component_pid("worker-medical_batch")
        os.kill(pid, signal.SIGTERM)  # warm shutdown: running chunks finish, nothing new is taken
        stopped_in = time.monotonic()
        assert wait_gone(pid, 600)
        stopped_in = time.monotonic() - stopped_in
        start_missing_components()
        return f"stopped in {stopped_in:.0f} s"

    scenario = run_scenario("worker-sigterm", api, store, stop)

    assert_sound(scenario)
    assert scenario.states["UNKNOWN"] == 0, scenario.line()


def test_redis_restarted_during_a_batch(api, store, sandbox):
    def restart(run_id: str) -> str:
        until_sending(store, run_id, final_at_least=300)
        subprocess.run(["redis-cli", "-h", "127.0.0.1", "shutdown", "nosave"], capture_output=True)
        down_at = time.monotonic()
        while redis_up() and time.monotonic() - down_at < 10:
            time.sleep(0.1)
        time.sleep(2)
        subprocess.run(["bash", str(SERVICES), "redis"], check=True)
        return f"Redis down {time.monotonic() - down_at:.1f} s, its data lost"

    scenario = run_scenario("redis-restart", api, store, restart)

    assert_sound(scenario)
    assert scenario.states["UNKNOWN"] == 0, scenario.line()


def test_mariadb_unreachable_for_30_seconds(api, store, sandbox):
    def outage(run_id: str) -> str:
        until_sending(store, run_id, final_at_least=300)
        subprocess.run(["mariadb-admin", "--host=127.0.0.1", "--user=root", "shutdown"], check=True)
        down_at = time.monotonic()
        # The status API answers 503 with a reason while the table cannot be reached.
        reply = api.get(f"{API}/medins/api/v1/batches/{run_id}", timeout=30)
        assert reply.status_code == 503 and "cannot be reached" in reply.json()["detail"], reply.text
        assert reply.headers["Retry-After"] == "30"
        time.sleep(max(0.0, 30 - (time.monotonic() - down_at)))
        subprocess.run(["bash", str(SERVICES), "mariadb"], check=True)
        return f"MariaDB down {time.monotonic() - down_at:.0f} s"

    scenario = run_scenario("mariadb-outage-30s", api, store, outage)

    assert_sound(scenario)
    assert scenario.states["UNKNOWN"] == 0, scenario.line()


def test_misbehaving_gateway(api, store, sandbox):
    sandbox(error_5xx=0.10, drop=0.05, lost_reply=0.02, rate_limit=30)

    scenario = run_scenario("gateway-faults", api, store)

    assert_sound(scenario)
    by_outcome = requests.get(f"{SANDBOX}/_sandbox/stats", timeout=30).json()["by_outcome"]
    assert by_outcome.get("error_5xx", 0) > 0 and by_outcome.get("dropped", 0) > 0
    assert by_outcome.get("ok_reply_lost", 0) > 0 and by_outcome.get("rate_limited", 0) > 0
    # A write whose reply was lost (or that met a 5xx or a dropped connection) is UNKNOWN, not resent.
    assert scenario.states["UNKNOWN"] >= by_outcome["ok_reply_lost"], scenario.line()


def test_gateway_that_accepts_connections_and_never_answers(api, store, sandbox):
    def hang(run_id: str) -> str:
        until_sending(store, run_id, final_at_least=300)
        sandbox(hang=1.0)  # every message from now on is accepted and never answered
        time.sleep(45)
        hung = requests.get(f"{SANDBOX}/_sandbox/stats", timeout=30).json()["by_outcome"].get("hung", 0)
        sandbox(hang=0)
        return f"gateway silent 45 s, {hung} messages never answered"

    scenario = run_scenario("gateway-hang", api, store, hang)

    assert_sound(scenario)


def test_the_same_batch_submitted_twice_adds_nothing(api, store, sandbox):
    first_id = f"fault-twice-{time.strftime('%H%M%S')}"
    batch = batch_of(SIZE, first_id)
    started = time.monotonic()
    assert (
        trigger(api, "medins_batch", {"requests": batch, "chunk_size": CHUNK_SIZE}, first_id).status_code
        == 200
    )
    until_sending(store, first_id, final_at_least=100)
    second_id = f"{first_id}-again"
    # Same request ids, same batch id: a client that did not see its first reply and submitted again.
    again = {"requests": batch, "chunk_size": CHUNK_SIZE, "batch_id": first_id}
    assert trigger(api, "medins_batch", again, second_id).status_code == 200

    first_state = wait_through_outages(api, first_id, 1200)
    second_state = wait(api, "medins_batch", second_id)
    scenario = inspect("submitted-twice", first_id, store, requests_sent=len(batch))
    scenario.run_state, scenario.seconds = first_state, time.monotonic() - started
    total = store.get_batch(first_id).data.get("total")
    scenario.note = f"second run {second_state}, batch total {total}"
    FAULT_REPORT.append(scenario.line())

    assert_sound(scenario)
    assert total == SIZE and second_state == "success"
    # The second run mapped no chunk: its send_chunk has no task instance that ran.
    instances = api.get(
        f"{API}/api/v2/dags/medins_batch/dagRuns/{second_id}/taskInstances",
        params={"limit": 1000},
        timeout=30,
    ).json()["task_instances"]
    ran = [ti for ti in instances if ti["task_id"] == "send_chunk" and ti["state"] not in ("skipped", None)]
    assert ran == []
