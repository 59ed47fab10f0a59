"""What can go wrong when submitting to, or reading from, the medins product on Airflow."""

from __future__ import annotations


class MedinsClientError(Exception):
    """Base of every error the client raises; its message says what failed and what to do."""


class InputError(MedinsClientError):
    """A file, an option or an argument given by the user is unusable (the CLI exits with 2)."""


class ServerUnavailable(MedinsClientError):
    """Airflow could not be reached, or answered 5xx, on every try."""


class AuthenticationFailed(MedinsClientError):
    """Airflow refused the username and password, or the user lacks a permission the call needs."""


class StatusApiUnavailable(MedinsClientError):
    """The api-server does not serve the status API (the medins plugin is missing or not loaded)."""


class BadRequest(MedinsClientError):
    """The status API refused a parameter (HTTP 400)."""


class SubmissionRefused(MedinsClientError):
    """
    Airflow refused to trigger the DAG run; ``reason`` is Airflow's own explanation.

    :param dag_id: The DAG that was to be triggered.
    :param reason: Airflow's reason (the ``detail`` of its reply). Its first paragraph, at most 500
        characters, becomes ``reason`` and the message; ``details`` keeps all of it (a schema error
        goes on with the schema and the value refused, which may hold personal data).
    :param status: The HTTP status of the refusal.
    """

    def __init__(self, dag_id: str, reason: str, status: int | None = None) -> None:
        short = reason.strip().split("\n\n", 1)[0].strip()
        self.dag_id = dag_id
        self.reason = short if len(short) <= 500 else short[:497] + "..."
        self.details = reason
        self.status = status
        super().__init__(f"Airflow refused to trigger {dag_id}: {self.reason}")


class AlreadySubmitted(SubmissionRefused):
    """A DAG run with this batch's id exists already: the batch was submitted before."""

    def __init__(self, dag_id: str, batch_id: str, run_id: str) -> None:
        self.batch_id = batch_id
        self.run_id = run_id
        super().__init__(
            dag_id,
            f"batch {batch_id} was submitted already (DAG run {run_id} exists). Follow it with "
            f"`medins status {batch_id} --batch`, or submit under another batch id",
            status=409,
        )


class SubmissionFailed(MedinsClientError):
    """The DAG run failed before it stored the request or batch being waited for."""


class NotFound(MedinsClientError):
    """The status table has no row with this id (yet)."""

    def __init__(self, message: str, row_id: str) -> None:
        self.row_id = row_id
        super().__init__(message)


class TaskNotFound(NotFound):
    """No request row with this task id; a call's row appears when its DAG run's task starts."""


class BatchNotFound(NotFound):
    """No batch row with this id; a batch's row appears when its ``register`` task runs."""


class TaskWaitTimeout(MedinsClientError, TimeoutError):
    """
    A request or batch was not final when the wait ran out; it goes on running in Airflow.

    :param task_id: The request's task id, or the batch id.
    :param waited: Seconds waited.
    :param last_state: The last state seen, None when the row never appeared.
    :param what: ``request`` or ``batch``.
    """

    def __init__(self, task_id: str, waited: float, last_state: str | None, what: str = "request") -> None:
        self.task_id = task_id
        self.waited = waited
        self.last_state = last_state
        seen = (
            f"last state seen: {last_state}"
            if last_state
            else "its row was never seen: the DAG run may still be queued, or its DAG paused"
        )
        look = f"medins status {task_id}" + (" --batch" if what == "batch" else "")
        super().__init__(
            f"{what} {task_id} is not final after waiting {waited:.1f} s ({seen}). It goes on running "
            f"in Airflow: wait again, or look with `{look}`"
        )
