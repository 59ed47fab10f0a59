"""Measure batches side by side against one sandbox gateway: the limit, this product and the alternatives.

Run it with ``./run bench`` (the native topology is started if it is down). For each batch size it
measures requests per second from submission to every row final in ``async_task_status``:

* ``limit``: the gateway hook from a thread pool in this process, no Airflow, outcomes written in
  bulk (the chunk runner over one chunk of the whole batch);
* ``product``: the native CeleryExecutor topology, the batch submitted with the Python client as a
  program would: over 1,000 requests it is stored through the status API and sent by a
  ``medins_stored_batch`` run triggered over the REST API; up to 1,000 it is a ``medins_batch`` run's
  ``conf``; the product chooses the chunks;
* ``task-per-request``: ``medins_batch`` triggered over REST with ``chunk_size`` 1, a mapped task
  instance per request, for sizes up to 1,024 and with at most ``--per-request-max`` requests (200:
  at about one task instance a second, a thousand would take a quarter of an hour a run);
* ``seed``: one plain Celery task per request with a per-request upsert (``benchmarks/seed_celery.py``).

Every variant keeps the same number of calls in flight (``--in-flight``, 64: the product's 4 chunk
slots times 16 calls). The sandbox answers after 20 ms (jitter 10 ms), without faults. Figures are
medians of ``--repeat`` runs; the table also gives each figure's ratio to the limit and the peak
memory of the worker processes, whether the product meets its targets, and is written to
``benchmarks/results/``. A single call
(``medins_call``) is measured from trigger to its row final, 20 times: median and 95th percentile.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shlex
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
import requests
from medins_client import MedicalInsuranceClient

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "plugins"), str(ROOT / "include"), str(ROOT / "benchmarks")]

API = "http://127.0.0.1:8180"
SANDBOX = "http://127.0.0.1:8901"
CLUSTER = [sys.executable, str(ROOT / "scripts/cluster.py")]
STATE_FILE = ROOT / ".airflow-cluster/cluster.json"
STATUS_DB = "medins"
GATEWAY_CONN = "medins_gateway_bench"
STATUS_CONN = "medins_status_bench"
FINAL = ("SUCCESS", "FAILURE", "REJECTED", "UNKNOWN", "CANCELLED")
ORGS = ("H44010600001", "H44010400002", "P44010500003", "H31010100004", "H11010100005")
MAX_MAP = 1024


# -- set-up ------------------------------------------------------------------------------------


def cluster_env() -> dict[str, str]:
    """Return the native topology's settings, as ``cluster.py env`` prints them."""
    exports = subprocess.run([*CLUSTER, "env"], capture_output=True, text=True, check=True).stdout
    env = {}
    for line in exports.splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        env[name] = shlex.split(value)[0] if value else ""
    return env


def connect_like_the_workers() -> None:
    """Give this process the topology's gateway Connection (Redis shared state included) and the table."""
    env = {**os.environ, **cluster_env()}
    os.environ[f"AIRFLOW_CONN_{GATEWAY_CONN.upper()}"] = connection_uri("medins_gateway_default", env)
    os.environ["AIRFLOW_CONN_MEDINS_REDIS_DEFAULT"] = connection_uri("medins_redis_default", env)
    os.environ[f"AIRFLOW_CONN_{STATUS_CONN.upper()}"] = json.dumps(
        {
            "conn_type": "mysql",
            "host": "127.0.0.1",
            "port": 3306,
            "login": "root",
            "schema": STATUS_DB,
            "extra": {"charset": "utf8mb4"},
        }
    )


def admin_password() -> str:
    return json.loads((ROOT / ".airflow-cluster/passwords.json").read_text())["admin"]


