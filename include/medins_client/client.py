"""
Client of the medins product for programs: submit calls and batches, follow them, read the results.

It needs only the Airflow api-server's URL and an Airflow user; it never touches a database.
Submitting triggers ``medins_call`` or ``medins_batch`` through Airflow's REST API with the official
``apache-airflow-client``; everything else reads the status API that the medins api-server plugin
serves under ``/medins/api/v1`` (see ``docs/status-api.md``).

A request's row in ``async_task_status`` appears only when its DAG run's first task starts, seconds
after the trigger: until then :meth:`MedicalInsuranceClient.get_task_result` raises
:class:`~medins_client.errors.TaskNotFound` and the ``wait_for_*`` methods keep polling.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, date, datetime
from typing import Any, TypeVar
from urllib.parse import quote

import requests
import urllib3
from airflow_client.client import ApiClient, Configuration, DagRunApi, TriggerDAGRunPostBody
from airflow_client.client.exceptions import (
    ApiException,
    BadRequestException,
    ConflictException,
    NotFoundException,
    ServiceException,
    UnprocessableEntityException,
)
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from medins_client.errors import (
    AlreadySubmitted,
    AuthenticationFailed,
    BadRequest,
    BatchNotFound,
    InputError,
    MedinsClientError,
    NotFound,
    ServerUnavailable,
    StatusApiUnavailable,
    SubmissionFailed,
    SubmissionRefused,
    TaskNotFound,
    TaskWaitTimeout,
)
from medins_client.files import MAX_REQUESTS

log = logging.getLogger(__name__)

T = TypeVar("T")

CALL_DAG_ID = "medins_call"
BATCH_DAG_ID = "medins_batch"
STORED_BATCH_DAG_ID = "medins_stored_batch"
#: Batches larger than this are stored through the status API first, then sent by a run of
#: ``medins_stored_batch`` whose ``conf`` holds only the batch id: Airflow copies a run's ``conf`` to
#: every task instance, which costs each chunk time and memory in proportion to the batch.
STORE_FIRST_ABOVE = 1000
#: Seconds the status API may take to check and store a batch of up to 50,000 requests.
STORE_TIMEOUT = 300
STATUS_API_PATH = "/medins/api/v1"

#: States a request never leaves: waiting for a request ends at one of them.
FINAL_STATES = frozenset({"SUCCESS", "FAILURE", "REJECTED", "UNKNOWN", "CANCELLED"})

BATCH_ID = re.compile(r"^[A-Za-z0-9_.:+@-]{1,64}(?![\s\S])")
"""What ``medins_batch`` accepts as a batch id (ending in "no character follows": ``$`` lets a newline in)."""

_STALE_TOKEN_DETAIL = "Invalid JWT token"
_RUNS_KEPT = 10_000


class MedicalInsuranceClient:
    """
    Submit medical-insurance interface calls to Airflow and follow them in the status table.

    Tokens come from ``POST {base_url}/auth/token``, fetched on first use and fetched again once
    when Airflow refuses a token (expired, or signed with a secret the api-server no longer uses).
    Connection errors, timeouts and 5xx replies are retried with exponential backoff; a trigger is
    retried under the same DAG run id, so a retried trigger never starts a second run.

    :param base_url: The Airflow api-server, e.g. ``http://127.0.0.1:8180``.
    :param username: An Airflow user allowed to trigger and read DAG runs (edit them, to cancel).
    :param password: That user's password.
    :param timeout: Seconds to wait for each HTTP reply.
    :param verify: TLS verification: True, False, or the path of a CA bundle.
    """

    #: Tries of each HTTP call on connection errors, timeouts and 5xx replies.
    max_tries = 4
    #: First wait between tries, in seconds; it doubles on every try, up to ``max_backoff``.
    backoff = 0.5
    max_backoff = 8.0

    def __init__(
        self,
        base_url: str,
        username: str,
        password: str,
        *,
        timeout: float = 30,
        verify: bool | str = True,
    ) -> None:
        if not base_url or not base_url.startswith(("http://", "https://")):
            raise InputError(f"the Airflow URL {base_url!r} must start with http:// or https://")
        self.base_url = base_url.rstrip("/")
        self.status_url = self.base_url + STATUS_API_PATH
        self.username = username
        self._password = password
        self.timeout = timeout
        self.verify = verify
        self._token: str | None = None
        self._token_lock = threading.Lock()
        self._session = requests.Session()
        self._session.verify = verify
        self._api_client: ApiClient | None = None
        self._runs: dict[str, tuple[str, str]] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_url!r}, username={self.username!r})"

    def __enter__(self) -> MedicalInsuranceClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP connections."""
        self._session.close()
        if self._api_client is not None:
            self._api_client.rest_client.pool_manager.clear()

    # Submitting

    def call_async(
        self,
        api_code: str,
        data: Mapping[str, Any],
        org_code: str | None = None,
        *,
        request_id: str | None = None,
        insuplc_admdvs: str | None = None,
    ) -> str:
        """
        Trigger ``medins_call`` for one request and return its task id (its ``request_id``).

        :param api_code: The 4-digit interface number, e.g. ``"1101"``.
        :param data: The interface's input.
        :param org_code: The institution's code; may be left out when the gateway serves one.
        :param request_id: Your idempotency key (no personal data); generated when not given. A
            request whose id is stored already is not sent again: its existing row is the result.
        :param insuplc_admdvs: The person's insurance area, when not the institution's default.
        :raises SubmissionRefused: Airflow refused the request's form, with its reason.
        """
        request_id = request_id or new_request_id()
        conf: dict[str, Any] = {"api_code": api_code, "data": data, "request_id": request_id}
        if org_code:
            conf["org_code"] = org_code
        if insuplc_admdvs:
            conf["insuplc_admdvs"] = insuplc_admdvs
        run_id = f"call-{_timestamp()}-{secrets.token_hex(6)}"

        self._trigger(CALL_DAG_ID, conf, run_id, what=f"request {request_id}")

        self._remember_run(request_id, CALL_DAG_ID, run_id)
        log.info(
            "Submitted request %s (interface %s) as %s run %s", request_id, api_code, CALL_DAG_ID, run_id
        )
        return request_id

    def call_batch_async(
        self,
        requests: Iterable[Mapping[str, Any]],
        *,
        batch_id: str | None = None,
        chunk_size: int | None = None,
        concurrency: int | None = None,
        store_first: bool | None = None,
    ) -> str:
        """
        Submit a list of requests as a batch and return the batch id.

        A batch of up to ``STORE_FIRST_ABOVE`` requests is the ``conf`` of a ``medins_batch`` run. A
        larger one is stored through the status API (``POST /batches``, checked against the same
        schema) and sent by a ``medins_stored_batch`` run whose ``conf`` is its batch id alone.

        The DAG run id is the batch id (``@`` written as ``~``, which run ids take instead), so a
        batch id can be submitted once: a second submission raises :class:`AlreadySubmitted`.

        :param requests: 1 to 50,000 requests, each ``{"api_code", "org_code", "data"}`` with an
            optional ``request_id`` and ``insuplc_admdvs``.
        :param batch_id: 1-64 letters, digits or ``_.:+@-``; generated when not given.
        :param chunk_size: Requests per mapped chunk (the DAG's default when not given).
        :param concurrency: Gateway calls in flight per chunk (the DAG's default when not given).
        :param store_first: Store the batch through the status API before triggering; ``None`` for
            batches larger than ``STORE_FIRST_ABOVE``.
        :raises SubmissionRefused: Airflow refused the batch's form, with its reason.
        """
        if isinstance(requests, (str, bytes, Mapping)) or not isinstance(requests, Iterable):
            raise InputError(
                f"requests must be a list of request objects, not {type(requests).__name__}: "
                'e.g. [{"api_code": "1101", "org_code": "...", "data": {...}}]'
            )
        requests = list(requests)
        if len(requests) > MAX_REQUESTS:
            raise InputError(
                f"{len(requests):,} requests are more than the {MAX_REQUESTS:,} one batch takes: split them"
            )
        batch_id = batch_id or new_batch_id()
        if not BATCH_ID.match(batch_id):
            raise InputError(f"batch id {batch_id!r} must be 1-64 letters, digits or _.:+@-")
        conf: dict[str, Any] = {"requests": requests, "batch_id": batch_id}
        if chunk_size is not None:
            conf["chunk_size"] = chunk_size
        dag_id = BATCH_DAG_ID
        if store_first or (store_first is None and len(requests) > STORE_FIRST_ABOVE):
            self._store_batch(conf)
            dag_id, conf = STORED_BATCH_DAG_ID, {"batch_id": batch_id}
        if concurrency is not None:
            conf["concurrency"] = concurrency
        run_id = run_id_for_batch(batch_id)

        self._trigger(dag_id, conf, run_id, what=f"batch {batch_id}", batch_id=batch_id)

        self._remember_run(batch_id, dag_id, run_id)
        log.info("Submitted batch %s (%d requests) as %s run %s", batch_id, len(requests), dag_id, run_id)
        return batch_id

    def _store_batch(self, body: dict[str, Any]) -> dict[str, Any]:
        """Store a batch through the status API; storing it again adds only new request ids."""
        response = self._status_call("POST", "/batches", json=body, timeout=STORE_TIMEOUT)
        reply = self._json(response)
        if response.status_code in (400, 409):
            raise SubmissionRefused(
                STORED_BATCH_DAG_ID, f"batch {body['batch_id']}: {_detail(reply)}", response.status_code
            )
        self._raise_for_status(response, reply)
        log.info(
            "Stored batch %s: %d requests, %d rejected at the door, %d already stored",
            reply["batch_id"],
            reply["submitted"],
            reply["rejected"],
            reply["already_stored"],
        )
        return reply

    # Reading

    def get_task_result(self, task_id: str, full: bool = False) -> dict[str, Any]:
        """
        Return the row of one request: its state, its request and the gateway's result.

        :param task_id: The request's task id (its ``request_id``).
        :param full: Return personal data unmasked (needs the right to read it).
        :raises TaskNotFound: No row yet. A just-submitted call's row appears when its DAG run's
            task starts; :meth:`wait_for_task` keeps polling until it does.
        """
        return self._read(
            f"/tasks/{_quote(task_id)}",
            {"full": "true" if full else "false"},
            not_found=lambda detail: TaskNotFound(
                f"no request {task_id} in the status table ({detail}). A just-submitted request is "
                "stored when its DAG run's task starts: wait_for_task waits for it",
                task_id,
            ),
        )

    def wait_for_task(self, task_id: str, timeout: float = 300, poll: float = 1.0) -> dict[str, Any]:
        """
        Poll a request's row until it is final, and return it.

        :param task_id: The request's task id.
        :param timeout: Seconds to wait in all.
        :param poll: Seconds between reads.
        :raises TaskWaitTimeout: Not final in time; the message names the last state seen.
        :raises SubmissionFailed: The DAG run this client triggered failed before storing the row.
        """
        started = time.monotonic()
        last_state: str | None = None
        while True:
            try:
                task = self.get_task_result(task_id)
            except TaskNotFound:
                self._raise_if_run_failed(task_id, "request", lambda: self.get_task_result(task_id))
            else:
                last_state = task["status"]
                if last_state in FINAL_STATES:
                    return task

            waited = time.monotonic() - started
            if waited >= timeout:
                raise TaskWaitTimeout(task_id, waited, last_state)
            time.sleep(min(poll, timeout - waited))

    def get_task_progress(self, batch_id: str) -> dict[str, Any]:
        """
        Return a batch's progress: ``status``, ``current`` of ``total`` final, ``percentage``, ``counts``.

        :raises BatchNotFound: No batch row yet; it appears when the batch's ``register`` task runs.
        """
        return self._read(
            f"/batches/{_quote(batch_id)}",
            not_found=lambda detail: BatchNotFound(
                f"no batch {batch_id} in the status table ({detail}). A just-submitted batch is "
                "stored when its register task runs (wait_for_batch and `medins submit --wait` wait for it)",
                batch_id,
            ),
        )

    def wait_for_batch(
        self,
        batch_id: str,
        timeout: float = 3600,
        poll: float = 2.0,
        on_progress: Callable[[dict[str, Any]], object] | None = None,
    ) -> dict[str, Any]:
        """
        Poll a batch's progress until the batch has finished, and return the last progress.

        A batch has finished when it is ``DONE``, when it was cancelled and all its rows are final,
        or when its ``summarize`` task ran (``finished_at``), even with rows left open by a chunk
        that failed all its tries (``current`` < ``total`` then tells).

        :param batch_id: The batch id.
        :param timeout: Seconds to wait in all.
        :param poll: Seconds between reads.
        :param on_progress: Called with each progress read.
        :raises TaskWaitTimeout: Not finished in time; the message names the last progress seen.
        :raises SubmissionFailed: The DAG run this client triggered failed before storing the batch.
        """
        started = time.monotonic()
        last_state: str | None = None
        while True:
            try:
                progress = self.get_task_progress(batch_id)
            except BatchNotFound:
                self._raise_if_run_failed(batch_id, "batch", lambda: self.get_task_progress(batch_id))
            else:
                if on_progress is not None:
                    on_progress(progress)
                last_state = f"{progress['status']}, {progress['current']} of {progress['total']} final"
                if batch_finished(progress):
                    return progress

            waited = time.monotonic() - started
            if waited >= timeout:
                raise TaskWaitTimeout(batch_id, waited, last_state, what="batch")
            time.sleep(min(poll, timeout - waited))

    def list_tasks(
        self,
        status: str | Iterable[str] | None = None,
        api_code: str | None = None,
        org_code: str | None = None,
        batch_id: str | None = None,
        created_from: datetime | date | str | None = None,
        created_to: datetime | date | str | None = None,
        page: int = 1,
        page_size: int = 50,
    ) -> dict[str, Any]:
        """
        Return one page of requests, newest first: ``{"items", "total", "page", "page_size"}``.

        :param status: One state or several.
        :param created_from: Earliest creation time, ISO 8601 (UTC when it has no offset).
        :param created_to: Latest creation time.
        :param page: Page number, from 1.
        :param page_size: 1 to 500 requests per page.
        """
        params = {
            "status": [status] if isinstance(status, str) else (list(status) if status else None),
            "api_code": api_code,
            "org_code": org_code,
            "batch_id": batch_id,
            "created_from": _iso(created_from),
            "created_to": _iso(created_to),
            "page": page,
            "page_size": page_size,
        }
        return self._read("/tasks", params)

    def iter_tasks(self, *, page_size: int = 500, **filters: Any) -> Iterator[dict[str, Any]]:
        """Yield every request that :meth:`list_tasks` selects with ``filters``, page after page."""
        page = 1
        seen = 0
        while True:
            listing = self.list_tasks(**filters, page=page, page_size=page_size)
            items = listing["items"]
            yield from items
            seen += len(items)
            if not items or seen >= listing["total"]:
                return
            page += 1

    def get_statistics(
        self,
        created_from: datetime | date | str | None = None,
        created_to: datetime | date | str | None = None,
        api_code: str | None = None,
        org_code: str | None = None,
        batch_id: str | None = None,
    ) -> dict[str, Any]:
        """Return ``total``, ``success_rate`` and counts by state, interface and institution."""
        params = {
            "created_from": _iso(created_from),
            "created_to": _iso(created_to),
            "api_code": api_code,
            "org_code": org_code,
            "batch_id": batch_id,
        }
        return self._read("/statistics", params)

    def cancel_task(self, task_or_batch_id: str, *, batch: bool = False) -> dict[str, Any]:
        """
        Cancel a request that was not sent yet, or every unsent request of a batch.

        A request returns ``{"task_id", "status"}``: ``CANCELLED``, or its state unchanged when it
        was sent already (only ``PENDING`` and ``RETRY`` requests can be cancelled). A batch returns
        ``{"batch_id", "status": "CANCELLED", "cancelled": n}``; its requests sent already keep
        their true state.

        :raises NotFound: No such request or batch.
        """
        what = "batch" if batch else "request"
        path = f"/{'batches' if batch else 'tasks'}/{_quote(task_or_batch_id)}/cancel"
        response = self._status_call("POST", path)
        body = self._json(response)

        if response.status_code == 404:
            raise NotFound(f"no {what} {task_or_batch_id} to cancel ({_detail(body)})", task_or_batch_id)
        if response.status_code == 409 and not batch:
            if isinstance(body, dict) and "status" in body:
                return body
            return {"task_id": task_or_batch_id, "status": self.get_task_result(task_or_batch_id)["status"]}
        self._raise_for_status(response, body)
        return body

    # HTTP

    def _trigger(
        self, dag_id: str, conf: dict[str, Any], run_id: str, *, what: str, batch_id: str | None = None
    ) -> None:
        """Trigger one DAG run; a try after one whose reply was lost finds the run made (409)."""
        body = TriggerDAGRunPostBody(logical_date=None, conf=conf, dag_run_id=run_id)
        maybe_sent = False

        def trigger(api: DagRunApi) -> None:
            nonlocal maybe_sent
            try:
                api.trigger_dag_run(dag_id, body, _request_timeout=self.timeout)
            except ConflictException as err:
                if maybe_sent:
                    log.info(
                        "DAG run %s of %s was made by an earlier try whose reply was lost", run_id, dag_id
                    )
                    return
                if batch_id is not None:
                    raise AlreadySubmitted(dag_id, batch_id, run_id) from None
                raise SubmissionRefused(dag_id, _detail(err.body), 409) from None
            except (ServiceException, urllib3.exceptions.HTTPError):
                maybe_sent = True
                raise
            except (BadRequestException, UnprocessableEntityException) as err:
                raise SubmissionRefused(dag_id, f"{what}: {_detail(err.body)}", err.status) from None
            except NotFoundException as err:
                raise SubmissionRefused(
                    dag_id,
                    f"Airflow at {self.base_url} has no DAG {dag_id} ({_detail(err.body)}): deploy the "
                    "project's dags/ folder there and wait until the dag-processor has parsed it",
                    404,
                ) from None

        self._airflow(f"POST {self.base_url}/api/v2/dags/{dag_id}/dagRuns", trigger)

    def _remember_run(self, row_id: str, dag_id: str, run_id: str) -> None:
        """Keep which DAG run was triggered for a row, for the waits; the oldest go past a limit."""
        self._runs[row_id] = (dag_id, run_id)
        if len(self._runs) > _RUNS_KEPT:
            del self._runs[next(iter(self._runs))]

    def _raise_if_run_failed(self, row_id: str, what: str, read_again: Callable[[], object]) -> None:
        """Raise when the DAG run this client triggered for ``row_id`` failed and stored no row."""
        if row_id not in self._runs:
            return
        dag_id, run_id = self._runs[row_id]
        run = self._airflow(
            f"GET {self.base_url}/api/v2/dags/{dag_id}/dagRuns/{run_id}",
            lambda api: api.get_dag_run(dag_id, run_id, _request_timeout=self.timeout),
        )
        if getattr(run.state, "value", run.state) != "failed":
            return
        try:
            read_again()  # the row may have been stored between the two reads
        except NotFound:
            raise SubmissionFailed(
                f"DAG run {run_id} of {dag_id} failed before it stored {what} {row_id}: read the log of "
                f"its first task at {self.base_url}/dags/{dag_id}/runs/{run_id}"
            ) from None

    def _airflow(self, what: str, call: Callable[[DagRunApi], T]) -> T:
        """Make one call through the official client, with a fresh token once and retries."""
        api = self._dag_run_api()

        def once(token: str) -> T:
            api.api_client.configuration.access_token = token
            try:
                return call(api)
            except ServiceException as err:
                raise ServerUnavailable(f"{what} answered {err.status}: {_detail(err.body)}") from err
            except urllib3.exceptions.HTTPError as err:
                raise ServerUnavailable(f"{what} failed: {_shorten(err)}") from err

        def attempt() -> T:
            token = self._get_token()
            try:
                return once(token)
            except ApiException as err:
                if not _is_stale_token(err.status, err.body):
                    raise self._access_error(what, err.status, err.body) from None
            log.info("Airflow refused the token; fetching a new one")
            try:
                return once(self._refresh_token(token))
            except ApiException as err:
                raise self._access_error(what, err.status, err.body) from None

        return self._retry(what, attempt)

    def _access_error(self, what: str, status: int | None, body: str | None) -> MedinsClientError:
        if status in (401, 403):
            return AuthenticationFailed(
                f"{what}: Airflow refused user {self.username!r} ({status}, {_detail(body)}). Triggering "
                "needs the right to trigger DAG runs, reading to read them, cancelling to edit them"
            )
        if status == 0:
            return MedinsClientError(
                f"{what} failed: {_detail(body)}; with a private CA pass its bundle as verify"
            )
        return MedinsClientError(f"{what} answered {status}: {_detail(body)}")

    def _dag_run_api(self) -> DagRunApi:
        if self._api_client is None:
            configuration = Configuration(
                host=self.base_url,
                retries=0,  # tenacity retries, with backoff
                verify_ssl=bool(self.verify),
                ssl_ca_cert=self.verify if isinstance(self.verify, str) else None,
            )
            self._api_client = ApiClient(configuration)
        return DagRunApi(self._api_client)

    def _read(
        self,
        path: str,
        params: dict[str, Any] | None = None,
        *,
        not_found: Callable[[str], NotFound] | None = None,
    ) -> dict[str, Any]:
        """GET a status API resource and return its JSON."""
        response = self._status_call(
            "GET", path, params={k: v for k, v in (params or {}).items() if v is not None}
        )
        body = self._json(response)

        if response.status_code == 404 and not_found is not None:
            raise not_found(_detail(body))
        self._raise_for_status(response, body)
        return body

    def _status_call(
        self, method: str, path: str, params: dict[str, Any] | None = None, **kwargs: Any
    ) -> requests.Response:
        """Call the status API with a token; fetch a new token once when Airflow refuses it."""
        url = self.status_url + path
        token = self._get_token()
        response = self._http(
            method, url, params=params, headers={"Authorization": f"Bearer {token}"}, **kwargs
        )
        if _is_stale_token(response.status_code, response.text):
            log.info("Airflow refused the token (%d); fetching a new one", response.status_code)
            token = self._refresh_token(token)
            response = self._http(
                method, url, params=params, headers={"Authorization": f"Bearer {token}"}, **kwargs
            )
        if response.status_code in (401, 403):
            raise self._access_error(f"{method} {url}", response.status_code, response.text)
        return response

    def _json(self, response: requests.Response) -> Any:
        """Return the reply's JSON; a reply that is not JSON means the plugin is not served."""
        if "json" not in response.headers.get("Content-Type", ""):
            raise StatusApiUnavailable(
                f"{response.request.method} {response.url} did not answer with JSON (HTTP "
                f"{response.status_code}, {response.headers.get('Content-Type') or 'no content type'}): the "
                f"api-server at {self.base_url} does not serve the status API. Install the medins plugin "
                "(plugins/medins_plugin.py) there and restart the api-server"
            )
        try:
            return response.json()
        except ValueError as err:
            raise StatusApiUnavailable(f"{response.url} answered malformed JSON ({err})") from None

    def _raise_for_status(self, response: requests.Response, body: Any) -> None:
        where = f"{response.request.method} {response.url}"
        if response.status_code == 400:
            raise BadRequest(f"the status API refused {where}: {_detail(body)}")
        if response.status_code == 405:
            raise StatusApiUnavailable(
                f"{where} answered 405: the api-server at {self.base_url} does not serve the status API. "
                "Install the medins plugin (plugins/medins_plugin.py) there and restart the api-server"
            )
        if response.status_code == 404:
            raise NotFound(f"{where}: not found ({_detail(body)})", response.url)
        if not response.ok:
            raise MedinsClientError(f"{where} answered {response.status_code}: {_detail(body)}")

    def _http(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        """Send one request, retried on connection errors, timeouts and 5xx replies."""

        def attempt() -> requests.Response:
            try:
                response = self._session.request(method, url, **{"timeout": self.timeout, **kwargs})
            except requests.exceptions.SSLError as err:
                raise MedinsClientError(
                    f"{method} {url}: TLS failed ({_shorten(err)}); "
                    "with a private CA, pass its bundle as verify"
                ) from None
            except (
                requests.ConnectionError,
                requests.Timeout,
                requests.exceptions.ChunkedEncodingError,
            ) as err:
                raise ServerUnavailable(f"{method} {url} failed: {_shorten(err)}") from err
            if response.status_code >= 500:
                raise ServerUnavailable(
                    f"{method} {url} answered {response.status_code}: {_detail(response.text)}"
                )
            return response

        return self._retry(f"{method} {url}", attempt)

    def _retry(self, what: str, attempt: Callable[[], T]) -> T:
        retrying = Retrying(
            stop=stop_after_attempt(self.max_tries),
            wait=wait_exponential(multiplier=self.backoff, max=self.max_backoff),
            retry=retry_if_exception_type(ServerUnavailable),
            before_sleep=self._log_retry,
            reraise=True,
        )
        try:
            return retrying(attempt)
        except ServerUnavailable as err:
            raise ServerUnavailable(
                f"{err}. Gave up after {self.max_tries} tries: check that the Airflow api-server runs at "
                f"{self.base_url} (--url or MEDINS_URL)"
            ) from err

    def _log_retry(self, state: RetryCallState) -> None:
        log.warning(
            "[Try %d of %d] %s; retrying in %.1f s",
            state.attempt_number,
            self.max_tries,
            state.outcome.exception() if state.outcome else "?",
            state.next_action.sleep if state.next_action else 0,
        )

    # Tokens

    def _get_token(self) -> str:
        with self._token_lock:
            if self._token is None:
                self._token = self._fetch_token()
            return self._token

    def _refresh_token(self, refused: str) -> str:
        """Fetch a new token unless another thread replaced the refused one already."""
        with self._token_lock:
            if self._token is None or self._token == refused:
                self._token = self._fetch_token()
            return self._token

    def _fetch_token(self) -> str:
        url = f"{self.base_url}/auth/token"
        response = self._http("POST", url, json={"username": self.username, "password": self._password})

        if response.status_code in (401, 403):
            raise AuthenticationFailed(
                f"Airflow at {self.base_url} refused the password of user {self.username!r}: check "
                "--user/MEDINS_USER and --password/MEDINS_PASSWORD"
            )
        try:
            token = response.json()["access_token"]
        except (ValueError, KeyError, TypeError):
            raise MedinsClientError(
                f"POST {url} answered {response.status_code} without an access_token "
                f"({_detail(response.text)}): is {self.base_url} an Airflow 3 api-server?"
            ) from None
        log.debug("Fetched a token from %s", url)
        return token


def batch_finished(progress: Mapping[str, Any]) -> bool:
    """Tell whether a batch's progress says it has finished (see ``wait_for_batch``)."""
    status = progress.get("status")
    if status == "DONE" or progress.get("finished_at"):
        return True
    return status == "CANCELLED" and progress.get("current", 0) >= progress.get("total", 0)


def new_request_id() -> str:
    """Return a new request id: time and randomness, no personal data."""
    return f"req-{_timestamp()}-{secrets.token_hex(6)}"


def new_batch_id() -> str:
    """Return a new batch id."""
    return f"batch-{_timestamp()}-{secrets.token_hex(4)}"


def run_id_for_batch(batch_id: str) -> str:
    """Return the DAG run id of a batch: the batch id, ``@`` written as ``~`` (run ids take no ``@``)."""
    return batch_id.replace("@", "~")


def _timestamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%d%H%M%S")


def _quote(row_id: str) -> str:
    return quote(row_id, safe="")


def _iso(value: datetime | date | str | None) -> str | None:
    return value.isoformat() if isinstance(value, date) else value


def _is_stale_token(status: int | None, body: str | None) -> bool:
    """Tell whether Airflow refused the token itself: 401 (none or expired) or 403 ``Invalid JWT token``."""
    return status == 401 or (status == 403 and _STALE_TOKEN_DETAIL in (body or ""))


def _detail(body: Any) -> str:
    """Return the reason in an error reply: FastAPI's ``detail``, else the start of the body."""
    if isinstance(body, str | bytes):
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
        try:
            body = json.loads(text)
        except ValueError:
            return text.strip()[:500] or "no reason given"
    if isinstance(body, dict) and "detail" in body:
        detail = body["detail"]
        if isinstance(detail, list):  # FastAPI's validation errors
            return "; ".join(
                f"{'.'.join(str(part) for part in item.get('loc', []))}: {item.get('msg')}"
                if isinstance(item, dict)
                else str(item)
                for item in detail
            )
        return _schema_reason(str(detail))
    return str(body)[:500]


def _schema_reason(detail: str, keep: int = 200) -> str:
    """
    Return the reason of a Params refusal without the copies of the schema and of the value.

    Airflow passes on the JSON schema validator's whole text: the reason, which starts by quoting
    the refused value (the whole list of requests when it was too long) and ends with why; then the
    schema; then where in the value and the value again. Kept: the reason, cut in its middle when
    long, and where (e.g. ``instance[3]['data']``, the fourth request's data).
    """
    reason, *more = detail.split("\n\n")
    if len(reason) > 2 * keep + 5:
        reason = f"{reason[:keep]} ... {reason[-keep:]}"
    where = next((part.splitlines()[0][3:].rstrip(":") for part in more if part.startswith("On ")), "")
    return f"{reason} (at {where})" if where and where != "instance" else reason


def _shorten(err: BaseException) -> str:
    text = str(err)
    return text if len(text) <= 300 else text[:297] + "..."
