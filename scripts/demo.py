"""Run the demo on the embedded default: the sandbox gateway, Airflow (LocalExecutor, SQLite) and a
sample batch of 1,174 requests, then print what happened to every request.

Started by ``./run demo`` after set-up. Components already running (for example from
``./run ui``) are reused; the ones this script starts are stopped at the end unless
``--keep-running`` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import requests
from tenacity import Retrying, retry_if_result, stop_after_attempt, wait_fixed

ROOT = Path(__file__).resolve().parents[1]
HOME = Path(os.environ["AIRFLOW_HOME"])
API = os.environ.get("AIRFLOW__API__BASE_URL", "http://127.0.0.1:8080").rstrip("/")
SANDBOX_PORT = int(os.environ.get("MEDINS_SANDBOX_PORT", "8900"))
SANDBOX = f"http://127.0.0.1:{SANDBOX_PORT}"
DAG_ID = "medins_batch"
# Faults of the demo's gateway: some latency, 5xx replies, dropped connections, lost write replies.
SANDBOX_FAULTS = ["--latency-ms", "20", "--jitter-ms", "10", "--error-5xx", "0.05", "--drop", "0.02",
                  "--lost-reply", "0.02", "--seed", "7"]  # fmt: skip


class Components:
    """The processes this script started, stopped together at the end."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen]] = []
        (HOME / "logs").mkdir(parents=True, exist_ok=True)

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        log = open(HOME / "logs" / f"{name}.log", "ab")  # noqa: SIM115 (closed with the process)
        proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
        )
        self.procs.append((name, proc))
        print(f"  started {name} (pid {proc.pid}, log {HOME / 'logs' / f'{name}.log'})")

    def check(self) -> None:
        for name, proc in self.procs:
            if proc.poll() is not None:
                raise SystemExit(f"{name} exited with {proc.returncode}: see {HOME / 'logs' / f'{name}.log'}")

    def stop(self) -> None:
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        for _, proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        self.procs.clear()