def connection_uri(conn_id: str, env: dict[str, str]) -> str:
    """Return a Connection of the topology as a URI, read from its metadata DB."""
    shown = subprocess.run(
        ["airflow", "connections", "get", conn_id, "--output", "json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(shown.stdout)[0]["get_uri"]


def token() -> str:
    reply = requests.post(
        f"{API}/auth/token", json={"username": "admin", "password": admin_password()}, timeout=30
    )
    reply.raise_for_status()
    return reply.json()["access_token"]


def make_requests(count: int, tag: str) -> list[dict[str, Any]]:
    """Return ``count`` valid requests: 60% person lookups, 30% filing queries, 10% settlements."""
    from samples.fake_people import make_person

    rng = random.Random(count)
    batch = []
    for i in range(count):
        person, org = make_person(rng), ORGS[i % len(ORGS)]
        if i % 10 < 6:
            api, data = (
                "1101",
                {"mdtrt_cert_type": "02", "mdtrt_cert_no": person.certno, "psn_name": person.name},
            )
        elif i % 10 < 9:
            api, data = "5301", {"psn_no": person.psn_no}
        else:
            api, data = (
                "2207",
                {
                    "psn_no": person.psn_no,
                    "mdtrt_cert_type": "02",
                    "mdtrt_id": f"{tag[-12:]}{i}",
                    "chrg_bchno": f"CB{i}",
                    "insutype": "310",
                    "medfee_sumamt": 88.5,
                    "psn_setlway": "01",
                },
            )
        batch.append({"request_id": f"{tag}-{i:06d}", "api_code": api, "org_code": org, "data": data})
    return batch


# -- watching ----------------------------------------------------------------------------------


class Store:
    """Counts read straight from MariaDB."""

    def __init__(self) -> None:
        import MySQLdb

        self.conn = MySQLdb.connect(
            host="127.0.0.1", user="root", db=STATUS_DB, charset="utf8mb4", autocommit=True
        )

    def final(self, batch_id: str) -> int:
        with self.conn.cursor() as cursor:
            cursor.execute(
                "SELECT COUNT(*) FROM async_task_status WHERE batch_id = %s AND kind <> 'batch' "
                f"AND status IN ({', '.join(['%s'] * len(FINAL))})",
                [batch_id, *FINAL],
            )
            return int(cursor.fetchone()[0])

    def forget(self, batch_id: str) -> None:
        """Delete a run's rows, as medins_cleanup would later: every run starts from the same table."""
        with self.conn.cursor() as cursor:
            while cursor.execute("DELETE FROM async_task_status WHERE batch_id = %s LIMIT 5000", [batch_id]):
                pass

    def wait_final(self, batch_id: str, count: int, timeout: float = 3600) -> None:
        deadline = time.monotonic() + timeout
        while self.final(batch_id) < count:
            if time.monotonic() > deadline:
                raise SystemExit(f"batch {batch_id}: not every row final after {timeout:.0f} s")
            time.sleep(0.1)


class PeakMemory:
    """Sample the resident memory of processes (and their children) while a run lasts; keep the peak (MiB)."""

    def __init__(self, pids: Callable[[], list[int]], *, children: bool = True) -> None:
        self.pids, self.children, self.peak_tree, self.peak_process = pids, children, 0.0, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            sizes = []
            for pid in self.pids():
                try:
                    root = psutil.Process(pid)
                    tree = [root, *root.children(recursive=True)] if self.children else [root]
                    sizes += [p.memory_info().rss for p in tree]
                except psutil.Error:
                    continue
            if sizes:
                self.peak_tree = max(self.peak_tree, sum(sizes) / 2**20)
                self.peak_process = max(self.peak_process, max(sizes) / 2**20)


class CpuByComponent:
    """CPU seconds each process of the topology (children included), MariaDB and Redis spend in a run."""

    SERVICES = ("mariadbd", "redis-server")

    def __enter__(self) -> CpuByComponent:
        self.seconds: dict[str, float] = {}
        self._start = self._read()
        return self

    def __exit__(self, *exc: object) -> None:
        end = self._read()
        self.seconds = {name: end[name] - self._start.get(name, 0.0) for name in end}

    def _read(self) -> dict[str, float]:
        found: dict[str, float] = {}
        roots = {name: psutil.Process(pid) for name, pid in json.loads(STATE_FILE.read_text()).items()}
        roots |= {p.info["name"]: p for p in psutil.process_iter(["name"]) if p.info["name"] in self.SERVICES}
        for name, root in roots.items():
            try:
                tree = [root, *root.children(recursive=True)]
            except psutil.Error:
                continue
            for process in tree:
                try:
                    times = process.cpu_times()
                except psutil.Error:
                    continue
                # A process's own time and that of the children it has reaped: a task process that
                # ended during the run still counts, once.
                spent = times.user + times.system + times.children_user + times.children_system
                found[name] = found.get(name, 0.0) + spent
        return found


def worker_pids(name: str) -> Callable[[], list[int]]:
    return lambda: [json.loads(STATE_FILE.read_text())[name]]


# -- the variants ------------------------------------------------------------------------------


def run_limit(batch: list[dict], tag: str, in_flight: int) -> tuple[float, PeakMemory]:
    from medins.batch import plan_batch
    from medins.hooks.gateway import MedicalInsuranceHook
    from medins.runner import ChunkRunner
    from medins.store import StatusStore

    hook = MedicalInsuranceHook(medins_conn_id=GATEWAY_CONN)
    hook.extras["pool_size"] = in_flight  # a pooled connection for every call in flight
    with (
        StatusStore.from_conn_id(STATUS_CONN) as store,
        PeakMemory(lambda: [os.getpid()], children=False) as memory,
    ):
        started = time.perf_counter()
        plan = plan_batch(
            batch, batch_id=tag, catalog=hook.catalog, institutions=hook.institutions, chunk_size=len(batch)
        )
        store.register(plan.rows)
        ChunkRunner(hook, store, concurrency=in_flight, flush_every=1000).run(tag, 0)
        seconds = time.perf_counter() - started
    hook.close()
    return seconds, memory


def run_product(batch: list[dict], tag: str, client: Any, store: Store) -> tuple[float, PeakMemory]:
    """Submit through the Python client, as a program would: large batches are stored, then triggered."""
    with PeakMemory(worker_pids("worker-medical_batch")) as memory:
        started = time.perf_counter()
        client.call_batch_async(batch, batch_id=tag, concurrency=16)
        store.wait_final(tag, len(batch))
        seconds = time.perf_counter() - started
    return seconds, memory


def run_task_per_request(
    batch: list[dict], tag: str, api: requests.Session, store: Store
) -> tuple[float, PeakMemory]:
    """Trigger ``medins_batch`` over REST with one request per chunk: a task instance per request."""
    conf = {"requests": batch, "chunk_size": 1, "concurrency": 1}
    with PeakMemory(worker_pids("worker-medical_batch")) as memory:
        started = time.perf_counter()
        reply = api.post(
            f"{API}/api/v2/dags/medins_batch/dagRuns",
            json={"dag_run_id": tag, "logical_date": None, "conf": conf},
            timeout=300,
        )
        reply.raise_for_status()
        store.wait_final(tag, len(batch))
        seconds = time.perf_counter() - started
    return seconds, memory


class SeedWorker:
    """The seed baseline's Celery worker: 16 prefork processes."""

    def __init__(self, processes: int) -> None:
        env = {
            **os.environ,
            "SEED_GATEWAY_CONN_ID": GATEWAY_CONN,
            "SEED_STATUS_DB": STATUS_DB,
            "PYTHONPATH": os.pathsep.join(sys.path[:3]),
        }
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "seed_celery",
                "worker",
                "-c",
                str(processes),
                "--pool",
                "prefork",
                "--loglevel",
                "WARNING",
                "--without-mingle",
                "--without-gossip",
            ],
            env=env,
            cwd=ROOT / "benchmarks",
            start_new_session=True,
        )
        from seed_celery import app

        self.app = app
        deadline = time.monotonic() + 60
        while not app.control.ping(timeout=1):
            if time.monotonic() > deadline:
                raise SystemExit("the seed baseline's worker did not start")

    def stop(self) -> None:
        os.killpg(self.proc.pid, 15)
        self.proc.wait(60)


