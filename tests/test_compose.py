"""The distributed topology's compose file: every component and queue is there, no secret baked in."""

from __future__ import annotations

import re

import pytest
import yaml

from tests.conftest import ROOT

QUEUES = ("default", "medical_interface", "medical_batch", "maintenance")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yaml").read_text(encoding="utf-8"))


def test_every_component_is_a_service(compose):
    expected = {
        "postgres", "mysql", "redis", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
        "airflow-triggerer", "airflow-init", "flower", "sandbox",
    }  # fmt: skip

    assert expected <= set(compose["services"])


@pytest.mark.parametrize("queue", QUEUES)
def test_a_worker_listens_on_each_queue(compose, queue):
    commands = [str(service.get("command", "")) for service in compose["services"].values()]

    assert any(re.search(rf"celery worker --queues {queue}\b", command) for command in commands)


def test_mysql_is_8_4_with_utf8mb4(compose):
    mysql = compose["services"]["mysql"]

    assert mysql["image"] == "mysql:8.4"
    assert "--character-set-server=utf8mb4" in mysql["command"]


def test_no_secret_has_a_default(compose):
    text = (ROOT / "docker-compose.yaml").read_text(encoding="utf-8")

    for name in ("AIRFLOW_JWT_SECRET", "AIRFLOW_FERNET_KEY", "POSTGRES_PASSWORD", "MYSQL_PASSWORD",
                 "MEDINS_GATEWAY_SECRET"):  # fmt: skip
        assert re.search(rf"\$\{{{name}:-", text) is None, name
        assert f"${{{name}:?" in text, name


def test_every_component_shares_one_jwt_secret(compose):
    common = compose["x-airflow-common"]["environment"]

    assert common["AIRFLOW__API_AUTH__JWT_SECRET"].startswith("${AIRFLOW_JWT_SECRET:?")
    assert common["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"


@pytest.fixture(scope="module")
def launcher(tmp_path_factory):
    """Import scripts/cluster.py with its home in a temporary folder."""
    import importlib
    import os
    import sys

    os.environ["MEDINS_CLUSTER_HOME"] = str(tmp_path_factory.mktemp("cluster-home"))
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        yield importlib.import_module("cluster")
    finally:
        sys.path.remove(str(ROOT / "scripts"))
        del os.environ["MEDINS_CLUSTER_HOME"]


# Settings that only make sense on one machine: local paths, and Flower's API open on loopback.
NATIVE_ONLY = {
    "AIRFLOW_HOME",
    "AIRFLOW__CORE__DAGS_FOLDER",
    "AIRFLOW__CORE__PLUGINS_FOLDER",
    "FLOWER_UNAUTHENTICATED_API",
}


def test_every_setting_of_the_native_launcher_is_in_the_compose_file(compose, launcher):
    common = compose["x-airflow-common"]["environment"]

    missing = set(launcher.settings()) - NATIVE_ONLY - set(common)

    assert not missing


def test_the_native_launcher_starts_the_components_of_the_compose_file(compose, launcher):
    names = {name for name, _, _ in launcher.components()}
    services = set(compose["services"])

    for name in names:
        candidates = {name, name.replace("_", "-"), f"airflow-{name}", f"airflow-{name.replace('-', '')}"}
        assert candidates & services, name


def test_native_workers_serve_the_same_queues(compose, launcher):
    native = {queue for _, queue, _ in launcher.WORKERS}

    assert native == set(QUEUES)


SECRETS = {
    name: "test-value"
    for name in (
        "AIRFLOW_JWT_SECRET",
        "AIRFLOW_FERNET_KEY",
        "AIRFLOW_ADMIN_PASSWORD",
        "POSTGRES_PASSWORD",
        "MYSQL_ROOT_PASSWORD",
        "MYSQL_PASSWORD",
        "MEDINS_GATEWAY_SECRET",
    )
}


def compose_config(env: dict[str, str]):
    import os
    import subprocess

    clean = {key: value for key, value in os.environ.items() if key not in SECRETS}
    return subprocess.run(
        ["docker-compose", "--profile", "sandbox", "--profile", "flower", "config", "--quiet"],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
    )


def test_docker_compose_accepts_the_file_with_its_secrets_set():
    result = compose_config(SECRETS)

    assert result.returncode == 0, result.stderr


def test_docker_compose_refuses_to_start_without_a_secret():
    result = compose_config({k: v for k, v in SECRETS.items() if k != "MEDINS_GATEWAY_SECRET"})

    assert result.returncode != 0
    assert "set MEDINS_GATEWAY_SECRET" in result.stderr
