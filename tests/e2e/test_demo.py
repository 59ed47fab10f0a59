"""``./run demo``, the README's first command, from an empty Airflow home: it ends with every row final."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import time

import psutil
import pytest

from tests.conftest import ROOT, unused_port

pytestmark = pytest.mark.e2e

SAMPLE_SIZE = len(json.loads((ROOT / "include/samples/demo_batch.json").read_text(encoding="utf-8")))


def test_the_demo_runs_from_an_empty_home_and_prints_what_the_table_holds(tmp_path):
    home = tmp_path / "airflow"
    # The demo's own settings only: none of the test session's Airflow or medins variables.
    env = {key: value for key, value in os.environ.items() if not key.startswith(("AIRFLOW", "MEDINS_"))}
    env.update(
        AIRFLOW_HOME=str(home), AIRFLOW__API__PORT=str(unused_port()), MEDINS_SANDBOX_PORT=str(unused_port())
    )

    done = subprocess.run(
        [str(ROOT / "run"), "demo"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )

    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    run_id = re.search(r"\(run (demo_\d+)\)", output).group(1)
    by_state = output.split("Requests by state", 1)[1].split("By interface", 1)[0]
    printed = dict(re.findall(r"^  ([A-Z]+) +(\d+)", by_state, re.MULTILINE))
    with sqlite3.connect(home / "medins_status.db") as status:
        stored = dict(
            status.execute(
                "SELECT status, COUNT(*) FROM async_task_status WHERE batch_id = ? AND kind <> 'batch' "
                "GROUP BY status",
                [run_id],
            ).fetchall()
        )
        (batch_status,) = status.execute(
            "SELECT status FROM async_task_status WHERE task_id = ? AND kind = 'batch'", [run_id]
        ).fetchone()
    assert sum(stored.values()) == SAMPLE_SIZE and batch_status == "DONE"
    assert {state: int(count) for state, count in printed.items() if state in stored} == stored
    assert set(stored) <= {"SUCCESS", "FAILURE", "UNKNOWN", "REJECTED"}, stored
    assert stored["REJECTED"] == 8
    assert "0 msgids received twice, 0 double settlements" in output
    deadline = time.monotonic() + 20  # the components' children end a moment after them
    while _processes_under(home) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _processes_under(home) == [], "the demo left processes running"


def _processes_under(home) -> list[int]:
    """Return the pids of processes whose environment holds the demo's Airflow home."""
    found = []
    for process in psutil.process_iter():
        try:
            environ = process.environ()
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        if environ.get("AIRFLOW_HOME") == str(home):
            found.append(process.pid)
    return found