def run_seed(batch: list[dict], tag: str, worker: SeedWorker, store: Store) -> tuple[float, PeakMemory]:
    from seed_celery import call_one

    with PeakMemory(lambda: [worker.proc.pid]) as memory:
        started = time.perf_counter()
        for request in batch:
            call_one.delay(request["request_id"], tag, request)
        store.wait_final(tag, len(batch))
        seconds = time.perf_counter() - started
    return seconds, memory


def single_calls(client: Any, store: Store, count: int = 20) -> list[float]:
    """Time ``call_async`` calls one after another, from the trigger to the request's row final."""
    times = []
    for i in range(count):
        started = time.perf_counter()
        request_id = client.call_async(
            "5301",
            {"psn_no": "44010000000000000001"},
            ORGS[0],
            request_id=f"bench-call-{datetime.now():%H%M%S}-{i}",
        )
        while True:
            with store.conn.cursor() as cursor:
                cursor.execute("SELECT status FROM async_task_status WHERE task_id = %s", [request_id])
                found = cursor.fetchone()
            if found and found[0] in FINAL:
                break
            time.sleep(0.05)
        times.append(time.perf_counter() - started)
    return times


# -- the report --------------------------------------------------------------------------------


def targets(
    results: dict[tuple[str, int], list[tuple[float, PeakMemory, int]]], sizes: list[int]
) -> list[str]:
    """Return the report's lines on the targets: the product against the limit and the alternatives."""

    def rate(variant: str, size: int) -> float | None:
        runs = results.get((variant, size))
        return statistics.median(n / seconds for seconds, _, n in runs) if runs else None

    def memory(variant: str, size: int) -> float | None:
        runs = results.get((variant, size))
        return max(m.peak_process for _, m, _ in runs) if runs else None

    lines = ["", "| target | measured | met |", "|---|---|---|"]
    per_request = max((rate("task-per-request", size) or 0 for size in sizes), default=0) or None
    for size in (size for size in sizes if size >= 10_000):
        product = rate("product", size)
        if product is None:
            continue
        for name, other, goal in (("limit", "limit", 0.7), ("seed", "seed", 1.5)):
            if (base := rate(other, size)) is not None:
                ratio = product / base
                lines.append(f"| product / {name} at {size:,} ≥ {goal} | {ratio:.2f} | {ratio >= goal} |")
        if per_request:
            ratio = product / per_request
            lines.append(f"| product at {size:,} / task per request ≥ 50 | {ratio:.0f} | {ratio >= 50} |")
    small, large = memory("product", 10_000), memory("product", 50_000)
    if small and large:
        ratio = large / small
        lines.append(f"| worker peak memory 50,000 / 10,000 ≤ 1.2 | {ratio:.2f} | {ratio <= 1.2} |")
    return lines if len(lines) > 3 else []


