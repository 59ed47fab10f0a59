"""
The status API's FastAPI app: the routes under ``/api/v1``, 400 for bad parameters, 503 in a DB
outage; and the batches page under ``/ui``.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from pathlib import Path
from typing import Any

import MySQLdb
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.responses import Response
from starlette.staticfiles import StaticFiles

from medins.api.routes import router
from medins.store import is_outage

log = logging.getLogger(__name__)

API_PREFIX = "/api/v1"
UI_PREFIX = "/ui"
UI_DIR = Path(__file__).resolve().parents[1] / "ui"
"""The batches page: static HTML, CSS and JavaScript, no build step."""

PAGE_HEADERS = {
    # Scripts, styles and data from the api-server only; framed by the Airflow UI only.
    "Content-Security-Policy": "default-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-cache",
}


class PageFiles(StaticFiles):
    """
    Serve the batches page's files with :data:`PAGE_HEADERS`.

    The files hold no data and need no login; the page fetches the status API with the caller's
    Airflow session (the api-server's ``_token`` cookie), so the routes check who asks.
    """

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers.update(PAGE_HEADERS)
        return response


async def _bad_parameters(request: Request, exc: Exception) -> JSONResponse:
    """Answer a parameter FastAPI could not validate with 400 and which parameter is wrong and why."""
    assert isinstance(exc, RequestValidationError)
    reasons = []
    for error in exc.errors():
        location = [str(part) for part in error.get("loc", ()) if part not in ("query", "path", "body")]
        name = location[0] if location else "request"
        reasons.append(f"{name}: {error.get('msg', 'invalid value')}")
    return JSONResponse(status_code=HTTPStatus.BAD_REQUEST, content={"detail": "; ".join(reasons)})


async def _store_error(request: Request, exc: Exception) -> JSONResponse:
    """Answer 503 while the status database cannot be reached, 500 for any other database error."""
    if is_outage(exc):
        return JSONResponse(
            status_code=HTTPStatus.SERVICE_UNAVAILABLE,
            headers={"Retry-After": "30"},
            content={"detail": "The status store (async_task_status) cannot be reached; try again shortly."},
        )
    log.error("Status store error on %s: %s", request.url.path, type(exc).__name__)
    return JSONResponse(
        status_code=HTTPStatus.INTERNAL_SERVER_ERROR,
        content={"detail": "The status store failed; see the api-server's log."},
    )


def create_app() -> FastAPI:
    """Return the status API's app; Airflow's api-server mounts it under ``/medins``."""
    app = FastAPI(
        title="medins status API",
        description="Read, count and cancel the requests of async_task_status (docs/status-api.md).",
        version="1",
    )
    app.add_exception_handler(RequestValidationError, _bad_parameters)
    for error in (MySQLdb.OperationalError, MySQLdb.InterfaceError):
        app.add_exception_handler(error, _store_error)
    app.include_router(router, prefix=API_PREFIX)
    app.mount(UI_PREFIX, PageFiles(directory=UI_DIR, html=True), name="ui")
    return app


app = create_app()
