"""Run one chunk of a batch: claim its open rows, call the gateway concurrently, write outcomes back.

The status table is the source of truth. A chunk reads only its rows that are not final, so a
retried or re-run chunk never sends again what already succeeded. Before a message leaves, its row
is claimed (``PROCESSING``, with the ``msgid`` it is sent under); outcomes are written back in
bulk. A write found still ``PROCESSING`` when a chunk starts was sent by a try that died: it
becomes ``UNKNOWN``, never sent again. Queries with transient errors are retried with exponential
backoff; what is left when the try's attempts run out becomes ``RETRY`` for the chunk's next try,
or ``FAILURE`` on its last.

This module needs no Airflow task context, so the same code runs inside the operator and in
benchmarks.
"""

from __future__ import annotations

import heapq
import logging
import random
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from medins.catalog import WRITE
from medins.hooks.gateway import CallOutcome, MedicalInsuranceHook, OutcomeKind
from medins.masking import mask_text
from medins.states import OPEN, BatchState, RequestState
from medins.store import RequestRow, StatusStore

log = logging.getLogger(__name__)

UNKNOWN_AFTER_CRASH = (
    "write was sent by a try that stopped before its reply was recorded; outcome unknown: "
    "resolve it with a query (5203 for a settlement) or reverse it with 2601, never send it again"
)


@dataclass
class ChunkReport:
    """What one run of a chunk did."""

    batch_id: str
    chunk_no: int
    found: int = 0
    sent: int = 0
    states: Counter[str] = field(default_factory=Counter)
    transient_errors: int = 0
    left_open: int = 0
    stopped_early: str = ""
    seconds: float = 0.0

    def summary(self) -> str:
        """Describe the run in one line (counts only, no personal data)."""
        states = ", ".join(f"{state} {count}" for state, count in sorted(self.states.items())) or "none"
        text = (
            f"chunk {self.chunk_no} of batch {self.batch_id}: {self.found} open requests, "
            f"{self.sent} messages sent in {self.seconds:.1f} s; final states: {states}; "
            f"transient errors {self.transient_errors}"
        )
        if self.left_open:
            text += f"; {self.left_open} left for the next try"
        if self.stopped_early:
            text += f"; stopped early: {self.stopped_early}"
        return text


@dataclass
class _Job:
    row: RequestRow
    request: dict[str, Any]
    is_write: bool
    tries: int = 0
    last_reason: str = ""


