"""The part of the interface catalog (``include/interfaces.json``) that reading request files needs.

Airflow's side checks every request against the full catalog when a batch is registered; the
client only needs to know which interfaces exist and which of their fields are numbers or dates,
so that a spreadsheet cell becomes the JSON type the interface expects.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medins_client.errors import InputError

#: The bundled catalog, next to this package in the project's ``include/`` folder.
DEFAULT_CATALOG_PATH = Path(__file__).resolve().parents[1] / "interfaces.json"


@dataclass(frozen=True)
class InterfaceCatalog:
    """Interfaces by code, each with its fields' rules (``type``, ``format``, ...)."""

    fields: dict[str, dict[str, dict[str, Any]]]
    path: str

    def knows(self, api_code: str) -> bool:
        """Tell whether the catalog has the interface ``api_code``."""
        return api_code in self.fields

    def rule(self, api_code: str, field: str) -> dict[str, Any]:
        """Return the catalog's rule for one input field (empty when the field is not described)."""
        return self.fields.get(api_code, {}).get(field, {})

    def known_codes(self) -> str:
        """Return the interface codes the catalog knows, for error messages."""
        return ", ".join(sorted(self.fields))


def load_catalog(path: str | os.PathLike[str] | None = None) -> InterfaceCatalog:
    """
    Load the catalog from ``path``, else ``$MEDINS_CATALOG``, else the project's bundled file.

    :param path: A catalog file in the format of ``include/interfaces.json``.
    """
    resolved = Path(path or os.environ.get("MEDINS_CATALOG") or DEFAULT_CATALOG_PATH)
    try:
        raw = json.loads(resolved.read_text(encoding="utf-8"))
        interfaces = raw["interfaces"]
        fields = {str(code): dict(spec.get("fields", {})) for code, spec in interfaces.items()}
    except FileNotFoundError:
        raise InputError(
            f"the interface catalog {resolved} does not exist: pass --catalog or set MEDINS_CATALOG "
            "to the project's include/interfaces.json"
        ) from None
    except (OSError, ValueError, KeyError, AttributeError, TypeError) as err:
        raise InputError(f"the interface catalog {resolved} cannot be read ({err})") from None
    return InterfaceCatalog(fields=fields, path=str(resolved))
