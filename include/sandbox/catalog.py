"""Read the interface catalog (``include/interfaces.json``) the sandbox validates messages against.

The sandbox is a separate program from the Airflow plugins, so it reads the catalog itself
rather than importing the product's loader; both follow the same file and the same rules.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_CATALOG_PATH = Path(__file__).resolve().parent.parent / "interfaces.json"

SESSION, QUERY, WRITE = "session", "query", "write"
_KINDS = (SESSION, QUERY, WRITE)


@dataclass(frozen=True)
class InterfaceSpec:
    """One interface as the catalog describes it."""

    infno: str
    name: str
    kind: str
    input_key: str
    required: tuple[str, ...]
    required_any: tuple[tuple[str, ...], ...]
    fields: dict[str, dict[str, Any]] = field(hash=False)

    @property
    def is_write(self) -> bool:
        """Tell whether the interface changes records (its reply may be lost after it applied)."""
        return self.kind == WRITE


def load_catalog(path: str | os.PathLike[str] | None = None) -> dict[str, InterfaceSpec]:
    """
    Load the catalog and return its interfaces by number.

    :param path: The catalog file; the bundled ``include/interfaces.json`` when None.
    """
    path = Path(path or DEFAULT_CATALOG_PATH)
    with open(path, encoding="utf-8") as handle:
        raw = json.load(handle)

    interfaces = raw.get("interfaces") if isinstance(raw, dict) else None
    if not isinstance(interfaces, dict) or not interfaces:
        raise ValueError(f"catalog {path} has no 'interfaces' object")
    catalog = {}
    for infno, spec in interfaces.items():
        if spec.get("kind") not in _KINDS:
            raise ValueError(f"catalog {path}: interface {infno} has kind {spec.get('kind')!r}")
        catalog[infno] = InterfaceSpec(
            infno=infno,
            name=spec.get("name", ""),
            kind=spec["kind"],
            input_key=spec.get("input_key", "data"),
            required=tuple(spec.get("required", ())),
            required_any=tuple(tuple(group) for group in spec.get("required_any", ())),
            fields=dict(spec.get("fields", {})),
        )
    return catalog
