"""
The read-only queries behind the batches page: batches listed with their requests counted, and
requests counted per minute or hour.

:class:`ReportStore` extends :class:`~medins.store.StatusStore`, so these statements go through the
store's connection handling, outage retries and bound parameters like every other statement on
``async_task_status``. Each query is served by an index: batch rows by ``status`` (a batch's states
are not a request's, but for ``CANCELLED``), counts by ``(batch_id, chunk_no, status)``, intervals by
``created_at``.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from medins.states import BatchState, RequestKind
from medins.store import TABLE, RequestRow, StatusStore


class Interval(StrEnum):
    """Width of the intervals requests are counted in."""

    MINUTE = "minute"
    HOUR = "hour"

    @property
    def length(self) -> timedelta:
        return timedelta(minutes=1) if self is Interval.MINUTE else timedelta(hours=1)

    @property
    def prefix(self) -> int:
        """Characters of a UTC ``'YYYY-MM-DD HH:MM:SS'`` timestamp that name the interval."""
        return 16 if self is Interval.MINUTE else 13


class ReportStore(StatusStore):
    """A :class:`~medins.store.StatusStore` with the batches page's queries; it never writes."""

    def list_batches(
        self,
        status: Collection[str] | None = None,
        dag_id: Collection[str] | None = None,
        created_from: datetime | None = None,
        created_to: datetime | None = None,
        offset: int = 0,
        limit: int = 20,
    ) -> tuple[list[RequestRow], int]:
        """
        Return one page of batches' own rows, newest first, and how many batches match in all.

        :param status: batch states (``RUNNING``, ``DONE``, ``CANCELLED``); ``None`` for all.
        :param dag_id: DAGs whose runs registered the batches (``dag_id`` in the row's data);
            ``None`` for all.
        :param created_from: earliest ``created_at``, inclusive; a naive datetime is taken as UTC.
        :param created_to: latest ``created_at``, inclusive; a naive datetime is taken as UTC.
        :param offset: batches to skip.
        :param limit: most batches to return.
        """
        if offset < 0 or limit < 0:
            raise ValueError(f"offset and limit must not be negative, not {offset} and {limit}.")
        where, args = self._filter_batches(status, dag_id, created_from, created_to)

        def count(cursor: Any) -> int:
            cursor.execute(f"SELECT COUNT(*) FROM {TABLE} {where}", args)
            return int(cursor.fetchone()[0])

        total = self._transaction(count)
        if total <= offset or limit == 0:
            return [], total
        page = self._select(
            f"{where} ORDER BY id DESC LIMIT {self._ph} OFFSET {self._ph}", [*args, int(limit), int(offset)]
        )
        return page, total

    def counts_by_batch(self, batch_ids: Sequence[str]) -> dict[str, dict[str, int]]:
        """Count the requests of each batch by state, in one query; a batch without requests is left out."""
        if not batch_ids:
            return {}

        def work(cursor: Any) -> dict[str, dict[str, int]]:
            cursor.execute(
                f"SELECT batch_id, status, COUNT(*) FROM {TABLE} "
                f"WHERE batch_id IN ({self._marks(batch_ids)}) AND kind <> {self._ph} "
                "GROUP BY batch_id, status",
                [*batch_ids, RequestKind.BATCH.value],
            )
            counts: dict[str, dict[str, int]] = {}
            for batch_id, state, number in cursor.fetchall():
                counts.setdefault(batch_id, {})[state] = int(number)
            return counts

        return self._transaction(work)

    def timeline(
        self,
        interval: Interval,
        created_from: datetime,
        created_to: datetime,
        api_code: str | None = None,
        org_code: str | None = None,
        batch_id: str | None = None,
    ) -> list[tuple[datetime, dict[str, int]]]:
        """
        Count requests by state in each interval of ``created_at`` that holds any, oldest first.

        :param interval: minutes or hours, in UTC.
        :param created_from: earliest ``created_at``, inclusive.
        :param created_to: latest ``created_at``, inclusive.
        :param api_code: interface code; ``None`` for all.
        :param org_code: institution code; ``None`` for all.
        :param batch_id: batch; ``None`` for all.
        :return: each interval's start (aware, UTC) and its counts by state.
        """
        where, args = self._filter_requests(None, api_code, org_code, batch_id, created_from, created_to)
        # Both back ends give created_at as UTC text 'YYYY-MM-DD HH:MM:SS' here (MySQL converts the
        # TIMESTAMP in the session's time zone, which the store sets to '+00:00').
        bucket = f"SUBSTR(created_at, 1, {interval.prefix})"

        def work(cursor: Any) -> list[tuple[Any, str, Any]]:
            cursor.execute(
                f"SELECT {bucket}, status, COUNT(*) FROM {TABLE} {where} "
                f"GROUP BY {bucket}, status ORDER BY {bucket}",
                args,
            )
            return list(cursor.fetchall())

        timeline: dict[datetime, dict[str, int]] = {}
        for start, state, number in self._transaction(work):
            text = start.decode("ascii") if isinstance(start, bytes) else str(start)
            moment = datetime.fromisoformat(f"{text}:00")  # '... HH' or '... HH:MM', completed
            timeline.setdefault(moment.replace(tzinfo=UTC), {})[state] = int(number)
        return sorted(timeline.items())

    def _filter_batches(
        self,
        status: Collection[str] | None,
        dag_id: Collection[str] | None,
        created_from: datetime | None,
        created_to: datetime | None,
    ) -> tuple[str, list[Any]]:
        """Return the ``WHERE`` clause over batches' own rows and its bound values."""
        states = [str(s) for s in (BatchState if status is None else status)]
        clauses = [f"kind = {self._ph}", f"status IN ({self._marks(states) or 'NULL'})"]
        args: list[Any] = [RequestKind.BATCH.value, *states]
        if dag_id is not None:
            dags = [str(d) for d in dag_id]
            # MySQL and MariaDB quote the strings JSON_EXTRACT returns; SQLite's json_extract does not.
            field = (
                "JSON_UNQUOTE(JSON_EXTRACT(data, '$.dag_id'))"
                if self.dialect == "mysql"
                else "json_extract(data, '$.dag_id')"
            )
            clauses.append(f"{field} IN ({self._marks(dags) or 'NULL'})")
            args.extend(dags)
        return self._where_created(clauses, args, created_from, created_to)
