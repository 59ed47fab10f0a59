"""
Airflow's own authentication and authorization, as dependencies of the status API's routes.

Airflow mounts a plugin's FastAPI app as it is: no middleware checks the caller of a sub-app, so
every route of the status API must depend on :data:`can_read_runs` or :data:`can_edit_runs`. Both
resolve the caller with Airflow's ``get_user`` (a bearer token or the UI's session cookie: 401
without one, 403 for an invalid one) and ask the configured auth manager about DAG runs of every
DAG, so a grant on one DAG does not open the whole table.

Airflow's security module is imported when a request comes, not with this module: it loads the
whole api-server, which every task process that loads the plugins folder would pay for.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

if TYPE_CHECKING:
    from airflow.api_fastapi.auth.managers.models.base_user import BaseUser

_bearer = HTTPBearer(auto_error=False, description="A JWT from Airflow's POST /auth/token.")


async def current_user(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> BaseUser:
    """Return the caller as Airflow's auth manager knows it; 401 without credentials."""
    from airflow.api_fastapi.core_api.security import get_user

    return await get_user(request, _oauth_token=None, bearer_credentials=credentials)


def _dag_run_access(method: Literal["GET", "PUT"], action: str) -> Callable[..., Any]:
    """Return a dependency that refuses (403) a caller who may not ``method`` DAG runs of every DAG."""

    # The user's type stays Any here: FastAPI reads these annotations at run time, and BaseUser is
    # only imported for type checkers.
    def check(user: Annotated[Any, Depends(current_user)]) -> BaseUser:
        from airflow.api_fastapi.app import get_auth_manager
        from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity

        allowed = get_auth_manager().is_authorized_dag(
            method=method, access_entity=DagAccessEntity.RUN, user=user
        )
        if not allowed:
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                f"Forbidden: {action} needs {'edit' if method == 'PUT' else 'read'} access to DAG runs",
            )
        return user

    return check


can_read_runs = _dag_run_access("GET", "reading requests")
"""Dependency: the caller may read DAG runs; returns the user."""

can_trigger_runs = _dag_run_access("POST", "storing a batch to send")
"""Dependency: the caller may trigger DAG runs; returns the user."""
can_edit_runs = _dag_run_access("PUT", "cancelling")
"""Dependency: the caller may edit DAG runs; returns the user."""
