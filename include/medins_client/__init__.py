"""
Client of the medins product (医保接口批量调用 on Apache Airflow): a Python API and the ``medins`` command.

It reaches Airflow over HTTP only: the REST API to submit, the medins status API to read.
"""

from __future__ import annotations

from medins_client.client import FINAL_STATES, MedicalInsuranceClient
from medins_client.errors import (
    AlreadySubmitted,
    AuthenticationFailed,
    BadRequest,
    BatchNotFound,
    InputError,
    MedinsClientError,
    NotFound,
    ServerUnavailable,
    StatusApiUnavailable,
    SubmissionFailed,
    SubmissionRefused,
    TaskNotFound,
    TaskWaitTimeout,
)

__all__ = [
    "FINAL_STATES",
    "AlreadySubmitted",
    "AuthenticationFailed",
    "BadRequest",
    "BatchNotFound",
    "InputError",
    "MedicalInsuranceClient",
    "MedinsClientError",
    "NotFound",
    "ServerUnavailable",
    "StatusApiUnavailable",
    "SubmissionFailed",
    "SubmissionRefused",
    "TaskNotFound",
    "TaskWaitTimeout",
]
