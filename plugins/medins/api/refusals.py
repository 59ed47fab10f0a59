"""Keep the values a refused DAG-run trigger quotes out of the api-server's reply.

Airflow answers a ``conf`` that breaks a Param's JSON schema with 400 and jsonschema's whole
message, which quotes the refused value (a request's certificate number, a whole list of requests);
FastAPI answers a body of the wrong shape with 422 and the ``input`` it refused. The plugin adds
:class:`MaskRefusedTriggers` to the api-server's root app: such a reply keeps where and which rule
failed, never the value (:func:`medins.masking.mask_refusal`).
"""

from __future__ import annotations

import json
import re
from http import HTTPStatus

from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from medins.masking import mask_refusal

TRIGGER_PATH = re.compile(r"/api/v2/dags/[^/]+/dagRuns/?")
_REFUSALS = (HTTPStatus.BAD_REQUEST, HTTPStatus.UNPROCESSABLE_ENTITY)


class MaskRefusedTriggers(BaseHTTPMiddleware):
    """Rewrite the ``detail`` of a refused ``POST /api/v2/dags/{dag_id}/dagRuns`` without the values."""

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        response = await call_next(request)
        if (
            request.method != "POST"
            or response.status_code not in _REFUSALS
            or not TRIGGER_PATH.fullmatch(request.url.path)
        ):
            return response
        body = b"".join([chunk async for chunk in response.body_iterator])
        try:
            detail = json.loads(body)["detail"]
        except (ValueError, KeyError, TypeError):
            return Response(body, status_code=response.status_code, media_type=response.media_type)
        return JSONResponse({"detail": mask_refusal(detail)}, status_code=response.status_code)
