"""Operator that makes one interface call and records it as a row of the status table."""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from medins.hooks.gateway import MedicalInsuranceHook
from medins.progress import refresh_progress
from medins.runner import ChunkRunner
from medins.states import BatchState
from medins.store import StatusStore
from medins.tasks import register_batch


class MedicalInsuranceCallOperator(BaseOperator):
    """
    Make the single call described by the DAG run's params and write its outcome into its row.

    The request is read from ``params`` at run time (``api_code``, ``org_code``, ``data``,
    ``request_id``, ``insuplc_admdvs``) and is never a templated field, so personal data stays out
    of rendered fields. The call is stored as a batch of one whose id is the DAG run id: the same
    validation, the same table, the same rules for retries and unknown writes as a batch.

    :param medins_conn_id: Connection id of the gateway.
    :param status_conn_id: Connection id of the status store.
    """

    ui_color = "#e8f4fa"

    def __init__(
        self,
        *,
        medins_conn_id: str = MedicalInsuranceHook.default_conn_name,
        status_conn_id: str = StatusStore.default_conn_name,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.medins_conn_id = medins_conn_id
        self.status_conn_id = status_conn_id

    def execute(self, context: Any) -> dict[str, Any]:
        """Store the request, send it, and return its task id and final state."""
        params = context["params"]
        request = {
            key: params[key] for key in ("api_code", "org_code", "data", "request_id", "insuplc_admdvs")
        }
        request = {key: value for key, value in request.items() if value is not None}
        run_id = context["run_id"]
        chunks = register_batch(
            [request],
            run_id=run_id,
            dag_id=context["dag"].dag_id,
            medins_conn_id=self.medins_conn_id,
            status_conn_id=self.status_conn_id,
        )
        hook = MedicalInsuranceHook(medins_conn_id=self.medins_conn_id)
        with StatusStore.from_conn_id(self.status_conn_id) as store:
            if chunks:
                last_try = context["ti"].try_number > self.retries
                report = ChunkRunner(hook, store, concurrency=1).run(run_id, 0, last_try=last_try)
                hook.close()
                self.log.info("%s", report.summary())
            rows = store.rows(run_id)
            row = rows[0] if rows else None
            task_id = request.get("request_id") or (row.task_id if row else None)
            final = store.get(task_id) if task_id else None
            done = final is not None and final.status not in ("PENDING", "PROCESSING", "RETRY")
            refresh_progress(store, run_id, status=BatchState.DONE if done else BatchState.RUNNING)

        if final is None:
            raise AirflowFailException(f"request {task_id} was not stored; see the log above")
        if not done:
            raise AirflowFailException(f"request {task_id} is {final.status} after this try: {final.error}")
        self.log.info("Request %s: %s %s", final.task_id, final.status, final.error or "")
        return {"task_id": final.task_id, "status": str(final.status), "error": final.error}
