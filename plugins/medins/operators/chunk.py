"""Operator that sends one chunk of a batch to the medical-insurance gateway."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import timedelta
from functools import cached_property
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException

from medins.hooks.gateway import MedicalInsuranceHook
from medins.progress import refresh_progress
from medins.runner import ChunkRunner
from medins.store import StatusStore


class MedicalInsuranceChunkOperator(BaseOperator):
    """
    Send the open requests of one chunk of a batch and write each outcome into its row.

    Map it over the chunk descriptors the batch's registration returns; a descriptor carries the
    batch id and chunk number only, never the requests, which stay in the status table.

    :param chunk: Chunk descriptor ``{"batch_id": ..., "chunk_no": ...}``. (templated)
    :param medins_conn_id: Connection id of the gateway.
    :param status_conn_id: Connection id of the status store.
    :param concurrency: Calls in flight at once within the chunk.
    :param query_attempts: Sends per request and per try before it waits for the chunk's next try.
    :param soft_time_limit: After this long no new call starts; what is left goes to the next try.
    """

    template_fields: Sequence[str] = ("chunk",)
    ui_color = "#e8f4fa"

    def __init__(
        self,
        *,
        chunk: dict[str, Any],
        medins_conn_id: str = MedicalInsuranceHook.default_conn_name,
        status_conn_id: str = StatusStore.default_conn_name,
        concurrency: int = 16,
        query_attempts: int = 4,
        soft_time_limit: timedelta = timedelta(minutes=5),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.chunk = chunk
        self.medins_conn_id = medins_conn_id
        self.status_conn_id = status_conn_id
        self.concurrency = concurrency
        self.query_attempts = query_attempts
        self.soft_time_limit = soft_time_limit

    @cached_property
    def hook(self) -> MedicalInsuranceHook:
        """Return the gateway hook."""
        return MedicalInsuranceHook(medins_conn_id=self.medins_conn_id)

    def execute(self, context: Any) -> dict[str, Any]:
        """Process the chunk; raise to hand what is left to the next try."""
        batch_id = str(self.chunk["batch_id"])
        chunk_no = int(self.chunk["chunk_no"])
        ti = context["ti"]
        last_try = ti.try_number > self.retries
        deadline = time.monotonic() + self.soft_time_limit.total_seconds()

        with StatusStore.from_conn_id(self.status_conn_id) as store:
            concurrency = int(self.chunk.get("concurrency") or self.concurrency)
            runner = ChunkRunner(
                self.hook, store, concurrency=concurrency, query_attempts=self.query_attempts
            )
            try:
                report = runner.run(batch_id, chunk_no, last_try=last_try, deadline=deadline)
            finally:
                self.hook.close()
            self.log.info("%s", report.summary())
            progress = refresh_progress(store, batch_id)
            self.log.info(
                "Batch %s: %d of %d requests final (%.1f%%)",
                batch_id,
                progress["current"],
                progress["total"],
                progress["percentage"],
            )

        if report.left_open and report.stopped_early != "batch cancelled":
            raise AirflowException(
                f"{report.left_open} requests of chunk {chunk_no} are not final yet "
                f"({report.stopped_early or 'transient errors'}); the next try sends only those"
            )
        return {"chunk_no": chunk_no, "states": dict(report.states), "sent": report.sent}
