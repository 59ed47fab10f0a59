"""The work of ``medins_batch``'s Python tasks, kept out of the DAG file."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from medins.batch import BatchPlan, batch_id_for, plan_batch
from medins.hooks.gateway import MedicalInsuranceHook
from medins.progress import refresh_progress
from medins.states import BatchState, RequestKind
from medins.store import StatusStore
from medins.timeutil import now_cst

log = logging.getLogger(__name__)

#: Tells whether a DAG run (dag_id, run_id) is still queued or running; tasks ask Airflow.
RunIsActive = Callable[[str, str], bool]


def _sent_by_another_run(batch: Any, run_id: str, run_is_active: RunIsActive | None) -> str | None:
    """Return the run id of another DAG run that is sending ``batch`` now, if there is one."""
    if batch is None or run_is_active is None or batch.status != BatchState.RUNNING:
        return None
    owner, owner_dag = batch.data.get("run_id"), batch.data.get("dag_id")
    if not owner or owner == run_id or not owner_dag:
        return None
    return owner if run_is_active(owner_dag, owner) else None


def register_batch(
    requests: Sequence[Any],
    *,
    run_id: str,
    dag_id: str,
    batch_id: str | None = None,
    chunk_size: int | None = None,
    concurrency: int = 16,
    medins_conn_id: str = MedicalInsuranceHook.default_conn_name,
    status_conn_id: str = StatusStore.default_conn_name,
    run_is_active: RunIsActive | None = None,
) -> list[dict[str, Any]]:
    """
    Store every request of the batch as a row and return the chunk descriptors to map over.

    A batch another DAG run is still sending (the same ``batch_id`` submitted again) is left to that
    run: nothing is stored and no chunk is returned, so no request is sent by two runs at once.
    """
    batch_id = batch_id_for(run_id, batch_id)

    with StatusStore.from_conn_id(status_conn_id) as store:
        existing = _existing_batch(store, batch_id)
        if owner := _sent_by_another_run(existing, run_id, run_is_active):
            _leave_to(batch_id, owner)
            return []
        plan = plan_for(
            store, requests, batch_id=batch_id, chunk_size=chunk_size, medins_conn_id=medins_conn_id
        )
        stored = store_plan(store, plan, existing, status=BatchState.RUNNING, dag_id=dag_id, run_id=run_id)
        open_chunks = store.open_chunks(batch_id)
        progress = refresh_progress(store, batch_id)

    chunks = [chunk for chunk in plan.chunks if chunk["chunk_no"] in open_chunks]
    _log_stored(stored, len(chunks))
    log.info("Progress of batch %s: %s", batch_id, progress["counts"])
    return [{**chunk, "concurrency": concurrency} for chunk in chunks]


def store_batch(
    requests: Sequence[Any],
    *,
    batch_id: str,
    chunk_size: int | None = None,
    medins_conn_id: str = MedicalInsuranceHook.default_conn_name,
    status_conn_id: str = StatusStore.default_conn_name,
    outage_seconds: float | None = None,
) -> dict[str, Any]:
    """
    Store a batch for ``medins_stored_batch`` to send, and return what was stored.

    The requests are checked and stored as ``medins_batch``'s registration would (``REJECTED`` rows
    with their reason, request ids already stored left as they are); the batch's own row is
    ``STORED`` and keeps the chunk plan. Nothing is sent until a ``medins_stored_batch`` run is
    triggered with the batch id. A batch a run is sending keeps its state: its new requests are
    sent by a later run.
    """
    kwargs = {} if outage_seconds is None else {"outage_seconds": outage_seconds}
    with StatusStore.from_conn_id(status_conn_id, **kwargs) as store:
        existing = _existing_batch(store, batch_id)
        plan = plan_for(
            store, requests, batch_id=batch_id, chunk_size=chunk_size, medins_conn_id=medins_conn_id
        )
        status = existing.status if existing else BatchState.STORED
        stored = store_plan(store, plan, existing, status=status)
        refresh_progress(store, batch_id)
    _log_stored(stored, len(plan.chunks))
    return stored


def take_stored_batch(
    batch_id: str,
    *,
    run_id: str,
    dag_id: str,
    concurrency: int = 16,
    status_conn_id: str = StatusStore.default_conn_name,
    run_is_active: RunIsActive | None = None,
) -> list[dict[str, Any]]:
    """
    Take a batch stored by :func:`store_batch` for this DAG run, and return the chunks to map over.

    Only chunks with requests that are not final are returned, so a run triggered again for the
    same batch resumes it. A batch another run is sending is left to that run.
    """
    from airflow.sdk.exceptions import AirflowFailException

    with StatusStore.from_conn_id(status_conn_id) as store:
        batch = store.get_batch(batch_id)
        if batch is None:
            raise AirflowFailException(
                f"no stored batch {batch_id!r}: store it first with POST /medins/api/v1/batches "
                "(MedicalInsuranceClient.call_batch_async does), then trigger this DAG with its batch_id"
            )
        if owner := _sent_by_another_run(batch, run_id, run_is_active):
            _leave_to(batch_id, owner)
            return []
        info = {"dag_id": dag_id, "run_id": run_id, "started_at": now_cst().isoformat()}
        store.put_batch(batch_id, BatchState.RUNNING, {**batch.data, **info})
        open_chunks = store.open_chunks(batch_id)
        progress = refresh_progress(store, batch_id)

    plan = batch.data.get("chunk_plan", [])
    chunks = [chunk for chunk in plan if chunk["chunk_no"] in open_chunks]
    log.info(
        "Batch %s: %d of %d chunks hold requests to send; progress %s",
        batch_id,
        len(chunks),
        len(plan),
        progress["counts"],
    )
    return [{**chunk, "concurrency": concurrency} for chunk in chunks]


def plan_for(
    store: StatusStore,
    requests: Sequence[Any],
    *,
    batch_id: str,
    chunk_size: int | None,
    medins_conn_id: str = MedicalInsuranceHook.default_conn_name,
) -> BatchPlan:
    """
    Check a batch's requests against the catalog, the gateway Connection's institutions and the table.

    A request whose ``request_id`` is another batch's id is rejected: stored under that id, it would
    look already stored and never be sent.
    """
    hook = MedicalInsuranceHook(medins_conn_id=medins_conn_id)
    chosen = (request.get("request_id") for request in requests if isinstance(request, Mapping))
    return plan_batch(
        requests,
        batch_id=batch_id,
        catalog=hook.catalog,
        institutions=hook.institutions,
        chunk_size=chunk_size,
        batch_ids=store.batch_ids_among(rid for rid in chosen if isinstance(rid, str)),
    )


def store_plan(
    store: StatusStore,
    plan: BatchPlan,
    existing: Any,
    *,
    status: str,
    dag_id: str | None = None,
    run_id: str | None = None,
) -> dict[str, Any]:
    """
    Write a planned batch's rows and its own row, and return what was stored.

    A batch stored for a later run (no ``dag_id``) keeps its chunk plan in its own row.
    """
    inserted = store.register(plan.rows)
    earlier = existing.data if existing else {}
    info = {
        "submitted": plan.total,
        "rejected": plan.rejected,
        "already_stored": plan.total - inserted,
        "chunks": len(plan.chunks),
        "by_api": dict(sorted(plan.by_api.items())),
        "started_at": earlier.get("started_at") or now_cst().isoformat(),
    }
    if dag_id:
        info.update(dag_id=dag_id, run_id=run_id)
    else:  # stored for a later run: it reads its chunks from here
        info["chunk_plan"] = plan.chunks
    store.put_batch(plan.batch_id, status, {**earlier, **info})
    return {
        "batch_id": plan.batch_id,
        "status": status,
        **{key: info[key] for key in ("submitted", "rejected", "already_stored")},
        "stored": inserted,
        "chunks": len(plan.chunks),
        "new_batch": existing is None,
    }


def _existing_batch(store: StatusStore, batch_id: str) -> Any:
    """Return the batch's own row, or None; refuse a batch id that is already a request's id."""
    taken = store.get(batch_id)
    if taken is not None and taken.kind != RequestKind.BATCH:
        from airflow.sdk.exceptions import AirflowFailException

        raise AirflowFailException(
            f"batch id {batch_id!r} is the request_id of a request of batch {taken.batch_id}: "
            "nothing was stored; submit again with another batch id"
        )
    return taken


def _leave_to(batch_id: str, owner: str) -> None:
    log.warning(
        "Batch %s is being sent by run %s: this run stores and sends nothing. Follow that run, "
        "or submit again once it has ended to resume what it leaves open.",
        batch_id,
        owner,
    )


def _log_stored(stored: dict[str, Any], chunks: int) -> None:
    skipped = stored["submitted"] - stored["stored"]
    log.info(
        "Batch %s: %d requests, %d rejected at the door; %d stored now, %d already in the table; "
        "%d chunks hold requests to send",
        stored["batch_id"],
        stored["submitted"],
        stored["rejected"],
        stored["stored"],
        skipped,
        chunks,
    )
    if skipped and stored["new_batch"]:
        log.warning(
            "%d request_ids of batch %s were already stored by an earlier batch and are left as they are",
            skipped,
            stored["batch_id"],
        )


def summarize_batch(
    *,
    run_id: str,
    batch_id: str | None = None,
    status_conn_id: str = StatusStore.default_conn_name,
    run_is_active: RunIsActive | None = None,
) -> dict[str, Any]:
    """Write the batch's final counts and progress; fail when requests were left open."""
    from airflow.sdk.exceptions import AirflowFailException

    batch_id = batch_id_for(run_id, batch_id)
    with StatusStore.from_conn_id(status_conn_id) as store:
        batch = store.get_batch(batch_id)
        if batch is None:
            raise AirflowFailException(
                f"no batch {batch_id} in the status table: nothing was stored or sent; "
                "the run's first task says why"
            )
        if owner := _sent_by_another_run(batch, run_id, run_is_active):
            log.info(
                "Batch %s is being sent by run %s, which summarizes it; nothing to do here.", batch_id, owner
            )
            return {"batch_id": batch_id, "sent_by": owner}
        cancelled = batch is not None and batch.status == BatchState.CANCELLED
        if cancelled:
            store.cancel_batch(batch_id)  # requests a stopped chunk left waiting are cancelled too
        progress = refresh_progress(store, batch_id)
        left_open = progress["total"] - progress["current"]
        status = (
            BatchState.CANCELLED if cancelled else (BatchState.DONE if not left_open else BatchState.RUNNING)
        )
        progress = refresh_progress(store, batch_id, status=status, finished_at=now_cst().isoformat())

    log.info(
        "Batch %s %s: %d of %d requests final (%.1f%%); by state: %s",
        batch_id,
        status,
        progress["current"],
        progress["total"],
        progress["percentage"],
        ", ".join(f"{state} {count}" for state, count in progress["counts"].items()),
    )
    if left_open and not cancelled:
        raise AirflowFailException(
            f"{left_open} requests of batch {batch_id} are not final: a chunk failed after all its tries. "
            "Clear the failed send_chunk task instances to resume them; "
            "succeeded requests are not sent again."
        )
    return {key: progress[key] for key in ("current", "total", "percentage", "counts")}


def run_is_active(ti: Any) -> RunIsActive | None:
    """Return a check, asked through ``ti``, of whether a DAG run is still queued or running; None without."""
    if ti is None:
        return None

    def check(dag_id: str, run_id: str) -> bool:
        state = ti.get_dagrun_state(dag_id=dag_id, run_id=run_id)
        return getattr(state, "value", state) in ("queued", "running")  # the Task SDK's enum, or a str

    return check
