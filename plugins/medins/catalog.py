"""The interface catalog: which interfaces exist, their kind and the input each must carry.

The catalog is data (``include/interfaces.json``), read by the gateway hook, the batch validator
and the sandbox gateway alike. Adding an interface or a province's extra required field is an
edit of that file, never a new class.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

#: Where the catalog lives unless ``MEDINS_CATALOG`` or the gateway Connection says otherwise.
DEFAULT_CATALOG_PATH = Path(__file__).resolve().parents[2] / "include" / "interfaces.json"

QUERY, WRITE, SESSION = "query", "write", "session"

_FORMATS = {"date": "%Y-%m-%d", "datetime": "%Y-%m-%d %H:%M:%S"}
# ASCII digits only: ``\d`` and ``strptime`` would also take full-width digits, which the gateway refuses.
_PATTERNS = {
    "date": re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}"),
    "datetime": re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}"),
}


@dataclass(frozen=True)
class Interface:
    """One numbered interface of the national platform, as the catalog describes it."""

    code: str
    name: str
    kind: str
    input_key: str
    required: tuple[str, ...]
    required_any: tuple[tuple[str, ...], ...]
    fields: dict[str, dict[str, Any]] = field(hash=False)

    @property
    def is_write(self) -> bool:
        """Tell whether a repeated call could change money or records (never resend blindly)."""
        return self.kind == WRITE

    def validate(self, data: Any) -> list[str]:
        """Return every reason the input ``data`` breaks this interface's rules (empty when valid)."""
        if not isinstance(data, dict):
            return [f"data must be an object, got {type(data).__name__}"]
        errors = [f"missing required field {name}" for name in self.required if _is_blank(data.get(name))]
        if self.required_any and not any(
            all(not _is_blank(data.get(name)) for name in group) for group in self.required_any
        ):
            choices = " or ".join("+".join(group) for group in self.required_any)
            errors.append(f"needs {choices}")
        for name, value in data.items():
            rule = self.fields.get(name)
            if rule is not None and value is not None:
                problem = _check_field(name, value, rule)
                if problem:
                    errors.append(problem)
        return errors


@dataclass(frozen=True)
class Catalog:
    """All interfaces the product knows, keyed by their 4-digit code."""

    interfaces: dict[str, Interface]
    personal_fields: frozenset[str]
    path: str

    def get(self, code: str) -> Interface | None:
        """Return the interface with this code, or None when the catalog does not know it."""
        return self.interfaces.get(code)

    def __getitem__(self, code: str) -> Interface:
        try:
            return self.interfaces[code]
        except KeyError:
            known = ", ".join(sorted(self.interfaces))
            raise KeyError(f"interface {code!r} is not in the catalog {self.path} (known: {known})") from None


def load_catalog(path: str | os.PathLike[str] | None = None) -> Catalog:
    """Load the catalog from ``path``, ``$MEDINS_CATALOG`` or the bundled file (cached per path)."""
    resolved = Path(path or os.environ.get("MEDINS_CATALOG") or DEFAULT_CATALOG_PATH).resolve()
    return _load(str(resolved))


@cache
def _load(path: str) -> Catalog:
    with open(path, encoding="utf-8") as handle:
        raw = json.load(handle)
    interfaces = {
        code: Interface(
            code=code,
            name=spec["name"],
            kind=spec["kind"],
            input_key=spec.get("input_key", "data"),
            required=tuple(spec.get("required", ())),
            required_any=tuple(tuple(group) for group in spec.get("required_any", ())),
            fields=dict(spec.get("fields", {})),
        )
        for code, spec in raw["interfaces"].items()
    }
    return Catalog(
        interfaces=interfaces, personal_fields=frozenset(raw.get("personal_fields", ())), path=path
    )


def _is_blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _check_field(name: str, value: Any, rule: dict[str, Any]) -> str | None:
    kind = rule.get("type", "string")
    if kind == "string":
        if not isinstance(value, str):
            return f"{name} must be a string, got {type(value).__name__}"
        if "max_length" in rule and len(value) > rule["max_length"]:
            return f"{name} is {len(value)} characters, longer than {rule['max_length']}"
        fmt = rule.get("format")
        if fmt and value and not _valid_time(value, fmt):
            return f"{name} must be a {fmt} like {_example(fmt)}"
    elif kind in ("integer", "number"):
        numeric = (int,) if kind == "integer" else (int, float)
        if isinstance(value, bool) or not isinstance(value, numeric):
            expected = "an integer" if kind == "integer" else "a number"
            return f"{name} must be {expected}, got {type(value).__name__}"
        if "minimum" in rule and value < rule["minimum"]:
            return f"{name} must be at least {rule['minimum']}"
        if "maximum" in rule and value > rule["maximum"]:
            return f"{name} must be at most {rule['maximum']}"
        if "decimals" in rule and round(value, rule["decimals"]) != value:
            return f"{name} has more than {rule['decimals']} decimals"
    if "enum" in rule and value not in rule["enum"]:
        return f"{name} must be one of {', '.join(map(str, rule['enum']))}"
    return None


def _valid_time(value: str, fmt: str) -> bool:
    if not _PATTERNS[fmt].fullmatch(value):
        return False
    try:
        datetime.strptime(value, _FORMATS[fmt])
    except ValueError:
        return False
    return True


def _example(fmt: str) -> str:
    return "2026-12-03" if fmt == "date" else "2026-12-03 08:30:00"