def cpu_table(product_cpu: dict[int, dict[str, float]]) -> list[str]:
    """Return where the product's CPU went: seconds per 1,000 requests by component, last run of each size."""
    if not product_cpu:
        return []
    sizes = sorted(product_cpu)
    names = sorted(
        {name for seconds in product_cpu.values() for name in seconds},
        key=lambda n: -product_cpu[sizes[-1]].get(n, 0),
    )
    lines = [
        "",
        "Product: CPU seconds per 1,000 requests, by component (its last run of each size)",
        "",
        "| component | " + " | ".join(f"{size:,}" for size in sizes) + " |",
        "|---|" + "---|" * len(sizes),
    ]
    for name in names:
        cells = [f"{1000 * product_cpu[size].get(name, 0.0) / size:.2f}" for size in sizes]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    totals = [f"{1000 * sum(product_cpu[size].values()) / size:.2f}" for size in sizes]
    lines.append("| all | " + " | ".join(totals) + " |")
    return lines


def machine() -> str:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    memory = psutil.virtual_memory().total / 2**30
    return f"{model}, {os.cpu_count()} cores, {memory:.0f} GiB, Python {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000,50000")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--variants", default="limit,product,task-per-request,seed")
    parser.add_argument("--per-request-max", type=int, default=200)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--single-calls", type=int, default=20)
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    variants = args.variants.split(",")

    subprocess.run([*CLUSTER, "up", "--timeout", "300"], check=True, capture_output=True)
    connect_like_the_workers()
    requests.post(
        f"{SANDBOX}/_sandbox/faults",
        json={
            "latency_ms": 20,
            "jitter_ms": 10,
            "error_5xx": 0,
            "drop": 0,
            "lost_reply": 0,
            "business_error": 0,
            "hang": 0,
            "rate_limit": 0,
        },
        timeout=10,
    )
    api = requests.Session()
    api.headers["Authorization"] = f"Bearer {token()}"
    client = MedicalInsuranceClient(API, "admin", admin_password(), timeout=60)
    store = Store()
    seed = SeedWorker(16) if "seed" in variants else None
    results: dict[tuple[str, int], list[tuple[float, PeakMemory, int]]] = {}
    product_cpu: dict[int, dict[str, float]] = {}
    try:
        for size in sizes:
            for variant in variants:
                if variant == "task-per-request" and size > MAX_MAP:
                    continue
                for attempt in range(args.repeat):
                    tag = f"bench-{variant}-{size}-{datetime.now():%H%M%S}-{attempt}"
                    count = min(size, args.per_request_max) if variant == "task-per-request" else size
                    batch = make_requests(count, tag)
                    requests.post(f"{SANDBOX}/_sandbox/reset", json={}, timeout=10)
                    if variant == "limit":
                        outcome = run_limit(batch, tag, args.in_flight)
                    elif variant == "product":
                        with CpuByComponent() as cpu:
                            outcome = run_product(batch, tag, client, store)
                        product_cpu[size] = cpu.seconds
                    elif variant == "task-per-request":
                        outcome = run_task_per_request(batch, tag, api, store)
                    else:
                        outcome = run_seed(batch, tag, seed, store)
                    results.setdefault((variant, size), []).append((*outcome, count))
                    store.forget(tag)
                    print(
                        f"  {variant:<17} {count:>6}: {count / outcome[0]:8.1f} requests/s "
                        f"({outcome[0]:.1f} s, peak {outcome[1].peak_process:.0f} MiB per process)",
                        flush=True,
                    )
        calls = single_calls(client, store, args.single_calls) if args.single_calls else []
    finally:
        if seed:
            seed.stop()

    lines = [
        f"# Benchmark {datetime.now():%Y-%m-%d %H:%M}",
        "",
        f"Machine: {machine()}",
        "",
        f"Sandbox 20 ms ± 10 ms, no faults; {args.in_flight} calls in flight; medians of {args.repeat} runs.",
        "",
        "| variant | requests | requests/s | ratio to limit | seconds | peak MiB per process "
        "| peak MiB worker tree |",
        "|---|---|---|---|---|---|---|",
    ]
    for size in sizes:
        limit = statistics.median(
            n / s for s, _, n in results.get(("limit", size), [(float("nan"), None, 0)])
        )
        for variant in variants:
            runs = results.get((variant, size))
            if not runs:
                continue
            rate = statistics.median(n / seconds for seconds, _, n in runs)
            lines.append(
                f"| {variant} | {runs[0][2]:,} | {rate:,.1f} | {rate / limit:.2f} | "
                f"{statistics.median(s for s, _, _ in runs):.1f} | "
                f"{max(m.peak_process for _, m, _ in runs):.0f} | "
                f"{max(m.peak_tree for _, m, _ in runs):.0f} |"
            )
    lines += targets(results, sizes)
    lines += cpu_table(product_cpu)
    if calls:
        calls.sort()
        p95 = calls[min(len(calls) - 1, round(0.95 * (len(calls) - 1)))]
        lines += [
            "",
            f"Single call (medins_call, trigger to row final, {len(calls)} calls): "
            f"median {statistics.median(calls):.2f} s, 95th percentile {p95:.2f} s",
        ]
    report = "\n".join(lines) + "\n"
    out = ROOT / "benchmarks/results" / f"{datetime.now():%Y%m%d-%H%M%S}.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(report, encoding="utf-8")
    print("\n" + report + f"\n(written to {out.relative_to(ROOT)})")


if __name__ == "__main__":
    main()
