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

# Identity numbers (15 or 18 characters, the last may be X), mainland mobile numbers, certificate
# numbers of one or two letters and 13 to 25 digits (medical e-voucher numbers such as E + 20 digits),
# and any other run of 10 or more digits (psn_no, card numbers) inside free text. A msgid (a 12-character
# institution code and 18 digits) and an institution code stay readable.
_ID_NUMBER = re.compile(r"(?<![0-9A-Za-z])(\d{6})\d{8,11}([0-9Xx]{1})(?![0-9A-Za-z])")
_MOBILE = re.compile(r"(?<!\d)(1[3-9]\d)\d{4}(\d{4})(?!\d)")
_LETTERS_AND_DIGITS = re.compile(r"(?<![0-9A-Za-z])([A-Za-z]{1,2}\d{2})\d{9,21}(\d{2})(?![0-9A-Za-z])")
_LONG_DIGITS = re.compile(r"(?<![0-9A-Za-z])(\d{2})\d{6,}(\d{2})(?![0-9A-Za-z])")

# Airflow's reason for a conf that breaks a Param's JSON schema is jsonschema's full message: it quotes
# the offending value, then the schema, then the value again ("On instance[0]['data']: ...").
_PARAM_ERROR = re.compile(
    r"(?P<head>Invalid input for param (?P<param>[^:\s]+): )(?P<message>.*?)\n\n"
    r"Failed validating '(?P<rule>\w+)' in .*?\n\nOn instance(?P<path>[^:\n]*):\n",
    re.DOTALL,
)
# How jsonschema's messages go on after the value they start with; what follows comes from the schema.
_RULE_TEXT = re.compile(
    r" (?=(?:is not of type|does not match|is not one of|is too (?:short|long)|should be non-empty"
    r"|should not be valid|is (?:less|greater) than|is not a |is not valid under|was expected"
    r"|is not a multiple of|has (?:non-unique|too many|too few)))"
)
# Rules whose message names properties, not the value.
_NAMING_RULES = frozenset({"required", "additionalProperties", "dependentRequired", "propertyNames"})


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


def mask_text(text: str, known: Any = None) -> str:
    """
    Mask identity numbers, mobile numbers and long digit runs inside free text.

    Names cannot be told from other words: a gateway message that may quote the request it answers
    (``人员张三不存在``) is masked with the request as ``known``, whose personal fields' values are
    then masked wherever they appear.

    :param text: The text, e.g. a gateway's ``err_msg``.
    :param known: Data (dicts and lists, any depth) whose personal values to mask, e.g. the request's input.
    """
    if not text:
        return text
    for field, value in sorted(_known_values(known), key=lambda item: -len(item[1])):
        text = text.replace(value, mask_value(field, value))
    text = _ID_NUMBER.sub(lambda m: m.group(1) + "*" * (len(m.group(0)) - 7) + m.group(2), text)
    text = _MOBILE.sub(r"\1****\2", text)
    text = _LETTERS_AND_DIGITS.sub(
        lambda m: m.group(1) + "*" * (len(m.group(0)) - len(m.group(1)) - 2) + m.group(2), text
    )
    return _LONG_DIGITS.sub(lambda m: m.group(1) + "*" * (len(m.group(0)) - 4) + m.group(2), text)


def mask_param_error(message: str) -> str:
    """
    Return Airflow's reason for an invalid ``conf`` naming where and which rule failed, not the value.

    A ``conf`` that breaks a Param's JSON schema is refused with jsonschema's whole message, which
    quotes the offending value twice (a request's ``data`` given as a string quotes the string). The
    first line is kept with the value replaced by its place, e.g. ``Invalid input for param requests:
    requests[0]['data'] is not of type 'object'``; a message of another shape is masked with
    :func:`mask_text`.
    """
    found = _PARAM_ERROR.match(message)
    if not found:
        return mask_text(message)
    head, first_line = found["head"], found["message"]
    if found["rule"] in _NAMING_RULES:
        return head + mask_text(first_line)
    place = found["param"] + found["path"]
    splits = [match.end() for match in _RULE_TEXT.finditer(first_line)]
    if not splits:
        return f"{head}{place} breaks the schema's rule {found['rule']!r}"
    return f"{head}{place} {first_line[splits[-1] :]}"


def mask_refusal(detail: Any) -> Any:
    """
    Return the ``detail`` of an API's refusal (400 or 422) without the values it quotes.

    A 400 for a ``conf`` that breaks a Param gets :func:`mask_param_error`; a 422 for a body of the
    wrong shape (FastAPI's list of errors, each with the ``input`` it refused) loses each ``input``.
    """
    if isinstance(detail, str):
        return mask_param_error(detail)
    if isinstance(detail, list):
        return [_without_input(error) for error in detail]
    return detail


def _without_input(error: Any) -> Any:
    if not isinstance(error, dict):
        return error
    return {key: value for key, value in error.items() if key != "input"}


def _known_values(data: Any, field: str | None = None) -> list[tuple[str, str]]:
    """Return ``(field, value)`` of the personal fields in ``data`` long enough not to be any word."""
    if isinstance(data, Mapping):
        return [
            found
            for key, value in data.items()
            for found in _known_values(value, key if key in DEFAULT_PERSONAL_FIELDS else field)
        ]
    if isinstance(data, list):
        return [found for item in data for found in _known_values(item, field)]
    if field is None or isinstance(data, bool) or not isinstance(data, (str, int)):
        return []
    text = str(data).strip()
    return [(field, text)] if len(text) >= (2 if field in _NAME_FIELDS else 6) else []
