"""The native topology, started once for every distributed test and stopped by whoever started it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import requests

from tests.conftest import ROOT

CLUSTER = [sys.executable, str(ROOT / "scripts/cluster.py")]
API = "http://127.0.0.1:8180"


def healthy() -> bool:
    """Tell whether every component of the native topology answers as healthy."""
    result = subprocess.run([*CLUSTER, "status"], capture_output=True, text=True)
    return result.returncode == 0 and "DOWN" not in result.stdout


@pytest.fixture(scope="session")
def cluster():
    """Start the native topology unless it runs already; stop it at the end if this session started it."""
    started = False
    if not healthy():
        subprocess.run([*CLUSTER, "up", "--timeout", "300"], check=True)
        started = True
    yield
    if started and not os.environ.get("MEDINS_KEEP_CLUSTER"):
        subprocess.run([*CLUSTER, "down"], check=True)


@pytest.fixture(scope="session")
def password(cluster) -> str:
    """Return the admin's password of the native topology."""
    return json.loads((ROOT / ".airflow-cluster/passwords.json").read_text())["admin"]


@pytest.fixture(scope="module")
def api(password) -> requests.Session:
    """Return a session authenticated against the api-server with a token from /auth/token."""
    reply = requests.post(f"{API}/auth/token", json={"username": "admin", "password": password}, timeout=30)
    reply.raise_for_status()
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {reply.json()['access_token']}"
    return session


#: Lines of the fault matrix's report (tests/e2e/test_fault_matrix.py), one per scenario run.
FAULT_REPORT: list[str] = []


def pytest_terminal_summary(terminalreporter) -> None:
    """Print the fault matrix's report, and keep it beside the native topology's logs."""
    if not FAULT_REPORT:
        return
    terminalreporter.section("fault matrix")
    for line in FAULT_REPORT:
        terminalreporter.write_line(line)
    path = ROOT / ".airflow-cluster/fault-matrix.txt"
    path.write_text("\n".join(FAULT_REPORT) + "\n", encoding="utf-8")
    terminalreporter.write_line(f"(written to {path})")