class ChunkRunner:
    """
    Process one chunk's open rows through the gateway hook and the status store.

    :param hook: Gateway hook, shared by the worker threads.
    :param store: Status store; only the calling thread touches it.
    :param concurrency: Calls in flight at once.
    :param query_attempts: Sends per query and per try before it is left for the next try.
    :param backoff_base: First backoff in seconds; doubles per attempt, with jitter.
    :param backoff_max: Longest backoff in seconds.
    :param flush_every: Outcomes buffered before they are written in one statement.
    :param flush_seconds: Longest time an outcome waits in the buffer.
    """

    def __init__(
        self,
        hook: MedicalInsuranceHook,
        store: StatusStore,
        *,
        concurrency: int = 16,
        query_attempts: int = 4,
        backoff_base: float = 0.5,
        backoff_max: float = 10.0,
        flush_every: int = 200,
        flush_seconds: float = 1.0,
        cancel_check_seconds: float = 2.0,
    ) -> None:
        self.hook = hook
        self.store = store
        self.concurrency = max(1, concurrency)
        self.query_attempts = max(1, query_attempts)
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.flush_every = flush_every
        self.flush_seconds = flush_seconds
        self.cancel_check_seconds = cancel_check_seconds

    def run(
        self,
        batch_id: str,
        chunk_no: int,
        *,
        last_try: bool = True,
        deadline: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> ChunkReport:
        """
        Process the chunk's open rows until each is final or left for the next try.

        :param batch_id: The batch the chunk belongs to.
        :param chunk_no: The chunk's number within the batch.
        :param last_try: Whether no further try follows; transient errors then become ``FAILURE``.
        :param deadline: ``clock()`` value after which no new message is started (soft limit).
        """
        started = clock()
        report = ChunkReport(batch_id, chunk_no)
        rows = self.store.fetch_chunk(batch_id, chunk_no, statuses=sorted(OPEN))
        report.found = len(rows)

        jobs: list[_Job] = []
        stale_writes: list[str] = []
        for row in rows:
            request = row.data.get("request", {})
            is_write = row.kind == WRITE
            if is_write and row.status == RequestState.PROCESSING:
                stale_writes.append(row.task_id)
            else:
                jobs.append(_Job(row, request, is_write))
        if stale_writes:
            marked = self.store.mark(
                stale_writes,
                RequestState.UNKNOWN,
                error=UNKNOWN_AFTER_CRASH,
                only_from=[RequestState.PROCESSING],
            )
            report.states[RequestState.UNKNOWN] += marked
            log.warning(
                "%d writes of chunk %d were in flight when a try stopped: marked UNKNOWN", marked, chunk_no
            )
        log.info("Chunk %d of batch %s: %d open requests to send", chunk_no, batch_id, len(jobs))

        self._process(jobs, report, batch_id, last_try=last_try, deadline=deadline, clock=clock)
        report.seconds = clock() - started
        return report

    # -- the loop -----------------------------------------------------------------------------

    def _process(
        self,
        jobs: list[_Job],
        report: ChunkReport,
        batch_id: str,
        *,
        last_try: bool,
        deadline: float | None,
        clock: Callable[[], float],
    ) -> None:
        pending = list(reversed(jobs))  # pop() from the end keeps table order
        waiting: list[tuple[float, int, _Job]] = []  # (due, tiebreak, job) for backoff
        in_flight: dict[Future[CallOutcome], _Job] = {}
        done: list[RequestRow] = []
        last_flush = clock()
        next_cancel_check = clock() + self.cancel_check_seconds
        window = self.concurrency * 2
        stop_reason = ""

        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="medins-call") as pool:
            while pending or waiting or in_flight:
                now = clock()
                if not stop_reason and deadline is not None and now >= deadline:
                    stop_reason = "soft time limit reached"
                if not stop_reason and now >= next_cancel_check:
                    next_cancel_check = now + self.cancel_check_seconds
                    batch = self.store.get_batch(batch_id)
                    if batch is not None and batch.status == BatchState.CANCELLED:
                        stop_reason = "batch cancelled"

                if not stop_reason and len(in_flight) <= self.concurrency:
                    ready = self._take_ready(pending, waiting, window - len(in_flight), now)
                    for job, msgid in self._claim(ready):
                        job.tries += 1
                        report.sent += 1
                        in_flight[pool.submit(self._send, job, msgid)] = job

                if stop_reason and not in_flight:
                    break
                if in_flight:
                    finished, _ = wait(
                        list(in_flight),
                        timeout=self._wait_time(waiting, clock()),
                        return_when=FIRST_COMPLETED,
                    )
                elif waiting:
                    time.sleep(max(0.0, min(waiting[0][0] - clock(), 0.5)))
                    finished = set()
                else:
                    finished = set()

                for future in finished:
                    job = in_flight.pop(future)
                    outcome = future.result()
                    row = self._settle(job, outcome, report, waiting, last_try=last_try, now=clock())
                    if row is not None:
                        done.append(row)

                if done and (len(done) >= self.flush_every or clock() - last_flush >= self.flush_seconds):
                    self.store.finish(done)
                    done = []
                    last_flush = clock()

        # What the loop did not finish goes back for the next try, or is cancelled with its batch.
        leftovers = [job for _, _, job in waiting]
        for job in leftovers:
            if stop_reason == "batch cancelled":
                job.row.status = RequestState.CANCELLED
                job.row.error = f"cancelled by request while waiting to be sent again: {job.last_reason}"
                report.states[RequestState.CANCELLED] += 1
                done.append(job.row)
            else:
                done.append(self._leave_open(job, report, last_try=last_try))
        if done:
            self.store.finish(done)
        report.left_open += len(pending)
        report.stopped_early = stop_reason

    def _take_ready(self, pending: list[_Job], waiting: list, room: int, now: float) -> list[_Job]:
        ready: list[_Job] = []
        while waiting and waiting[0][0] <= now and len(ready) < room:
            ready.append(heapq.heappop(waiting)[2])
        while pending and len(ready) < room:
            ready.append(pending.pop())
        return ready

    def _claim(self, jobs: list[_Job]) -> list[tuple[_Job, str]]:
        """Record each message's ``msgid`` on its row before it is sent; skip rows no longer open."""
        if not jobs:
            return []
        by_org: dict[str, list[_Job]] = {}
        for job in jobs:
            by_org.setdefault(job.row.org_code or "", []).append(job)
        planned = [
            pair
            for org_code, group in by_org.items()
            for pair in zip(group, self.hook.new_msgids(org_code, len(group)), strict=True)
        ]
        claimed = self.store.claim([(job.row.task_id, msgid) for job, msgid in planned])
        return [(job, msgid) for job, msgid in planned if job.row.task_id in claimed]

    def _send(self, job: _Job, msgid: str) -> CallOutcome:
        request = job.request
        return self.hook.call(
            job.row.api_code or request.get("api_code", ""),
            request.get("data") or {},
            org_code=job.row.org_code,
            insuplc_admdvs=request.get("insuplc_admdvs"),
            msgid=msgid,
        )

    def _settle(
        self,
        job: _Job,
        outcome: CallOutcome,
        report: ChunkReport,
        waiting: list,
        *,
        last_try: bool,
        now: float,
    ) -> RequestRow | None:
        row = job.row
        row.attempts += 1
        row.msgid = outcome.msgid
        msgids = row.data.setdefault("msgids", [])
        msgids.append(outcome.msgid)
        row.data["elapsed_ms"] = outcome.elapsed_ms
        # A gateway's message may quote the request it answers (人员张三不存在): mask the request's values.
        known = job.request.get("data")
        reason = mask_text(outcome.reason, known)

        if outcome.kind is OutcomeKind.TRANSIENT:
            report.transient_errors += 1
            job.last_reason = reason
            if job.tries < self.query_attempts:
                delay = min(self.backoff_max, self.backoff_base * 2 ** (job.tries - 1))
                delay *= random.uniform(0.5, 1.0)
                log.warning(
                    "[Try %d of %d] %s for %s: %s; again in %.1f s",
                    job.tries,
                    self.query_attempts,
                    "transient error",
                    row.task_id,
                    reason,
                    delay,
                )
                heapq.heappush(waiting, (now + delay, id(job), job))
                return None
            return self._leave_open(job, report, last_try=last_try)

        row.data["infcode"] = outcome.infcode
        row.data["inf_refmsgid"] = outcome.inf_refmsgid
        if outcome.warn_msg:
            row.data["warn_msg"] = mask_text(outcome.warn_msg, known)
        if outcome.kind is OutcomeKind.SUCCESS:
            row.status = RequestState.SUCCESS
            row.data["output"] = outcome.output
            row.error = None
        elif outcome.kind is OutcomeKind.REFUSED:
            row.status = RequestState.FAILURE
            row.data["err_msg"] = mask_text(outcome.err_msg, known)
            row.error = reason
        else:
            row.status = RequestState.UNKNOWN
            row.data["err_msg"] = mask_text(outcome.err_msg, known)
            row.error = (
                f"{reason}; the write may have been applied: resolve it with a query "
                "(5203 for a settlement) or reverse it with 2601, never send it again"
            )
        report.states[row.status] += 1
        return row

    def _leave_open(self, job: _Job, report: ChunkReport, *, last_try: bool) -> RequestRow:
        row = job.row
        if last_try:
            row.status = RequestState.FAILURE
            row.error = f"transient errors did not clear after {row.attempts} attempts: {job.last_reason}"
            report.states[row.status] += 1
        else:
            row.status = RequestState.RETRY
            row.error = f"transient error, retried on the chunk's next try: {job.last_reason}"
            report.left_open += 1
        return row

    def _wait_time(self, waiting: list, now: float) -> float:
        if not waiting:
            return 0.5
        return max(0.01, min(0.5, waiting[0][0] - now))
