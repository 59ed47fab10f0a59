"""
The status API: read, count and cancel the requests of ``async_task_status`` over HTTP.

``plugins/medins_plugin.py`` mounts :data:`app` on the Airflow api-server under ``/medins``, so its
routes answer at ``/medins/api/v1/...`` behind Airflow's own authentication. The contract is
``docs/status-api.md``.
"""

from __future__ import annotations

from medins.api.app import app

__all__ = ["app"]
