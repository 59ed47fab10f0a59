"""
The chunked fan-out every batch DAG shares: ``send_chunk`` mapped over chunk descriptors, then ``summarize``.

A DAG builds its own registration (from a trigger's ``conf``, a schedule's job file, ...), which
stores the requests as rows and returns the chunk descriptors; :func:`chunked_fanout` adds the rest.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import task

from medins.defaults import BATCH_POOL
from medins.hooks.gateway import MedicalInsuranceHook
from medins.operators.chunk import MedicalInsuranceChunkOperator
from medins.store import StatusStore


def chunked_fanout(
    chunks: Any,
    *,
    batch_id: Any = None,
    medins_conn_id: str = MedicalInsuranceHook.default_conn_name,
    status_conn_id: str = StatusStore.default_conn_name,
) -> tuple[Any, Any]:
    """
    Add ``send_chunk``, mapped over the chunk descriptors, and ``summarize`` after it to the current DAG.

    Call it inside a DAG definition. ``send_chunk`` runs on the ``medical_batch`` queue in the
    ``medins_batch`` pool, one mapped task instance per chunk, labelled with the chunk's interfaces;
    ``summarize`` runs once every chunk is done, whatever their state, and fails the run if
    requests were left open.

    :param chunks: The registration's output: a list of chunk descriptors (an ``XComArg``).
    :param batch_id: The batch id, as a value or an ``XComArg``; ``None`` for the run's ``batch_id``
        Param, else the run id (what ``medins_batch`` uses).
    :param medins_conn_id: Connection id of the gateway.
    :param status_conn_id: Connection id of the status store.
    :return: The mapped ``send_chunk`` and the ``summarize`` task's output.
    """
    send_chunk = MedicalInsuranceChunkOperator.partial(
        task_id="send_chunk",
        queue="medical_batch",
        pool=BATCH_POOL,
        medins_conn_id=medins_conn_id,
        status_conn_id=status_conn_id,
        map_index_template="{{ task.chunk['label'] }}",
    ).expand(chunk=chunks)

    @task(task_id="summarize", trigger_rule="all_done", retries=0)
    def summarize(batch_id: str | None = None, params=None, run_id=None, ti=None) -> dict:
        from medins.tasks import run_is_active, summarize_batch

        return summarize_batch(
            run_id=run_id,
            batch_id=batch_id or (params or {}).get("batch_id"),
            status_conn_id=status_conn_id,
            run_is_active=run_is_active(ti),
        )

    summary = summarize(batch_id)
    send_chunk >> summary
    return send_chunk, summary
