"""
The medins plugin: serves the status API on the Airflow api-server at ``/medins/api/v1``.

Airflow imports this file in every component that loads the plugins folder, task processes
included; it imports FastAPI and the API's routes, nothing that touches a database (each request
opens its own status store) and not Airflow's api-server (the routes import its security
dependencies when a request comes).
"""

from __future__ import annotations

from typing import Any, ClassVar

from airflow.plugins_manager import AirflowPlugin

from medins.api import app


class MedinsPlugin(AirflowPlugin):
    """Mount the status API (``docs/status-api.md``) under ``/medins``."""

    name = "medins"
    fastapi_apps: ClassVar[list[dict[str, Any]]] = [
        {"app": app, "url_prefix": "/medins", "name": "medins status API"}
    ]
