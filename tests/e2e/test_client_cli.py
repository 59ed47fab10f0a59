"""The medins client and the ``medins`` command against the native topology (scripts/cluster.py):
submitting through Airflow's REST API, following and reading through the status API, tokens, and
what the command line says when something is wrong."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import requests
from medins_client import (
    FINAL_STATES,
    AlreadySubmitted,
    AuthenticationFailed,
    BatchNotFound,
    MedicalInsuranceClient,
    SubmissionRefused,
    TaskNotFound,
    TaskWaitTimeout,
)

from tests.conftest import ROOT
from tests.e2e.conftest import API
from tests.e2e.test_distributed import SANDBOX

pytestmark = pytest.mark.distributed

ORG = "H44010600001"
PSN_NO = "44010000000000000001"
# Queries only: safe to send again, and no visit or settlement of the demo is repeated.
SAMPLE = {"1101": 4, "5301": 3, "1312": 2, "5201": 2}


@pytest.fixture
def client(password) -> MedicalInsuranceClient:
    with MedicalInsuranceClient(API, "admin", password) as client:
        yield client


@pytest.fixture
def sandbox_faults(cluster):
    """Change the sandbox's faults for one test; put back the ones it had afterwards."""
    before = requests.get(f"{SANDBOX}/_sandbox/faults", timeout=10).json()
    before.pop("seed", None)
    yield lambda **faults: requests.post(
        f"{SANDBOX}/_sandbox/faults", json=faults, timeout=10
    ).raise_for_status()
    requests.post(f"{SANDBOX}/_sandbox/faults", json=before, timeout=10).raise_for_status()


