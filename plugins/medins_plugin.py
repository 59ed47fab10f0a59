"""
The medins plugin: serves the status API on the Airflow api-server at ``/medins/api/v1``, and the
batches page at ``/medins/ui/``, shown in the Airflow UI under Browse → Batches.

Airflow imports this file in every component that loads the plugins folder, task processes
included; it imports FastAPI and the API's routes, nothing that touches a database (each request
opens its own status store) and not Airflow's api-server (the routes import its security
dependencies when a request comes).
"""

from __future__ import annotations

from typing import Any, ClassVar

from airflow.plugins_manager import AirflowPlugin

from medins.api import app
from medins.api.refusals import MaskRefusedTriggers


class MedinsPlugin(AirflowPlugin):
    """
    Mount the status API (``docs/status-api.md``) and the batches page under ``/medins``; add the page
    to the Airflow UI's Browse menu; mask refused triggers' replies.
    """

    name = "medins"
    fastapi_apps: ClassVar[list[dict[str, Any]]] = [
        {"app": app, "url_prefix": "/medins", "name": "medins status API"}
    ]
    # A refused trigger's reply names the field and the rule, never the personal data it refused.
    fastapi_root_middlewares: ClassVar[list[dict[str, Any]]] = [
        {"middleware": MaskRefusedTriggers, "args": [], "kwargs": {}, "name": "mask refused triggers"}
    ]
    # The batches page, framed by the Airflow UI at /plugin/medins-batches. The paths are relative:
    # the UI resolves them against its <base href>, so they hold under an [api] base_url too.
    external_views: ClassVar[list[dict[str, Any]]] = [
        {
            "name": "Batches",
            "href": "medins/ui/",
            "url_route": "medins-batches",
            "destination": "nav",
            "category": "browse",
            "icon": "medins/ui/icon.svg",
        }
    ]
