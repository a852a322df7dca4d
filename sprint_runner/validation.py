"""Argument checks, derived from the models, raised before anything is written."""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from peewee import CharField, Field, IntegerField, TextField

from .models import BaseModel

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

_MINIMUM = {"max_cycles": 1, "cycles_completed": 0}
"""Lower bounds for counts; timestamps (``*_at``, ``timestamp``) must be >= 0."""

SURROGATE = re.compile("[\ud800-\udfff]")
"""A lone surrogate cannot be encoded for any backend; it would fail later, unnamed."""


def check_bool(name: str, value: object) -> bool:
    """Return ``value`` if it is a bool, else raise naming ``name`` (``"no"`` is not False)."""
    if type(value) is not bool:
        raise TypeError(f"{name} must be a bool, not {type(value).__name__}: {value!r}")
    return value


def check_int(name: str, value: object, *, minimum: int | None = None) -> int:
    """Return ``value`` if it is an int (not bool) in range, else raise naming ``name``."""
    if type(value) is int and INT64_MIN <= value <= INT64_MAX and (
            minimum is None or value >= minimum):
        return value  # the common case, decided in one expression (hot paths)
    if type(value) is not int and (isinstance(value, bool) or not isinstance(value, int)):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}: {value!r}")
    if not INT64_MIN <= value <= INT64_MAX:
        raise ValueError(f"{name} is out of the 64-bit integer range: {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return value


def check_optional_int(name: str, value: object) -> int | None:
    """Return ``value`` if it is None or a valid int, else raise naming ``name``."""
    return None if value is None else check_int(name, value)


def check_text(name: str, value: object, *, max_length: int | None = None,
               allow_empty: bool = False) -> str:
    """Return ``value`` if it is a str the database can store, else raise naming ``name``."""
    if (type(value) is str and (value or allow_empty)
            and (max_length is None or len(value) <= max_length) and "\x00" not in value
            and (value.isascii() or not SURROGATE.search(value))):
        return value  # the common case, decided in one expression (hot paths)
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, not {type(value).__name__}: {value!r}")
    if not value and not allow_empty:
        raise ValueError(f"{name} must be a non-empty str")
    if max_length is not None and len(value) > max_length:
        raise ValueError(f"{name} is longer than {max_length} characters ({len(value)})")
    if "\x00" in value:
        # PostgreSQL cannot store NUL in text; refuse it everywhere so every backend agrees.
        raise ValueError(f"{name} must not contain NUL characters")
    if SURROGATE.search(value):
        raise ValueError(f"{name} contains a lone surrogate ({value!r}), not valid Unicode text")
    return value


def check_optional_text(name: str, value: object) -> str | None:
    """Return ``value`` if it is None or a str (empty allowed), else raise naming ``name``."""
    return None if value is None else check_text(name, value, allow_empty=True)


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    """Return ``value`` if it is one of ``choices``, else raise listing them."""
    check_text(name, value)
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
    return value


def check_field(field: Field, value: object) -> object:
    """Check one column value against its model field (type, null, length, choices)."""
    name = field.column_name
    if value is None:
        if field.null:
            return None
        raise ValueError(f"{name} must not be None")
    if isinstance(field, IntegerField) or hasattr(field, "rel_model"):
        minimum = _MINIMUM.get(name)
        if minimum is None and (name.endswith("_at") or name == "timestamp"):
            minimum = 0
        return check_int(name, value, minimum=minimum)
    if field.choices:
        return check_choice(name, value, tuple(c for c, _ in field.choices))
    if isinstance(field, CharField):
        return check_text(name, value, max_length=field.max_length)
    if isinstance(field, TextField):
        return check_text(name, value, allow_empty=True)
    raise TypeError(f"no rule for column {name}")  # pragma: no cover - schema drift guard


def check_update(model: type[BaseModel], fields: Mapping[str, Any],
                 immutable: frozenset[str]) -> dict[str, Any]:
    """Validate ``update_*`` keyword fields against ``model``; return column -> value.

    Unknown or immutable names raise ``ValueError("Invalid fields: ...")`` before
    any value is looked at, so a hostile name never reaches SQL text.
    """
    columns = {f.column_name: f for f in model._meta.sorted_fields}
    invalid = sorted(str(k) for k in fields if k not in columns or k in immutable)
    if invalid:
        allowed = sorted(c for c in columns if c not in immutable)
        raise ValueError(
            f"Invalid fields for {model._meta.table_name}: {', '.join(invalid)} "
            f"(allowed: {', '.join(allowed)})"
        )
    return {k: check_field(columns[k], v) for k, v in fields.items()}
