"""The trigger-time ``Params`` of the batch DAG: a bad ``conf`` is refused with the schema's reason."""

from __future__ import annotations

from typing import Any

from airflow.sdk import Param

from medins.batch import ADMDVS, BATCH_ID, CHUNK_SLOTS, MAX_AUTO_CHUNK, MAX_REQUESTS, REQUEST_ID

_REQUEST_EXAMPLE = {
    "api_code": "1101",
    "org_code": "H44010600001",
    "request_id": "clinic-20261203-0001",
    "data": {"mdtrt_cert_type": "02", "mdtrt_cert_no": "440106199001011234", "psn_name": "张三"},
}

REQUEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "api_code": {"type": "string", "description": "4-digit interface number, e.g. 1101"},
        "org_code": {"type": "string", "description": "12-character institution code (定点医药机构编号)"},
        "request_id": {
            "type": "string",
            "pattern": REQUEST_ID.pattern,
            "description": "your idempotency key, 1-128 letters, digits or _.:@- (no personal data); "
            "a request whose id is already stored adds nothing",
        },
        "insuplc_admdvs": {
            "type": "string",
            "description": "insurance area of the person, when not the default",
        },
        "data": {"type": "object", "description": "the interface's input"},
    },
}


def chunk_size_param() -> Param:
    """Return the ``chunk_size`` Param: empty for the product's choice, else requests per chunk."""
    return Param(
        None,
        type=["null", "integer"],
        minimum=1,
        maximum=MAX_AUTO_CHUNK,
        title="Requests per chunk",
        description=(
            "Each chunk is one mapped task instance. Leave it empty to let the product choose: chunks "
            f"of up to {MAX_AUTO_CHUNK:,}, {CHUNK_SLOTS} (the medins_batch pool's slots) or a multiple "
            "of it. A size that would need over 1,000 chunks is raised."
        ),
    )


def batch_params() -> dict[str, Param]:
    """Return the ``Params`` of ``medins_batch``, with titles and descriptions for the trigger form."""
    return {
        "requests": Param(
            type="array",
            minItems=1,
            maxItems=MAX_REQUESTS,
            items=REQUEST_SCHEMA,
            title="Requests",
            description=(
                f"1 to {MAX_REQUESTS:,} requests, each an object with api_code, org_code, data and an "
                "optional request_id. Invalid single requests are stored as REJECTED with the reason; "
                f"the rest run. Example: [{_REQUEST_EXAMPLE}]"
            ),
            examples=[[_REQUEST_EXAMPLE]],
        ),
        "batch_id": Param(
            None,
            type=["null", "string"],
            pattern=BATCH_ID.pattern,
            title="Batch id",
            description="Optional name of the batch (1-64 letters, digits or _.:+@-); else the DAG run id.",
        ),
        "chunk_size": chunk_size_param(),
        "concurrency": concurrency_param(),
    }


def stored_batch_params() -> dict[str, Param]:
    """Return the ``Params`` of ``medins_stored_batch``: which stored batch to send, and how."""
    return {
        "batch_id": Param(
            type="string",
            pattern=BATCH_ID.pattern,
            title="Batch id",
            description="The id of a batch stored with POST /medins/api/v1/batches (1-64 letters, "
            "digits or _.:+@-). Its requests that are not final yet are sent.",
            examples=["clinic-20261204"],
        ),
        "concurrency": concurrency_param(),
    }


def concurrency_param() -> Param:
    """Return the ``concurrency`` Param: gateway calls in flight per chunk."""
    return Param(
        16,
        type="integer",
        minimum=1,
        maximum=64,
        title="Calls in flight per chunk",
        description="Concurrent gateway calls within one chunk.",
    )


def call_params() -> dict[str, Param]:
    """Return the ``Params`` of ``medins_call``: one request, checked when the run is triggered."""
    properties = REQUEST_SCHEMA["properties"]
    return {
        "api_code": Param(
            type="string",
            pattern=r"^[0-9]{4}(?![\s\S])",
            title="Interface",
            description=properties["api_code"]["description"],
            examples=["1101"],
        ),
        "org_code": Param(
            None,
            type=["null", "string"],
            title="Institution",
            description=properties["org_code"]["description"],
        ),
        "data": Param(
            type="object",
            title="Input",
            description="The interface's input, e.g. " + str(_REQUEST_EXAMPLE["data"]),
            examples=[_REQUEST_EXAMPLE["data"]],
        ),
        "request_id": Param(
            None,
            type=["null", "string"],
            pattern=REQUEST_ID.pattern,
            title="Request id",
            description=properties["request_id"]["description"],
        ),
        "insuplc_admdvs": Param(
            None,
            type=["null", "string"],
            pattern=ADMDVS.pattern,
            title="Insurance area",
            description=properties["insuplc_admdvs"]["description"],
        ),
    }
