"""The status API's FastAPI app: the routes under ``/api/v1``, and 400 for bad parameters."""

from __future__ import annotations

from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from medins.api.routes import router

API_PREFIX = "/api/v1"


async def _bad_parameters(request: Request, exc: Exception) -> JSONResponse:
    """Answer a parameter FastAPI could not validate with 400 and which parameter is wrong and why."""
    assert isinstance(exc, RequestValidationError)
    reasons = []
    for error in exc.errors():
        location = [str(part) for part in error.get("loc", ()) if part not in ("query", "path", "body")]
        name = location[0] if location else "request"
        reasons.append(f"{name}: {error.get('msg', 'invalid value')}")
    return JSONResponse(status_code=HTTPStatus.BAD_REQUEST, content={"detail": "; ".join(reasons)})


def create_app() -> FastAPI:
    """Return the status API's app; Airflow's api-server mounts it under ``/medins``."""
    app = FastAPI(
        title="medins status API",
        description="Read, count and cancel the requests of async_task_status (docs/status-api.md).",
        version="1",
    )
    app.add_exception_handler(RequestValidationError, _bad_parameters)
    app.include_router(router, prefix=API_PREFIX)
    return app


app = create_app()
