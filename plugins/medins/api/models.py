"""The status API's replies, as ``docs/status-api.md`` describes them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field


class Problem(BaseModel):
    """Why a call was refused: 400 bad parameter, 401 no valid token, 403 not allowed, 404 unknown id."""

    detail: str


class Task(BaseModel):
    """One request: its row of ``async_task_status``, personal data masked unless asked for in full."""

    task_id: str
    status: str
    batch_id: str | None
    api_code: str | None
    org_code: str | None
    kind: str
    attempts: int
    msgid: str | None = Field(description="The last message id the request was sent under.")
    error: str | None = Field(description="Why the request failed, was rejected or is unknown.")
    created_at: datetime | None
    updated_at: datetime | None
    request: dict[str, Any] = Field(description="The request as submitted: api_code, org_code, data.")
    result: Any = Field(description="The interface's output, null until the request succeeded.")
    infcode: Any = Field(description="The gateway's infcode: 0 success, negative failure.")
    err_msg: str | None = Field(description="The gateway's err_msg.")


class TaskPage(BaseModel):
    """One page of requests, newest first."""

    items: list[Task]
    total: int = Field(description="Requests matching the filters, on every page.")
    page: int
    page_size: int


class Batch(BaseModel):
    """A batch's progress, counted now, and what its registration recorded."""

    batch_id: str
    status: str = Field(description="RUNNING, DONE or CANCELLED.")
    current: int = Field(description="Requests in a final state.")
    total: int
    percentage: float
    counts: dict[str, int] = Field(description="Requests by state.")
    dag_id: str | None
    run_id: str | None
    submitted: int | None
    rejected: int | None
    already_stored: int | None = Field(description="Requests whose request_id was in the table already.")
    chunks: int | None = Field(None, description="Chunks registration planned, a send_chunk instance each.")
    created_at: datetime | None
    updated_at: datetime | None
    finished_at: datetime | None


class BatchPage(BaseModel):
    """One page of batches, newest first, each with its requests counted now."""

    items: list[Batch]
    total: int = Field(description="Batches matching the filters, on every page.")
    page: int
    page_size: int


class Statistics(BaseModel):
    """Requests counted by state, by interface and by institution."""

    total: int
    success_rate: float = Field(description="SUCCESS among requests in a final state, 0 to 1.")
    by_status: dict[str, int]
    by_api_code: dict[str, dict[str, int]] = Field(
        description='Interface code -> state -> count; "" for requests without a code (rejected).'
    )
    by_org_code: dict[str, dict[str, int]] = Field(
        description='Institution code -> state -> count; "" for requests without one (rejected).'
    )


class TimelineBucket(BaseModel):
    """The requests created in one minute or hour, counted by state."""

    start: datetime = Field(description="Start of the interval, UTC.")
    total: int
    success_rate: float = Field(description="SUCCESS among requests in a final state, 0 to 1.")
    by_status: dict[str, int]


class Timeline(BaseModel):
    """Requests counted per interval of their created_at."""

    interval: str = Field(description="minute or hour.")
    created_from: datetime
    created_to: datetime
    buckets: list[TimelineBucket] = Field(
        description="The intervals that hold requests, oldest first; intervals without any are left out."
    )


class BatchStored(BaseModel):
    """What ``POST /batches`` stored, and how to send it."""

    batch_id: str
    status: str = Field(description="STORED for a new batch; a batch stored before keeps its state.")
    submitted: int = Field(description="Requests in the body.")
    rejected: int = Field(description="Requests refused at the door: REJECTED rows with their reason.")
    stored: int = Field(description="Rows written now.")
    already_stored: int = Field(description="Requests whose request_id was in the table already.")
    chunks: int = Field(description="Chunks the batch's valid requests are cut into.")
    dag_id: str = Field(description="The DAG to trigger with {'batch_id': ...} to send the batch.")


class BatchCancelled(BaseModel):
    """The outcome of cancelling a batch."""

    batch_id: str
    status: str
    cancelled: int = Field(description="Requests cancelled before they were sent.")


class TaskCancelled(BaseModel):
    """The state of a request after a cancel."""

    task_id: str
    status: str
