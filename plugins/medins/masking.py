"""Mask personal data before it reaches a log, an error message, XCom or a rendered field.

Certificate numbers, names, phone numbers and ``psn_no`` are personal data. The table keeps them,
because it is the business record; everything that people read on the way (task logs, exception
texts, the UI) gets the masked form.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

#: Fields masked wherever they appear, whatever the interface; the catalog may add more.
DEFAULT_PERSONAL_FIELDS = frozenset(
    {
        "psn_no",
        "mdtrt_cert_no",
        "certno",
        "psn_cert_no",
        "psn_name",
        "name",
        "tel",
        "mob",
        "phone",
        "card_sn",
        "dr_name",
        "opter_name",
        "emp_name",
    }
)

_NAME_FIELDS = frozenset({"psn_name", "name", "dr_name", "opter_name"})

# Identity numbers (15 or 18 characters, the last may be X), mainland mobile numbers, and any other
# run of 10 or more digits (psn_no, card numbers) inside free text.
_ID_NUMBER = re.compile(r"(?<![0-9A-Za-z])(\d{6})\d{8,11}([0-9Xx]{1})(?![0-9A-Za-z])")
_MOBILE = re.compile(r"(?<!\d)(1[3-9]\d)\d{4}(\d{4})(?!\d)")
_LONG_DIGITS = re.compile(r"(?<![0-9A-Za-z])(\d{2})\d{6,}(\d{2})(?![0-9A-Za-z])")


def mask_value(field: str, value: Any) -> Any:
    """Return the masked form of one personal value, keeping just enough to tell records apart."""
    if value is None or value == "":
        return value
    text = str(value)
    if field in _NAME_FIELDS:
        return text[0] + "*" * max(len(text) - 1, 1)
    if len(text) <= 4:
        return "*" * len(text)
    keep = 3 if len(text) >= 11 else 1
    return text[:keep] + "*" * (len(text) - 2 * keep) + text[-keep:]


def mask_data(data: Any, personal_fields: Iterable[str] = DEFAULT_PERSONAL_FIELDS) -> Any:
    """Return a copy of ``data`` (dicts and lists, any depth) with every personal field masked."""
    fields = frozenset(personal_fields)
    if isinstance(data, Mapping):
        return {
            key: mask_value(key, value)
            if key in fields and not isinstance(value, (dict, list))
            else mask_data(value, fields)
            for key, value in data.items()
        }
    if isinstance(data, list):
        return [mask_data(item, fields) for item in data]
    if isinstance(data, str):
        return mask_text(data)
    return data


def mask_text(text: str) -> str:
    """Mask identity numbers, mobile numbers and long digit runs inside free text."""
    if not text:
        return text
    text = _ID_NUMBER.sub(lambda m: m.group(1) + "*" * (len(m.group(0)) - 7) + m.group(2), text)
    text = _MOBILE.sub(r"\1****\2", text)
    return _LONG_DIGITS.sub(lambda m: m.group(1) + "*" * (len(m.group(0)) - 4) + m.group(2), text)