@pytest.fixture
def medins(password, tmp_path):
    """Run the ``medins`` command in a process of its own, with the connection settings in its environment."""

    def run(*args: str, timeout: float = 600, **env: str) -> subprocess.CompletedProcess[str]:
        environment = {
            **os.environ,
            "PYTHONPATH": str(ROOT / "include"),
            "MEDINS_URL": API,
            "MEDINS_USER": "admin",
            "MEDINS_PASSWORD": password,
            **env,
        }
        return subprocess.run(
            [sys.executable, "-m", "medins_client.cli", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=environment,
            cwd=tmp_path,
        )

    return run


def sample_requests(prefix: str, counts: dict[str, int] = SAMPLE) -> list[dict]:
    """Return valid query requests of the demo batch, ``counts`` by interface, with ids of their own."""
    demo = json.loads((ROOT / "include/samples/demo_batch.json").read_text(encoding="utf-8"))[:-8]
    chosen = []
    for api_code, count in counts.items():
        rows = [r for r in demo if r["api_code"] == api_code and r["data"].get("mdtrt_cert_type") != "01"]
        for request in rows[:count]:
            chosen.append({**request, "request_id": f"{prefix}-{request['request_id']}"})
    return chosen


def unique(name: str) -> str:
    return f"{name}-{time.strftime('%H%M%S')}-{secrets.token_hex(3)}"


def wait_until_stored(client: MedicalInsuranceClient, task_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return client.get_task_result(task_id)
        except TaskNotFound:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def wait_until_registered(client: MedicalInsuranceClient, batch_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return client.get_task_progress(batch_id)
        except BatchNotFound:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def write_csv(path: Path, requests_: list[dict]) -> Path:
    """Write requests as the CSV a person would: one data.<field> column per input field."""
    rows = [
        {"api_code": r["api_code"], "org_code": r["org_code"], "request_id": r["request_id"],
         **{f"data.{name}": value for name, value in r["data"].items()}}
        for r in requests_
    ]  # fmt: skip
    pd.DataFrame(rows).to_csv(path, index=False, encoding="utf-8")
    return path


class TestSubmitting:
    def test_a_call_is_made_and_wait_for_task_returns_its_final_row(self, client):
        task_id = client.call_async("5301", {"psn_no": PSN_NO}, ORG, request_id=unique("client-call"))

        row = client.wait_for_task(task_id, timeout=180, poll=0.5)

        assert row["task_id"] == task_id
        assert row["status"] == "SUCCESS", row
        assert row["api_code"] == "5301" and row["org_code"] == ORG and row["result"]

    def test_a_request_is_masked_unless_read_in_full(self, client):
        task_id = client.call_async("5301", {"psn_no": PSN_NO}, ORG)
        client.wait_for_task(task_id, timeout=180, poll=0.5)

        masked = client.get_task_result(task_id)
        full = client.get_task_result(task_id, full=True)

        assert full["request"]["data"]["psn_no"] == PSN_NO
        assert masked["request"]["data"]["psn_no"] != PSN_NO

    def test_a_batch_progress_moves_until_the_batch_is_done(self, client, sandbox_faults):
        batch = sample_requests(unique("client-progress"), {"5301": 60, "1101": 60})
        sandbox_faults(latency_ms=50, jitter_ms=0)
        seen: list[dict] = []

        batch_id = client.call_batch_async(batch, chunk_size=10, concurrency=1)
        progress = client.wait_for_batch(batch_id, timeout=600, poll=0.3, on_progress=seen.append)

        assert progress["status"] == "DONE"
        assert progress["current"] == progress["total"] == len(batch)
        assert len({p["current"] for p in seen}) >= 3, [p["current"] for p in seen]
        assert [p["current"] for p in seen] == sorted(p["current"] for p in seen)
        assert client.get_task_progress(batch_id)["counts"] == progress["counts"]

    @pytest.mark.parametrize(
        ("submit", "reason"),
        [
            (lambda c: c.call_batch_async([]), "should be non-empty"),
            (lambda c: c.call_async("11", {"psn_no": PSN_NO}), "api_code does not match"),
            (
                lambda c: c.call_batch_async(sample_requests(unique("r"), {"5301": 1}), chunk_size=0),
                "chunk_size",
            ),
        ],
        ids=["empty-batch", "bad-interface-code", "chunk-size-0"],
    )
    def test_a_refused_submission_raises_submission_refused_with_airflows_reason(
        self, client, submit, reason
    ):
        with pytest.raises(SubmissionRefused) as refused:
            submit(client)

        assert refused.value.status == 400
        assert reason in refused.value.reason
        assert str(refused.value).startswith("Airflow refused to trigger medins_")

    def test_a_batch_id_is_submitted_once(self, client):
        batch_id = unique("client-once")
        client.call_batch_async(sample_requests(batch_id, {"5301": 1}), batch_id=batch_id)

        with pytest.raises(AlreadySubmitted) as refused:
            client.call_batch_async(sample_requests(batch_id, {"5301": 1}), batch_id=batch_id)

        assert f"batch {batch_id} was submitted already" in str(refused.value)
        assert f"medins status {batch_id} --batch" in str(refused.value)
        client.wait_for_batch(batch_id, timeout=300)

    def test_a_wrong_password_is_refused_with_what_to_check(self, cluster):
        client = MedicalInsuranceClient(API, "admin", "not-the-password")

        with pytest.raises(
            AuthenticationFailed, match=r"refused the password of user 'admin'.*MEDINS_PASSWORD"
        ):
            client.call_async("5301", {"psn_no": PSN_NO}, ORG)


class TestTokens:
    @pytest.mark.parametrize("bad_token", ["corrupt.jwt.token", " "], ids=["invalid-403", "missing-401"])
    def test_a_refused_token_is_replaced_and_the_trigger_goes_through(self, client, bad_token):
        client.call_async("5301", {"psn_no": PSN_NO}, ORG)
        client._token = bad_token

        task_id = client.call_async("5301", {"psn_no": PSN_NO}, ORG)

        assert client._token != bad_token and client._token.startswith("eyJ")
        dag_id, run_id = client._runs[task_id]
        run = requests.get(
            f"{API}/api/v2/dags/{dag_id}/dagRuns/{run_id}",
            headers={"Authorization": f"Bearer {client._token}"},
            timeout=30,
        )
        assert run.status_code == 200 and run.json()["conf"]["request_id"] == task_id

    @pytest.mark.parametrize("bad_token", ["corrupt.jwt.token", " "], ids=["invalid-403", "missing-401"])
    def test_a_refused_token_is_replaced_and_the_status_read_goes_through(self, client, bad_token):
        task_id = client.call_async("5301", {"psn_no": PSN_NO}, ORG)
        client.wait_for_task(task_id, timeout=180)
        client._token = bad_token

        row = client.get_task_result(task_id)

        assert row["task_id"] == task_id
        assert client._token != bad_token and client._token.startswith("eyJ")


class TestWaiting:
    def test_a_timeout_names_a_task_never_stored_and_how_long_it_waited(self, client):
        task_id = unique("never-submitted")

        with pytest.raises(TaskWaitTimeout) as timed_out:
            client.wait_for_task(task_id, timeout=1.5, poll=0.5)

        message = str(timed_out.value)
        assert f"request {task_id} is not final after waiting 1." in message
        assert "its row was never seen" in message
        assert timed_out.value.last_state is None and timed_out.value.waited >= 1.5

    def test_a_timeout_names_the_last_state_seen(self, client, sandbox_faults):
        sandbox_faults(latency_ms=4000, jitter_ms=0)
        task_id = client.call_async("5301", {"psn_no": PSN_NO}, ORG)
        wait_until_stored(client, task_id)

        with pytest.raises(TaskWaitTimeout) as timed_out:
            client.wait_for_task(task_id, timeout=0.5, poll=0.2)

        assert re.search(
            rf"request {task_id} is not final after waiting 0\.\d s "
            r"\(last state seen: (PENDING|PROCESSING|RETRY)\)",
            str(timed_out.value),
        ), str(timed_out.value)
        assert f"medins status {task_id}" in str(timed_out.value)
        sandbox_faults(latency_ms=0)
        assert client.wait_for_task(task_id, timeout=180)["status"] in FINAL_STATES


class TestReading:
    @pytest.fixture(scope="class")
    def finished_batch(self, password) -> tuple[str, list[dict]]:
        batch = sample_requests(unique("client-read"))
        with MedicalInsuranceClient(API, "admin", password) as client:
            batch_id = client.call_batch_async(batch, chunk_size=5)
            client.wait_for_batch(batch_id, timeout=600)
        return batch_id, batch

    def test_list_tasks_pages_through_a_batch_newest_first(self, client, finished_batch):
        batch_id, batch = finished_batch

        first = client.list_tasks(batch_id=batch_id, page=1, page_size=4)
        every = list(client.iter_tasks(batch_id=batch_id, page_size=4))

        assert first["total"] == len(batch) and first["page_size"] == 4 and len(first["items"]) == 4
        assert sorted(task["task_id"] for task in every) == sorted(r["request_id"] for r in batch)
        created = [task["created_at"] for task in every]
        assert created == sorted(created, reverse=True)

    def test_list_tasks_filters_by_state_and_interface(self, client, finished_batch):
        batch_id, batch = finished_batch

        queries = client.list_tasks(batch_id=batch_id, api_code="1101", status=["SUCCESS", "FAILURE"])

        assert queries["total"] == sum(1 for r in batch if r["api_code"] == "1101")
        assert {task["api_code"] for task in queries["items"]} == {"1101"}

    def test_statistics_count_the_batch(self, client, finished_batch):
        batch_id, batch = finished_batch

        stats = client.get_statistics(batch_id=batch_id)

        assert stats["total"] == len(batch)
        assert set(stats["by_api_code"]) == set(SAMPLE)
        assert 0 <= stats["success_rate"] <= 1

    def test_a_final_request_is_not_cancelled(self, client, finished_batch):
        task_id = finished_batch[1][0]["request_id"]

        result = client.cancel_task(task_id)

        assert result["task_id"] == task_id and result["status"] in FINAL_STATES - {"CANCELLED"}

    def test_cancelling_a_batch_cancels_its_requests_not_sent(self, client, sandbox_faults):
        sandbox_faults(latency_ms=300, jitter_ms=0)
        batch_id = client.call_batch_async(
            sample_requests(unique("client-cancel"), {"5301": 60}), chunk_size=20, concurrency=1
        )
        wait_until_registered(client, batch_id)

        cancelled = client.cancel_task(batch_id, batch=True)
        sandbox_faults(latency_ms=0)
        progress = client.wait_for_batch(batch_id, timeout=300)

        assert cancelled["batch_id"] == batch_id and cancelled["status"] == "CANCELLED"
        assert cancelled["cancelled"] >= 1
        assert progress["counts"].get("CANCELLED", 0) >= 1
        assert not {"PENDING", "RETRY"} & {s for s, n in progress["counts"].items() if n}


class TestCommandLine:
    @pytest.fixture(scope="class")
    def submitted(self, password, tmp_path_factory) -> dict:
        """Submit a CSV of every sample request with ``medins submit --wait``; return what happened."""
        folder = tmp_path_factory.mktemp("cli")
        batch_id = unique("cli-batch")
        batch = sample_requests(batch_id)
        path = write_csv(folder / "batch.csv", batch)
        env = {**os.environ, "PYTHONPATH": str(ROOT / "include"), "MEDINS_URL": API, "MEDINS_USER": "admin",
               "MEDINS_PASSWORD": password}  # fmt: skip

        result = subprocess.run(
            [sys.executable, "-m", "medins_client.cli", "submit", str(path), "--batch-id", batch_id,
             "--chunk-size", "4", "--wait", "--timeout", "600"],
            capture_output=True, text=True, timeout=700, env=env,
        )  # fmt: skip
        return {"batch_id": batch_id, "batch": batch, "result": result, "csv": path}

    def test_submit_with_wait_shows_progress_then_the_counts(self, submitted):
        result, batch_id, batch = submitted["result"], submitted["batch_id"], submitted["batch"]

        assert result.returncode == 0, result.stderr
        assert f"Submitted {len(batch)} requests from {submitted['csv']} as batch {batch_id}" in result.stderr
        assert "100.0%" in result.stderr and "[" + "#" * 30 + "]" in result.stderr
        assert result.stdout.startswith(
            f"Batch {batch_id}: DONE, {len(batch)} of {len(batch)} requests final"
        )
        assert re.search(r"^  SUCCESS +\d+$", result.stdout, re.MULTILINE)

    def test_the_csv_cells_arrived_with_their_types(self, client, submitted):
        tasks = {t["task_id"]: t for t in client.iter_tasks(batch_id=submitted["batch_id"])}

        assert not [t for t in tasks.values() if t["status"] == "REJECTED"], "every request was valid"
        for request in submitted["batch"]:
            stored = tasks[request["request_id"]]["request"]["data"]
            for name in ("mdtrt_cert_type", "page_num", "page_size", "begntime", "query_date"):
                if name in request["data"]:
                    assert stored[name] == request["data"][name], (name, stored[name])

    @pytest.mark.parametrize("suffix", [".csv", ".xlsx"])
    def test_export_round_trips_chinese_text(self, client, medins, submitted, tmp_path, suffix):
        out = tmp_path / f"export{suffix}"

        result = medins("export", submitted["batch_id"], "--out", str(out))

        assert result.returncode == 0, result.stderr
        assert f"Wrote {len(submitted['batch'])} requests of batch {submitted['batch_id']}" in result.stdout
        if suffix == ".csv":
            assert out.read_bytes().startswith(b"\xef\xbb\xbf")
            back = pd.read_csv(out, dtype=str, keep_default_na=False, encoding="utf-8-sig")
        else:
            back = pd.read_excel(out, dtype=str, keep_default_na=False)
        assert sorted(back["task_id"]) == sorted(r["request_id"] for r in submitted["batch"])
        listed = {t["task_id"]: t for t in client.iter_tasks(batch_id=submitted["batch_id"])}
        for row in back.to_dict("records"):
            assert json.loads(row["request"]) == listed[row["task_id"]]["request"]
            assert row["err_msg"] == (listed[row["task_id"]]["err_msg"] or "")
        chinese = [
            row["request"] for row in back.to_dict("records") if re.search(r"[\u4e00-\u9fff]", row["request"])
        ]
        assert chinese, "the 1101 requests carry Chinese names"

    def test_status_stats_and_cancel_print_json(self, medins, submitted):
        batch_id, first = submitted["batch_id"], submitted["batch"][0]["request_id"]

        batch = medins("status", batch_id, "--batch")
        task = medins("status", first)
        stats = medins("stats", "--batch-id", batch_id, "--from", "2020-01-01")
        cancel = medins("cancel", first)

        assert json.loads(batch.stdout)["total"] == len(submitted["batch"])
        assert json.loads(task.stdout)["task_id"] == first
        assert json.loads(stats.stdout)["total"] == len(submitted["batch"])
        assert cancel.returncode == 1
        assert "only PENDING or RETRY requests can be cancelled" in cancel.stderr

    @pytest.mark.parametrize(
        ("args", "env", "code", "message"),
        [
            (["status", "no-such-request"], {}, 1, "no request no-such-request in the status table"),
            (["status", "no-such-batch", "--batch"], {}, 1, "no batch no-such-batch in the status table"),
            (["export", "no-such-batch", "--out", "x.csv"], {}, 1, "no batch no-such-batch"),
            (["status", "x"], {"MEDINS_PASSWORD": "wrong"}, 1, "refused the password of user 'admin'"),
            (
                ["status", "x"],
                {"MEDINS_URL": f"{API}/nowhere"},
                1,
                f"is {API}/nowhere an Airflow 3 api-server?",
            ),
            (["submit", "batch.csv", "--batch-id", "a b"], {}, 2, "batch id 'a b' must be 1-64 letters"),
            (
                ["submit", "batch.csv", "--chunk-size", "99999"],
                {},
                1,
                "chunk_size is greater than the maximum of 5000",
            ),
            (["submit", "missing.csv"], {}, 2, "missing.csv does not exist"),
        ],
        ids=[
            "unknown-request",
            "unknown-batch",
            "export-unknown",
            "password",
            "wrong-url",
            "batch-id",
            "chunk-size",
            "no-file",
        ],
    )
    def test_a_bad_input_gives_its_message_and_no_traceback(self, medins, tmp_path, args, env, code, message):
        write_csv(tmp_path / "batch.csv", sample_requests(unique("cli-bad"), {"5301": 1}))

        result = medins(*args, **env)

        assert result.returncode == code, result.stderr
        assert message in result.stderr
        assert "Traceback" not in result.stderr
