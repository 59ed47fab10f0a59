"""A batch's progress, kept in the batch's own row of the status table."""

from __future__ import annotations

from typing import Any

from medins.states import FINAL
from medins.store import StatusStore


def progress_of(counts: dict[str, int]) -> dict[str, Any]:
    """Return ``current`` (final requests), ``total`` and ``percentage`` for counts by state."""
    total = sum(counts.values())
    current = sum(count for state, count in counts.items() if state in FINAL)
    percentage = round(100.0 * current / total, 1) if total else 100.0
    return {
        "current": current,
        "total": total,
        "percentage": percentage,
        "counts": dict(sorted(counts.items())),
    }


def refresh_progress(
    store: StatusStore, batch_id: str, status: str | None = None, **extra: Any
) -> dict[str, Any]:
    """Recount the batch's rows and write the progress into the batch's own row; return it."""
    progress = progress_of(store.counts(batch_id))
    batch = store.get_batch(batch_id)
    data = {**(batch.data if batch else {}), **extra, **progress}
    store.put_batch(batch_id, status or (batch.status if batch else "RUNNING"), data)
    return data
