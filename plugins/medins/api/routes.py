"""
The routes of the status API, under ``/api/v1``: requests, batches, statistics, cancel.

Each request to a route opens its own :class:`~medins.store.StatusStore` on the Connection
``medins_status_default`` and closes it before the reply leaves (a store is not thread-safe).
Personal data is masked in every reply but a single request read with ``full=true``.
"""

from __future__ import annotations

import logging
import secrets
from datetime import UTC, datetime, timedelta
from functools import cache
from http import HTTPStatus
from typing import Annotated, Any

from airflow.sdk.exceptions import AirflowFailException
from fastapi import APIRouter, Body, Depends, HTTPException, Query
from fastapi.responses import JSONResponse

from medins.api.auth import can_edit_runs, can_read_runs, can_trigger_runs
from medins.api.models import (
    Batch,
    BatchCancelled,
    BatchPage,
    BatchStored,
    Problem,
    Statistics,
    Task,
    TaskCancelled,
    TaskPage,
    Timeline,
    TimelineBucket,
)
from medins.api.reports import Interval, ReportStore
from medins.catalog import load_catalog
from medins.masking import DEFAULT_PERSONAL_FIELDS, mask_data, mask_refusal, mask_text
from medins.progress import progress_of
from medins.states import FINAL, BatchState, RequestKind, RequestState
from medins.store import BatchIdTaken, RequestRow, StatusStore
from medins.timeutil import now_cst

log = logging.getLogger(__name__)

STATUS_CONN_ID = StatusStore.default_conn_name
GATEWAY_CONN_ID = "medins_gateway_default"
"""Connection of the gateway, whose interface catalog and institutions a stored batch is checked against."""
STORED_DAG_ID = "medins_stored_batch"
_STORE_KEYS = frozenset({"requests", "batch_id", "chunk_size"})
API_OUTAGE_SECONDS = 5.0
"""Connection of the status store the API reads and writes."""

MAX_PAGE_SIZE = 500
MAX_BATCH_PAGE_SIZE = 100
MAX_BUCKETS = 1000
"""Most intervals a timeline may span: 1000 minutes (about 16 hours) or 1000 hours (about 41 days)."""
TIMELINE_SPAN = timedelta(hours=24)
"""How far back a timeline reaches when it is given no start."""
MAX_PAGE = 1_000_000
"""Highest page number: a bound, so an absurd page is a 400 rather than an offset the database refuses."""

_CANCELLABLE = frozenset({RequestState.PENDING, RequestState.RETRY})

router = APIRouter(responses={"4XX": {"model": Problem}})

CanRead = Depends(can_read_runs)
Editor = Annotated[Any, Depends(can_edit_runs)]
Submitter = Annotated[Any, Depends(can_trigger_runs)]
CreatedFrom = Annotated[
    datetime | None,
    Query(description="Earliest created_at, inclusive: ISO 8601, UTC when it has no offset."),
]
CreatedTo = Annotated[
    datetime | None,
    Query(description="Latest created_at, inclusive: ISO 8601, UTC when it has no offset."),
]
ApiCode = Annotated[str | None, Query(max_length=255, description="Interface code, e.g. 1101.")]
OrgCode = Annotated[str | None, Query(max_length=255, description="Institution code.")]
BatchId = Annotated[str | None, Query(max_length=255, description="Batch id.")]


@router.get("/tasks/{task_id}", dependencies=[CanRead])
def get_task(
    task_id: str,
    full: Annotated[bool, Query(description="Show personal data unmasked.")] = False,
) -> Task:
    """Return one request."""
    with _open_store() as store:
        row = store.get(task_id)

    if row is None or row.kind == RequestKind.BATCH:
        raise HTTPException(HTTPStatus.NOT_FOUND, _not_a_task(task_id, row))
    return _task(row, full=full)


@router.get("/tasks", dependencies=[CanRead])
def list_tasks(
    status: Annotated[
        list[RequestState] | None, Query(description="Only requests in these states (repeatable).")
    ] = None,
    api_code: ApiCode = None,
    org_code: OrgCode = None,
    batch_id: BatchId = None,
    created_from: CreatedFrom = None,
    created_to: CreatedTo = None,
    page: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 1,
    page_size: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 50,
) -> TaskPage:
    """Return one page of requests, newest first; batch rows are not requests."""
    created_from, created_to = _time_range(created_from, created_to)

    with _open_store() as store:
        rows, total = store.list_tasks(
            status=status,
            api_code=api_code,
            org_code=org_code,
            batch_id=batch_id,
            created_from=created_from,
            created_to=created_to,
            offset=(page - 1) * page_size,
            limit=page_size,
        )

    return TaskPage(items=[_task(row) for row in rows], total=total, page=page, page_size=page_size)


