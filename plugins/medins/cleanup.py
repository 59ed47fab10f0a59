"""
Remove expired rows of ``async_task_status`` and trim Airflow's own old metadata.

Both run from the hourly ``medins_cleanup`` DAG. :func:`purge_status_table` deletes the requests
whose retention has passed, in short chunks, through :meth:`StatusStore.purge_expired`.
:func:`clean_airflow_metadata` runs ``airflow db clean`` in a subprocess: Airflow's own facility,
which knows the metadata tables' keys and keeps every DAG's latest run.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

log = logging.getLogger(__name__)

RETENTION_VARIABLE = "medins_retention_hours"
"""Airflow Variable that sets how many hours a request row is kept, when a run does not say."""

DEFAULT_RETENTION_HOURS = 24
DEFAULT_METADATA_RETENTION_DAYS = 30

METADATA_TABLES = (
    "dag_run",
    "task_instance",
    "task_instance_history",
    "task_reschedule",
    "xcom",
    "log",
    "job",
)
"""Tables ``airflow db clean`` trims; ``dag_run`` holds each batch's ``conf``, personal data included."""

METADATA_CONN_ID = "medins_airflow_metadata"
"""Optional Connection whose extra ``sql_alchemy_conn`` is the metadata database URL (see below)."""

_BLOCKED_DB = "airflow-db-not-allowed"
_DB_ENV = ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CORE__SQL_ALCHEMY_CONN")


def retention_hours(conf: Mapping[str, Any] | None, param: int, variable: str | None) -> int:
    """
    Return the hours a request row is kept: the run's ``conf``, else the Variable, else the Param's default.

    :param conf: the DAG run's ``conf``; ``retention_hours`` in it wins.
    :param param: the resolved ``retention_hours`` Param (its default when the conf leaves it out).
    :param variable: the value of the Variable ``medins_retention_hours``, ``None`` when unset.
    """
    if conf and conf.get("retention_hours") is not None:
        return _positive_int(conf["retention_hours"], "run conf retention_hours")
    if variable is not None and str(variable).strip():
        return _positive_int(variable, f"Variable {RETENTION_VARIABLE}")
    return _positive_int(param, "Param retention_hours")


def purge_status_table(
    status_conn_id: str,
    hours: int,
    *,
    now: datetime | None = None,
    chunk_size: int = 1000,
    max_seconds: float | None = None,
) -> int:
    """
    Delete the rows of ``async_task_status`` older than ``hours``, except those of running batches.

    :param status_conn_id: Connection of the status store.
    :param hours: retention in hours.
    :param now: the moment retention counts back from; the current time by default.
    :param chunk_size: most rows per ``DELETE``.
    :param max_seconds: stop after about this long; the next run deletes the rest.
    :return: how many rows were deleted.
    """
    from medins.store import StatusStore

    cutoff = (now or datetime.now(UTC)) - timedelta(hours=hours)

    with StatusStore.from_conn_id(status_conn_id) as store:
        deleted = store.purge_expired(cutoff, chunk_size=chunk_size, max_seconds=max_seconds)

    log.info("Removed %d rows created before %s (retention %d h).", deleted, cutoff.isoformat(), hours)
    return deleted


def db_clean_command(
    before: datetime, tables: tuple[str, ...] = METADATA_TABLES, batch_size: int = 1000
) -> list[str]:
    """
    Return the ``airflow db clean`` command line that trims ``tables`` before ``before``.

    :param before: rows older than this go; an aware datetime.
    :param tables: metadata tables to trim.
    :param batch_size: most rows per delete transaction.
    """
    return [
        sys.executable,
        "-m",
        "airflow",
        "db",
        "clean",
        "--clean-before-timestamp",
        before.isoformat(),
        "--tables",
        ",".join(tables),
        "--batch-size",
        str(batch_size),
        "--skip-archive",
        "--error-on-cleanup-failure",
        "--yes",
    ]


def db_clean_environment(environ: Mapping[str, str], metadata_url: str | None) -> dict[str, str]:
    """
    Return the environment ``airflow db clean`` runs in.

    Airflow 3 task processes overwrite the metadata database URL in their environment so that task
    code cannot reach the database (https://github.com/apache/airflow/issues/50601). The blocked
    value is dropped, so the command reads ``airflow.cfg`` or ``sql_alchemy_conn_cmd``, and
    ``metadata_url``, when given, is set in its place.

    :param environ: the task's environment.
    :param metadata_url: the metadata database's SQLAlchemy URL, or ``None``.
    """
    env = dict(environ)
    for name in _DB_ENV:
        if env.get(name, "").startswith(_BLOCKED_DB):
            del env[name]
    if metadata_url:
        env[_DB_ENV[0]] = metadata_url
    return env


def clean_airflow_metadata(days: int, *, now: datetime | None = None, timeout: float = 540) -> str:
    """
    Run ``airflow db clean`` on :data:`METADATA_TABLES` for rows older than ``days``.

    Nothing to clean is a success. The metadata database URL comes from the task's configuration,
    or from the extra ``sql_alchemy_conn`` of the Connection ``medins_airflow_metadata`` when the
    task process has it blocked.

    :param days: retention in days.
    :param now: the moment retention counts back from; the current time by default.
    :param timeout: seconds the command may take.
    :return: the cut-off timestamp, ISO 8601.
    """
    from airflow.sdk.exceptions import AirflowException, AirflowFailException

    before = (now or datetime.now(UTC)) - timedelta(days=_positive_int(days, "metadata_retention_days"))
    command = db_clean_command(before)
    env = db_clean_environment(os.environ, _metadata_url())

    log.info("Cleaning Airflow metadata tables %s before %s.", ", ".join(METADATA_TABLES), before.isoformat())
    try:
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        raise AirflowException(f"airflow db clean did not finish within {timeout:.0f} s.") from err

    for line in result.stdout.splitlines():
        if line.startswith(("Checking table", "Found ", "Deleted")) or "rows" in line:
            log.info("db clean: %s", line.strip())
    if result.returncode != 0:
        tail = "\n".join(result.stderr.strip().splitlines()[-15:])
        log.error("airflow db clean exited with %d:\n%s", result.returncode, tail)
        if _BLOCKED_DB in result.stderr or "sql_alchemy_conn" in result.stderr:
            raise AirflowFailException(
                "airflow db clean found no metadata database: this task process has it blocked. Set "
                "sql_alchemy_conn in the workers' airflow.cfg (or sql_alchemy_conn_cmd), or put the URL in "
                f'the extra of the Connection {METADATA_CONN_ID!r}: {{"sql_alchemy_conn": "postgresql+..."}}.'
            )
        raise AirflowException(f"airflow db clean exited with {result.returncode}; see the log above.")
    return before.isoformat()


def _metadata_url() -> str | None:
    """Return the extra ``sql_alchemy_conn`` of the Connection ``medins_airflow_metadata``, if any."""
    from medins.connections import get_connection

    try:
        conn = get_connection(METADATA_CONN_ID)
    except Exception:  # not defined, or only in the metadata DB this process may not read
        log.debug("No Connection %s; airflow db clean uses Airflow's configuration.", METADATA_CONN_ID)
        return None
    return conn.extra_dejson.get("sql_alchemy_conn") or None


def _positive_int(value: Any, what: str) -> int:
    """Return ``value`` as an integer of at least 1, or fail the task with what was wrong."""
    from airflow.sdk.exceptions import AirflowFailException

    try:
        number = int(str(value).strip())
    except ValueError:
        number = 0
    if number < 1:
        raise AirflowFailException(f"{what} must be a whole number of at least 1, not {value!r}.")
    return number
