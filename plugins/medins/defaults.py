"""Settings every medins DAG shares: the start date and the task defaults (retries, time limits)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pendulum

#: Timezone-aware: the institutions' day is China Standard Time.
START_DATE = pendulum.datetime(2026, 1, 1, tz="Asia/Shanghai")

#: Airflow pool every chunk of every batch runs in. Its slots should match the task slots of the
#: ``medical_batch`` workers, so chunks wait in Airflow (scheduled) rather than in the broker's queue,
#: where a broker restart would lose them; set-up creates it (``airflow pools set``).
BATCH_POOL = "medins_batch"
BATCH_POOL_DESCRIPTION = (
    "Chunks of medical-insurance batches running at once; match the medical_batch workers' slots"
)


def default_args(**overrides: Any) -> dict[str, Any]:
    """Return the task defaults: 3 retries with exponential backoff and a 10-minute hard limit."""
    return {
        "owner": "medins",
        "queue": "default",
        "retries": 3,
        "retry_delay": timedelta(seconds=10),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(minutes=5),
        "execution_timeout": timedelta(minutes=10),
        **overrides,
    }