@router.get("/batches", dependencies=[CanRead])
def list_batches(
    status: Annotated[
        list[BatchState] | None, Query(description="Only batches in these states (repeatable).")
    ] = None,
    dag_id: Annotated[
        list[str] | None,
        Query(description="Only batches registered by runs of these DAGs (repeatable), e.g. medins_batch."),
    ] = None,
    created_from: CreatedFrom = None,
    created_to: CreatedTo = None,
    page: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 1,
    page_size: Annotated[int, Query(ge=1, le=MAX_BATCH_PAGE_SIZE)] = 20,
) -> BatchPage:
    """Return one page of batches, newest first, each with its progress counted from its requests now."""
    created_from, created_to = _time_range(created_from, created_to)

    with _open_store() as store:
        rows, total = store.list_batches(
            status=status,
            dag_id=dag_id,
            created_from=created_from,
            created_to=created_to,
            offset=(page - 1) * page_size,
            limit=page_size,
        )
        counts = store.counts_by_batch([row.task_id for row in rows])

    items = [_batch(row, counts.get(row.task_id, {})) for row in rows]
    return BatchPage(items=items, total=total, page=page, page_size=page_size)


@router.get("/batches/{batch_id}", dependencies=[CanRead])
def get_batch(batch_id: str) -> Batch:
    """Return a batch's progress, counted from its requests now, and what its registration recorded."""
    with _open_store() as store:
        batch = store.get_batch(batch_id)
        counts = store.counts(batch_id) if batch is not None else {}

    if batch is None:
        raise HTTPException(HTTPStatus.NOT_FOUND, f"No batch {batch_id!r} in the status table.")
    return _batch(batch, counts)


@router.get("/statistics", dependencies=[CanRead])
def get_statistics(
    created_from: CreatedFrom = None,
    created_to: CreatedTo = None,
    api_code: ApiCode = None,
    org_code: OrgCode = None,
    batch_id: BatchId = None,
) -> Statistics:
    """Count requests by state, by interface and by institution."""
    created_from, created_to = _time_range(created_from, created_to)

    with _open_store() as store:
        counts = store.statistics(
            api_code=api_code,
            org_code=org_code,
            batch_id=batch_id,
            created_from=created_from,
            created_to=created_to,
        )

    by_status = counts["by_status"]
    return Statistics(
        total=counts["total"],
        success_rate=_success_rate(by_status),
        by_status=by_status,
        by_api_code={code or "": states for code, states in counts["by_api_code"].items()},
        by_org_code={code or "": states for code, states in counts["by_org_code"].items()},
    )


@router.get("/statistics/timeline", dependencies=[CanRead])
def get_timeline(
    interval: Annotated[Interval, Query(description="Count per minute or per hour, in UTC.")] = Interval.HOUR,
    created_from: Annotated[
        datetime | None,
        Query(
            description="Earliest created_at, inclusive (ISO 8601, UTC when it has no offset); "
            "24 hours before created_to by default."
        ),
    ] = None,
    created_to: Annotated[
        datetime | None,
        Query(
            description="Latest created_at, inclusive (ISO 8601, UTC when it has no offset); now by default."
        ),
    ] = None,
    api_code: ApiCode = None,
    org_code: OrgCode = None,
    batch_id: BatchId = None,
) -> Timeline:
    """Count requests by state per minute or hour of their created_at, with each interval's success rate."""
    created_from, created_to = _time_range(created_from, created_to)
    end = created_to or datetime.now(UTC).replace(microsecond=0)
    start = created_from or end - TIMELINE_SPAN
    if start > end:
        raise HTTPException(HTTPStatus.BAD_REQUEST, f"created_from ({start.isoformat()}) is in the future.")
    if end - start > interval.length * MAX_BUCKETS:
        raise HTTPException(
            HTTPStatus.BAD_REQUEST,
            f"{start.isoformat()} to {end.isoformat()} spans more than {MAX_BUCKETS} {interval.value}s: "
            "narrow the range, or count per hour.",
        )

    with _open_store() as store:
        counted = store.timeline(
            interval, start, end, api_code=api_code, org_code=org_code, batch_id=batch_id
        )

    buckets = [
        TimelineBucket(
            start=moment,
            total=sum(by_status.values()),
            success_rate=_success_rate(by_status),
            by_status=by_status,
        )
        for moment, by_status in counted
    ]
    return Timeline(interval=interval.value, created_from=start, created_to=end, buckets=buckets)


