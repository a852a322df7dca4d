"""The store's notion of "now": whole Unix seconds or milliseconds from an injectable callable."""
from __future__ import annotations

import time
from collections.abc import Callable

Clock = Callable[[], int]
"""A callable returning the current time as a whole number in the store's unit."""

TIME_UNITS = ("s", "ms")
"""The units a database can record its timestamps in: Unix seconds or milliseconds."""
PER_SECOND = {"s": 1, "ms": 1000}
"""How many of each unit make a second."""


def system_clock() -> int:
    """Return the current Unix time in whole seconds, read at call time.

    ``time.time`` is looked up on every call, so freezegun's ``freeze_time``
    reaches every timestamp the store writes.
    """
    return int(time.time())


def system_clock_ms() -> int:
    """Return the current Unix time in whole milliseconds, read at call time (as
    :func:`system_clock`, so freezegun freezes it too)."""
    return int(time.time() * 1000)


def clock_for(unit: str) -> Clock:
    """Return the system clock of ``unit`` (``"s"`` or ``"ms"``)."""
    return system_clock_ms if unit == "ms" else system_clock


def check_time_unit(name: str, unit: object) -> str:
    """Return ``unit`` if it is ``"s"`` or ``"ms"``, else raise naming ``name``."""
    if not isinstance(unit, str):
        raise TypeError(f"{name} must be 's' or 'ms', not {type(unit).__name__}: {unit!r}")
    if unit not in TIME_UNITS:
        raise ValueError(f"{name} must be 's' (seconds) or 'ms' (milliseconds), got {unit!r}")
    return unit
