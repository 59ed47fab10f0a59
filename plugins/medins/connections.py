"""Look up Airflow Connections from tasks and from command-line tools alike."""

from __future__ import annotations

from typing import Any


def get_connection(conn_id: str) -> Any:
    """
    Return the Connection ``conn_id``.

    Inside a task the Task SDK asks the API server; outside one (``./run`` commands, the demo)
    the SDK only sees secrets backends and ``AIRFLOW_CONN_*`` variables, so a Connection kept in
    the metadata database is read through Airflow core instead.
    """
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        return BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        try:
            from airflow.models.connection import Connection
        except ImportError:  # a worker with the Task SDK only
            raise
        return Connection.get_connection_from_secrets(conn_id)