@router.post("/batches", status_code=HTTPStatus.CREATED)
def store_batch(
    body: Annotated[dict[str, Any], Body(description="requests, and optionally batch_id and chunk_size.")],
    user: Submitter,
) -> BatchStored:
    """
    Check a batch and store its requests; trigger ``medins_stored_batch`` with its ``batch_id`` to send it.

    The body takes the keys of ``medins_batch``'s ``conf`` and is checked against the same schema, with
    the same reasons (400); a bad single request becomes a ``REJECTED`` row with its reason. Stored
    again, a batch adds only the requests whose ``request_id`` is new.
    """
    from airflow.sdk.definitions.param import ParamsDict, ParamValidationError

    from medins.params import batch_params
    from medins.tasks import store_batch as store

    params = ParamsDict(batch_params())
    if unknown := sorted(set(body) - _STORE_KEYS):
        raise HTTPException(
            HTTPStatus.BAD_REQUEST,
            f"unknown keys: {', '.join(unknown)}; the body takes {', '.join(sorted(_STORE_KEYS))} "
            f"(concurrency goes in the {STORED_DAG_ID} trigger's conf)",
        )
    try:
        params.update(body)
        checked = params.validate()
    except ParamValidationError as err:
        raise HTTPException(HTTPStatus.BAD_REQUEST, mask_refusal(str(err))) from None
    batch_id = checked["batch_id"] or new_batch_id()

    try:
        stored = store(
            checked["requests"],
            batch_id=batch_id,
            chunk_size=checked["chunk_size"],
            medins_conn_id=GATEWAY_CONN_ID,
            status_conn_id=STATUS_CONN_ID,
            outage_seconds=API_OUTAGE_SECONDS,
        )
    except (BatchIdTaken, AirflowFailException) as err:
        raise HTTPException(HTTPStatus.CONFLICT, str(err)) from None

    log.info(
        "%s stored batch %s: %d requests, %d rejected, %d new rows",
        _name(user),
        batch_id,
        stored["submitted"],
        stored["rejected"],
        stored["stored"],
    )
    return BatchStored(
        **{key: stored[key] for key in BatchStored.model_fields if key in stored}, dag_id=STORED_DAG_ID
    )


@router.post("/batches/{batch_id}/cancel")
def cancel_batch(batch_id: str, user: Editor) -> BatchCancelled:
    """Cancel a batch: its requests not sent yet are cancelled; those already sent keep their true state."""
    with _open_store() as store:
        if store.get_batch(batch_id) is None:
            raise HTTPException(HTTPStatus.NOT_FOUND, f"No batch {batch_id!r} in the status table.")
        cancelled = store.cancel_batch(batch_id)

    log.info("%s cancelled batch %s: %d requests not sent yet cancelled", _name(user), batch_id, cancelled)
    return BatchCancelled(batch_id=batch_id, status=RequestState.CANCELLED, cancelled=cancelled)


@router.post(
    "/tasks/{task_id}/cancel",
    responses={HTTPStatus.CONFLICT: {"model": TaskCancelled, "description": "Not PENDING or RETRY."}},
)
def cancel_task(task_id: str, user: Editor) -> Any:
    """Cancel a request that is ``PENDING`` or ``RETRY``; any other state is left as it is (409)."""
    with _open_store() as store:
        before = store.get(task_id)
        after = store.cancel_task(task_id) if before is not None else None

    if before is None or after is None:
        raise HTTPException(HTTPStatus.NOT_FOUND, _not_a_task(task_id, before))
    if before.status not in _CANCELLABLE or after.status != RequestState.CANCELLED:
        return JSONResponse(
            status_code=HTTPStatus.CONFLICT,
            content={
                "task_id": after.task_id,
                "status": after.status,
                "detail": f"Request {after.task_id!r} is {after.status}: only PENDING or RETRY "
                "requests can be cancelled.",
            },
        )
    log.info("%s cancelled request %s (was %s)", _name(user), task_id, before.status)
    return TaskCancelled(task_id=after.task_id, status=after.status)


