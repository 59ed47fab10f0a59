"""Turn a submitted batch into rows of the status table and chunk descriptors.

Every request is checked against the interface catalog and the gateway's institutions before
anything is stored. A valid request becomes a ``PENDING`` row with its chunk number; an invalid
one becomes a ``REJECTED`` row that says why and is never sent; the rest of the batch goes on.
Requests whose ``request_id`` is already in the table (the same batch submitted again) are left
as they are: a ``request_id`` is an idempotency key.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from medins.catalog import SESSION, Catalog
from medins.masking import mask_text
from medins.states import RequestState
from medins.store import RequestRow

#: Most requests one batch may carry; also the ``maxItems`` of the trigger form's schema.
MAX_REQUESTS = 50_000
#: Most chunks one batch is split into: ``[core] max_map_length`` is 1024.
MAX_CHUNKS = 1000
#: Chunks that run at once: the ``medins_batch`` pool's slots, as set-up creates it. A batch whose
#: chunk size is left to the product is cut into a multiple of this many chunks, so no slot idles
#: through a last, short wave.
CHUNK_SLOTS = 4
#: Most requests a chunk holds when the product chooses: bounds a task's memory and its run time.
MAX_AUTO_CHUNK = 5000
#: Fewest requests a chunk holds when the product chooses: below it, starting a task costs more
#: than sending its requests.
MIN_AUTO_CHUNK = 50
REQUEST_FIELDS = frozenset({"api_code", "data", "org_code", "request_id", "insuplc_admdvs"})
# The trigger form's JSON schema applies these patterns with ``re.search``, where ``$`` also matches
# before a trailing newline: each ends with "no character follows" instead, which JavaScript reads
# the same way. ``\d`` would take any Unicode digit, which the gateway refuses.
REQUEST_ID = re.compile(r"^[A-Za-z0-9_.:@-]{1,128}(?![\s\S])")
ADMDVS = re.compile(r"^[0-9]{6}(?![\s\S])")
BATCH_ID = re.compile(r"^[A-Za-z0-9_.:+@-]{1,64}(?![\s\S])")
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass
class BatchPlan:
    """The rows and chunk descriptors of one batch, before they are stored."""

    batch_id: str
    rows: list[RequestRow]
    chunks: list[dict[str, Any]]
    rejected: int = 0
    by_api: Counter[str] = field(default_factory=Counter)

    @property
    def total(self) -> int:
        """Return how many requests the batch carries."""
        return len(self.rows)


def batch_id_for(run_id: str, requested: str | None = None) -> str:
    """Return the batch id: the one the caller chose, else the DAG run id (hashed when too long)."""
    if requested:
        if not BATCH_ID.match(requested):
            raise ValueError(f"batch_id {requested!r} must be 1-64 letters, digits or _.:+@-")
        return requested
    if BATCH_ID.match(run_id):
        return run_id
    return "run-" + hashlib.sha256(run_id.encode()).hexdigest()[:32]


def plan_batch(
    requests: Iterable[Any],
    *,
    batch_id: str,
    catalog: Catalog,
    institutions: Mapping[str, Any],
    chunk_size: int | None = None,
    batch_ids: Collection[str] = frozenset(),
) -> BatchPlan:
    """
    Check every request and plan the batch's rows and chunks.

    :param requests: The submitted requests, each ``{api_code, data, org_code, request_id?}``.
    :param batch_id: Id of the batch the rows belong to.
    :param catalog: Interface catalog to check against.
    :param institutions: The institutions the gateway Connection serves, by code.
    :param chunk_size: Requests per chunk, raised when the batch would need more than ``MAX_CHUNKS``;
        ``None`` to let :func:`auto_chunk_size` choose.
    :param batch_ids: The requests' ids that are other batches' ids in the table
        (:meth:`StatusStore.batch_ids_among`): the key is taken, so such a request is rejected.
    """
    requests = list(requests)
    rows: list[RequestRow] = []
    seen_ids: dict[str, int] = {}
    valid: list[RequestRow] = []
    only_org = next(iter(institutions)) if len(institutions) == 1 else None
    # The ids the caller chose; a request without one is named after the batch and its position,
    # unless the caller chose that very name for another request.
    chosen_ids = {
        request.get("request_id")
        for request in requests
        if isinstance(request, Mapping) and isinstance(request.get("request_id"), str)
    }

    for index, request in enumerate(requests):
        unstorable: list[str] = []
        request = _storable(request, "", unstorable)
        reasons, request_id = _check_request(
            request, index, catalog, institutions, only_org, seen_ids, batch_id, batch_ids
        )
        reasons.extend(unstorable)
        data = dict(request) if isinstance(request, Mapping) else {"raw": request}
        api_code = str(data.get("api_code", ""))[:8] or None
        org_code = data.get("org_code") or only_org
        interface = catalog.get(api_code or "")
        row = RequestRow(
            task_id=request_id or _generated_id(batch_id, index, chosen_ids),
            status=RequestState.REJECTED if reasons else RequestState.PENDING,
            data={"request": {**data, "org_code": org_code} if not reasons else data, "index": index},
            batch_id=batch_id,
            chunk_no=None,
            api_code=api_code,
            org_code=str(org_code)[:32] if org_code else None,
            kind=interface.kind if interface else "query",
            error="; ".join(reasons)[:1000] if reasons else None,
        )
        rows.append(row)
        if not reasons:
            valid.append(row)

    size = max(1, chunk_size or auto_chunk_size(len(valid)), math.ceil(len(valid) / MAX_CHUNKS))
    chunks: list[dict[str, Any]] = []
    for start in range(0, len(valid), size):
        members = valid[start : start + size]
        chunk_no = len(chunks)
        for row in members:
            row.chunk_no = chunk_no
        apis = Counter(row.api_code for row in members)
        chunks.append(
            {
                "batch_id": batch_id,
                "chunk_no": chunk_no,
                "size": len(members),
                "label": f"#{chunk_no} {len(members)} req: "
                + " ".join(f"{code}×{count}" for code, count in sorted(apis.items())),
            }
        )
    return BatchPlan(
        batch_id=batch_id,
        rows=rows,
        chunks=chunks,
        rejected=len(rows) - len(valid),
        by_api=Counter(row.api_code or "?" for row in rows),
    )


def auto_chunk_size(requests: int, slots: int = CHUNK_SLOTS) -> int:
    """
    Return the chunk size for ``requests`` valid requests: the fewest waves of ``slots`` chunks.

    Every chunk is a task instance that costs a few seconds to start, so chunks are as large as
    ``MAX_AUTO_CHUNK`` allows; their number is a multiple of ``slots`` so that every wave keeps each
    slot busy. A batch of 10,000 becomes 4 chunks of 2,500; one of 50,000, 12 chunks of 4,167.
    """
    waves = max(1, math.ceil(requests / (slots * MAX_AUTO_CHUNK)))
    return max(MIN_AUTO_CHUNK, math.ceil(requests / (slots * waves)))


def generated_ids(batch_id: str, index: int) -> tuple[str, str]:
    """
    Return the ids a request without a usable ``request_id`` may be stored under, in order of choice.

    A ``request_id`` never holds "+": the second cannot be taken by the caller nor by another request.
    """
    return f"{batch_id}-{index:06d}", f"{batch_id}+{index:06d}"


def _generated_id(batch_id: str, index: int, chosen_ids: set[Any]) -> str:
    """Return the task id of a request without a usable ``request_id``: never one the caller chose."""
    first, spare = generated_ids(batch_id, index)
    return first if first not in chosen_ids else spare


def _check_request(
    request: Any,
    index: int,
    catalog: Catalog,
    institutions: Mapping[str, Any],
    only_org: str | None,
    seen_ids: dict[str, int],
    batch_id: str,
    batch_ids: Collection[str],
) -> tuple[list[str], str | None]:
    """
    Return the reasons a request is invalid, and its usable ``request_id`` if it has one.

    Reasons name fields, never their values; the only values quoted are the caller's own keys
    (``request_id``, which must not carry personal data) and, masked, what was sent as an
    interface or institution code.
    """
    if not isinstance(request, Mapping):
        return [f"request #{index} must be an object, got {type(request).__name__}"], None
    reasons: list[str] = []

    request_id = request.get("request_id")
    if request_id is not None:
        if not isinstance(request_id, str) or not REQUEST_ID.match(request_id):
            reasons.append("request_id must be 1-128 letters, digits or _.:@-")
            request_id = None
        elif request_id in seen_ids:
            reasons.append(f"duplicate request_id {request_id} (first at request #{seen_ids[request_id]})")
            request_id = None
        elif request_id == batch_id:
            reasons.append(f"request_id {request_id} is the id of the batch itself; choose another")
            request_id = None
        elif request_id in batch_ids:
            reasons.append(f"request_id {request_id} is the id of another batch; choose another")
            request_id = None
        else:
            seen_ids[request_id] = index

    unknown = sorted(set(request) - REQUEST_FIELDS)
    if unknown:
        names = mask_text(", ".join(map(str, unknown)))
        reasons.append(f"unknown field(s) {names}; allowed: {', '.join(sorted(REQUEST_FIELDS))}")

    api_code = request.get("api_code")
    interface = catalog.get(api_code) if isinstance(api_code, str) else None
    if api_code in (None, ""):
        reasons.append("api_code is required")
    elif not isinstance(api_code, str):
        reasons.append(f"api_code must be a string, got {type(api_code).__name__}")
    elif interface is None:
        reasons.append(f"unknown interface {mask_text(repr(api_code))}: not in the interface catalog")
    elif interface.kind == SESSION:
        reasons.append(
            f"interface {api_code} ({interface.name}) is a session call the gateway hook makes itself"
        )

    org_code = request.get("org_code") or only_org
    if not org_code:
        reasons.append("org_code is required: the gateway Connection serves several institutions")
    elif not isinstance(org_code, str):
        reasons.append(f"org_code must be a string, got {type(org_code).__name__}")
    elif org_code not in institutions:
        reasons.append(f"institution {mask_text(repr(org_code))} is not configured in the gateway Connection")

    admdvs = request.get("insuplc_admdvs")
    if admdvs is not None and not (isinstance(admdvs, str) and ADMDVS.match(admdvs)):
        reasons.append("insuplc_admdvs must be 6 digits")

    data = request.get("data")
    if data is None:
        reasons.append("data is required")
    elif interface is not None and interface.kind != SESSION:
        reasons.extend(interface.validate(data))
    return reasons, request_id


def _storable(value: Any, path: str, problems: list[str]) -> Any:
    """
    Return ``value`` as the status table can hold it, naming in ``problems`` each place it could not.

    A lone surrogate (no valid Unicode, yet ``json.loads`` accepts it as a ``\\ud800`` escape) cannot
    be written as UTF-8, and ``NaN`` or an infinity is no number MySQL's JSON column takes: one such
    value would fail the bulk insert of the whole batch. It becomes U+FFFD or null, and the request is
    rejected with the place named.
    """
    if isinstance(value, str):
        if _SURROGATE.search(value):
            problems.append(f"{_place(path)} holds text that is not valid Unicode (a lone surrogate)")
            return _SURROGATE.sub("\ufffd", value)
        return value
    if isinstance(value, float) and not math.isfinite(value):
        problems.append(f"{_place(path)} is {value}, which is not a JSON number")
        return None
    if isinstance(value, Mapping):
        storable = {}
        for key, item in value.items():
            name = str(key)
            if _SURROGATE.search(name):
                problems.append(f"a field name in {_place(path)} is not valid Unicode (a lone surrogate)")
                name = _SURROGATE.sub("\ufffd", name)
            storable[name] = _storable(item, f"{path}.{name}" if path else name, problems)
        return storable
    if isinstance(value, list | tuple):
        return [_storable(item, f"{path}[{number}]", problems) for number, item in enumerate(value)]
    return value


def _place(path: str) -> str:
    """Name a place in a request for a reason: its field path, masked, or the request itself."""
    return mask_text(path) if path else "the request"