def up(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def wait_for(what: str, probe, components: Components, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        components.check()
        if time.monotonic() > deadline:
            raise SystemExit(
                f"{what} did not come up within {timeout:.0f} s; see the logs in {HOME / 'logs'}"
            )
        time.sleep(1)


def start_stack(components: Components, *, with_sandbox: bool) -> None:
    if with_sandbox and not up(f"{SANDBOX}/_sandbox/health"):
        secret = (HOME / "secrets" / "sandbox").read_text().strip()
        components.start(
            "sandbox",
            [sys.executable, "-m", "sandbox", "--port", str(SANDBOX_PORT),
             "--app-id", os.environ.get("MEDINS_SANDBOX_APP_ID", "medins-demo"), *SANDBOX_FAULTS],
            env={"SANDBOX_APP_SECRET": secret},  # not on the command line, where ps would show it
        )  # fmt: skip
        wait_for("the sandbox gateway", lambda: up(f"{SANDBOX}/_sandbox/health"), components, 30)
    if not up(f"{API}/api/v2/monitor/health"):
        for name in ("api-server", "scheduler", "dag-processor"):
            components.start(name, ["airflow", name])
        wait_for("the Airflow api-server", lambda: up(f"{API}/api/v2/monitor/health"), components)
    wait_for(f"DAG {DAG_ID}", lambda: up(f"{API}/api/v2/dags/{DAG_ID}"), components)


def trigger(requests_: list[dict], run_id: str) -> None:
    """
    Trigger the demo's run, trying again after a 5xx: a try after one that failed finds the run (409).

    On SQLite, Airflow's api-server can fail a write with "Database error" after a 5 s wait when it
    meets tasks starting (as the scheduled DAGs' first runs do when Airflow starts).
    """

    def post() -> requests.Response:
        response = requests.post(
            f"{API}/api/v2/dags/{DAG_ID}/dagRuns",
            json={"dag_run_id": run_id, "logical_date": None, "conf": {"requests": requests_}},
            timeout=60,
        )
        if response.status_code >= 500:
            print(
                f"  Airflow answered {response.status_code} (on SQLite a write can fail while tasks "
                "are starting); trying again in 2 s"
            )
        return response

    tries = Retrying(
        retry=retry_if_result(lambda response: response.status_code >= 500),
        stop=stop_after_attempt(5),
        wait=wait_fixed(2),
        retry_error_callback=lambda state: state.outcome.result(),
    )
    response = tries(post)
    if response.status_code == 409 and tries.statistics["attempt_number"] > 1:
        return  # made by a try whose reply was an error
    if response.status_code >= 300:
        raise SystemExit(f"Trigger refused ({response.status_code}): {response.text[:2000]}")


def follow(run_id: str, components: Components, timeout: float = 900) -> str:
    from medins.store import StatusStore

    deadline = time.monotonic() + timeout
    last = ""
    with StatusStore.from_conn_id("medins_status_default") as store:
        while True:
            components.check()
            state = requests.get(f"{API}/api/v2/dags/{DAG_ID}/dagRuns/{run_id}", timeout=10).json()["state"]
            batch = store.get_batch(run_id)
            if batch:
                data = batch.data
                done, total = data.get("current", 0), data.get("total", 0)
                line = f"  run {state}: {done}/{total} requests final ({data.get('percentage', 0)}%)"
                if line != last:
                    print(line, flush=True)
                    last = line
            if state in ("success", "failed"):
                return state
            if time.monotonic() > deadline:
                raise SystemExit(f"the run did not finish within {timeout:.0f} s")
            time.sleep(2)


def summary(run_id: str, state: str) -> None:
    from medins.store import StatusStore

    with StatusStore.from_conn_id("medins_status_default") as store:
        rows = store.rows(run_id)
        batch = store.get_batch(run_id)
    requests_ = [row for row in rows if row.kind != "batch"]
    by_state = Counter(row.status for row in requests_)
    by_api = Counter((row.api_code, row.status) for row in requests_)

    print(f"\nDAG run {run_id}: {state}")
    print(f"\nRequests by state ({len(requests_)} in all):")
    for status, count in by_state.most_common():
        print(f"  {status:<10} {count:>6}")
    print("\nBy interface:")
    for api in sorted({row.api_code or "?" for row in requests_}):
        counts = ", ".join(f"{s} {c}" for (a, s), c in sorted(by_api.items()) if a == api)
        print(f"  {api:<5} {counts}")
    # Reasons are stored masked: gateway messages pass through mask_text, and rejection reasons
    # name fields, never their values.
    print("\nWhy requests did not succeed, one example per reason:")
    shown = set()
    for row in requests_:
        reason = row.error or ""
        # Rejections differ by reason; gateway outcomes by state and interface.
        key = (row.status, reason) if row.status == "REJECTED" else (row.status, row.api_code)
        if row.status != "SUCCESS" and key not in shown:
            shown.add(key)
            text = reason if len(reason) <= 170 else reason[:169] + "…"
            print(f"  {row.status:<9} {row.task_id}: {text}")
    if batch:
        progress = {k: batch.data.get(k) for k in ("current", "total", "percentage")}
        print(f"\nThe batch's own row ({batch.task_id}): status {batch.status}, {json.dumps(progress)}")
    stats = (
        requests.get(f"{SANDBOX}/_sandbox/stats", timeout=10).json()
        if up(f"{SANDBOX}/_sandbox/health")
        else {}
    )
    if stats:
        print(
            f"Sandbox gateway: {stats.get('received')} messages received, "
            f"{len(stats.get('duplicate_msgids', []))} msgids received twice, "
            f"{stats.get('double_settlements')} double settlements"
        )
    status_db = HOME / "medins_status.db"
    print(f"\nRows: table async_task_status in {status_db}")
    query = f"SELECT status, COUNT(*) FROM async_task_status WHERE batch_id='{run_id}' GROUP BY status"
    print(f'  sqlite3 {status_db} "{query}"')
    print(f"Airflow UI: ./run ui, then open {API}/dags/{DAG_ID} (the run is {run_id})")


def _stop_on_signal(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    # kill, a closed terminal and Ctrl-C all stop what this script started.
    signal.signal(signal.SIGTERM, _stop_on_signal)
    signal.signal(signal.SIGHUP, _stop_on_signal)
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", default=str(ROOT / "include/samples/demo_batch.json"))
    parser.add_argument("--keep-running", action="store_true", help="leave the components running")
    parser.add_argument("--ui-only", action="store_true", help="start the components and wait")
    args = parser.parse_args()

    components = Components()
    try:
        print("Starting the sandbox gateway and Airflow (LocalExecutor, SQLite)")
        start_stack(components, with_sandbox=True)
        if args.ui_only:
            print(
                f"\nAirflow UI at {API} (every caller is an admin: loopback only). Ctrl-C or kill stops it."
            )
            while True:
                components.check()
                time.sleep(5)
        stamp = time.strftime("%Y%m%d%H%M%S")
        run_id = f"demo_{stamp}"
        batch = json.loads(Path(args.batch).read_text(encoding="utf-8"))
        for request in batch:
            if "request_id" in request:
                request["request_id"] = f"{stamp}-{request['request_id']}"
        print(f"Triggering {DAG_ID} with {len(batch)} requests (run {run_id})")
        started = time.monotonic()
        trigger(batch, run_id)
        state = follow(run_id, components)
        summary(run_id, state)
        print(f"From trigger to every row final: {time.monotonic() - started:.0f} s")
    except KeyboardInterrupt:
        pass
    finally:
        if not args.keep_running:
            components.stop()


if __name__ == "__main__":
    main()