def new_batch_id() -> str:
    """Return a batch id for a batch stored without one: the time in China and a random part."""
    return f"batch-{now_cst():%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def _open_store() -> ReportStore:
    """
    Return a new store on the API's Connection; use it in a ``with`` block so it is closed.

    A caller is not kept waiting through a database outage: after a few seconds of reconnecting the
    store gives up, and the app answers 503.
    """
    return ReportStore.from_conn_id(STATUS_CONN_ID, outage_seconds=API_OUTAGE_SECONDS)


def _batch(row: RequestRow, counts: dict[str, int]) -> Batch:
    """Return a batch's own row, with its requests counted by state, as the API shows it."""
    info = row.data
    return Batch(
        batch_id=row.task_id,
        status=row.status,
        **progress_of(counts),
        dag_id=info.get("dag_id"),
        run_id=info.get("run_id"),
        submitted=info.get("submitted"),
        rejected=info.get("rejected"),
        already_stored=info.get("already_stored"),
        chunks=info.get("chunks"),
        created_at=row.created_at,
        updated_at=row.updated_at,
        finished_at=_in_utc(info.get("finished_at")),
    )


def _in_utc(stamp: str | None) -> datetime | None:
    """Return a time the batch row keeps in China time in UTC, as every other time of the API is."""
    return datetime.fromisoformat(stamp).astimezone(UTC) if stamp else None


def _success_rate(by_status: dict[str, int]) -> float:
    """Return SUCCESS over the requests in a final state, 0.0 when none is final."""
    final = sum(count for state, count in by_status.items() if state in FINAL)
    return round(by_status.get(RequestState.SUCCESS, 0) / final, 4) if final else 0.0


@cache
def _personal_fields() -> frozenset[str]:
    """Return the fields masked in replies: the defaults and the catalog's ``personal_fields``."""
    return DEFAULT_PERSONAL_FIELDS | load_catalog().personal_fields


_REQUEST_IDS = ("request_id", "api_code", "org_code")


def _task(row: RequestRow, *, full: bool = False) -> Task:
    """Return a request row as the API shows it, personal data masked unless ``full``."""
    data = row.data or {}
    request = data.get("request") or {}
    result = data.get("output")
    err_msg = data.get("err_msg")
    error = row.error
    if not full:
        fields = _personal_fields()
        # The request's own ids are shown whole, as task_id, api_code and org_code already are.
        shown = {key: request[key] for key in _REQUEST_IDS if key in request}
        request = {**mask_data(request, fields), **shown} if isinstance(request, dict) else request
        result = mask_data(result, fields)
        err_msg = mask_text(err_msg) if isinstance(err_msg, str) else err_msg
        error = mask_text(error) if error else error

    return Task(
        task_id=row.task_id,
        status=row.status,
        batch_id=row.batch_id,
        api_code=row.api_code,
        org_code=row.org_code,
        kind=row.kind,
        attempts=row.attempts,
        msgid=row.msgid,
        error=error,
        created_at=row.created_at,
        updated_at=row.updated_at,
        request=request if isinstance(request, dict) else {"raw": request},
        result=result,
        infcode=data.get("infcode"),
        err_msg=err_msg,
    )


def _time_range(
    created_from: datetime | None, created_to: datetime | None
) -> tuple[datetime | None, datetime | None]:
    """Read times without an offset as UTC; refuse (400) a range that ends before it starts."""
    start, end = _utc("created_from", created_from), _utc("created_to", created_to)
    if start is not None and end is not None and start > end:
        raise HTTPException(
            HTTPStatus.BAD_REQUEST,
            f"created_from ({start.isoformat()}) is after created_to ({end.isoformat()}).",
        )
    return start, end


def _utc(name: str, moment: datetime | None) -> datetime | None:
    """Return a time in UTC (UTC when it has no offset); refuse (400) one that UTC cannot hold."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00:00+14:00 is in the year 0 in UTC
        raise HTTPException(
            HTTPStatus.BAD_REQUEST, f"{name}: {moment.isoformat()} is out of range in UTC."
        ) from None


def _not_a_task(task_id: str, row: RequestRow | None) -> str:
    if row is not None and row.kind == RequestKind.BATCH:
        return f"{task_id!r} is a batch, not a request: see /batches/{task_id}."
    return f"No request {task_id!r} in the status table."


def _name(user: Any) -> str:
    """Return the name of an Airflow user (a ``BaseUser``) for the log."""
    return str(user.get_name())
